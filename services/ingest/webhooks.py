"""The providers' webhook endpoint, one route for all five: `POST /webhooks/{provider}/{firm_id}`.

Each request is answered 2xx only once its notices are durably in PostgreSQL (the inbox), well
inside the providers' 2–3 s deadlines; the outbox relay publishes later. Refusals carry a reason
and store nothing."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from calltime import metrics
from calltime.ingest import domain, intake
from calltime.ingest.providers import registry
from calltime.ingest.providers.model import (
    Account,
    InvalidNotification,
    Notice,
    PhoneProvider,
    Refused,
    WebhookRequest,
)
from calltime.logs import bound

log = logging.getLogger(__name__)
router = APIRouter(tags=["webhooks"])
SERVICE = intake.SERVICE
# A deadlock or serialization failure rolls the whole intake transaction back; PostgreSQL's
# advice is to run it again. (A Graph re-delivery that races the fetch of its record deadlocks:
# the fetcher holds the record_fetches row and waits for the call's lock, the webhook the reverse.)
INTAKE_ATTEMPTS = 3


async def _accept(request: Request, adapter: PhoneProvider, account: Account, notices: list[Notice]) -> list[str]:
    for attempt in range(1, INTAKE_ATTEMPTS + 1):
        try:
            return await intake.accept_notices(request.app.state.runtime.pool, adapter, account, notices)
        except asyncpg.TransactionRollbackError:  # deadlock or serialization failure: nothing kept
            if attempt == INTAKE_ATTEMPTS:
                raise
            metrics.OUTCOMES.labels(SERVICE, "webhook", "intake_retried").inc()
            await asyncio.sleep(0.02 * attempt)
    raise AssertionError("unreachable")


def refuse(status: int, reason: str) -> JSONResponse:
    metrics.HTTP_REJECTIONS.labels(SERVICE, "webhooks", str(status)).inc()
    return JSONResponse({"detail": reason}, status_code=status)


@router.post("/webhooks/{provider}/{firm_id}")
async def provider_webhook(provider: str, firm_id: str, request: Request) -> Response:
    if provider not in registry.PROVIDERS:
        return refuse(404, f"unknown provider {provider!r}")
    client = request.client.host if request.client else "-"
    wait = request.app.state.door.admit((provider, firm_id, client))
    if wait:
        response = refuse(429, "too many requests from this source")
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    body = await request.body()
    record = await request.app.state.accounts.get(firm_id, provider)
    if record is None:
        return refuse(404, f"no {provider} account is registered for this firm")
    adapter = registry.adapter(provider)
    webhook = WebhookRequest(headers={k.lower(): v for k, v in request.headers.items()},
                             query=dict(request.query_params), body=body,
                             received_at=datetime.now(timezone.utc))
    try:
        reply = adapter.handshake(webhook, record.account)
        if reply is not None:
            return Response(reply.body, status_code=reply.status, media_type=reply.media_type,
                            headers=dict(reply.headers))
        adapter.authenticate(webhook, record.account)
        lifecycle = getattr(adapter, "lifecycle_events", None)
        if lifecycle and lifecycle(webhook):
            # e.g. Graph's reauthorizationRequired: renew now rather than at the next round.
            request.app.state.scheduler.renew_soon(firm_id, provider)
        notices = adapter.notices(webhook, record.account)
    except Refused as exc:
        return refuse(exc.status, exc.reason)
    except InvalidNotification as exc:
        return refuse(400, f"not a {provider} notification: {exc}")
    if not notices:
        return JSONResponse({"status": "ignored", "reason": "not a finished-call event"})
    call_ids = sorted({domain.call_id_for(provider, n.provider_call_id) for n in notices})
    with bound(firm_id=firm_id, call_id=",".join(call_ids)):
        try:
            with metrics.STAGE_SECONDS.labels(SERVICE, f"webhook-intake:{provider}").time():
                statuses = await _accept(request, adapter, record.account, list(notices))
        except InvalidNotification as exc:
            # Each notice parsed, but the call they complete cannot be billed (see
            # `checked_call`); the transaction is rolled back, so nothing was stored.
            log.warning("webhook refused", extra={"provider": provider, "reason": str(exc)})
            return refuse(400, f"not a {provider} notification: {exc}")
        except asyncpg.TransactionRollbackError as exc:
            log.warning("webhook intake kept conflicting; asked to retry", extra={"error": type(exc).__name__})
            response = refuse(503, "conflicting with concurrent work on the same call; retry")
            response.headers["Retry-After"] = "1"
            return response
        log.info("webhook accepted", extra={"provider": provider, "statuses": statuses})
    return JSONResponse({"status": statuses[0] if len(statuses) == 1 else statuses})
