"""Ingest's PostgreSQL adapter: firms' provider accounts, the notice inbox, the set of calls
already announced, records still to fetch, and the outbox that carries `call.ended` to Kafka."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from calltime import outbox
from calltime.credentials import CredentialStore, MissingCredential, webhook_credential
from calltime.events import CallEnded
from calltime.ingest.providers.model import Account, Notice

SCHEMA = "ingest"
ACCOUNT_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class AccountRecord:
    account: Account
    api_base_url: str | None
    reconcile: bool


async def load_account(credentials: CredentialStore, firm_id: str, provider: str
                       ) -> AccountRecord | None:
    """The firm's account with `provider`, its webhook secret opened; None if it has none."""
    pool = credentials.pool
    row = await pool.fetchrow(
        "SELECT a.account_id, a.api_base_url, a.reconcile, f.phone_region"
        " FROM ingest.provider_accounts a JOIN core.firms f USING (firm_id)"
        " WHERE a.firm_id = $1 AND a.provider = $2", firm_id, provider)
    if row is None:
        return None
    try:
        secret = (await credentials.get(firm_id, webhook_credential(provider))).value["secret"]
    except MissingCredential:
        secret = ""  # every authentic request is then refused: never a silent accept
    users = await pool.fetch(
        "SELECT provider_user_id, attorney_user_id FROM ingest.phone_users"
        " WHERE firm_id = $1 AND provider = $2", firm_id, provider)
    account = Account(firm_id=firm_id, provider=provider, account_id=row["account_id"],
                      webhook_secret=secret, phone_region=row["phone_region"],
                      attorneys_by_user={u["provider_user_id"]: u["attorney_user_id"] for u in users})
    return AccountRecord(account, row["api_base_url"], row["reconcile"])


class AccountCache:
    """Provider accounts by (firm, provider), secrets opened: read on every webhook, changed rarely."""

    def __init__(self, credentials) -> None:
        self.credentials = credentials
        self.entries: dict[tuple[str, str], tuple[float, AccountRecord]] = {}

    async def get(self, firm_id: str, provider: str) -> AccountRecord | None:
        key = (firm_id, provider)
        cached = self.entries.get(key)
        if cached and time.monotonic() - cached[0] < ACCOUNT_CACHE_SECONDS:
            return cached[1]
        record = await load_account(self.credentials, firm_id, provider)
        if record is not None:  # made-up firm ids must not grow the cache
            self.entries[key] = (time.monotonic(), record)
        return record


async def accounts_to_reconcile(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT firm_id, provider FROM ingest.provider_accounts"
                            " WHERE reconcile AND api_base_url IS NOT NULL ORDER BY firm_id, provider")
    return [(r["firm_id"], r["provider"]) for r in rows]


async def lock_call(conn: asyncpg.Connection, firm_id: str, provider: str, provider_call_id: str) -> None:
    """Serialise the notices of one call, so the one that completes it sees all the others."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"{firm_id}/{provider}/{provider_call_id}")


async def record_notice(conn: asyncpg.Connection, firm_id: str, provider: str, notice: Notice) -> bool:
    """Store one notice; False when this exact event was stored before."""
    status = await conn.execute(
        "INSERT INTO ingest.notices (firm_id, provider, dedupe_key, provider_call_id, body)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        firm_id, provider, notice.dedupe_key, notice.provider_call_id, notice.body)
    return status.endswith(" 1")


async def call_bodies(conn: asyncpg.Connection, firm_id: str, provider: str,
                      provider_call_id: str) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT body FROM ingest.notices WHERE firm_id = $1 AND provider = $2"
        " AND provider_call_id = $3 ORDER BY received_at, dedupe_key", firm_id, provider, provider_call_id)
    return [bytes(row["body"]) for row in rows]


async def announce_call(conn: asyncpg.Connection, event: CallEnded, fingerprint: str) -> int | None:
    """Record the call and queue its event. A re-delivery that changes nothing announces
    nothing; a late notice that changes the call announces the next revision. Returns the
    revision announced, or None."""
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


async def announce_if_missing(conn: asyncpg.Connection, event: CallEnded, fingerprint: str) -> bool:
    """Reconciliation's announce: only a call never announced before is published."""
    inserted = await conn.fetchval(
        "INSERT INTO ingest.calls (firm_id, call_id, revision, fingerprint, received_at)"
        " VALUES ($1, $2, 1, $3, $4) ON CONFLICT (firm_id, call_id) DO NOTHING RETURNING revision",
        event.firm_id, event.call_id, fingerprint, event.received_at)
    if inserted is None:
        return False
    await outbox.enqueue(conn, SCHEMA, event)
    return True


async def schedule_fetch(conn: asyncpg.Connection, firm_id: str, provider: str, record_id: str) -> None:
    await conn.execute(
        "INSERT INTO ingest.record_fetches (firm_id, provider, record_id) VALUES ($1, $2, $3)"
        " ON CONFLICT (firm_id, provider, record_id) DO UPDATE SET due_at = now()",
        firm_id, provider, record_id)


@dataclass(frozen=True)
class DueFetch:
    firm_id: str
    provider: str
    record_id: str
    attempts: int


async def claim_due_fetches(conn: asyncpg.Connection, limit: int, lease_seconds: float = 60.0
                            ) -> Sequence[DueFetch]:
    """Due fetches, leased to the caller by pushing their due time back: no row lock is held
    while the record is fetched (a webhook scheduling the same fetch must never wait on it),
    and a worker that dies mid-fetch leaves them due again when the lease runs out."""
    rows = await conn.fetch(
        "UPDATE ingest.record_fetches SET due_at = now() + make_interval(secs => $2)"
        " WHERE (firm_id, provider, record_id) IN (SELECT firm_id, provider, record_id"
        " FROM ingest.record_fetches WHERE due_at <= now() ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING firm_id, provider, record_id, attempts", limit, lease_seconds)
    return [DueFetch(**dict(r)) for r in rows]


async def fetch_done(conn: asyncpg.Connection, due: DueFetch) -> None:
    await conn.execute("DELETE FROM ingest.record_fetches WHERE firm_id = $1 AND provider = $2"
                       " AND record_id = $3", due.firm_id, due.provider, due.record_id)


async def fetch_failed(conn: asyncpg.Connection, due: DueFetch, error: str, retry_at: datetime) -> None:
    await conn.execute(
        "UPDATE ingest.record_fetches SET attempts = attempts + 1, last_error = $4, due_at = $5"
        " WHERE firm_id = $1 AND provider = $2 AND record_id = $3",
        due.firm_id, due.provider, due.record_id, error[:500], retry_at)


async def announced(conn: asyncpg.Connection, firm_id: str, call_id: str) -> bool:
    return await conn.fetchval("SELECT true FROM ingest.calls WHERE firm_id = $1 AND call_id = $2",
                               firm_id, call_id) is not None


async def schedule_settle(conn: asyncpg.Connection, firm_id: str, provider: str, provider_call_id: str,
                          after_seconds: float) -> None:
    """(Re)start the call's quiet period: each straggler pushes the announcement back a little."""
    await conn.execute(
        "INSERT INTO ingest.settles (firm_id, provider, provider_call_id, due_at)"
        " VALUES ($1, $2, $3, now() + make_interval(secs => $4))"
        " ON CONFLICT (firm_id, provider, provider_call_id) DO UPDATE SET due_at = EXCLUDED.due_at",
        firm_id, provider, provider_call_id, after_seconds)


async def claim_due_settles(conn: asyncpg.Connection, limit: int) -> list[tuple[str, str, str]]:
    rows = await conn.fetch(
        "DELETE FROM ingest.settles WHERE (firm_id, provider, provider_call_id) IN ("
        " SELECT firm_id, provider, provider_call_id FROM ingest.settles WHERE due_at <= now()"
        " ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING firm_id, provider, provider_call_id", limit)
    return [(r["firm_id"], r["provider"], r["provider_call_id"]) for r in rows]
