"""The firm directory in PostgreSQL (schema `directory`): looked up by the matcher on every call,
written by the directory sync. Every query names the firm."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import asyncpg

from calltime.billing.model import BillingUser, DirectoryContact, DirectoryMatter
from calltime.events import MatterCandidate
from calltime.matcher.domain import KnownContact, Lookup
from calltime.phone import normalise


async def lookup(conn: asyncpg.Connection, firm_id: str, number_e164: str | None) -> Lookup:
    if number_e164 is None:
        return Lookup(None, None, ())
    kind = await conn.fetchval(
        "SELECT kind FROM directory.non_client_numbers WHERE firm_id = $1 AND e164 = $2",
        firm_id, number_e164)
    if kind is None:
        kind = await conn.fetchval(
            "SELECT 'internal' FROM directory.users WHERE firm_id = $1 AND phone_e164 = $2"
            " LIMIT 1", firm_id, number_e164)
    rows = await conn.fetch(
        "SELECT c.contact_id, c.name, c.is_client, m.matter_id, m.display_number,"
        "       m.description, m.status"
        " FROM directory.contact_numbers n"
        " JOIN directory.contacts c ON c.firm_id = n.firm_id AND c.contact_id = n.contact_id"
        " LEFT JOIN directory.matters m ON m.firm_id = c.firm_id AND m.client_id = c.contact_id"
        " WHERE n.firm_id = $1 AND n.e164 = $2 ORDER BY c.contact_id, m.matter_id",
        firm_id, number_e164)
    return Lookup(number_e164, kind, _contacts(rows))


def _contacts(rows: list[asyncpg.Record]) -> tuple[KnownContact, ...]:
    names: dict[str, tuple[str, bool]] = {}
    matters: dict[str, list[MatterCandidate]] = defaultdict(list)
    for row in rows:
        names[row["contact_id"]] = (row["name"], row["is_client"])
        if row["matter_id"] is not None:
            matters[row["contact_id"]].append(MatterCandidate(
                row["matter_id"], row["display_number"], row["description"], row["status"]))
    return tuple(KnownContact(cid, name, is_client, tuple(matters[cid]))
                 for cid, (name, is_client) in names.items())


async def save_users(conn: asyncpg.Connection, firm_id: str, users: list[BillingUser],
                     region: str) -> None:
    await conn.executemany(
        "INSERT INTO directory.users (firm_id, user_id, name, rate, time_zone, phone_e164, enabled)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (firm_id, user_id) DO UPDATE SET"
        " name = EXCLUDED.name, rate = EXCLUDED.rate, time_zone = EXCLUDED.time_zone,"
        " phone_e164 = EXCLUDED.phone_e164, enabled = EXCLUDED.enabled",
        [(firm_id, u.user_id, u.name, u.rate, u.time_zone, normalise(u.phone_number, region),
          u.enabled) for u in users])


async def save_contact(conn: asyncpg.Connection, firm_id: str, contact: DirectoryContact,
                       region: str) -> None:
    # A sync that read the contact just before it was deleted must not write it back.
    kept = await conn.fetchval(
        "INSERT INTO directory.contacts (firm_id, contact_id, name, is_client)"
        " SELECT $1::text, $2::text, $3::text, $4::boolean WHERE NOT EXISTS ("
        "  SELECT 1 FROM directory.deletions"
        "  WHERE firm_id = $1 AND resource = 'contact' AND record_id = $2)"
        " ON CONFLICT (firm_id, contact_id) DO UPDATE SET"
        " name = EXCLUDED.name, is_client = EXCLUDED.is_client RETURNING true",
        firm_id, contact.contact_id, contact.name, contact.is_client)
    if not kept:
        return
    # The contact's numbers are replaced whole: a changed number must stop matching.
    await conn.execute("DELETE FROM directory.contact_numbers WHERE firm_id = $1 AND contact_id = $2",
                       firm_id, contact.contact_id)
    numbers = {normalise(raw, region): raw for raw in contact.phone_numbers}
    await conn.executemany(
        "INSERT INTO directory.contact_numbers (firm_id, e164, contact_id, raw)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        [(firm_id, e164, contact.contact_id, raw) for e164, raw in numbers.items() if e164])


async def save_matter(conn: asyncpg.Connection, firm_id: str, matter: DirectoryMatter) -> None:
    await conn.execute(
        "INSERT INTO directory.matters"
        " (firm_id, matter_id, client_id, display_number, description, status)"
        " SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text WHERE NOT EXISTS ("
        "  SELECT 1 FROM directory.deletions"
        "  WHERE firm_id = $1 AND resource = 'matter' AND record_id = $2)"
        " ON CONFLICT (firm_id, matter_id) DO UPDATE SET"
        " client_id = EXCLUDED.client_id, display_number = EXCLUDED.display_number,"
        " description = EXCLUDED.description, status = EXCLUDED.status",
        firm_id, matter.matter_id, matter.client_id, matter.display_number,
        matter.description, matter.status)


DELETABLE = ("contact", "matter")


async def record_deletion(conn: asyncpg.Connection, firm_id: str, resource: str, record_id: str) -> None:
    """Remove a record the billing system reports deleted (an incremental sync never sees deletions).

    The tombstone commits before the rows go: a sync write that started earlier and lands later is
    then either refused by `save_*` or removed by `purge_deleted` at the end of that sync."""
    if resource not in DELETABLE:
        raise ValueError(f"cannot delete a {resource!r} from the directory")
    if conn.is_in_transaction():
        raise RuntimeError("record_deletion commits the tombstone on its own; call it outside a transaction")
    await conn.execute(
        "INSERT INTO directory.deletions (firm_id, resource, record_id) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING", firm_id, resource, record_id)
    if resource == "contact":
        # The contact row first: the look-up joins numbers to it, so its numbers stop matching at once.
        await conn.execute("DELETE FROM directory.contacts WHERE firm_id = $1 AND contact_id = $2",
                           firm_id, record_id)
        await conn.execute("DELETE FROM directory.contact_numbers WHERE firm_id = $1 AND contact_id = $2",
                           firm_id, record_id)
    else:
        await conn.execute("DELETE FROM directory.matters WHERE firm_id = $1 AND matter_id = $2",
                           firm_id, record_id)


async def forget_deletion(conn: asyncpg.Connection, firm_id: str, resource: str, record_id: str) -> None:
    """The billing system says the record exists again (restored): let syncs write it."""
    await conn.execute(
        "DELETE FROM directory.deletions WHERE firm_id = $1 AND resource = $2 AND record_id = $3",
        firm_id, resource, record_id)


async def purge_deleted(conn: asyncpg.Connection, firm_id: str) -> None:
    """Drop rows a sync wrote back after their deletion was recorded (see `record_deletion`)."""
    await conn.execute(
        "DELETE FROM directory.contacts c USING directory.deletions d WHERE c.firm_id = $1"
        " AND d.firm_id = $1 AND d.resource = 'contact' AND d.record_id = c.contact_id", firm_id)
    await conn.execute(
        "DELETE FROM directory.contact_numbers n USING directory.deletions d WHERE n.firm_id = $1"
        " AND d.firm_id = $1 AND d.resource = 'contact' AND d.record_id = n.contact_id", firm_id)
    await conn.execute(
        "DELETE FROM directory.matters m USING directory.deletions d WHERE m.firm_id = $1"
        " AND d.firm_id = $1 AND d.resource = 'matter' AND d.record_id = m.matter_id", firm_id)


async def synced_at(conn: asyncpg.Connection, firm_id: str, resource: str) -> datetime | None:
    return await conn.fetchval(
        "SELECT synced_at FROM directory.sync_state WHERE firm_id = $1 AND resource = $2",
        firm_id, resource)


async def mark_synced(conn: asyncpg.Connection, firm_id: str, resource: str,
                      at: datetime) -> None:
    await conn.execute(
        "INSERT INTO directory.sync_state (firm_id, resource, synced_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (firm_id, resource) DO UPDATE SET synced_at = EXCLUDED.synced_at",
        firm_id, resource, at)
