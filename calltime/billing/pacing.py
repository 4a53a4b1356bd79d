"""Client-side pacing per access token: never send a request known to be over the allowance.

Two sources of knowledge, both used when present:
- the server's own count (`X-RateLimit-Remaining` / `X-RateLimit-Reset`, as Clio sends), and
- the documented allowance (`limit` requests per `window` seconds: MyCase 25/s, Smokeball 5/s),
  kept as a sliding window of our own requests. The server counts a request when it admits it,
  somewhere between our send and its answer, so a request whose answer we saw (`observe`) holds
  its slot until answer + window: counting from the send time let the next request in a few
  milliseconds too early whenever that one reached the server faster (MyCase 429s, issue 4).
Share one gate between every client that uses the same token; each firm has its own gate, so one
firm's backlog never waits on another firm's allowance.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

log = logging.getLogger(__name__)


class RateGate:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        *,
        reset_margin: float = 0.5,
        limit: int | None = None,
        window_seconds: float = 60.0,
        remaining_header: str = "X-RateLimit-Remaining",
        reset_header: str = "X-RateLimit-Reset",
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        # The server's reset stamp comes from its clock, not ours; a little slack avoids landing just before it.
        self._margin = reset_margin
        self._remaining: int | None = None
        self._reset_at: float | None = None
        self._limit = limit
        self._window = window_seconds
        # Requests not yet answered, by send time, and the answer times of the others (see observe).
        self._in_flight: collections.deque[float] = collections.deque()
        self._answered: list[float] = []
        self._remaining_header = remaining_header
        self._reset_header = reset_header
        self._lock = asyncio.Lock()

    async def before_request(self) -> None:
        async with self._lock:
            if self._remaining is not None and self._remaining <= 0 and self._reset_at is not None:
                wait = self._reset_at + self._margin - self._clock()
                if wait > 0:
                    log.info("rate limit reached; waiting %.1fs for the window to reset", wait)
                    await self._sleep(wait)
                self.forget()
            await self._respect_allowance()
            if self._remaining is not None:
                # Count our own request so concurrent callers do not all spend the last slot.
                self._remaining -= 1

    async def _respect_allowance(self) -> None:
        if self._limit is None:
            return
        # Checked again after a sleep, which can end a hair before the clock says it should; a few
        # rounds at most, so a clock that does not move with the sleep cannot hold us here for ever.
        for _ in range(3):
            horizon = self._clock() - self._window
            # A request never answered (a transport error, or a client that does not observe) frees
            # its slot a window after it was sent, as a send-time window would.
            while self._in_flight and self._in_flight[0] <= horizon:
                self._in_flight.popleft()
            self._answered = [t for t in self._answered if t > horizon]
            if len(self._in_flight) + len(self._answered) < self._limit:
                break
            await self._sleep(max(min(self._answered + list(self._in_flight)) - horizon, 0.001))
        self._in_flight.append(self._clock())

    def observe(self, headers: httpx.Headers) -> None:
        if self._limit is not None and self._in_flight:
            # Which request this answer belongs to does not matter: each answer turns one send time
            # into one answer time, so the set of slot times is the same as if we knew.
            self._in_flight.popleft()
            self._answered.append(self._clock())
        try:
            remaining = int(headers[self._remaining_header])
            reset_at = float(headers[self._reset_header])
        except (KeyError, ValueError):
            return
        self._remaining = remaining
        self._reset_at = reset_at

    def forget(self) -> None:
        self._remaining = None
        self._reset_at = None
