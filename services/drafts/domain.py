"""How a matched call becomes a draft time entry (mission.md step 3), as pure functions:
rounding to 0.1-hour increments, the attorney's local date, exact money, the narrative, and the
review state the attorney sees."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from zoneinfo import ZoneInfo

from calltime.events import CallMatched, DraftCreated

SECONDS_PER_TENTH = 360  # one 0.1-hour (6-minute) increment
CENTS = Decimal("0.01")
TENTH = Decimal("0.1")


class RoundingRule(str, Enum):
    NEAREST = "nearest"  # to the nearest increment, halves up (21:00 -> 0.4 h)
    UP = "up"  # always to the next increment


def billed_hours(seconds: int, rule: RoundingRule) -> Decimal:
    """Hours to bill for a call, in whole 0.1 h increments, never less than one increment."""
    if seconds < 0:
        raise ValueError("a call cannot last a negative number of seconds")
    if rule is RoundingRule.NEAREST:
        tenths = (seconds + SECONDS_PER_TENTH // 2) // SECONDS_PER_TENTH
    else:
        tenths = -(-seconds // SECONDS_PER_TENTH)
    return Decimal(max(1, tenths)) * TENTH


def local_entry_date(started_at: datetime, time_zone: str) -> date:
    """The day the call happened where the attorney works (UTC in, the attorney's zone out)."""
    if started_at.tzinfo is None:
        raise ValueError("call times must be timezone-aware UTC")
    return started_at.astimezone(ZoneInfo(time_zone)).date()


def amount(hours: Decimal, rate: Decimal) -> Decimal:
    return (hours * rate).quantize(CENTS, rounding=ROUND_HALF_UP)


def spoken_minutes(seconds: int) -> int:
    return max(1, (seconds + 30) // 60)


def narrative(template: str, *, subject: str, seconds: int) -> str:
    return template.format(matter=subject, minutes=spoken_minutes(seconds))


class ReviewState(str, Enum):
    READY = "ready"  # one matter: approve as is
    NEEDS_MATTER = "needs_matter"  # attorney picks or assigns the matter
    VERIFY_MATTER_STATUS = "verify_matter_status"  # only closed/pending matters
    UNMATCHED = "unmatched"  # unknown caller: review queue, not billable by default


REVIEW_STATES = {
    "single_matter": ReviewState.READY,
    "multiple_matters": ReviewState.NEEDS_MATTER,
    "client_no_matter": ReviewState.NEEDS_MATTER,
    "inactive_matter_only": ReviewState.VERIFY_MATTER_STATUS,
    "unknown_number": ReviewState.UNMATCHED,
}


@dataclass(frozen=True)
class DraftPolicy:
    """The firm's and the attorney's settings that shape a draft."""

    rounding: RoundingRule
    activity_code: str
    narrative_template: str
    currency: str
    time_zone: str
    rate: Decimal


def should_draft(matched: CallMatched) -> bool:
    """Only answered client-side calls earn a draft; internal, vendor and missed calls do not."""
    call = matched.call
    return (matched.outcome in REVIEW_STATES and call.result == "answered"
            and call.duration_seconds > 0)


def build_draft(matched: CallMatched, policy: DraftPolicy, *, now: datetime) -> DraftCreated:
    call = matched.call
    review = REVIEW_STATES[matched.outcome]
    hours = billed_hours(call.duration_seconds, policy.rounding)
    subject = ((matched.matter.description if matched.matter else None) or matched.client_name
               or call.external_number_e164 or "unknown caller")
    flags = []
    if review is ReviewState.VERIFY_MATTER_STATUS:
        flags.append("verify matter status before approving: no open matter")
    if call.attorney_user_id is None:
        flags.append("no attorney mapped to the phone user")
    if policy.rate <= 0:
        flags.append("no hourly rate known for the attorney")
    return DraftCreated(
        event_id=str(uuid.uuid4()),
        firm_id=matched.firm_id,
        call_id=call.call_id,
        revision=call.revision,
        draft_id=str(uuid.uuid4()),
        attorney_user_id=call.attorney_user_id,
        match_outcome=matched.outcome,
        client_id=matched.client_id,
        client_name=matched.client_name,
        matter=matched.matter,
        candidates=matched.candidates,
        entry_date=local_entry_date(call.started_at, policy.time_zone),
        time_zone=policy.time_zone,
        raw_seconds=call.duration_seconds,
        billed_hours=hours,
        rate=policy.rate.quantize(CENTS),
        amount=amount(hours, policy.rate),
        currency=policy.currency,
        activity_code=policy.activity_code,
        narrative=narrative(policy.narrative_template, subject=subject,
                            seconds=call.duration_seconds),
        billable=review is not ReviewState.UNMATCHED,
        review_state=review.value,
        flags=tuple(flags),
        created_at=now,
    )
