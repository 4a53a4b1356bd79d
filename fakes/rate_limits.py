"""Per-key request windows, the way the providers and billing systems count requests: every
fake that enforces a rate limit keeps one of these per state."""

from __future__ import annotations

import math
from collections import deque


class SlidingWindow:
    """Requests per key (an access token, an API key) within the last `window` seconds, the way
    the providers count them. Not locked: callers hold their state's lock."""

    def __init__(self) -> None:
        self._sent: dict[str, deque[float]] = {}

    def take(self, key: str, now: float, limit: int | None, window: float) -> float | None:
        """None: the request is admitted (and counted). Else it is refused, not counted, and the
        answer is how long until the oldest request in the window leaves it."""
        if limit is None:
            return None
        sent = self._sent.setdefault(key, deque())
        while sent and sent[0] <= now - window:
            sent.popleft()
        if len(sent) >= limit:
            return (sent[0] if sent else now) + window - now
        sent.append(now)
        return None


def retry_after(wait: float) -> str:
    """The `Retry-After` for a wait: whole seconds, rounded up, at least one."""
    return str(max(1, math.ceil(wait)))
