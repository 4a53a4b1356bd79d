"""Per-source rate limiting at the webhook door: a token bucket per (provider, firm, client
address), so one misbehaving sender cannot crowd out every other firm's webhooks. The default
allowance is far above any provider's real delivery rate; a refusal is a 429 with Retry-After."""

from __future__ import annotations

import time
from collections.abc import Callable


class SourceLimiter:
    def __init__(self, rate_per_second: float, burst: float, *, clock: Callable[[], float] = time.monotonic,
                 max_sources: int = 10_000) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self.clock = clock
        self.max_sources = max_sources
        self.buckets: dict[tuple[str, ...], tuple[float, float]] = {}  # source -> (tokens, last)

    def admit(self, source: tuple[str, ...]) -> float:
        """0.0 if the request may proceed, else the seconds until it could."""
        now = self.clock()
        tokens, last = self.buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[source] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self.buckets) >= self.max_sources and source not in self.buckets:
            self.buckets.clear()  # bounded memory under a flood of made-up sources
        self.buckets[source] = (tokens - 1.0, now)
        return 0.0
