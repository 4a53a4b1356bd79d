"""The per-source limiter at the webhook door."""

from __future__ import annotations

from calltime.ingest.door import SourceLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_source_gets_its_burst_then_waits_for_tokens():
    clock = Clock()
    door = SourceLimiter(rate_per_second=10, burst=3, clock=clock)
    source = ("zoom", "acme", "10.0.0.1")
    assert [door.admit(source) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = door.admit(source)
    assert 0.09 < wait <= 0.1
    clock.now += 0.11
    assert door.admit(source) == 0.0


def test_one_source_exhausted_does_not_slow_another():
    door = SourceLimiter(rate_per_second=1, burst=1, clock=Clock())
    assert door.admit(("zoom", "acme", "a")) == 0.0
    assert door.admit(("zoom", "acme", "a")) > 0
    assert door.admit(("zoom", "other-firm", "a")) == 0.0
    assert door.admit(("dialpad", "acme", "a")) == 0.0


def test_memory_stays_bounded_under_made_up_sources():
    door = SourceLimiter(rate_per_second=1, burst=1, clock=Clock(), max_sources=50)
    for i in range(1000):
        door.admit(("zoom", f"firm-{i}", "a"))
    assert len(door.buckets) <= 50
