"""The write ledger (writer.ledger), keyed by draft: intent is recorded before every write and
the billing system's ids after, so a restarted writer knows whether to look before it writes."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from calltime.billing.model import WrittenEntry


@dataclass(frozen=True)
class LedgerRow:
    state: str  # intent (queued; with entry_id: recorded, not yet announced) | written | dead
    attempted: bool
    attempts: int
    entry_id: str | None
    communication_id: str | None
    written_at: object | None


def _lock_key(firm_id: str, draft_id: str) -> str:
    return f"writer/{firm_id}/{draft_id}"


async def try_lock(conn: asyncpg.Connection, firm_id: str, draft_id: str) -> bool:
    """One writer per draft at a time, across processes, for the whole write."""
    return await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                               _lock_key(firm_id, draft_id))


async def unlock(conn: asyncpg.Connection, firm_id: str, draft_id: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                       _lock_key(firm_id, draft_id))


async def begin(conn: asyncpg.Connection, firm_id: str, draft_id: str, call_id: str,
                billing_system: str) -> LedgerRow:
    await conn.execute(
        "INSERT INTO writer.ledger (firm_id, draft_id, call_id, billing_system, state)"
        " VALUES ($1, $2, $3, $4, 'intent') ON CONFLICT DO NOTHING",
        firm_id, draft_id, call_id, billing_system)
    row = await conn.fetchrow(
        "SELECT state, entry_attempted, attempts, entry_id, communication_id, written_at"
        " FROM writer.ledger WHERE firm_id = $1 AND draft_id = $2", firm_id, draft_id)
    return LedgerRow(row["state"], row["entry_attempted"], row["attempts"], row["entry_id"],
                     row["communication_id"], row["written_at"])


async def mark_attempt(conn: asyncpg.Connection, firm_id: str, draft_id: str) -> None:
    """Committed before the request leaves: from now on a retry must look first."""
    await conn.execute(
        "UPDATE writer.ledger SET entry_attempted = true, communication_attempted = true,"
        " attempts = attempts + 1 WHERE firm_id = $1 AND draft_id = $2", firm_id, draft_id)


async def record_entry(conn: asyncpg.Connection, firm_id: str, draft_id: str,
                       entry: WrittenEntry) -> LedgerRow:
    """The billing system's ids, committed as soon as they are known. The row stays queued
    (`intent`) until `entry.written` is out, so a writer killed in between announces the entry
    on restart instead of leaving it unannounced: the approval's offset was committed long ago."""
    row = await conn.fetchrow(
        "UPDATE writer.ledger SET entry_id = $3, communication_id = $4,"
        " written_at = now(), last_error = NULL WHERE firm_id = $1 AND draft_id = $2"
        " RETURNING state, entry_attempted, attempts, entry_id, communication_id, written_at",
        firm_id, draft_id, entry.entry_id, entry.communication_id)
    return LedgerRow(row["state"], row["entry_attempted"], row["attempts"], row["entry_id"],
                     row["communication_id"], row["written_at"])


async def mark_written(conn: asyncpg.Connection, firm_id: str, draft_id: str) -> LedgerRow:
    """Done: the entry is recorded and announced."""
    row = await conn.fetchrow(
        "UPDATE writer.ledger SET state = 'written', last_error = NULL"
        " WHERE firm_id = $1 AND draft_id = $2 AND entry_id IS NOT NULL"
        " RETURNING state, entry_attempted, attempts, entry_id, communication_id, written_at",
        firm_id, draft_id)
    return LedgerRow(row["state"], row["entry_attempted"], row["attempts"], row["entry_id"],
                     row["communication_id"], row["written_at"])


async def mark_failed(conn: asyncpg.Connection, firm_id: str, draft_id: str, reason: str,
                      *, permanent: bool) -> None:
    await conn.execute(
        "UPDATE writer.ledger SET last_error = $3,"
        " state = CASE WHEN $4 THEN 'dead' ELSE state END"
        " WHERE firm_id = $1 AND draft_id = $2 AND state <> 'written'",
        firm_id, draft_id, reason[:2000], permanent)
