"""The providers' webhook endpoint, one route for all five: `POST /webhooks/{provider}/{firm_id}`.

Each request is answered 2xx only once its notices are durably in PostgreSQL (the inbox), well
inside the providers' 2–3 s deadlines; the outbox relay publishes later. Refusals carry a reason
and store nothing."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from calltime import metrics
from calltime.ingest import domain, intake, store
from calltime.ingest.providers import registry
from calltime.ingest.providers.model import InvalidNotification, Refused, WebhookRequest
from calltime.logs import bound

log = logging.getLogger(__name__)
router = APIRouter(tags=["webhooks"])
SERVICE = intake.SERVICE
ACCOUNT_CACHE_SECONDS = 30.0


class AccountCache:
    """Provider accounts by (firm, provider), secrets opened: read on every webhook, changed rarely."""

    def __init__(self, credentials) -> None:
        self.credentials = credentials
        self.entries: dict[tuple[str, str], tuple[float, store.AccountRecord]] = {}

    async def get(self, firm_id: str, provider: str) -> store.AccountRecord | None:
        key = (firm_id, provider)
        cached = self.entries.get(key)
        if cached and time.monotonic() - cached[0] < ACCOUNT_CACHE_SECONDS:
            return cached[1]
        record = await store.load_account(self.credentials, firm_id, provider)
        if record is not None:  # made-up firm ids must not grow the cache
            self.entries[key] = (time.monotonic(), record)
        return record


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
        statuses = await intake.accept_notices(request.app.state.runtime.pool, adapter,
                                               record.account, list(notices))
        log.info("webhook accepted", extra={"provider": provider, "statuses": statuses})
    return JSONResponse({"status": statuses[0] if len(statuses) == 1 else statuses})
