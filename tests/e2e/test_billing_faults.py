"""The issue's fault-injection run, end to end on the real broker and database with the billing-writer as a
real process: 1,000 approvals across three firms on two billing systems (two Clio firms, one MyCase firm)
while every fake answers 10% of requests with 503, commits 5% of created records and then drops the
connection, and throws bursts of 429s; the writer is SIGKILLed once mid-run. Exactly 1,000 entries come out
— none missing, none twice, each with its approval's terms — every ledger row ends `written`, and every draft
is announced on `entry.written`. Then a permanent failure: an approval on a closed matter is parked on
`draft.approved.dlq` with its reason, shown to the firm's admin, and written exactly once by
`python -m calltime.billing_writer.dlq replay` after the matter is reopened."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import httpx
import pytest
from billing_harness import (
    approval,
    clio_communications_per_draft,
    entry_written_events,
    expected_quantity,
    ledger_rows,
    onboard,
    publish,
    stack_settings,
    system_entries,
    written_terms,
)

from calltime.billing_writer.dlq import read_dead_letters
from calltime.demo.stack import LocalStack
from calltime.demo.watch import eventually
from calltime.fakes.clio import FakeClioServer, FakeClioState
from calltime.fakes.mycase import FakeMyCaseServer, FakeMyCaseState

pytestmark = pytest.mark.e2e

APPROVALS = 1_000
REVIEW_KEY = "review-key-billing-faults"
CLIO_FIRMS = ("firm-bf-clio-a", "firm-bf-clio-b")
MYCASE_FIRM = "firm-bf-mycase"
DLQ_FIRM = "firm-bf-dlq"
# Share of a system's approvals written when its fake starts a burst of 429s (per system, so that each
# burst still meets requests however the systems' paces differ).
BURSTS_AT = (0.1, 0.45, 0.8)
BURST = 6
KILL_AT = 500  # written entries (all firms) at which the writer is SIGKILLed


@dataclass
class Firm:
    firm_id: str
    system: str
    state: object
    matters: list[str]
    users: list[tuple[str, Decimal]]  # (billing user id, rate)


@dataclass
class Faulty:
    stack: LocalStack
    clio: FakeClioState
    mycase: FakeMyCaseState
    firms: dict[str, Firm]
    dlq_case: int
    dlq_staff: int


async def _clio_firm(stack: LocalStack, state: FakeClioState, base_url: str, firm_id: str) -> Firm:
    state.add_firm(firm_id, f"{firm_id} LLP")
    users = []
    for n, rate in enumerate((Decimal("350.00"), Decimal("425.00"))):
        users.append((str(state.add_user(firm_id, name=f"Attorney {n}", rate=rate, tokens=[f"token-{firm_id}-{n}"])),
                      rate))
    matters = []
    for n in range(3):
        client = state.add_contact(firm_id, name=f"Client {n}", is_client=True, phone_numbers=[f"+1415555{n:04d}"])
        matters.append(str(state.add_matter(firm_id, display_number=f"0000{n}-Client", client_id=client)))
    # The firm's token is its first attorney's; every attorney's entries go through it.
    await onboard(stack, firm_id=firm_id, system="clio", base_url=base_url, api_key=REVIEW_KEY,
                  static_token=f"token-{firm_id}-0")
    return Firm(firm_id, "clio", state, matters, users)


async def _mycase_firm(stack: LocalStack, state: FakeMyCaseState, base_url: str) -> Firm:
    state.add_firm(MYCASE_FIRM, "Lark & Stone")
    users, matters = [], []
    for n, rate in enumerate((Decimal("295.50"), Decimal("310.00"))):
        users.append((str(state.add_user(MYCASE_FIRM, first_name=f"Staff{n}", last_name="Okafor",
                                         default_hourly_rate=rate)), rate))
    for n in range(3):
        person = state.add_contact(MYCASE_FIRM, first_name=f"Client{n}", last_name="Reyes")
        matters.append(str(state.add_matter(MYCASE_FIRM, name=f"Reyes {n}", client_ids=[person])))
    token = state.issue_tokens(MYCASE_FIRM, int(users[0][0]))["access_token"]
    await onboard(stack, firm_id=MYCASE_FIRM, system="mycase", base_url=base_url, api_key=REVIEW_KEY,
                  static_token=token)
    return Firm(MYCASE_FIRM, "mycase", state, matters, users)


@pytest.fixture(scope="module")
async def faulty(infrastructure, tmp_path_factory):
    stack = LocalStack(infrastructure["database"], infrastructure["kafka"], tmp_path_factory.mktemp("billing-faults"))
    await stack.create_database()
    # Allowances raised far above the documented ones so 1,000 entries fit in about two minutes; the
    # clients still pace themselves (MyCase at its documented 25 requests a second).
    clio = FakeClioState(rate_limit=100_000)
    mycase = FakeMyCaseState(rate_limit=1_000)
    servers = [FakeClioServer(clio).start(), FakeMyCaseServer(mycase).start()]
    try:
        firms = {}
        for firm_id in CLIO_FIRMS:
            firms[firm_id] = await _clio_firm(stack, clio, servers[0].base_url, firm_id)
        firms[MYCASE_FIRM] = await _mycase_firm(stack, mycase, servers[1].base_url)
        mycase.add_firm(DLQ_FIRM, "Closed Matters LLP")
        staff = mycase.add_user(DLQ_FIRM, first_name="Ada", last_name="Counsel", default_hourly_rate="300")
        person = mycase.add_contact(DLQ_FIRM, first_name="Late", last_name="Client")
        case = mycase.add_matter(DLQ_FIRM, name="Finished matter", client_ids=[person], status="closed")
        await onboard(stack, firm_id=DLQ_FIRM, system="mycase", base_url=servers[1].base_url, api_key=REVIEW_KEY,
                      static_token=mycase.issue_tokens(DLQ_FIRM, staff)["access_token"])
        await stack.start_services(("billing-writer",))
        yield Faulty(stack, clio, mycase, firms, case, staff)
    finally:
        stack.stop_services()
        for server in servers:
            server.stop()
        await stack.drop_database()


def _approvals(firms: list[Firm]) -> list:
    """1,000 approvals spread over the firms, their attorneys and matters, interleaved as calls end."""
    out = []
    for n in range(APPROVALS):
        firm = firms[n % len(firms)]
        user, rate = firm.users[n % len(firm.users)]
        out.append(approval(firm.firm_id, matter_id=firm.matters[n % len(firm.matters)], user_id=user,
                            minutes=6 * (1 + n % 20), rate=rate))
    return out


async def _written_per_system(stack: LocalStack, firms: list[Firm]) -> Counter[str]:
    system_of = {f.firm_id: f.system for f in firms}
    rows = await ledger_rows(stack, list(system_of))
    return Counter(system_of[r["firm_id"]] for r in rows if r["state"] == "written")


async def _writes_in_flight(stack: LocalStack) -> int:
    """Drafts whose write is under way right now: each holds its advisory lock for the whole write."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    finally:
        await conn.close()


async def test_a_thousand_approvals_under_faults_and_a_killed_writer_make_exactly_a_thousand_entries(faulty, capsys):
    stack, firms = faulty.stack, [faulty.firms[f] for f in (*CLIO_FIRMS, MYCASE_FIRM)]
    firm_ids = [f.firm_id for f in firms]
    approvals = _approvals(firms)
    by_draft = {a.draft_id: a for a in approvals}
    faulty.clio.reset_stats()
    faulty.mycase.reset_stats()
    # The phone log Clio holds beside each entry is a created record too: dropping it after commit must not
    # leave two phone logs (or two entries) behind either.
    faulty.clio.set_faults(fail_fraction_5xx=0.1, drop_after_commit_fraction=0.05,
                           commit_fault_targets=("activities", "communications"), seed=4)
    faulty.mycase.set_faults(fail_fraction_5xx=0.1, drop_after_commit_fraction=0.05, seed=4)
    writer = stack.services["billing-writer"]
    fakes = {"clio": faulty.clio, "mycase": faulty.mycase}
    share = Counter(f.system for f in firms for a in approvals if a.firm_id == f.firm_id)
    started = time.monotonic()
    bursts: dict[str, list[int]] = {"clio": [], "mycase": []}
    killed_at = restart_seconds = in_flight_at_kill = None
    try:
        await publish(stack, approvals)
        published = time.monotonic() - started
        deadline = started + 420
        while True:
            per_system = await _written_per_system(stack, firms)
            written = sum(per_system.values())
            if written >= APPROVALS:
                break
            assert time.monotonic() < deadline, f"only {written} of {APPROVALS} written after 420 s"
            for system, fake in fakes.items():
                done = bursts[system]
                if len(done) < len(BURSTS_AT) and per_system[system] >= BURSTS_AT[len(done)] * share[system]:
                    fake.set_faults(burst_429=BURST)
                    done.append(per_system[system])
            if killed_at is None and written >= KILL_AT:
                in_flight_at_kill = await _writes_in_flight(stack)
                writer.kill()  # SIGKILL mid-run: requests in flight, offsets uncommitted
                killed_at = written
                writer.start()
                restart_seconds = await writer.wait_ready(timeout=120)
            await asyncio.sleep(0.5)
        all_written = time.monotonic() - started

        async def every_draft_announced():
            events = await entry_written_events(stack)
            seen = {e.draft_id for e in events if e.draft_id in by_draft}
            return events if len(seen) == APPROVALS else None

        events = await eventually(every_draft_announced, timeout=120, every=1.0, what="entry.written for every draft")
        wall = time.monotonic() - started
    finally:
        faulty.clio.set_faults(fail_fraction_5xx=0.0, drop_after_commit_fraction=0.0, burst_429=0,
                               commit_fault_targets=("activities",))
        faulty.mycase.set_faults(fail_fraction_5xx=0.0, drop_after_commit_fraction=0.0, burst_429=0)

    assert killed_at is not None and killed_at < APPROVALS
    assert all(len(done) == len(BURSTS_AT) for done in bursts.values())
    entries = [(f.system, draft, entry) for f in firms for draft, entry in system_entries(f.system, f.state, f.firm_id)]
    per_draft = Counter(draft for _, draft, _ in entries)
    duplicates = sum(n - 1 for n in per_draft.values() if n > 1)
    missing = [d for d in by_draft if per_draft[d] == 0]
    strays = [e for _, draft, e in entries if draft not in by_draft]
    phone_logs = sum((clio_communications_per_draft(faulty.clio, f) for f in CLIO_FIRMS), Counter())
    rows = await ledger_rows(stack, firm_ids)
    resumed = sum(1 for r in rows if r["attempts"] > 1)
    clio_stats, mycase_stats = faulty.clio.stats(), faulty.mycase.stats()
    figures = {
        "approvals": APPROVALS, "entries": len(entries), "duplicates": duplicates, "missing": len(missing),
        "stray_entries": len(strays), "duplicate_clio_phone_logs": sum(n - 1 for n in phone_logs.values() if n > 1),
        "ledger_written": sum(1 for r in rows if r["state"] == "written"), "ledger_rows": len(rows),
        "drafts_on_entry_written": len({e.draft_id for e in events if e.draft_id in by_draft}),
        "entry_written_events": sum(1 for e in events if e.draft_id in by_draft),
        "rows_written_after_a_retry": resumed, "writer_killed_at_written": killed_at,
        "writes_in_flight_at_kill": in_flight_at_kill, "writer_restart_seconds": round(restart_seconds, 1),
        "bursts_429_at_written": bursts,
        "faults": {name: {k: stats[k] for k in ("requests", "server_errors_injected", "dropped_after_commit",
                                                 "rate_limited")}
                   for name, stats in (("clio", clio_stats), ("mycase", mycase_stats))},
        "seconds": {"publish": round(published, 1), "all_written": round(all_written, 1),
                    "all_announced (wall)": round(wall, 1)},
    }
    with capsys.disabled():
        print("\nbilling-writer fault run:", json.dumps(figures, indent=2))

    assert (len(entries), duplicates, missing, strays) == (APPROVALS, 0, [], [])
    assert figures["duplicate_clio_phone_logs"] == 0
    assert len(rows) == APPROVALS and all(r["state"] == "written" for r in rows)
    assert figures["drafts_on_entry_written"] == APPROVALS
    for system, draft, entry in entries:
        approved = by_draft[draft]
        assert written_terms(system, entry) == (
            approved.matter_id, approved.attorney_user_id, approved.entry_date.isoformat(),
            expected_quantity(system, approved.billed_hours), approved.rate), f"{system} entry for {draft}"
    recorded = {r["draft_id"]: r["entry_id"] for r in rows}
    assert all(e.entry_id == recorded[e.draft_id] for e in events if e.draft_id in by_draft)
    # Every kind of fault really happened, on both systems.
    for stats in (clio_stats, mycase_stats):
        assert stats["server_errors_injected"] > 0 and stats["dropped_after_commit"] > 0
        assert stats["rate_limited"] >= len(BURSTS_AT) * BURST
    assert resumed > 0


async def test_an_entry_recorded_but_not_announced_when_the_writer_died_is_announced_not_written_again(faulty):
    stack, firm = faulty.stack, faulty.firms[CLIO_FIRMS[0]]
    user, rate = firm.users[1]
    approved = approval(firm.firm_id, matter_id=firm.matters[2], user_id=user, minutes=36, rate=rate)
    await publish(stack, [approved])

    async def written():
        found = [r for r in await ledger_rows(stack, [firm.firm_id]) if r["draft_id"] == approved.draft_id]
        return found[0] if found and found[0]["state"] == "written" else None

    before = await eventually(written, timeout=90, what="the entry to be written")
    writer = stack.services["billing-writer"]
    writer.kill()
    # What a writer SIGKILLed after recording Clio's ids but before `entry.written` was out leaves behind.
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute("UPDATE writer.ledger SET state = 'intent' WHERE firm_id = $1 AND draft_id = $2",
                           firm.firm_id, approved.draft_id)
    finally:
        await conn.close()
    requests = faulty.clio.stats()["requests"]
    writer.start()
    await writer.wait_ready(timeout=120)

    after = await eventually(written, timeout=90, what="the recorded entry to be announced")

    async def announced_twice():
        events = [e for e in await entry_written_events(stack) if e.draft_id == approved.draft_id]
        return events if len(events) >= 2 else None

    events = await eventually(announced_twice, timeout=60, what="the entry to be announced again")
    assert [e.entry_id for e in events] == [before["entry_id"]] * 2
    assert (after["entry_id"], after["attempts"]) == (before["entry_id"], before["attempts"])
    # Announced from the ledger alone: no look-up, and no second entry, in Clio.
    assert faulty.clio.stats()["requests"] == requests
    mine = [e for draft, e in system_entries("clio", faulty.clio, firm.firm_id) if draft == approved.draft_id]
    assert [str(e["id"]) for e in mine] == [before["entry_id"]]


async def _cli(stack: LocalStack, *args: str) -> tuple[int, str, str]:
    """The dead-letter tool as an operator runs it, with the stack's environment."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "calltime.billing_writer.dlq", *args, env=stack.services["billing-writer"].env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    return process.returncode, out.decode(), err.decode()


async def test_an_approval_on_a_closed_matter_is_parked_with_its_reason_and_replayed_once_reopened(faulty):
    stack = faulty.stack
    approved = approval(DLQ_FIRM, matter_id=str(faulty.dlq_case), user_id=str(faulty.dlq_staff), minutes=12,
                        rate=Decimal("300.00"))
    await publish(stack, [approved])

    async def row():
        found = [r for r in await ledger_rows(stack, [DLQ_FIRM]) if r["draft_id"] == approved.draft_id]
        return found[0] if found and found[0]["state"] == "dead" else None

    dead = await eventually(row, timeout=90, what="the approval to be dead-lettered")
    assert "closed case" in dead["last_error"]
    assert faulty.mycase.entries(DLQ_FIRM) == []

    async def parked():
        letters = [x for x in await read_dead_letters(stack_settings(stack)) if x.draft_id == approved.draft_id]
        return letters or None

    (letter,) = await eventually(parked, timeout=60, what="the approval on draft.approved.dlq")
    assert letter.reason.startswith("permanent: mycase refused the entry")
    assert "Time cannot be entered on a closed case" in letter.reason
    assert letter.source == "billing-writer" and letter.approval == approved

    url = f"{stack.url('billing-writer')}/firms/{DLQ_FIRM}/dead-letters"
    async with httpx.AsyncClient(timeout=10) as http:
        listed = await http.get(url, headers={"Authorization": f"Bearer {REVIEW_KEY}"})
        anonymous = await http.get(url)
        wrong_key = await http.get(url, headers={"Authorization": "Bearer not-the-key"})
        other_firm = await http.get(url.replace(DLQ_FIRM, MYCASE_FIRM),
                                    headers={"Authorization": f"Bearer {REVIEW_KEY}"})
    assert listed.status_code == 200
    (shown,) = listed.json()["dead_letters"]
    assert (shown["draft_id"], shown["call_id"], shown["billing_system"]) == (
        approved.draft_id, approved.call_id, "mycase")
    assert "closed case" in shown["last_error"] and shown["dead_at"]
    assert anonymous.status_code == 401 and wrong_key.status_code == 401
    assert other_firm.status_code == 200 and other_firm.json()["dead_letters"] == []

    code, out, err = await _cli(stack, "list", "--firm", DLQ_FIRM)
    assert code == 0, err
    assert out.splitlines() == [f"{DLQ_FIRM}\t{approved.draft_id}\t{approved.call_id}\t{letter.reason}"]
    assert "1 dead-lettered approvals not yet written" in err

    faulty.mycase.update_matter(DLQ_FIRM, faulty.dlq_case, status="open")  # the firm reopens the matter
    code, out, err = await _cli(stack, "replay", "--firm", DLQ_FIRM, "--wait", "120")
    assert code == 0, f"{out}\n{err}"
    progress = err.splitlines()
    assert progress and "1/1 written" in progress[-1] and all("written" in line for line in progress)
    assert out.strip() == "replayed 1: 1 written, 0 dead again, 0 still pending"

    entries = [e for draft, e in system_entries("mycase", faulty.mycase, DLQ_FIRM) if draft == approved.draft_id]
    assert len(entries) == 1 and len(faulty.mycase.entries(DLQ_FIRM)) == 1
    assert written_terms("mycase", entries[0]) == (
        str(faulty.dlq_case), str(faulty.dlq_staff), approved.entry_date.isoformat(), Decimal("0.2"),
        Decimal("300.00"))
    (final,) = [r for r in await ledger_rows(stack, [DLQ_FIRM]) if r["draft_id"] == approved.draft_id]
    assert final["state"] == "written" and final["entry_id"] == str(entries[0]["id"])

    async def announced():
        return [e for e in await entry_written_events(stack) if e.draft_id == approved.draft_id] or None

    (event,) = await eventually(announced, timeout=60, what="entry.written for the replayed draft")
    assert event.entry_id == final["entry_id"] and event.billing_system == "mycase"

    code, out, err = await _cli(stack, "list", "--firm", DLQ_FIRM)
    assert code == 0 and out == "" and "0 dead-lettered approvals not yet written" in err
    async with httpx.AsyncClient(timeout=10) as http:
        after = await http.get(url, headers={"Authorization": f"Bearer {REVIEW_KEY}"})
    assert after.json()["dead_letters"] == []
