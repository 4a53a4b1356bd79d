"""The ingest service: one webhook endpoint per provider in front of an inbox, the relay that
publishes `call.ended` from the outbox, the fetcher for id-only notifications, and the scheduled
reconciliation sweeps and subscription renewals."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from calltime import web
from calltime.ingest import store
from calltime.ingest.door import SourceLimiter
from calltime.ingest.fetcher import RecordFetcher
from calltime.ingest.reconcile import Scheduler
from calltime.ingest.webhooks import SERVICE, router
from calltime.outbox import OutboxRelay
from calltime.runtime import service_runtime
from calltime.settings import Settings

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_runtime(settings, SERVICE) as runtime:
            accounts = store.AccountCache(runtime.credentials)
            async with OutboxRelay(runtime.pool, runtime.publisher, store.SCHEMA, settings.outbox_poll_seconds), \
                    RecordFetcher(runtime.pool, runtime.credentials, accounts=accounts), \
                    Scheduler(runtime.pool, runtime.credentials, settings) as scheduler:
                app.state.runtime = runtime
                app.state.scheduler = scheduler
                app.state.accounts = accounts
                app.state.door = SourceLimiter(settings.webhook_rate_per_second, settings.webhook_burst)
                app.state.readiness_checks = runtime.readiness_checks()
                yield

    app = FastAPI(title="calltime ingest", lifespan=lifespan)
    web.guard_http_edge(app, SERVICE, MAX_BODY_BYTES)
    app.include_router(router)
    app.include_router(web.ops_router())
    return app
