"""The attorney's review, as pure functions: what an approval may change, and the approval
event it produces. No entry reaches the billing system without passing through here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from calltime.drafts.domain import TENTH, amount
from calltime.events import DraftApproved, DraftCreated


class ApprovalRefused(ValueError):
    """The approval cannot be recorded as asked; the message tells the attorney why."""


class AlreadyApproved(ApprovalRefused):
    pass


@dataclass(frozen=True)
class StoredDraft:
    draft: DraftCreated
    state: str  # pending | approved
    call_started_at: datetime
    external_number: str | None


@dataclass(frozen=True)
class ApprovalEdits:
    """What the attorney may change in the edit view; None keeps the draft's value."""

    matter_id: str | None = None
    billed_hours: str | None = None
    narrative: str | None = None


def parse_hours(text: str) -> Decimal:
    try:
        hours = Decimal(text)
    except InvalidOperation as exc:
        raise ApprovalRefused(f"billed_hours {text!r} is not a number") from exc
    # bounds first: the remainder of a huge Decimal is itself an arithmetic error
    if not hours.is_finite() or hours <= 0 or hours > 24 or hours % TENTH != 0:
        raise ApprovalRefused("billed_hours must be a positive multiple of 0.1, at most 24")
    return hours.quantize(TENTH)


def approve(stored: StoredDraft, edits: ApprovalEdits, *, firm_matter_ids: set[str],
            now: datetime) -> DraftApproved:
    draft = stored.draft
    if stored.state == "approved":
        raise AlreadyApproved("this draft has already been approved")
    if draft.attorney_user_id is None:
        raise ApprovalRefused("the call has no attorney; assign the phone user first")
    if draft.rate <= 0:
        raise ApprovalRefused("no hourly rate is known for the attorney; set it in the billing "
                              "system and sync the directory first")
    # an empty edit is a cleared field, not "keep the draft's value" (that is None)
    for name in ("matter_id", "billed_hours"):
        if getattr(edits, name) == "":
            raise ApprovalRefused(f"{name} cannot be empty; leave it out to keep the draft's")
    matter_id = edits.matter_id or (draft.matter.matter_id if draft.matter else None)
    if matter_id is None:
        raise ApprovalRefused("choose a matter for this entry (matter_id)")
    if matter_id not in firm_matter_ids:
        raise ApprovalRefused(f"matter {matter_id!r} is not one of this firm's matters")
    hours = parse_hours(edits.billed_hours) if edits.billed_hours is not None else draft.billed_hours
    narrative = (draft.narrative if edits.narrative is None else edits.narrative).strip()
    if not narrative:
        raise ApprovalRefused("the narrative cannot be empty")
    edited = tuple(name for name, changed in (
        ("matter_id", draft.matter is None or matter_id != draft.matter.matter_id),
        ("billed_hours", hours != draft.billed_hours),
        ("narrative", narrative != draft.narrative)) if changed)
    return DraftApproved(
        event_id=str(uuid.uuid4()), firm_id=draft.firm_id, call_id=draft.call_id,
        draft_id=draft.draft_id, attorney_user_id=draft.attorney_user_id,
        approved_by=draft.attorney_user_id, approved_at=now, matter_id=matter_id,
        entry_date=draft.entry_date, raw_seconds=draft.raw_seconds, billed_hours=hours,
        rate=draft.rate, amount=amount(hours, draft.rate), currency=draft.currency,
        activity_code=draft.activity_code, narrative=narrative,
        call_started_at=stored.call_started_at, external_number_e164=stored.external_number,
        edited_fields=edited)
