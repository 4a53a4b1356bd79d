"""Deferred intake work: fetching the records that id-only notifications point at (Graph
callRecords) and announcing calls whose quiet period is over (RingCentral), both through the
same intake as a webhook. A failed fetch is retried with backoff and never dropped: the row
stays in `ingest.record_fetches` until the record is read."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import asyncpg

from calltime import metrics
from calltime.credentials import CredentialStore
from calltime.ingest import domain, intake, store
from calltime.ingest.providers import registry
from calltime.logs import bound

log = logging.getLogger(__name__)
MAX_BACKOFF = timedelta(minutes=30)
SETTLE_RETRY_SECONDS = 30.0


def retry_delay(attempts: int) -> timedelta:
    return min(timedelta(seconds=5 * 2 ** attempts), MAX_BACKOFF)


class RecordFetcher:
    def __init__(self, pool: asyncpg.Pool, credentials: CredentialStore, *, poll_seconds: float = 0.25,
                 http=None, accounts: store.AccountCache | None = None) -> None:
        self.pool = pool
        self.credentials = credentials
        self.accounts = accounts or store.AccountCache(credentials)
        self.poll_seconds = poll_seconds
        self.http = http
        self._sources: dict[tuple[str, str], object] = {}
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> RecordFetcher:
        self._task = asyncio.create_task(self._run(), name="record-fetcher")
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _record, source in self._sources.values():
            await source.aclose()

    async def _run(self) -> None:
        while True:
            try:
                while await self.settle_due() + await self.fetch_due() > 0:
                    pass
            except Exception:
                log.exception("record fetch round failed")
            await asyncio.sleep(self.poll_seconds)

    async def fetch_due(self, limit: int = 20) -> int:
        """One round: fetch up to `limit` due records, each on its own; returns how many."""
        async with self.pool.acquire() as conn:
            due = await store.claim_due_fetches(conn, limit)
        for item in due:
            with bound(firm_id=item.firm_id, call_id=domain.call_id_for(item.provider, item.record_id)):
                await self._fetch_one(item)
        return len(due)

    async def settle_due(self, limit: int = 50) -> int:
        """Announce the calls whose quiet period is over, each in its own transaction; returns how many."""
        async with self.pool.acquire() as conn:
            due = await store.claim_due_settles(conn, limit)
        for firm_id, provider, provider_call_id in due:
            with bound(firm_id=firm_id, call_id=domain.call_id_for(provider, provider_call_id)):
                try:
                    await self._settle_one(firm_id, provider, provider_call_id)
                except Exception as exc:  # noqa: BLE001 - one bad call must not hold up the others
                    log.error("settling a call failed; will retry", extra={"error": repr(exc)})
                    async with self.pool.acquire() as conn:
                        await store.schedule_settle(conn, firm_id, provider, provider_call_id,
                                                    SETTLE_RETRY_SECONDS)
        return len(due)

    async def _settle_one(self, firm_id: str, provider: str, provider_call_id: str) -> None:
        record = await self.accounts.get(firm_id, provider)
        if record is None:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await store.lock_call(conn, firm_id, provider, provider_call_id)
            status = await intake.settle_call(conn, registry.adapter(provider), record.account,
                                              provider_call_id, quiet_period_over=True)
        log.info("call settled", extra={"status": status})

    async def _fetch_one(self, item: store.DueFetch) -> None:
        try:
            record, source = await self._source(item.firm_id, item.provider)
            raw = await source.fetch_record(item.record_id)
            adapter = registry.adapter(item.provider)
            notice = adapter.record_notice(raw, record.account)
            async with self.pool.acquire() as conn, conn.transaction():
                await store.lock_call(conn, item.firm_id, item.provider, notice.provider_call_id)
                await store.record_notice(conn, item.firm_id, item.provider, notice)
                status = await intake.settle_call(conn, adapter, record.account, notice.provider_call_id)
                await store.fetch_done(conn, item)
        except Exception as exc:  # noqa: BLE001 - the provider, the record or the database: retry later
            metrics.OUTCOMES.labels(intake.SERVICE, "record_fetch", "failed").inc()
            log.warning("record fetch failed; will retry", extra={"error": repr(exc), "attempts": item.attempts})
            async with self.pool.acquire() as conn:
                await store.fetch_failed(conn, item, repr(exc),
                                         datetime.now(timezone.utc) + retry_delay(item.attempts))
            return
        log.info("record fetched", extra={"status": status})

    async def _source(self, firm_id: str, provider: str):
        from calltime.ingest.reconcile import open_source  # reconcile imports intake, not us

        key = (firm_id, provider)
        if key not in self._sources:
            self._sources[key] = await open_source(self.credentials, firm_id, provider, http=self.http)
        return self._sources[key]
