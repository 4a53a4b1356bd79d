"""The drafts service's PostgreSQL adapter: one draft per call, the attorney's data it needs
from the directory, approvals, and the outbox for `draft.created` and `draft.approved`."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import asyncpg

from calltime import outbox
from calltime.drafts.review import StoredDraft
from calltime.events import DraftApproved, DraftCreated, MatterCandidate

SCHEMA = "drafts"


async def attorney(conn: asyncpg.Connection, firm_id: str, user_id: str | None
                   ) -> tuple[Decimal, str | None] | None:
    if user_id is None:
        return None
    row = await conn.fetchrow("SELECT rate, time_zone FROM directory.users"
                              " WHERE firm_id = $1 AND user_id = $2", firm_id, user_id)
    return (row["rate"], row["time_zone"]) if row else None


def _matter_json(matter: MatterCandidate | None) -> str | None:
    return json.dumps(matter.__dict__) if matter else None


async def save(conn: asyncpg.Connection, draft: DraftCreated, *, call_started_at,
               external_number: str | None) -> str | None:
    """Store the draft and queue its event: one draft per call. A later revision of the call
    rebuilds a draft still pending (keeping its id); an approved draft is never touched.
    Returns the draft id the event went out with, or None when nothing changed."""
    draft_id = await conn.fetchval(
        "INSERT INTO drafts.drafts AS d (firm_id, draft_id, call_id, revision, state,"
        " attorney_user_id, match_outcome, client_id, client_name, matter, candidates,"
        " entry_date, time_zone, raw_seconds, billed_hours, rate, amount, currency,"
        " activity_code, narrative, billable, review_state, flags, call_started_at,"
        " external_number, created_at)"
        " VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
        " $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)"
        " ON CONFLICT (firm_id, call_id) DO UPDATE SET revision = EXCLUDED.revision,"
        " attorney_user_id = EXCLUDED.attorney_user_id, match_outcome = EXCLUDED.match_outcome,"
        " client_id = EXCLUDED.client_id, client_name = EXCLUDED.client_name,"
        " matter = EXCLUDED.matter, candidates = EXCLUDED.candidates,"
        " entry_date = EXCLUDED.entry_date, time_zone = EXCLUDED.time_zone,"
        " raw_seconds = EXCLUDED.raw_seconds, billed_hours = EXCLUDED.billed_hours,"
        " rate = EXCLUDED.rate, amount = EXCLUDED.amount, narrative = EXCLUDED.narrative,"
        " billable = EXCLUDED.billable, review_state = EXCLUDED.review_state,"
        " flags = EXCLUDED.flags, call_started_at = EXCLUDED.call_started_at,"
        " external_number = EXCLUDED.external_number"
        " WHERE d.state = 'pending' AND d.revision < EXCLUDED.revision"
        " RETURNING draft_id::text",
        draft.firm_id, draft.draft_id, draft.call_id, draft.revision, draft.attorney_user_id,
        draft.match_outcome, draft.client_id, draft.client_name, _matter_json(draft.matter),
        json.dumps([m.__dict__ for m in draft.candidates]), draft.entry_date, draft.time_zone,
        draft.raw_seconds, draft.billed_hours, draft.rate, draft.amount, draft.currency,
        draft.activity_code, draft.narrative, draft.billable, draft.review_state,
        list(draft.flags), call_started_at, external_number, draft.created_at)
    if draft_id is None:
        return None
    await outbox.enqueue(conn, SCHEMA, dataclasses.replace(draft, draft_id=draft_id))
    return draft_id


DRAFT_COLUMNS = (
    "firm_id, draft_id::text, call_id, revision, state, attorney_user_id, match_outcome,"
    " client_id, client_name, matter, candidates, entry_date, time_zone, raw_seconds,"
    " billed_hours, rate, amount, currency, activity_code, narrative, billable, review_state,"
    " flags, call_started_at, external_number, created_at")


def _stored(row: asyncpg.Record) -> StoredDraft:
    matter = json.loads(row["matter"]) if row["matter"] else None
    draft = DraftCreated(
        event_id="", firm_id=row["firm_id"], call_id=row["call_id"], revision=row["revision"],
        draft_id=row["draft_id"], attorney_user_id=row["attorney_user_id"],
        match_outcome=row["match_outcome"], client_id=row["client_id"],
        client_name=row["client_name"], matter=MatterCandidate(**matter) if matter else None,
        candidates=tuple(MatterCandidate(**m) for m in json.loads(row["candidates"])),
        entry_date=row["entry_date"], time_zone=row["time_zone"],
        raw_seconds=row["raw_seconds"], billed_hours=row["billed_hours"], rate=row["rate"],
        amount=row["amount"], currency=row["currency"], activity_code=row["activity_code"],
        narrative=row["narrative"], billable=row["billable"], review_state=row["review_state"],
        flags=tuple(row["flags"]), created_at=row["created_at"])
    return StoredDraft(draft, row["state"], row["call_started_at"], row["external_number"])


async def get(conn: asyncpg.Connection, firm_id: str, draft_id: str, *,
              for_update: bool = False) -> StoredDraft | None:
    row = await conn.fetchrow(
        f"SELECT {DRAFT_COLUMNS} FROM drafts.drafts WHERE firm_id = $1 AND draft_id::text = $2"
        + (" FOR UPDATE" if for_update else ""), firm_id, draft_id)
    return _stored(row) if row else None


async def list_drafts(conn: asyncpg.Connection, firm_id: str, state: str | None,
                      limit: int) -> list[StoredDraft]:
    rows = await conn.fetch(
        f"SELECT {DRAFT_COLUMNS} FROM drafts.drafts WHERE firm_id = $1"
        " AND ($2::text IS NULL OR state = $2) ORDER BY created_at LIMIT $3",
        firm_id, state, limit)
    return [_stored(row) for row in rows]


async def known_matters(conn: asyncpg.Connection, firm_id: str,
                        matter_ids: list[str | None]) -> set[str]:
    """Which of these matter ids exist in the firm's directory."""
    rows = await conn.fetch("SELECT matter_id FROM directory.matters"
                            " WHERE firm_id = $1 AND matter_id = ANY($2::text[])",
                            firm_id, [m for m in matter_ids if m])
    return {row["matter_id"] for row in rows}


async def record_approval(conn: asyncpg.Connection, approval: DraftApproved) -> None:
    await conn.execute(
        "UPDATE drafts.drafts SET state = 'approved', approved_at = $3, approved_by = $4,"
        " approved_matter_id = $5, edited_fields = $6 WHERE firm_id = $1 AND draft_id::text = $2",
        approval.firm_id, approval.draft_id, approval.approved_at, approval.approved_by,
        approval.matter_id, list(approval.edited_fields))
    await outbox.enqueue(conn, SCHEMA, approval)
