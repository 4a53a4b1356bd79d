"""A call as the firm user lived it, independent of any provider. Every provider simulator turns
one `SimulatedCall` into that provider's webhooks and call-log records, so a test, the demo or a
benchmark can place the same call through any phone system and know what calltime must see."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

DIRECTIONS = ("inbound", "outbound")
OUTCOMES = ("answered", "missed", "voicemail", "rejected")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class SimulatedCall:
    """`talk_seconds` + `hold_seconds` is the connected time a billing clerk would see (hold in
    the middle of the talk). A call not answered rings `ring_seconds`; for `voicemail` the caller
    then records for `talk_seconds` (not connected time). `call_key` seeds every provider id."""

    call_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    user_id: str = "u-101"  # the provider's id of the firm user (user / extension / target)
    user_number: str = "+14155550100"  # the firm user's direct number
    extension_number: str = "101"
    external_number: str = "+12125550123"  # the other side, E.164
    direction: str = "inbound"
    started_at: datetime = field(default_factory=_now)  # UTC, whole seconds
    ring_seconds: int = 6
    talk_seconds: int = 120
    hold_seconds: int = 0
    outcome: str = "answered"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {self.direction!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if min(self.ring_seconds, self.talk_seconds, self.hold_seconds) < 0:
            raise ValueError("ring, talk and hold seconds cannot be negative")
        if self.started_at.tzinfo is None:
            raise ValueError("started_at must be timezone-aware")

    @property
    def answered(self) -> bool:
        return self.outcome == "answered"

    @property
    def answered_at(self) -> datetime | None:
        return self.started_at + timedelta(seconds=self.ring_seconds) if self.answered else None

    @property
    def connected_seconds(self) -> int:
        """What calltime must report as `duration_seconds`."""
        return self.talk_seconds + self.hold_seconds if self.answered else 0

    @property
    def ended_at(self) -> datetime:
        after_ring = self.started_at + timedelta(seconds=self.ring_seconds)
        if self.answered:
            return after_ring + timedelta(seconds=self.connected_seconds)
        if self.outcome == "voicemail":
            return after_ring + timedelta(seconds=self.talk_seconds)
        return after_ring
