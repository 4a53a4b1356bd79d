"""Watching the real pipeline from outside (demo, tests, benchmarks): read a topic from its
beginning, and wait for a condition with a deadline instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from calltime import codec


async def eventually(probe: Callable[[], Awaitable[Any]], *, timeout: float = 60.0,
                     every: float = 0.2, what: str = "condition") -> Any:
    """Poll until `probe` returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


async def read_topic(bootstrap: str, topic: str, *, idle_seconds: float = 2.0,
                     max_seconds: float = 30.0) -> list[Any]:
    """Every decodable event on `topic` from the beginning, until it stays quiet for a while."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                client_id=f"test-reader-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    events: list[Any] = []
    try:
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=int(idle_seconds * 1000))
            if not batch:
                break
            for records in batch.values():
                events.extend(codec.decode(r.value, list(r.headers or [])) for r in records)
    finally:
        await consumer.stop()
    return events
