"""The five events of the pipeline, as typed values.

These dataclasses are the in-process face of the Avro contract in `schemas/`; `calltime.codec`
turns them into bytes and back. Times are timezone-aware UTC datetimes, money and hours are
Decimals, durations are integer seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal


@dataclass(frozen=True)
class CallEnded:
    """A finished call as one provider reported it, in canonical form (`call.ended`)."""

    event_id: str
    firm_id: str
    call_id: str
    revision: int
    provider: str
    provider_call_id: str
    direction: str  # inbound | outbound | internal
    external_number_e164: str | None
    external_number_raw: str | None
    internal_number: str | None
    provider_user_id: str | None
    attorney_user_id: str | None
    started_at: datetime
    ended_at: datetime
    duration_seconds: int
    result: str  # answered | missed | voicemail | rejected | unknown
    received_at: datetime


@dataclass(frozen=True)
class MatterCandidate:
    matter_id: str
    display_number: str
    description: str
    status: str  # open | pending | closed


@dataclass(frozen=True)
class CallMatched:
    """What the firm's directory says about the caller (`call.matched`)."""

    event_id: str
    firm_id: str
    call: CallEnded
    outcome: str  # see calltime.matcher.domain.MatchOutcome
    client_id: str | None
    client_name: str | None
    matter: MatterCandidate | None
    candidates: tuple[MatterCandidate, ...]
    matched_at: datetime


@dataclass(frozen=True)
class DraftCreated:
    """A draft time entry waiting for the attorney (`draft.created`)."""

    event_id: str
    firm_id: str
    call_id: str
    revision: int
    draft_id: str
    attorney_user_id: str | None
    match_outcome: str
    client_id: str | None
    client_name: str | None
    matter: MatterCandidate | None
    candidates: tuple[MatterCandidate, ...]
    entry_date: date
    time_zone: str
    raw_seconds: int
    billed_hours: Decimal
    rate: Decimal
    amount: Decimal
    currency: str
    activity_code: str
    narrative: str
    billable: bool
    review_state: str
    flags: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class DraftApproved:
    """An attorney's approval, with whatever they changed (`draft.approved`)."""

    event_id: str
    firm_id: str
    call_id: str
    draft_id: str
    attorney_user_id: str
    approved_by: str
    approved_at: datetime
    matter_id: str
    entry_date: date
    raw_seconds: int
    billed_hours: Decimal
    rate: Decimal
    amount: Decimal
    currency: str
    activity_code: str
    narrative: str
    call_started_at: datetime
    external_number_e164: str | None
    edited_fields: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class EntryWritten:
    """The one entry the billing system now holds for an approved draft (`entry.written`)."""

    event_id: str
    firm_id: str
    call_id: str
    draft_id: str
    billing_system: str
    entry_id: str
    communication_id: str | None
    matter_id: str
    user_id: str
    entry_date: date
    billed_seconds: int
    billed_hours: Decimal
    rate: Decimal
    amount: Decimal
    currency: str
    written_at: datetime
