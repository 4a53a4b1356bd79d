"""`python -m calltime.demo`: one firm's day of calls through the whole pipeline, on the real
broker and database, with the fake Clio and the five phone systems' simulators standing in for
the SaaS APIs. One webhook in ten is dropped on the way, as real providers do; the reconciliation
sweep reads each provider's call log and recovers those calls. Ends in a summary.

Infrastructure comes from CALLTIME_KAFKA_BOOTSTRAP / CALLTIME_DATABASE_URL, or the devstack
defaults (`make demo` starts it).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx

from calltime import topics
from calltime.demo import scenario
from calltime.demo.phones import PHONE_SYSTEMS, PhoneFakes, connect_phone_systems, start_phone_fakes
from calltime.demo.stack import FirmSetup, LocalStack, register_firm, stack_credentials
from calltime.demo.watch import read_topic
from calltime.fakes.clio import FakeClioServer, FakeClioState
from calltime.ingest.domain import call_id_for
from calltime.ingest.reconcile import open_source, sweep
from calltime.settings import Settings

CLIO_TOKEN = "demo-clio-token"
WEBHOOKS_DROPPED = 0.10  # the share of calls whose webhooks never arrive
FIRM_API_KEY = "demo-firm-api-key"
# Clio allows 50 requests/min per token at peak and more off-peak; the demo runs "off-peak".
CLIO_REQUESTS_PER_MINUTE = 600


def say(text: str) -> None:
    print(text, flush=True)


_last_shown: dict[str, int] = {}


def progress(label: str, done: int, total: int) -> None:
    """A bar redrawn in place on a terminal; on a pipe or log, one line per quarter."""
    if sys.stdout.isatty():
        filled = 30 * done // max(total, 1)
        sys.stdout.write(f"\r  {label:<22} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        if done >= total:
            sys.stdout.write("\n")
        sys.stdout.flush()
        return
    quarter = max(total // 4, 1)
    if _last_shown.get(label) != done and (done == total or done % quarter == 0):
        _last_shown[label] = done
        say(f"  {label:<22} {done}/{total}")


async def place_calls(phones: PhoneFakes, calls: list[scenario.PlacedCall], rng: random.Random,
                      response_times: list[float]) -> tuple[dict[str, float], Counter, Counter]:
    """Deliver every call's webhooks (8 calls at a time), dropping one call's webhooks in ten.
    Returns when each delivered call was accepted, and calls placed and dropped per provider."""
    accepted: dict[str, float] = {}
    placed: Counter = Counter()
    dropped: Counter = Counter()
    gate = asyncio.Semaphore(8)
    simulators = {name: phones.simulator(name) for name in phones.states}
    for name, simulator in simulators.items():
        if not await simulator.handshake():
            raise SystemExit(f"demo: the webhook failed {name}'s validation handshake")

    async def one(placed_call: scenario.PlacedCall) -> None:
        simulator = simulators[placed_call.provider]
        deliver = rng.random() >= WEBHOOKS_DROPPED
        async with gate:
            responses = await simulator.place_call(placed_call.call, deliver=deliver)
        placed[placed_call.provider] += 1
        if not deliver:
            dropped[placed_call.provider] += 1
            return
        response_times.extend(r.elapsed.total_seconds() for r in responses)
        if any(r.status_code >= 300 for r in responses):
            raise SystemExit(f"demo: webhook refused: {responses[-1].text}")
        call_id = call_id_for(placed_call.provider, simulator.provider_call_id(placed_call.call))
        accepted[call_id] = time.time()
        progress("webhooks delivered", sum(placed.values()), len(calls))

    try:
        await asyncio.gather(*(one(c) for c in calls))
    finally:
        for simulator in simulators.values():
            await simulator.aclose()
    return accepted, placed, dropped


async def reconcile_all(stack: LocalStack, since, until) -> Counter:
    """One sweep per phone system over the day, as the ingest service runs them on a schedule."""
    recovered: Counter = Counter()
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    try:
        for provider in PHONE_SYSTEMS:
            record, source = await open_source(stack_credentials(pool), scenario.FIRM_ID, provider)
            try:
                recovered[provider] = (await sweep(pool, record, source, since, until)).published
            finally:
                await source.aclose()
    finally:
        await pool.close()
    return recovered


async def wait_for(label: str, probe, total: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done = await probe()
        progress(label, min(done, total), total)
        if done >= total:
            return done
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: only {done} of {total} {label} after {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def review_queue(http: httpx.AsyncClient, stack: LocalStack) -> list[dict]:
    response = await http.get(f"{stack.url('drafts')}/firms/{scenario.FIRM_ID}/drafts",
                              headers={"Authorization": f"Bearer {FIRM_API_KEY}"},
                              params={"limit": 1000})
    response.raise_for_status()
    return response.json()


async def approve_as_attorneys(http: httpx.AsyncClient, drafts: list[dict]) -> Counter:
    """What each attorney does with the notification: approve a ready draft; pick the first
    open matter when several are open; leave the rest in the review queue."""
    done: Counter = Counter()
    pending = [d for d in drafts if d["state"] == "pending"]
    for index, draft in enumerate(pending, 1):
        if draft["review_state"] == "ready":
            response = await http.post(draft["approve_url"])
            done["approved as drafted"] += response.status_code == 200
        elif draft["review_state"] == "needs_matter" and draft["candidates"]:
            choice = {"matter_id": draft["candidates"][0]["matter_id"]}
            response = await http.post(draft["approve_url"], json=choice)
            done["approved with a matter chosen"] += response.status_code == 200
        else:
            done[f"left for review ({draft['review_state']})"] += 1
        progress("drafts reviewed", index, len(pending))
    return done


def summarise(calls, accepted, matched, drafts, reviewed, entries, clio_entries,
              response_times, placed, dropped, recovered) -> None:
    outcomes = Counter(m.outcome for m in matched)
    hours = sum((e.billed_hours for e in entries), Decimal(0))
    dollars = sum((e.amount for e in entries), Decimal(0))
    by_call = {d["call_id"]: d for d in drafts}
    timed = [e for e in entries if e.call_id in accepted]  # recovered calls had no webhook
    end_to_end = sorted(e.written_at.timestamp() - accepted[e.call_id] for e in timed)
    machine = sorted(by_call[e.call_id]["created_at_epoch"] - accepted[e.call_id] for e in timed)
    say("")
    say(f"calltime demo — {scenario.FIRM_NAME}, one day, {len(scenario.ATTORNEYS)} attorneys")
    say(f"  calls placed             {len(calls)}; webhooks of {sum(dropped.values())} dropped on the way")
    say("    phone system   placed  webhooks dropped  recovered by reconciliation")
    for provider in PHONE_SYSTEMS:
        say(f"    {provider:<13} {placed[provider]:>7}  {dropped[provider]:>16}  {recovered[provider]:>27}")
    say(f"  calls received           {len(accepted) + sum(recovered.values())} of {len(calls)} placed")
    say("  match outcomes")
    for outcome, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        say(f"    {outcome:<24} {count}")
    say(f"  drafts created           {len(drafts)}"
        f"  ({len(calls) - len(drafts)} calls needed none: internal, vendor or missed)")
    for what, count in sorted(reviewed.items()):
        say(f"    {what:<34} {count}")
    say(f"  entries written to Clio  {len(entries)} (Clio holds {clio_entries} for this firm)")
    say(f"  hours captured           {hours} h")
    say(f"  dollars captured         ${dollars:,.2f}")
    response_ms = sorted(t * 1000 for t in response_times)
    say(f"  webhook responses        {len(response_ms)}: median {statistics.median(response_ms):.1f} ms,"
        f" p99 {response_ms[int(len(response_ms) * 0.99) - 1]:.1f} ms, max {response_ms[-1]:.1f} ms")
    if end_to_end:
        say(f"  webhook accepted -> entry written: median {statistics.median(end_to_end):.2f} s,"
            f" max {max(end_to_end):.2f} s (includes the attorney's review step)")
        say(f"  webhook accepted -> draft ready:   median {statistics.median(machine):.2f} s,"
            f" max {max(machine):.2f} s")


async def run_demo() -> None:
    settings = Settings()
    run_dir = Path(tempfile.mkdtemp(prefix="calltime-demo-"))
    rng = random.Random(int(os.environ.get("CALLTIME_DEMO_SEED", "2026")))
    clio_state = FakeClioState(rate_limit=CLIO_REQUESTS_PER_MINUTE)
    directory = scenario.seed_clio(clio_state, CLIO_TOKEN, rng)
    calls = scenario.day_of_calls(directory, rng)
    with FakeClioServer(clio_state) as clio:
        stack = LocalStack(settings.database_url, settings.kafka_bootstrap, run_dir,
                           extra_env={"CALLTIME_RECONCILE_EVERY_SECONDS": "3600"})
        await stack.create_database()
        rc = PHONE_SYSTEMS["ringcentral"]
        await register_firm(stack, FirmSetup(
            firm_id=scenario.FIRM_ID, name=scenario.FIRM_NAME, clio_base_url=clio.base_url,
            clio_token=CLIO_TOKEN, ringcentral_account_id=rc.account_id,
            ringcentral_verification_token=rc.secret, api_key=FIRM_API_KEY,
            extensions=directory.attorney_ids["ringcentral"]))
        phones = start_phone_fakes(stack, scenario.FIRM_ID)
        await connect_phone_systems(phones, directory.attorney_ids)
        try:
            say(f"starting the four services (logs in {run_dir})")
            ready = await stack.start_services()
            say("  ready in " + ", ".join(f"{k} {v:.1f} s" for k, v in ready.items()))
            async with httpx.AsyncClient(timeout=30) as http:
                sync = (await http.post(f"{stack.url('matcher')}/firms/{scenario.FIRM_ID}"
                                        "/directory/sync",
                                        headers={"Authorization": f"Bearer {FIRM_API_KEY}"})).json()
                say(f"directory synced from Clio: {sync['users']} users, {sync['contacts']}"
                    f" contacts, {sync['matters']} matters")
                response_times: list[float] = []
                accepted, placed, dropped = await place_calls(phones, calls, rng, response_times)
                await wait_for("delivered calls in", lambda: _calls_received(stack), len(accepted))
                recovered = await reconcile_all(stack, scenario.DAY - timedelta(hours=1),
                                                scenario.DAY + timedelta(hours=19))
                say(f"  reconciliation sweeps recovered {sum(recovered.values())} calls"
                    f" ({sum(dropped.values())} had lost their webhooks)")
                expected = await expected_drafts(stack)
                await wait_for("drafts created", lambda: _count(review_queue(http, stack)),
                               expected)
                drafts = await review_queue(http, stack)
                reviewed = await approve_as_attorneys(http, drafts)
                approved = sum(v for k, v in reviewed.items() if k.startswith("approved"))
                await wait_for("entries written", lambda: _written(stack), approved)
            matched = await read_topic(stack.kafka_bootstrap, stack.topic_prefix + topics.CALL_MATCHED)
            entries = await read_topic(stack.kafka_bootstrap, stack.topic_prefix + topics.ENTRY_WRITTEN)
            for draft in drafts:
                draft["created_at_epoch"] = _epoch(draft["created_at"])
            summarise(calls, accepted, matched, drafts, reviewed, entries,
                      len([a for a in clio_state.activities(scenario.FIRM_ID)
                           if a["type"] == "TimeEntry"]), response_times, placed, dropped, recovered)
        finally:
            stack.stop_services()
            phones.stop()
            await stack.drop_database()


async def expected_drafts(stack: LocalStack) -> int:
    """Every answered call with an outside party earns a draft, once the matcher has seen it."""
    matched = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        matched = await read_topic(stack.kafka_bootstrap, stack.topic_prefix + topics.CALL_MATCHED,
                                   idle_seconds=1.0)
        received = await _calls_received(stack)
        if len({m.call.call_id for m in matched}) >= received:
            break
    return sum(1 for m in {m.call.call_id: m for m in matched}.values()
               if m.outcome != "non_client" and m.call.result == "answered")


async def _scalar(stack: LocalStack, query: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def _calls_received(stack: LocalStack) -> int:
    return await _scalar(stack, "SELECT count(*) FROM ingest.calls")


async def _written(stack: LocalStack) -> int:
    return await _scalar(stack, "SELECT count(*) FROM writer.ledger WHERE state = 'written'")


async def _count(awaitable) -> int:
    return len(await awaitable)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


if __name__ == "__main__":
    asyncio.run(run_demo())
