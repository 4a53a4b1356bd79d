"""Reconciliation: webhooks are hints, the provider's call log is the record.

A sweep reads one firm's call log with one provider over a window, page by page, and publishes
every finished call the webhooks missed — never one already announced. The ingest service runs
a sweep per account on a schedule (and renews webhook subscriptions at the same time); the CLI
runs one on demand, e.g. to backfill a past period, with a progress display:

    python -m calltime.ingest.reconcile --firm acme --provider zoom --since 2026-11-01 --until 2026-11-27
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

from calltime import db, logs
from calltime.credentials import CredentialStore, api_credential
from calltime.ingest import intake, store
from calltime.ingest.call_logs.port import CallLogError, CallLogSource
from calltime.ingest.providers import registry
from calltime.runtime import credential_store
from calltime.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class SweepProgress:
    pages: int = 0
    records_read: int = 0
    calls_seen: int = 0
    published: int = 0
    started: float = 0.0


class NotReconcilable(LookupError):
    pass


async def open_source(credentials: CredentialStore, firm_id: str, provider: str,
                      http=None) -> tuple[store.AccountRecord, CallLogSource]:
    record = await store.load_account(credentials, firm_id, provider)
    if record is None:
        raise NotReconcilable(f"firm {firm_id!r} has no {provider} account")
    if not record.api_base_url:
        raise NotReconcilable(f"firm {firm_id!r} has no API base URL for {provider}")
    api = (await credentials.get(firm_id, api_credential(provider))).value
    source = registry.call_log_module(provider).source(record.account, record.api_base_url, api, http=http)
    return record, source


async def sweep(pool: asyncpg.Pool, record: store.AccountRecord, source: CallLogSource,
                since: datetime, until: datetime,
                on_page: Callable[[SweepProgress], None] | None = None) -> SweepProgress:
    account = record.account
    progress = SweepProgress(started=time.monotonic())
    run_id = await pool.fetchval(
        "INSERT INTO ingest.reconciliations (firm_id, provider, window_start, window_end)"
        " VALUES ($1, $2, $3, $4) RETURNING id", account.firm_id, account.provider, since, until)
    error = None
    try:
        async for page in source.pages(since, until):
            async with pool.acquire() as conn, conn.transaction():
                for finished in page.calls:
                    progress.published += await intake.publish_if_missing(conn, account, finished)
            progress.pages += 1
            progress.records_read += page.records_read
            progress.calls_seen += len(page.calls)
            if on_page:
                on_page(progress)
    except CallLogError as exc:
        error = str(exc)
        raise
    finally:
        await pool.execute(
            "UPDATE ingest.reconciliations SET finished_at = now(), calls_seen = $2,"
            " calls_published = $3, error = $4 WHERE id = $1",
            run_id, progress.calls_seen, progress.published, error)
    log.info("reconciliation sweep", extra={"firm_id": account.firm_id, "provider": account.provider,
                                            "records": progress.records_read,
                                            "published": progress.published})
    return progress


async def renew(pool: asyncpg.Pool, record: store.AccountRecord, source: CallLogSource,
                now: datetime, renew_within: timedelta) -> int:
    subscriptions = await source.renew_subscriptions(now, renew_within_seconds=renew_within.total_seconds())
    for sub in subscriptions:
        await pool.execute(
            "INSERT INTO ingest.subscriptions AS s (firm_id, provider, subscription_id, expires_at, renewed_at)"
            " VALUES ($1, $2, $3, $4, now()) ON CONFLICT (firm_id, provider, subscription_id)"
            " DO UPDATE SET renewed_at = CASE WHEN s.expires_at IS DISTINCT FROM EXCLUDED.expires_at"
            " THEN now() ELSE s.renewed_at END, expires_at = EXCLUDED.expires_at",
            record.account.firm_id, record.account.provider, sub.subscription_id, sub.expires_at)
    return len(subscriptions)


class Scheduler:
    """The ingest service's periodic sweeps and renewals, every account in turn."""

    # Graph's shortest subscription (< 3 days) must never lapse between two rounds.
    RENEW_WITHIN = timedelta(days=1)

    def __init__(self, pool: asyncpg.Pool, credentials: CredentialStore, settings: Settings) -> None:
        self.pool = pool
        self.credentials = credentials
        self.every = settings.reconcile_every_seconds
        self.window = timedelta(seconds=settings.reconcile_window_seconds)
        self._task: asyncio.Task | None = None
        self._renewals: set[asyncio.Task] = set()

    def renew_soon(self, firm_id: str, provider: str) -> None:
        """Renew one account's subscriptions now, in the background (a lifecycle notice asked)."""
        task = asyncio.create_task(self._renew_one(firm_id, provider), name=f"renew-{firm_id}-{provider}")
        self._renewals.add(task)
        task.add_done_callback(self._renewals.discard)

    async def _renew_one(self, firm_id: str, provider: str) -> None:
        try:
            record, source = await open_source(self.credentials, firm_id, provider)
            try:
                # Asked explicitly: renew whatever the account holds, not only what expires soon.
                await renew(self.pool, record, source, datetime.now(timezone.utc), timedelta(days=365))
            finally:
                await source.aclose()
        except Exception as exc:  # noqa: BLE001 - the next scheduled round tries again
            log.warning("renewal on request failed", extra={"firm_id": firm_id, "provider": provider,
                                                            "error": f"{type(exc).__name__}: {exc}"})

    async def __aenter__(self) -> Scheduler:
        self._task = asyncio.create_task(self._run(), name="reconcile")
        return self

    async def __aexit__(self, *exc) -> None:
        tasks = [t for t in [self._task, *self._renewals] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.round()

    async def round(self) -> None:
        now = datetime.now(timezone.utc)
        for firm_id, provider in await store.accounts_to_reconcile(self.pool):
            try:
                record, source = await open_source(self.credentials, firm_id, provider)
                try:
                    await renew(self.pool, record, source, now, self.RENEW_WITHIN)
                    await sweep(self.pool, record, source, now - self.window, now)
                finally:
                    await source.aclose()
            except Exception as exc:  # one failing account must not stop the others
                log.warning("reconciliation failed", extra={"firm_id": firm_id, "provider": provider,
                                                            "error": f"{type(exc).__name__}: {exc}"})


# --- CLI ---------------------------------------------------------------------------------------


def _utc(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _progress_printer(stream) -> Callable[[SweepProgress], None]:
    interactive = stream.isatty()

    def show(p: SweepProgress) -> None:
        line = (f"page {p.pages} · {p.records_read} records read · {p.calls_seen} finished calls"
                f" · {p.published} published · {time.monotonic() - p.started:.1f}s")
        stream.write(("\r" + line) if interactive else line + "\n")
        stream.flush()
    return show


async def _main(args: argparse.Namespace) -> int:
    settings = Settings()
    pool = await db.create_pool(args.database_url or settings.database_url, max_size=2)
    try:
        credentials = credential_store(settings, pool)
        try:
            record, source = await open_source(credentials, args.firm, args.provider)
        except (NotReconcilable, LookupError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            progress = await sweep(pool, record, source, args.since, args.until,
                                   on_page=_progress_printer(sys.stderr))
        except CallLogError as exc:
            print(f"\nerror: {args.provider} call log failed: {exc}", file=sys.stderr)
            return 1
        finally:
            await source.aclose()
        print(f"\n{args.firm}/{args.provider}: {progress.records_read} records in {progress.pages} pages,"
              f" {progress.calls_seen} finished calls, {progress.published} published"
              f" (the rest were already announced)")
        return 0
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calltime.ingest.reconcile",
                                     description="Publish every finished call a provider's call log"
                                                 " holds and the webhooks missed.")
    parser.add_argument("--firm", required=True)
    parser.add_argument("--provider", required=True, choices=registry.PROVIDERS)
    parser.add_argument("--since", type=_utc, help="window start (UTC unless an offset is given)")
    parser.add_argument("--until", type=_utc, help="window end (default: now)")
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    args.until = args.until or datetime.now(timezone.utc)
    args.since = args.since or args.until - timedelta(days=1)
    if args.since >= args.until:
        parser.error("--since must be before --until")
    logs.configure("reconcile", "WARNING")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
