"""The review API: the firm's draft list, and the one-click approval behind a signed link."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, HTTPException, Request
from pydantic import BaseModel, Field

from calltime.drafts import approval, store
from calltime.drafts.review import AlreadyApproved, ApprovalEdits, ApprovalRefused, StoredDraft, approve
from calltime.firms import firm_api_key_valid
from calltime.logs import bound

router = APIRouter(tags=["review"])


class Edits(BaseModel):
    matter_id: str | None = Field(default=None, max_length=64)
    billed_hours: str | None = Field(default=None, max_length=8, examples=["0.4"])
    narrative: str | None = Field(default=None, max_length=2000)


def approval_url(request: Request, stored: StoredDraft) -> str:
    settings = request.app.state.runtime.settings
    grant = approval.ApprovalGrant(stored.draft.firm_id, stored.draft.draft_id,
                                   int(time.time()) + settings.approval_link_ttl_seconds)
    token = approval.sign(grant, settings.approval_signing_key.get_secret_value().encode())
    return f"{settings.public_base_url}/approvals/{token}"


def view(stored: StoredDraft) -> dict:
    draft = asdict(stored.draft)
    draft.pop("event_id")
    return {**draft, "state": stored.state, "call_started_at": stored.call_started_at,
            "external_number": stored.external_number}


async def require_review_key(pool, firm_id: str, authorization: str | None) -> None:
    if not await firm_api_key_valid(pool, firm_id, authorization):
        raise HTTPException(401, "a valid review API key for this firm is required")


@router.get("/firms/{firm_id}/drafts")
async def list_drafts(firm_id: str, request: Request,
                      authorization: Annotated[str | None, Header()] = None,
                      state: Literal["pending", "approved"] | None = None,
                      limit: Annotated[int, Field(ge=1, le=1000)] = 200) -> list[dict]:
    pool = request.app.state.runtime.pool
    await require_review_key(pool, firm_id, authorization)
    async with pool.acquire() as conn:
        drafts = await store.list_drafts(conn, firm_id, state, limit)
    return [{**view(d), "approve_url": approval_url(request, d) if d.state == "pending" else None}
            for d in drafts]


def read_grant(request: Request, token: str) -> approval.ApprovalGrant:
    key = request.app.state.runtime.settings.approval_signing_key.get_secret_value().encode()
    try:
        return approval.verify(token, key, now=int(time.time()))
    except approval.InvalidApprovalLink as exc:
        status = 410 if "expired" in str(exc) else 403
        raise HTTPException(status, str(exc)) from exc


@router.get("/approvals/{token}")
async def show_approval(token: str, request: Request) -> dict:
    grant = read_grant(request, token)
    async with request.app.state.runtime.pool.acquire() as conn:
        stored = await store.get(conn, grant.firm_id, grant.draft_id)
    if stored is None:
        raise HTTPException(404, "no such draft")
    return view(stored)


@router.post("/approvals/{token}")
async def approve_draft(token: str, request: Request,
                        edits: Annotated[Edits | None, Body()] = None) -> dict:
    grant = read_grant(request, token)
    asked = ApprovalEdits(**(edits.model_dump() if edits else {}))
    with bound(firm_id=grant.firm_id):
        async with request.app.state.runtime.pool.acquire() as conn, conn.transaction():
            stored = await store.get(conn, grant.firm_id, grant.draft_id, for_update=True)
            if stored is None:
                raise HTTPException(404, "no such draft")
            with bound(call_id=stored.draft.call_id):
                known = await store.known_matters(
                    conn, grant.firm_id,
                    [asked.matter_id, stored.draft.matter.matter_id if stored.draft.matter else None])
                try:
                    approved = approve(stored, asked, firm_matter_ids=known,
                                       now=datetime.now(timezone.utc))
                except AlreadyApproved as exc:
                    raise HTTPException(409, str(exc)) from exc
                except ApprovalRefused as exc:
                    raise HTTPException(422, str(exc)) from exc
                await store.record_approval(conn, approved)
    return {"status": "approved", "draft_id": approved.draft_id, "matter_id": approved.matter_id,
            "billed_hours": str(approved.billed_hours), "amount": str(approved.amount),
            "edited_fields": list(approved.edited_fields)}
