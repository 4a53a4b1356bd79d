"""Each firm's write queue: the ledger rows still in `intent`.

The Kafka consumer only *accepts* an approval — one ledger row, durable, then the offset is
committed — so a firm whose billing system paces it to 50 requests a minute never holds up
another firm's approvals on the same partition. One worker per firm drains that firm's queue in
approval order, at its own token's pace. Transient failures retry with backoff and jitter;
permanent ones mark the row dead and park the approval on `draft.approved.dlq` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg

from calltime import codec, metrics, topics
from calltime.events import DraftApproved
from calltime.kafka import PermanentFailure
from calltime.logs import bound

log = logging.getLogger(__name__)
SERVICE = "billing-writer"
MAX_BACKOFF_SECONDS = 300.0

Write = Callable[[DraftApproved], Awaitable[None]]  # writes and announces, or raises


def backoff(attempts: int, rng: random.Random = random.Random()) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(attempts, 12)) * rng.uniform(0.5, 1.5))


async def accept(pool: asyncpg.Pool, approved: DraftApproved, billing_system: str) -> bool:
    """Queue the approval for its firm; True if new. A replay of a dead approval re-queues it."""
    encoded = codec.encode(approved)
    headers = [f"{name}={raw.decode()}" for name, raw in encoded.headers]
    status = await pool.fetchval(
        "INSERT INTO writer.ledger AS l (firm_id, draft_id, call_id, billing_system, state, approval,"
        " approval_headers) VALUES ($1, $2, $3, $4, 'intent', $5, $6)"
        " ON CONFLICT (firm_id, draft_id) DO UPDATE SET state = 'intent', next_attempt_at = now(),"
        " dead_at = NULL, approval = EXCLUDED.approval, approval_headers = EXCLUDED.approval_headers"
        " WHERE l.state = 'dead' RETURNING (xmax = 0)",
        approved.firm_id, approved.draft_id, approved.call_id, billing_system, encoded.value, headers)
    return bool(status)


def _decode(value: bytes, headers: list[str]) -> DraftApproved:
    pairs = [(h.split("=", 1)[0], h.split("=", 1)[1].encode()) for h in headers]
    return codec.decode(value, pairs)


class FirmLocks:
    """Which writer process drains which firm: a session-level advisory lock per firm, all held on
    one connection per process, so a firm is paced by one process (its token's allowance is not
    raced for) and a killed process's firms are free the moment its session ends."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._conn: asyncpg.Connection | None = None
        self._guard = asyncio.Lock()  # one query at a time on the shared connection

    async def claim(self, firm_id: str) -> bool:
        return await self._run("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", firm_id)

    async def release(self, firm_id: str) -> None:
        await self._run("SELECT pg_advisory_unlock(hashtextextended($1, 0))", firm_id)

    async def _run(self, query: str, firm_id: str) -> bool:
        async with self._guard:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self.pool.acquire()
            try:
                return bool(await self._conn.fetchval(query, f"writer-firm/{firm_id}"))
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
                await self.close()  # locks went with the session; the next claim starts afresh
                raise

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self.pool.release(conn)


class FirmWorkers:
    """One draining task per firm with queued approvals, started on demand and on boot."""

    def __init__(self, pool: asyncpg.Pool, write: Write, publisher, *, idle_seconds: float = 1.0) -> None:
        self.pool = pool
        self.write = write
        self.publisher = publisher
        self.idle_seconds = idle_seconds
        self.locks = FirmLocks(pool)
        self.tasks: dict[str, asyncio.Task] = {}
        self.wakeups: dict[str, asyncio.Event] = {}
        self._watch: asyncio.Task | None = None

    async def __aenter__(self) -> FirmWorkers:
        self._watch = asyncio.create_task(self._watch_for_work(), name="writer-firms")
        return self

    async def __aexit__(self, *exc) -> None:
        tasks = [t for t in [self._watch, *self.tasks.values()] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.locks.close()

    def wake(self, firm_id: str) -> None:
        self.wakeups.setdefault(firm_id, asyncio.Event()).set()
        task = self.tasks.get(firm_id)
        if task is None or task.done():
            self.tasks[firm_id] = asyncio.create_task(self._drain_forever(firm_id), name=f"writer-{firm_id}")

    async def _watch_for_work(self) -> None:
        """Starts workers for firms whose queue has due rows (boot, replays, retries)."""
        while True:
            try:
                firms = await self.pool.fetch(
                    "SELECT DISTINCT firm_id FROM writer.ledger WHERE state = 'intent' AND next_attempt_at <= now()")
                for row in firms:
                    self.wake(row["firm_id"])
            except Exception as exc:  # noqa: BLE001 - the database is away: try again soon
                log.warning("queue scan failed", extra={"error": repr(exc)})
            await asyncio.sleep(self.idle_seconds)

    async def _drain_forever(self, firm_id: str) -> None:
        wakeup = self.wakeups.setdefault(firm_id, asyncio.Event())
        while True:
            wakeup.clear()
            try:
                await self.drain(firm_id)
            except Exception as exc:  # noqa: BLE001 - keep the worker alive; the row stays queued
                log.warning("firm worker round failed", extra={"firm_id": firm_id, "error": repr(exc)})
            try:
                await asyncio.wait_for(wakeup.wait(), self.idle_seconds)
            except TimeoutError:
                pass

    async def drain(self, firm_id: str) -> bool:
        """Write the firm's due approvals, in order, if no other writer process is draining it;
        False when another one is."""
        if not await self.locks.claim(firm_id):
            return False
        try:
            while await self.drain_one(firm_id):
                pass
        finally:
            await self.locks.release(firm_id)
        return True

    async def drain_one(self, firm_id: str) -> bool:
        row = await self.pool.fetchrow(
            "SELECT draft_id, call_id, approval, approval_headers, attempts FROM writer.ledger"
            " WHERE firm_id = $1 AND state = 'intent' AND next_attempt_at <= now() AND approval IS NOT NULL"
            " ORDER BY created_at, draft_id LIMIT 1", firm_id)
        if row is None:
            return False
        approved = _decode(bytes(row["approval"]), list(row["approval_headers"]))
        with bound(firm_id=firm_id, call_id=row["call_id"]):
            await self._attempt(approved, row["attempts"])
        return True

    async def _attempt(self, approved: DraftApproved, attempts: int) -> None:
        try:
            await self.write(approved)
        except PermanentFailure as exc:
            await self._bury(approved, str(exc))
        except Exception as exc:  # noqa: BLE001 - presumed transient: the row waits its turn again
            delay = backoff(attempts)
            await self.pool.execute(
                "UPDATE writer.ledger SET next_attempt_at = now() + $3, last_error = $4"
                " WHERE firm_id = $1 AND draft_id = $2 AND state = 'intent'",
                approved.firm_id, approved.draft_id, delay, repr(exc)[:2000])
            metrics.OUTCOMES.labels(SERVICE, "entry", "retry_later").inc()
            log.warning("write failed, will retry", extra={"delay_s": round(delay.total_seconds(), 1),
                                                           "error": repr(exc)})

    async def _bury(self, approved: DraftApproved, reason: str) -> None:
        await self.pool.execute(
            "UPDATE writer.ledger SET state = 'dead', dead_at = now(), last_error = $3"
            " WHERE firm_id = $1 AND draft_id = $2 AND state <> 'written'",
            approved.firm_id, approved.draft_id, reason[:2000])
        encoded = codec.encode(approved)
        await self.publisher.dead_letter(topics.DRAFT_APPROVED, encoded.key, encoded.value,
                                          encoded.headers, f"permanent: {reason}")
