"""How a provider's notices become `call.ended`, the same for every provider and every path in:
webhooks, fetched records (Graph) and reconciliation sweeps. Each step runs in one transaction
with the call's lock held, so concurrent notices of one call see each other."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import asyncpg

from calltime import metrics
from calltime.ingest import domain, store
from calltime.ingest.providers.model import Account, FinishedCall, Notice, PhoneProvider

log = logging.getLogger(__name__)
SERVICE = "ingest"


async def accept_notices(pool: asyncpg.Pool, adapter: PhoneProvider, account: Account,
                         notices: list[Notice]) -> list[str]:
    """Store each notice once and announce what it completes; one status per notice."""
    async with pool.acquire() as conn, conn.transaction():
        return [await _accept(conn, adapter, account, notice) for notice in notices]


async def _accept(conn: asyncpg.Connection, adapter: PhoneProvider, account: Account,
                  notice: Notice) -> str:
    await store.lock_call(conn, account.firm_id, account.provider, notice.provider_call_id)
    if not await store.record_notice(conn, account.firm_id, account.provider, notice):
        return "duplicate"
    if notice.fetch_record:
        await store.schedule_fetch(conn, account.firm_id, account.provider, notice.provider_call_id)
        return "fetch-scheduled"
    return await settle_call(conn, adapter, account, notice.provider_call_id)


async def settle_call(conn: asyncpg.Connection, adapter: PhoneProvider, account: Account,
                      provider_call_id: str, *, quiet_period_over: bool = False) -> str:
    """Re-read every stored notice of the call and announce it if it is finished and new or
    changed. A provider that delivers out of order gets a quiet period before a call's first
    announcement (see `settle_after_seconds`). The caller holds the call's lock."""
    bodies = await store.call_bodies(conn, account.firm_id, account.provider, provider_call_id)
    finished = adapter.finished_call(bodies, account)
    if finished is None:
        return "recorded"
    quiet = getattr(adapter, "settle_after_seconds", 0.0)
    call_id = domain.call_id_for(account.provider, provider_call_id)
    if quiet and not quiet_period_over and not await store.announced(conn, account.firm_id, call_id):
        await store.schedule_settle(conn, account.firm_id, account.provider, provider_call_id, quiet)
        return "settling"
    revision = await store.announce_call(conn, event_for(finished, account), domain.fingerprint(finished))
    if revision is None:
        return "recorded"
    metrics.OUTCOMES.labels(SERVICE, "call", "announced" if revision == 1 else "revised").inc()
    return "call-ended" if revision == 1 else f"call-revised-{revision}"


async def publish_if_missing(conn: asyncpg.Connection, account: Account, finished: FinishedCall) -> bool:
    """Reconciliation: announce a call the webhooks never delivered; never a second time."""
    await store.lock_call(conn, account.firm_id, account.provider, finished.provider_call_id)
    published = await store.announce_if_missing(conn, event_for(finished, account),
                                                domain.fingerprint(finished))
    if published:
        metrics.OUTCOMES.labels(SERVICE, "call", "reconciled").inc()
    return published


def event_for(finished: FinishedCall, account: Account):
    attorney = account.attorneys_by_user.get(finished.provider_user_id)
    if attorney is None:
        metrics.OUTCOMES.labels(SERVICE, "call", "unmapped_user").inc()
        log.warning("call of a provider user with no attorney mapping",
                    extra={"provider_user_id": finished.provider_user_id, "provider": account.provider})
    return domain.call_ended(finished, firm_id=account.firm_id, provider=account.provider,
                             attorney_user_id=attorney, received_at=datetime.now(timezone.utc))
