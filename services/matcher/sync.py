"""Directory sync: pulls users, contacts and matters from the firm's billing system into the
`directory` tables — everything the first time, then only what changed since the last sync.
Deletions are invisible to it; they arrive by webhook (`clio_hooks`) and are never written back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

from calltime.billing.port import BillingSystem
from calltime.matcher import directory

log = logging.getLogger(__name__)
# Records changed while a page was being read are picked up by the next sync.
CLOCK_SKEW_MARGIN = timedelta(minutes=2)


@dataclass(frozen=True)
class SyncReport:
    firm_id: str
    users: int
    contacts: int
    matters: int
    incremental: bool


async def sync_firm(pool: asyncpg.Pool, billing: BillingSystem, firm_id: str,
                    phone_region: str) -> SyncReport:
    started = datetime.now(timezone.utc)
    async with pool.acquire() as conn:
        since = await directory.synced_at(conn, firm_id, "directory")
        users = await billing.list_users()
        async with conn.transaction():
            await directory.save_users(conn, firm_id, users, phone_region)
        contacts = 0
        async for contact in billing.iter_contacts(updated_since=since):
            async with conn.transaction():
                await directory.save_contact(conn, firm_id, contact, phone_region)
            contacts += 1
        matters = 0
        async for matter in billing.iter_matters(updated_since=since):
            await directory.save_matter(conn, firm_id, matter)
            matters += 1
        await directory.purge_deleted(conn, firm_id)
        await directory.mark_synced(conn, firm_id, "directory", started - CLOCK_SKEW_MARGIN)
    report = SyncReport(firm_id, len(users), contacts, matters, since is not None)
    log.info("directory synced", extra={"firm_id": firm_id, "users": report.users,
                                        "contacts": contacts, "matters": matters,
                                        "incremental": report.incremental})
    return report
