"""The matcher service: a Faust agent over `call.ended` that looks the caller up in the firm's
directory and publishes `call.matched`; plus the directory sync, on a timer, on demand, and on
Clio's webhooks (`clio_hooks`), whose subscriptions the timer also keeps alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime, timezone

from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from faust.contrib.asgi import faust_app_running

from calltime import kafka, metrics, topics, web
from calltime.billing.connect import BillingClients, UnsupportedBillingSystem
from calltime.billing.errors import BillingError
from calltime.secrets import MissingSecret
from calltime.events import CallEnded, CallMatched
from calltime.firms import UnknownFirm, firm_api_key_valid, load_firm
from calltime.matcher import directory
from calltime.matcher.clio_hooks import ClioHooks, webhook_router
from calltime.matcher.domain import decide
from calltime.matcher.sync import sync_firm
from calltime.runtime import Runtime, service_runtime
from calltime.settings import Settings

SERVICE = "matcher"
log = logging.getLogger(__name__)


async def match_call(runtime: Runtime, call: CallEnded) -> CallMatched:
    async with runtime.pool.acquire() as conn:
        found = await directory.lookup(conn, call.firm_id, call.external_number_e164)
    match = decide(found, direction=call.direction)
    metrics.OUTCOMES.labels(SERVICE, "match", match.outcome.value).inc()
    return CallMatched(
        event_id=str(uuid.uuid4()), firm_id=call.firm_id, call=call,
        outcome=match.outcome.value, client_id=match.client_id, client_name=match.client_name,
        matter=match.matter, candidates=match.candidates, matched_at=datetime.now(timezone.utc))


async def sync_directory(runtime: Runtime, clients: BillingClients, firm_id: str):
    firm = await load_firm(runtime.pool, firm_id)
    return await sync_firm(runtime.pool, await clients.for_firm(firm), firm_id, firm.phone_region)


async def sync_all_periodically(runtime: Runtime, clients: BillingClients, every: float,
                                hooks: ClioHooks | None = None) -> None:
    while True:
        try:
            firm_ids = [r["firm_id"] for r in await runtime.pool.fetch("SELECT firm_id FROM core.firms")]
        except Exception as exc:  # noqa: BLE001 - the database is away: try again next round
            log.warning("directory sync could not list firms", extra={"error": repr(exc)})
            firm_ids = []
        for firm_id in firm_ids:
            try:
                await sync_directory(runtime, clients, firm_id)
            except Exception as exc:  # noqa: BLE001 - one firm's outage must not stop the others
                log.warning("directory sync failed", extra={"firm_id": firm_id, "error": repr(exc)})
            if hooks is not None:
                try:
                    await hooks.ensure_subscriptions(firm_id)
                except Exception as exc:  # noqa: BLE001 - retried next round, long before any webhook expires
                    log.warning("clio webhook upkeep failed", extra={"firm_id": firm_id, "error": repr(exc)})
        await asyncio.sleep(every)


def directory_router() -> APIRouter:
    router = APIRouter(tags=["directory"])

    @router.post("/firms/{firm_id}/directory/sync")
    async def sync_now(firm_id: str, request: Request,
                       authorization: Annotated[str | None, Header()] = None) -> dict:
        state = request.app.state
        if not await firm_api_key_valid(state.runtime.pool, firm_id, authorization):
            raise HTTPException(401, "a valid API key for this firm is required")
        running = state.syncs_running
        if firm_id in running:
            raise HTTPException(409, "a directory sync for this firm is already running")
        running.add(firm_id)
        try:
            report = await sync_directory(state.runtime, state.billing_clients, firm_id)
        except (UnknownFirm, MissingSecret, UnsupportedBillingSystem) as exc:
            raise HTTPException(409, f"firm is not set up for sync: {exc}") from exc
        except BillingError as exc:
            raise HTTPException(502, f"the billing system refused the sync: {exc}") from exc
        finally:
            running.discard(firm_id)
        return report.__dict__

    return router


def create_app(settings: Settings) -> FastAPI:
    stream_app = kafka.faust_app(settings, SERVICE)
    kafka.policy_agent(stream_app, settings, topics.CALL_ENDED,
                       lambda: api.state.runtime.publisher,
                       lambda call: _match_and_publish(api.state.runtime, call))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_runtime(settings, SERVICE) as runtime:
            app.state.runtime = runtime
            app.state.billing_clients = BillingClients(runtime.credentials)
            app.state.syncs_running = set()
            app.state.clio_hooks = ClioHooks(runtime.pool, runtime.credentials, app.state.billing_clients,
                                             public_url=settings.matcher_public_url or None)
            async with faust_app_running(stream_app):
                syncing = asyncio.create_task(sync_all_periodically(
                    runtime, app.state.billing_clients, settings.directory_sync_seconds,
                    app.state.clio_hooks))
                app.state.readiness_checks = runtime.readiness_checks()
                try:
                    yield
                finally:
                    syncing.cancel()
                    await asyncio.gather(syncing, return_exceptions=True)
                    await app.state.clio_hooks.aclose()

    api = FastAPI(title="calltime matcher", lifespan=lifespan)
    web.guard_http_edge(api, SERVICE, 16 * 1024)
    api.include_router(web.ops_router())
    api.include_router(directory_router())
    api.include_router(webhook_router())
    return api


async def _match_and_publish(runtime: Runtime, call: CallEnded) -> None:
    await runtime.publisher.publish(await match_call(runtime, call))
