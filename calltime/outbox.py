"""Transactional outbox: an event is stored in the same PostgreSQL transaction as the state change
that caused it, and a relay publishes it to Kafka afterwards. A request can therefore be answered
as soon as it is durable, and nothing is lost while Kafka is briefly away.

The relay is at-least-once (a crash between send and mark re-sends); every consumer is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from calltime import codec, metrics
from calltime.kafka import Publisher

log = logging.getLogger(__name__)
BATCH = 500


async def enqueue(conn: asyncpg.Connection, schema: str, event: Any) -> None:
    encoded = codec.encode(event)
    await conn.execute(
        f"INSERT INTO {schema}.outbox (topic, key, value, header_names, header_values)"
        " VALUES ($1, $2, $3, $4, $5)",
        codec.EVENT_TOPICS[type(event)], encoded.key, encoded.value,
        [name for name, _ in encoded.headers], [raw for _, raw in encoded.headers],
    )
    await conn.execute(f"SELECT pg_notify('{schema}_outbox', '')")


class OutboxRelay:
    """Moves rows from `<schema>.outbox` to Kafka, in id order, waking on NOTIFY or a short poll."""

    def __init__(self, pool: asyncpg.Pool, publisher: Publisher, schema: str,
                 poll_seconds: float) -> None:
        self.pool = pool
        self.publisher = publisher
        self.schema = schema
        self.poll_seconds = poll_seconds
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.listener: asyncpg.Connection | None = None

    async def start(self) -> None:
        self.listener = await self.pool.acquire()
        await self.listener.add_listener(f"{self.schema}_outbox", self._on_notify)
        self.task = asyncio.create_task(self.run(), name=f"{self.schema}-outbox-relay")

    async def __aenter__(self) -> "OutboxRelay":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.listener:
            await self.listener.remove_listener(f"{self.schema}_outbox", self._on_notify)
            await self.pool.release(self.listener)

    def _on_notify(self, *_: Any) -> None:
        self.wake.set()

    async def run(self) -> None:
        while True:
            try:
                moved = await self.relay_batch()
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
                log.warning("outbox relay paused", extra={"error": repr(exc)})
                moved = 0
            except Exception as exc:  # noqa: BLE001 - Kafka errors: keep the rows, try again
                log.warning("outbox relay could not publish", extra={"error": repr(exc)})
                moved = 0
            if moved < BATCH:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), self.poll_seconds)
                except asyncio.TimeoutError:
                    pass

    async def relay_batch(self) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT id, topic, key, value, header_names, header_values FROM {self.schema}.outbox"
                " WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED", BATCH)
            await self.publisher.send_batch(
                (row["topic"], row["key"], row["value"],
                 list(zip(row["header_names"], row["header_values"], strict=True))) for row in rows)
            if rows:
                await conn.execute(
                    f"UPDATE {self.schema}.outbox SET published_at = clock_timestamp()"
                    " WHERE id = ANY($1::bigint[])", [row["id"] for row in rows])
            backlog = await conn.fetchval(
                f"SELECT count(*) FROM {self.schema}.outbox WHERE published_at IS NULL")
            metrics.OUTBOX_BACKLOG.labels(self.publisher.service).set(backlog - len(rows))
            return len(rows)
