"""The billing-writer service: consumes `draft.approved` into each firm's write queue (the
ledger), drains every firm's queue at its own billing token's pace, writes exactly one entry per
approved draft, and publishes `entry.written`. Dead-lettered approvals are listed for the firm's
admin at `GET /firms/{firm_id}/dead-letters` (firm API key)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse

from calltime import kafka, topics, web
from calltime.billing.connect import BillingClients, UnsupportedBillingSystem
from calltime.billing_writer import queue
from calltime.billing_writer.writing import SERVICE, write_approved
from calltime.credentials import MissingCredential
from calltime.events import DraftApproved
from calltime.firms import UnknownFirm, firm_api_key_valid, load_firm
from calltime.runtime import Runtime, service_runtime
from calltime.secrets import MissingSecret
from calltime.settings import Settings


async def write_and_announce(runtime: Runtime, clients: BillingClients, approved: DraftApproved) -> None:
    try:
        firm = await load_firm(runtime.pool, approved.firm_id)
        billing = await clients.for_firm(firm)
    except (UnknownFirm, MissingSecret, MissingCredential, UnsupportedBillingSystem) as exc:
        raise kafka.PermanentFailure(str(exc)) from exc
    await write_approved(runtime.pool, billing, firm.billing_system, approved, announce=runtime.publisher.publish)


async def accept_approval(runtime: Runtime, workers: queue.FirmWorkers, approved: DraftApproved) -> None:
    try:
        firm = await load_firm(runtime.pool, approved.firm_id)
    except UnknownFirm as exc:
        raise kafka.PermanentFailure(str(exc)) from exc
    await queue.accept(runtime.pool, approved, firm.billing_system)
    workers.wake(approved.firm_id)


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_runtime(settings, SERVICE) as runtime:
            clients = BillingClients(runtime.credentials)
            async with queue.FirmWorkers(runtime.pool, lambda a: write_and_announce(runtime, clients, a),
                                         runtime.publisher) as workers:
                consuming = asyncio.create_task(kafka.consume(
                    settings, runtime.publisher, topics.DRAFT_APPROVED, SERVICE,
                    lambda approved: accept_approval(runtime, workers, approved)))
                app.state.runtime = runtime
                app.state.readiness_checks = {**runtime.readiness_checks(), "consumer": _running(consuming)}
                try:
                    yield
                finally:
                    consuming.cancel()
                    await asyncio.gather(consuming, return_exceptions=True)
                    await clients.aclose()

    api = FastAPI(title="calltime billing-writer", lifespan=lifespan)
    web.guard_http_edge(api, SERVICE, 16 * 1024)
    api.include_router(web.ops_router())

    @api.get("/firms/{firm_id}/dead-letters")
    async def dead_letters(firm_id: str, authorization: str | None = Header(default=None)):
        pool = api.state.runtime.pool
        if not await firm_api_key_valid(pool, firm_id, authorization):
            return JSONResponse({"detail": "missing or wrong firm API key"}, status_code=401)
        rows = await pool.fetch(
            "SELECT draft_id, call_id, billing_system, attempts, last_error, dead_at FROM writer.ledger"
            " WHERE firm_id = $1 AND state = 'dead' ORDER BY dead_at", firm_id)
        return {"dead_letters": [{**dict(r), "dead_at": r["dead_at"] and r["dead_at"].isoformat()} for r in rows]}

    return api


def _running(task: asyncio.Task):
    async def check() -> bool:
        return not task.done()
    return check
