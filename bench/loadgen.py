"""An open-loop HTTP/1.1 load generator on raw asyncio streams (keep-alive connections).

Requests are *scheduled* at a fixed rate and each latency is measured from its scheduled send
time, not from when a free connection picked it up, so a slow server cannot hide its queueing
(no coordinated omission). Lean enough to drive hundreds of requests per second from one core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    late_starts: int = 0  # requests that could not be sent on schedule (generator saturated)
    wall_seconds: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _request_bytes(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def run(url: str, requests: Sequence[tuple[str, dict[str, str], bytes]], rate: float,
              connections: int = 64) -> Outcome:
    """POST each (path, headers, body) at `rate` per second; returns the latencies."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    queue: asyncio.Queue = asyncio.Queue()
    outcome = Outcome()
    start = time.perf_counter() + 0.2

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                scheduled, raw = item
                try:
                    writer.write(raw)
                    status = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    outcome.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                outcome.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
                outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    raws = [_request_bytes(f"{host}:{port}", path, headers, body) for path, headers, body in requests]
    interval = 1.0 / rate
    for i, raw in enumerate(raws):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            outcome.late_starts += 1
        queue.put_nowait((scheduled, raw))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    outcome.wall_seconds = time.perf_counter() - start
    return outcome
