"""Pacing benchmark (issue 4): a firm's backlog drained at its billing token's allowance.

    python -m bench.pacing                                   # Clio, 50 per 60 s, 500 entries (~20 min)
    python -m bench.pacing --window-seconds 6                # the same shape, ten times faster
    python -m bench.pacing --system mycase                   # MyCase, 25 per 1 s (sliding), 500 entries
    python -m bench.pacing --window-seconds 6 --processes 2  # two writer processes on one token

Target: "with a 50/min allowance and a 500-entry backlog, no request gets a 429 and the allowance
is used at >= 95%".

What runs is the real writer path: each approval is queued in `writer.ledger` (`queue.accept`,
as the Kafka consumer does) and the firm's queue is drained by `FirmWorkers.drain_one`, which calls
`write_approved` (advisory lock, ledger intent committed before each POST, ids recorded after) with
the real `ClioClient` (paced by `RateGate` from Clio's X-RateLimit-* headers) against the fake Clio
over HTTP, on a private database on the devstack's PostgreSQL (CALLTIME_DATABASE_URL). Only the
Kafka publish of `entry.written` is left out: the announcements are collected instead. `--path
client` skips the database and calls `write_entry` directly.

Figures:
- requests: HTTP requests the client sent (a Clio entry is two: the PhoneCommunication, then the
  TimeEntry linked to it); 429s as seen by the client and as counted by the fake;
- windows used: for Clio's fixed windows, the fake's windows (told by each answer's
  X-RateLimit-Reset) from the first request to the last; for a sliding window (MyCase),
  floor(elapsed / window) + 1, the most allowances a sliding window grants over that time;
  utilisation = accepted requests / (allowance x windows used), 100% at best;
- time-based utilisation = accepted requests / (allowance x elapsed / window). With fixed windows
  it can exceed 100%: a full allowance is spendable both in the window where the drain starts and
  in the one where it ends, however little of either the drain covers.
Exit status 1 when any request got a 429, utilisation is below 95% or an entry is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from calltime import db
from calltime.billing.auth import StaticToken
from calltime.billing.pacing import RateGate
from calltime.billing_writer import queue
from calltime.billing_writer.writing import entry_request, write_approved
from calltime.events import DraftApproved, EntryWritten

FIRM = "bench-pacing"
TOKEN = "bench-pacing-token"
TARGET_UTILISATION = 0.95
DEFAULTS = {"clio": (50, 60.0), "mycase": (25, 1.0)}  # (limit, window seconds) as documented


# ---------------------------------------------------------------------------------------------------------------
# What went over the wire


@dataclass(frozen=True)
class Exchange:
    sent_at: float
    answered_at: float
    status: int
    reset: float | None  # X-RateLimit-Reset: the end of the fake window that counted the request


@dataclass
class Recorder(httpx.AsyncBaseTransport):
    """Wraps the real transport and notes every request's timing, status and rate-limit window."""

    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)
    exchanges: list[Exchange] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.time()
        response = await self.inner.handle_async_request(request)
        raw = response.headers.get("X-RateLimit-Reset")
        try:
            reset = float(raw) if raw is not None else None
        except ValueError:
            reset = None
        self.exchanges.append(Exchange(sent, time.time(), response.status_code, reset))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


# ---------------------------------------------------------------------------------------------------------------
# The billing system under test


@dataclass
class System:
    name: str
    base_url: str
    new_client: Callable[[], Any]  # one per simulated writer process: its own pacing state
    server_stats: Callable[[], dict[str, Any]]
    stored_entries: Callable[[], int]
    window_kind: str  # 'fixed' (window told by X-RateLimit-Reset) or 'sliding'
    stop: Callable[[], None]
    user_id: str
    matter_id: str


def start_clio(limit: int, window: float, http: httpx.AsyncClient) -> System:
    from calltime.billing.clio import ClioClient
    from calltime.fakes.clio import FakeClioServer, FakeClioState

    if window != int(window):
        raise SystemExit("the fake Clio counts whole-second windows; give --window-seconds as an integer")
    state = FakeClioState(rate_limit=limit, rate_window_seconds=int(window))
    state.add_firm(FIRM, "Pacing LLP")
    user = state.add_user(FIRM, name="Ada Counsel", rate=Decimal("350"), tokens=[TOKEN],
                          time_zone="America/New_York")
    contact = state.add_contact(FIRM, name="Client Co", is_client=True, phone_numbers=["+14155550142"])
    matter = state.add_matter(FIRM, display_number="00001-Client", client_id=contact)
    server = FakeClioServer(state).start()
    return System(
        # Built as the writer builds it (calltime.billing.connect): base URL and token, default pacing.
        name="clio", base_url=server.base_url, new_client=lambda: ClioClient(server.base_url, TOKEN, http=http),
        server_stats=state.stats,
        stored_entries=lambda: sum(1 for a in state.activities(FIRM) if a["type"] == "TimeEntry"),
        window_kind="fixed", stop=server.stop, user_id=str(user), matter_id=str(matter))


def start_mycase(limit: int, window: float, http: httpx.AsyncClient) -> System:
    from calltime.billing import mycase
    from calltime.fakes.mycase import FakeMyCaseServer, FakeMyCaseState

    state = FakeMyCaseState(rate_limit=limit, rate_window_seconds=window)
    state.add_firm(FIRM, "Pacing LLP")
    staff = state.add_user(FIRM, first_name="Ada", last_name="Counsel", default_hourly_rate=Decimal("350"))
    person = state.add_contact(FIRM, first_name="Client", last_name="Person", cell_phone_number="+14155550142")
    case = state.add_matter(FIRM, name="Client v. Other", client_ids=[person], staff_ids=[staff])
    token = state.issue_tokens(FIRM, staff)["access_token"]
    server = FakeMyCaseServer(state).start()
    # MyCase sends no remaining-count headers: the client paces by the documented allowance, so the
    # benchmark tells it the allowance it set on the fake.
    documented = (limit, window) == (mycase.RATE_LIMIT, mycase.RATE_WINDOW_SECONDS)

    def new_client() -> mycase.MyCaseClient:
        gate = None if documented else RateGate(limit=limit, window_seconds=window)
        return mycase.MyCaseClient(server.base_url, StaticToken(token), http=http, rate_gate=gate)

    return System(
        name="mycase", base_url=server.base_url, new_client=new_client, server_stats=state.stats,
        stored_entries=lambda: len(state.entries(FIRM)), window_kind="sliding", stop=server.stop,
        user_id=str(staff), matter_id=str(case))


STARTERS: dict[str, Callable[[int, float, httpx.AsyncClient], System]] = {"clio": start_clio, "mycase": start_mycase}


def approvals(count: int, user_id: str, matter_id: str) -> list[DraftApproved]:
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    out = []
    for i in range(count):
        started = base + timedelta(minutes=i)
        billed = Decimal(1 + i % 9) / 10  # 0.1 .. 0.9 h
        out.append(DraftApproved(
            event_id=str(uuid.uuid4()), firm_id=FIRM, call_id=f"bench:call-{i:05d}-{uuid.uuid4().hex[:8]}",
            draft_id=str(uuid.uuid4()), attorney_user_id=user_id, approved_by=user_id,
            approved_at=started + timedelta(hours=1), matter_id=matter_id, entry_date=started.date(),
            raw_seconds=int(billed * 3600) - 30, billed_hours=billed, rate=Decimal("350.00"),
            amount=(billed * Decimal("350.00")).quantize(Decimal("0.01")), currency="USD",
            activity_code="Telephone Conference", narrative=f"Telephone conference re: backlog item {i}",
            call_started_at=started, external_number_e164="+14155550142"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Draining


class _DeadLetters:
    """Stands in for the Kafka publisher: a permanent failure here is a benchmark failure."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def dead_letter(self, topic, key, value, headers, reason: str) -> None:  # noqa: ANN001
        self.reasons.append(reason)


async def drain_through_writer(system: System, batch: list[DraftApproved], database_url: str,
                               deadline: float, processes: int) -> tuple[float, float, int, list[str]]:
    """Queue every approval in the ledger, then drain the firm's queue as the writer's worker does,
    in `processes` simulated writer processes (each its own pool, client and pacing state).
    Returns (start, end, entries written, dead-letter reasons)."""
    pools = [await db.create_pool(database_url, max_size=4) for _ in range(processes)]
    announced: list[EntryWritten] = []
    dead = _DeadLetters()
    # Newer writers publish `entry.written` through a callback before marking the row written; older
    # ones leave it to the caller, who announces what write_approved returns.
    takes_announce = "announce" in inspect.signature(write_approved).parameters
    try:
        for approved in batch:
            await queue.accept(pools[0], approved, system.name)

        async def process(pool) -> None:  # noqa: ANN001
            client = system.new_client()

            async def announce(written: EntryWritten) -> None:
                announced.append(written)

            async def write(approved: DraftApproved) -> None:
                if takes_announce:
                    await write_approved(pool, client, system.name, approved, announce=announce)
                else:
                    await announce(await write_approved(pool, client, system.name, approved))

            workers = queue.FirmWorkers(pool, write, dead)
            try:
                while time.time() < deadline:
                    # as the service does: only the process holding the firm's lock drains it
                    await workers.drain(FIRM)
                    left = await pool.fetchval(
                        "SELECT count(*) FROM writer.ledger WHERE firm_id = $1 AND state = 'intent'", FIRM)
                    if left == 0:
                        return
                    await asyncio.sleep(0.2)  # a failed row waits out its backoff; another process may hold the firm
            finally:
                await workers.locks.close()

        start = time.time()
        await asyncio.gather(*(process(p) for p in pools))
        end = time.time()
        written = await pools[0].fetchval(
            "SELECT count(*) FROM writer.ledger WHERE firm_id = $1 AND state = 'written'", FIRM)
        unannounced = len({a.draft_id for a in batch} - {a.draft_id for a in announced})
        if unannounced:
            dead.reasons.append(f"{unannounced} written entries never announced")
        if len(announced) > written:
            # At least once is the contract; say how often "at least" was more than once.
            print(f"note: {len(announced) - written} entry.written announcements repeated (consumers dedupe)")
        return start, end, written, dead.reasons
    finally:
        for pool in pools:
            await pool.close()


async def drain_through_client(system: System, batch: list[DraftApproved], deadline: float,
                               processes: int) -> tuple[float, float, int, list[str]]:
    errors: list[str] = []
    done = 0

    async def process(share: list[DraftApproved]) -> None:
        nonlocal done
        client = system.new_client()
        for approved in share:
            if time.time() >= deadline:
                errors.append("deadline passed")
                return
            try:
                await client.write_entry(entry_request(approved))
                done += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                errors.append(repr(exc))

    start = time.time()
    await asyncio.gather(*(process(batch[i::processes]) for i in range(processes)))
    return start, time.time(), done, errors


# ---------------------------------------------------------------------------------------------------------------
# Figures


@dataclass
class Report:
    system: str
    path: str
    processes: int
    limit: int
    window: float
    entries: int
    written: int
    stored: int
    elapsed: float
    exchanges: list[Exchange]
    server: dict[str, Any]
    errors: list[str]
    window_kind: str

    @property
    def accepted(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.status != 429]

    @property
    def rejected_429(self) -> int:
        return sum(1 for e in self.exchanges if e.status == 429)

    def per_window(self) -> list[tuple[float, int, int]]:
        """(window start, accepted, 429s) for each window from the first request's to the last's."""
        if not self.exchanges:
            return []
        if self.window_kind == "fixed" and all(e.reset is not None for e in self.exchanges):
            # The fake's own window for each request: the one ending at the Reset its answer carried.
            keys = [round(e.reset / self.window) - 1 for e in self.exchanges]
        else:
            # A sliding window has no calendar: consecutive windows from the first request.
            first = self.exchanges[0].sent_at
            keys = [math.floor((e.sent_at - first) / self.window) for e in self.exchanges]
        ok: Counter[int] = Counter()
        limited: Counter[int] = Counter()
        for key, exchange in zip(keys, self.exchanges, strict=True):
            (limited if exchange.status == 429 else ok)[key] += 1
        return [(k * self.window, ok[k], limited[k]) for k in range(min(keys), max(keys) + 1)]

    @property
    def windows_used(self) -> int:
        if self.window_kind == "sliding":
            # The most a sliding window admits over the elapsed time is one allowance more than its
            # whole windows hold (a full one at the very start).
            return math.floor(self.elapsed / self.window) + 1
        return len(self.per_window())

    @property
    def utilisation(self) -> float:
        return len(self.accepted) / (self.limit * self.windows_used) if self.windows_used else 0.0

    @property
    def time_utilisation(self) -> float:
        return len(self.accepted) / (self.limit * self.elapsed / self.window) if self.elapsed else 0.0

    @property
    def passed(self) -> bool:
        return (self.rejected_429 == 0 and int(self.server.get("rate_limited", 0)) == 0
                and self.utilisation >= TARGET_UTILISATION and self.written == self.entries
                and self.stored == self.entries and not self.errors)

    def print(self) -> None:
        ex = self.exchanges
        gaps = [b.sent_at - a.answered_at for a, b in zip(ex, ex[1:], strict=False)]
        longest_gap = max(gaps, default=0.0)
        print()
        print(f"pacing: {self.system} via {self.path} ({self.processes} writer process"
              f"{'es' if self.processes > 1 else ''} on one token), allowance {self.limit} per {self.window:g} s "
              f"({self.window_kind} windows), backlog {self.entries} entries")
        rows = [
            ("entries written / in the backlog", f"{self.written} / {self.entries}"),
            ("time entries stored by the fake", str(self.stored)),
            ("requests sent (client)", str(len(ex))),
            ("requests seen (fake)", str(self.server.get("requests"))),
            ("  by route", ", ".join(f"{route} {n}" for route, n in sorted(self.server.get("by_route", {}).items()))),
            ("429 answers (client / fake)", f"{self.rejected_429} / {self.server.get('rate_limited')}"),
            ("elapsed", f"{self.elapsed:.1f} s ({self.elapsed / self.window:.2f} windows)"),
            ("windows used", str(self.windows_used)),
            ("utilisation (accepted / allowance x windows used)", f"{self.utilisation:.1%}"),
            ("utilisation (accepted / allowance x elapsed windows)", f"{self.time_utilisation:.1%}"),
            ("mean request latency", f"{_mean([e.answered_at - e.sent_at for e in ex]) * 1000:.1f} ms"),
            ("longest pause between requests", f"{longest_gap:.2f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"  {name:<{width}}  {value}")
        print()
        print("  window  starts(+s)  accepted  429s  of allowance")
        origin = self.per_window()[0][0] if ex else 0.0
        for i, (start, accepted, limited) in enumerate(self.per_window()):
            print(f"  {i:6d}  {start - origin:10.1f}  {accepted:8d}  {limited:4d}  {accepted / self.limit:11.0%}")
        for error in self.errors[:10]:
            print(f"  error: {error}")
        print()
        print("PASS" if self.passed else "FAIL", f"(no 429, utilisation >= {TARGET_UTILISATION:.0%}, every entry once)")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


async def run(system_name: str, limit: int, window: float, entries: int, path: str,
              database_url: str | None, timeout: float, processes: int = 1) -> Report:
    recorder = Recorder()
    http = httpx.AsyncClient(transport=recorder)
    system = STARTERS[system_name](limit, window, http)
    stack = None
    try:
        batch = approvals(entries, system.user_id, system.matter_id)
        deadline = time.time() + timeout
        if path == "writer":
            from calltime.demo.stack import LocalStack

            stack = LocalStack(database_url or "", os.environ.get("CALLTIME_KAFKA_BOOTSTRAP", "unused"),
                               Path(tempfile.mkdtemp(prefix="bench-pacing-")))
            await stack.create_database()
            start, end, written, errors = await drain_through_writer(system, batch, stack.database_url, deadline,
                                                                     processes)
        else:
            start, end, written, errors = await drain_through_client(system, batch, deadline, processes)
        return Report(system=system.name, path=path, processes=processes, limit=limit, window=window,
                      entries=entries,
                      written=written, stored=system.stored_entries(),
                      elapsed=(recorder.exchanges[-1].answered_at - recorder.exchanges[0].sent_at)
                      if recorder.exchanges else end - start,
                      exchanges=list(recorder.exchanges), server=system.server_stats(), errors=errors,
                      window_kind=system.window_kind)
    finally:
        await http.aclose()
        system.stop()
        if stack is not None:
            await stack.drop_database()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=sorted(STARTERS), default="clio")
    parser.add_argument("--limit", type=int, help="requests per window (default: the system's documented 50 or 25)")
    parser.add_argument("--window-seconds", type=float, help="window length (default: 60 for Clio, 1 for MyCase)")
    parser.add_argument("--entries", type=int, default=500, help="approved drafts in the backlog")
    parser.add_argument("--path", choices=("writer", "client"), default="writer",
                        help="writer: ledger queue + write_approved on PostgreSQL; client: write_entry only")
    parser.add_argument("--processes", type=int, default=1,
                        help="writer processes draining the firm's queue on one token, each pacing on its own")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds (default: 3x the ideal)")
    parser.add_argument("--verbose", action="store_true", help="show the client's pacing log lines")
    args = parser.parse_args(argv)
    limit, window = DEFAULTS[args.system]
    limit = args.limit or limit
    window = args.window_seconds or window
    per_entry = 2 if args.system == "clio" else 1
    ideal = math.ceil(args.entries * per_entry / limit) * window
    timeout = args.timeout or max(60.0, 3 * ideal)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    database_url = os.environ.get("CALLTIME_DATABASE_URL", "postgresql://calltime@127.0.0.1:25432/postgres")
    print(f"{args.system}: {args.entries} entries = {args.entries * per_entry} requests at {limit} per {window:g} s;"
          f" ideal about {ideal:.0f} s (started {datetime.now(timezone.utc):%H:%M:%S} UTC)", flush=True)
    report = asyncio.run(run(args.system, limit, window, args.entries, args.path, database_url, timeout,
                             args.processes))
    report.print()
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())

