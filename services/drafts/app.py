"""The drafts service: a Faust agent over `call.matched` that stores one draft per call and
publishes `draft.created`, and the review API whose approvals publish `draft.approved` — both
through the outbox, so an approval survives Kafka being away."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timezone
from decimal import Decimal

from fastapi import FastAPI
from faust.contrib.asgi import faust_app_running

from calltime import kafka, metrics, topics, web
from calltime.drafts import store
from calltime.drafts.domain import DraftPolicy, RoundingRule, build_draft, should_draft
from calltime.drafts.routes import router
from calltime.events import CallMatched
from calltime.firms import UnknownFirm, load_firm
from calltime.outbox import OutboxRelay
from calltime.runtime import Runtime, service_runtime
from calltime.settings import Settings

SERVICE = "drafts"
log = logging.getLogger(__name__)


async def draft_call(runtime: Runtime, matched: CallMatched) -> None:
    if not should_draft(matched):
        metrics.OUTCOMES.labels(SERVICE, "draft", "not_drafted").inc()
        return
    async with runtime.pool.acquire() as conn:
        try:
            firm = await load_firm(conn, matched.firm_id)
        except UnknownFirm as exc:
            raise kafka.PermanentFailure(str(exc)) from exc
        rate, time_zone = await store.attorney(conn, firm.firm_id,
                                               matched.call.attorney_user_id) or (Decimal(0), None)
        policy = DraftPolicy(RoundingRule(firm.rounding_rule), firm.activity_code,
                             firm.narrative_template, firm.currency,
                             time_zone or firm.default_time_zone, rate)
        draft = build_draft(matched, policy, now=datetime.now(timezone.utc))
        async with conn.transaction():
            saved = await store.save(conn, draft, call_started_at=matched.call.started_at,
                                     external_number=matched.call.external_number_e164)
    outcome = (draft.review_state if saved and matched.call.revision == 1
               else "revised" if saved else "unchanged")
    metrics.OUTCOMES.labels(SERVICE, "draft", outcome).inc()
    log.info("draft stored" if saved else "draft left as it was (repeat, or already approved)",
             extra={"review_state": draft.review_state, "revision": matched.call.revision})


def create_app(settings: Settings) -> FastAPI:
    stream_app = kafka.faust_app(settings, SERVICE)
    kafka.policy_agent(stream_app, settings, topics.CALL_MATCHED,
                       lambda: api.state.runtime.publisher,
                       lambda matched: draft_call(api.state.runtime, matched))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_runtime(settings, SERVICE) as runtime:
            app.state.runtime = runtime
            async with OutboxRelay(runtime.pool, runtime.publisher, store.SCHEMA,
                                   settings.outbox_poll_seconds), faust_app_running(stream_app):
                app.state.readiness_checks = runtime.readiness_checks()
                yield

    api = FastAPI(title="calltime drafts", lifespan=lifespan)
    web.guard_http_edge(api, SERVICE, 16 * 1024)
    api.include_router(web.ops_router())
    api.include_router(router)
    return api
