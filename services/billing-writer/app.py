"""The billing-writer service: consumes `draft.approved`, writes exactly one entry per approved
draft into the firm's billing system, and publishes `entry.written`."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI

from calltime import kafka, topics, web
from calltime.billing.connect import BillingClients, UnsupportedBillingSystem
from calltime.billing_writer.writing import SERVICE, write_approved
from calltime.events import DraftApproved
from calltime.firms import UnknownFirm, load_firm
from calltime.runtime import Runtime, service_runtime
from calltime.secrets import MissingSecret
from calltime.settings import Settings


async def write_and_announce(runtime: Runtime, clients: BillingClients,
                             approved: DraftApproved) -> None:
    try:
        firm = await load_firm(runtime.pool, approved.firm_id)
        billing = clients.for_firm(firm)
    except (UnknownFirm, MissingSecret, UnsupportedBillingSystem) as exc:
        raise kafka.PermanentFailure(str(exc)) from exc
    written = await write_approved(runtime.pool, billing, firm.billing_system, approved)
    await runtime.publisher.publish(written)


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_runtime(settings, SERVICE) as runtime:
            clients = BillingClients()
            consuming = asyncio.create_task(kafka.consume(
                settings, runtime.publisher, topics.DRAFT_APPROVED, SERVICE,
                lambda approved: write_and_announce(runtime, clients, approved)))
            app.state.runtime = runtime
            app.state.readiness_checks = {**runtime.readiness_checks(),
                                          "consumer": _running(consuming)}
            try:
                yield
            finally:
                consuming.cancel()
                await asyncio.gather(consuming, return_exceptions=True)

    api = FastAPI(title="calltime billing-writer", lifespan=lifespan)
    web.guard_http_edge(api, SERVICE, 16 * 1024)
    api.include_router(web.ops_router())
    return api


def _running(task: asyncio.Task):
    async def check() -> bool:
        return not task.done()
    return check
