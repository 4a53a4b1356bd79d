"""What the billing-writer end-to-end tests share: a private stack on the real broker and database,
onboarding a firm on any of the five billing systems (static token or OAuth), approvals published to
`draft.approved` as the drafts service would, and readers for what came out (the fakes' entries by
draft marker, `entry.written`, the ledger)."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import httpx

from calltime import codec, kafka, onboarding, topics
from calltime.billing.clio import DRAFT_PROPERTY
from calltime.demo.stack import CREDENTIALS_KEY, SIGNING_KEY, LocalStack, digest, stack_credentials
from calltime.demo.watch import read_topic
from calltime.events import DraftApproved, EntryWritten
from calltime.settings import Settings

MARKER = re.compile(r"\[calltime:([^\]]+)\]")
HOUR = Decimal(3600)


def stack_settings(stack: LocalStack) -> Settings:
    """The settings a service of this stack runs with (same broker, database and topic prefix)."""
    return Settings(environment="test", kafka_bootstrap=stack.kafka_bootstrap, database_url=stack.database_url,
                    topic_prefix=stack.topic_prefix, approval_signing_key=SIGNING_KEY,
                    credentials_key=CREDENTIALS_KEY)


def secret_variable(ref: str) -> str:
    return "CALLTIME_SECRET_" + re.sub(r"[^A-Z0-9]", "_", ref.upper())


@dataclass(frozen=True)
class OAuthGrant:
    """What a completed OAuth consent leaves behind, as onboarding stores it."""

    access_token: str
    refresh_token: str | None
    expires_at: float | None
    client_id: str
    client_secret: str
    token_url: str
    client_auth: str = "body"
    api_key: str | None = None


async def onboard(stack: LocalStack, *, firm_id: str, system: str, base_url: str, api_key: str,
                  static_token: str | None = None, oauth: OAuthGrant | None = None,
                  static_api_key: str | None = None) -> None:
    """Create the firm on `system`; its billing token is either a static secret in the services'
    environment (set before the writer starts) or an OAuth grant in the sealed credential store."""
    if (static_token is None) == (oauth is None):
        raise ValueError("give a static token or an OAuth grant")
    ref = f"{system}-{firm_id}"
    if static_token is not None:
        stack.extra_env[secret_variable(ref)] = static_token
    if static_api_key is not None:
        stack.extra_env[secret_variable(f"{ref}-api-key")] = static_api_key
    conn = await asyncpg.connect(stack.database_url)
    try:
        async with conn.transaction():
            await onboarding.create_firm(conn, firm_id=firm_id, name=f"{firm_id} LLP", billing_system=system,
                                         billing_base_url=base_url, billing_credential_ref=ref,
                                         api_key_sha256=digest(api_key))
            if oauth is not None:
                await onboarding.connect_billing_oauth(
                    stack_credentials(conn), conn, firm_id=firm_id, access_token=oauth.access_token,
                    refresh_token=oauth.refresh_token, expires_at=oauth.expires_at, client_id=oauth.client_id,
                    client_secret=oauth.client_secret, token_url=oauth.token_url, client_auth=oauth.client_auth,
                    api_key=oauth.api_key)
    finally:
        await conn.close()


async def stored_billing_tokens(stack: LocalStack, firm_id: str) -> tuple[dict[str, Any], int]:
    """The firm's OAuth tokens as the credential store holds them now, and the row's version."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        credential = await stack_credentials(conn).get(firm_id, onboarding.BILLING_TOKENS)
    finally:
        await conn.close()
    return dict(credential.value), credential.version


def approval(firm_id: str, *, matter_id: str, user_id: str, minutes: int, rate: Decimal,
             started_at: datetime | None = None, narrative: str = "Telephone conference re: lease") -> DraftApproved:
    """An approval as the drafts service publishes it; `minutes` a multiple of 6 (0.1 h steps)."""
    if minutes <= 0 or minutes % 6:
        raise ValueError("billed minutes must be a positive multiple of 6 (the drafts service bills 0.1 h steps)")
    # In the past: adapters that search for an earlier attempt look from the call's start onwards.
    started = started_at or datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
    hours = Decimal(minutes) / 60
    now = datetime.now(timezone.utc)
    return DraftApproved(
        event_id=str(uuid.uuid4()), firm_id=firm_id, call_id=f"ringcentral:e2e-{uuid.uuid4().hex}",
        draft_id=str(uuid.uuid4()), attorney_user_id=user_id, approved_by=user_id, approved_at=now,
        matter_id=matter_id, entry_date=started.date(), raw_seconds=minutes * 60 - 40, billed_hours=hours,
        rate=rate, amount=(hours * rate).quantize(Decimal("0.01")), currency="USD",
        activity_code="Telephone Conference", narrative=narrative, call_started_at=started,
        external_number_e164="+14155550142", edited_fields=())


async def publish(stack: LocalStack, approvals: list[DraftApproved]) -> None:
    """Publish to the stack's `draft.approved` exactly as the drafts service's outbox does."""
    settings = stack_settings(stack)
    await kafka.ensure_topics(settings)
    publisher = kafka.Publisher(settings, "e2e-approvals")
    await publisher.start()
    try:
        for start in range(0, len(approvals), 200):
            batch = []
            for approved in approvals[start:start + 200]:
                encoded = codec.encode(approved)
                batch.append((topics.DRAFT_APPROVED, encoded.key, encoded.value, encoded.headers))
            await publisher.send_batch(batch)
    finally:
        await publisher.stop()


async def entry_written_events(stack: LocalStack) -> list[EntryWritten]:
    return await read_topic(stack.kafka_bootstrap, stack.topic_prefix + topics.ENTRY_WRITTEN,
                            idle_seconds=1.0, max_seconds=60.0)


async def ledger_rows(stack: LocalStack, firm_ids: list[str]) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT * FROM writer.ledger WHERE firm_id = ANY($1::text[])", firm_ids)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


# -- what each fake holds, keyed by the draft it was written for ---------------------------------------------


def marked(text: Any) -> str | None:
    found = MARKER.search(str(text or ""))
    return found.group(1) if found else None


def clio_entries(state, firm: str) -> list[tuple[str | None, dict[str, Any]]]:
    """Clio TimeEntries, each with the draft named by its PhoneCommunication's external property."""
    drafts = {c["id"]: next((p["value"] for p in c["external_properties"] if p["name"] == DRAFT_PROPERTY), None)
              for c in state.communications(firm)}
    return [(drafts.get(a["communication_id"]), a) for a in state.activities(firm) if a["type"] == "TimeEntry"]


def clio_communications_per_draft(state, firm: str) -> Counter[str]:
    return Counter(p["value"] for c in state.communications(firm) for p in c["external_properties"]
                   if p["name"] == DRAFT_PROPERTY)


ENTRY_TEXT = {"mycase": "description", "practicepanther": "private_notes", "timesolv": "Description",
              "smokeball": "description"}


def system_entries(system: str, state, firm: str) -> list[tuple[str | None, dict[str, Any]]]:
    if system == "clio":
        return clio_entries(state, firm)
    return [(marked(e[ENTRY_TEXT[system]]), e) for e in state.entries(firm)]


def entry_id(system: str, entry: dict[str, Any]) -> str:
    return str(entry["Id"] if system == "timesolv" else entry["id"])


def written_terms(system: str, entry: dict[str, Any]) -> tuple[str, str, str, Any, Decimal]:
    """(matter, user, date, quantity in the system's own unit, rate) of a stored entry."""
    if system == "clio":  # quantity in seconds (API 4.0.4 and later)
        return str(entry["matter_id"]), str(entry["user_id"]), entry["date"], entry["quantity"], entry["price"]
    if system == "mycase":  # decimal hours
        return str(entry["case_id"]), str(entry["staff_id"]), entry["entry_date"], entry["hours"], entry["rate"]
    if system == "practicepanther":  # decimal hours
        return entry["matter_id"], entry["user_id"], entry["date"], entry["hours"], entry["rate"]
    if system == "timesolv":  # decimal hours
        return str(entry["ProjectId"]), str(entry["FirmUserId"]), entry["Date"], entry["Hours"], entry["Rate"]
    if system == "smokeball":  # whole minutes
        return entry["matterId"], entry["staffId"], entry["feeDate"], entry["duration"], entry["rate"]
    raise ValueError(system)


def expected_quantity(system: str, billed_hours: Decimal) -> Any:
    """The quantity each system must store for `billed_hours`: a unit mistake is a 60x or 3600x error."""
    seconds = billed_hours * HOUR
    return {"clio": int(seconds), "mycase": billed_hours, "practicepanther": billed_hours,
            "timesolv": billed_hours, "smokeball": int(seconds / 60)}[system]


async def exchange_code(token_url: str, form: dict[str, str], *, basic: tuple[str, str] | None = None) -> dict:
    """The authorization-code exchange onboarding performs after the firm's consent."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(token_url, data=form, auth=basic)
    response.raise_for_status()
    return response.json()


def today_minus(days: int) -> date:
    return (datetime.now(timezone.utc) - timedelta(days=days)).date()


def expired() -> float:
    """An `expires_at` already in the past: the writer must refresh before its first request."""
    return time.time() - 60
