"""Ingest's PostgreSQL adapter: firms' provider accounts, the raw notification inbox, the set
of calls already announced, and the outbox that carries `call.ended` to Kafka."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import asyncpg

from calltime import outbox
from calltime.events import CallEnded

SCHEMA = "ingest"


@dataclass(frozen=True)
class ProviderAccount:
    firm_id: str
    provider: str
    account_id: str
    verification_token_sha256: bytes
    phone_region: str
    attorneys_by_user: dict[str, str]  # provider user id -> billing user id


async def load_account(conn: asyncpg.Connection, firm_id: str, provider: str
                       ) -> ProviderAccount | None:
    row = await conn.fetchrow(
        "SELECT a.account_id, a.verification_token_sha256, f.phone_region"
        " FROM ingest.provider_accounts a JOIN core.firms f USING (firm_id)"
        " WHERE a.firm_id = $1 AND a.provider = $2", firm_id, provider)
    if row is None:
        return None
    users = await conn.fetch(
        "SELECT provider_user_id, attorney_user_id FROM ingest.phone_users"
        " WHERE firm_id = $1 AND provider = $2", firm_id, provider)
    return ProviderAccount(firm_id, provider, row["account_id"],
                           bytes(row["verification_token_sha256"]), row["phone_region"],
                           {u["provider_user_id"]: u["attorney_user_id"] for u in users})


async def lock_session(conn: asyncpg.Connection, firm_id: str, session_id: str) -> None:
    """Serialise notifications of one call, so the one that completes it sees all the others."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"{firm_id}/{session_id}")


async def record_ringcentral_notification(conn: asyncpg.Connection, firm_id: str, uuid: str,
                                          session_id: str, sequence: int, body: bytes) -> bool:
    """Store one notification; False when this exact delivery was seen before."""
    status = await conn.execute(
        "INSERT INTO ingest.ringcentral_notifications"
        " (firm_id, notification_uuid, telephony_session_id, sequence, body)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        firm_id, uuid, session_id, sequence, body)
    return status.endswith(" 1")


async def ringcentral_session_bodies(conn: asyncpg.Connection, firm_id: str,
                                     session_id: str) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT body FROM ingest.ringcentral_notifications"
        " WHERE firm_id = $1 AND telephony_session_id = $2 ORDER BY sequence", firm_id, session_id)
    return [bytes(row["body"]) for row in rows]


async def announce_call(conn: asyncpg.Connection, event: CallEnded, fingerprint: str) -> int | None:
    """Record the call and queue its event. A re-delivery that changes nothing announces
    nothing; a late notification that changes the call announces the next revision. Returns
    the revision announced, or None."""
    revision = await conn.fetchval(
        "INSERT INTO ingest.calls AS c (firm_id, call_id, revision, fingerprint, received_at)"
        " VALUES ($1, $2, 1, $3, $4) ON CONFLICT (firm_id, call_id) DO UPDATE"
        " SET revision = c.revision + 1, fingerprint = EXCLUDED.fingerprint"
        " WHERE c.fingerprint <> EXCLUDED.fingerprint RETURNING revision",
        event.firm_id, event.call_id, fingerprint, event.received_at)
    if revision is None:
        return None
    await outbox.enqueue(conn, SCHEMA, dataclasses.replace(event, revision=revision))
    return revision
