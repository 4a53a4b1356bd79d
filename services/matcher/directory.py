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
    await conn.execute(
        "INSERT INTO directory.contacts (firm_id, contact_id, name, is_client)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (firm_id, contact_id) DO UPDATE SET"
        " name = EXCLUDED.name, is_client = EXCLUDED.is_client",
        firm_id, contact.contact_id, contact.name, contact.is_client)
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
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (firm_id, matter_id) DO UPDATE SET"
        " client_id = EXCLUDED.client_id, display_number = EXCLUDED.display_number,"
        " description = EXCLUDED.description, status = EXCLUDED.status",
        firm_id, matter.matter_id, matter.client_id, matter.display_number,
        matter.description, matter.status)


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
