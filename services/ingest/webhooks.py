"""The providers' webhook endpoints. Each answers 2xx only once the notification is durably in
PostgreSQL (the inbox), well inside the provider's deadline; the outbox relay publishes later."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from calltime import metrics
from calltime.ingest import domain, store
from calltime.ingest.providers import ringcentral as rc
from calltime.logs import bound

log = logging.getLogger(__name__)
router = APIRouter(tags=["webhooks"])
SERVICE = "ingest"
ACCOUNT_CACHE_SECONDS = 30.0


class AccountCache:
    """Provider accounts by (firm, provider): read on every webhook, changed rarely."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], tuple[float, store.ProviderAccount]] = {}

    async def get(self, pool, firm_id: str, provider: str) -> store.ProviderAccount | None:
        key = (firm_id, provider)
        cached = self.entries.get(key)
        if cached and time.monotonic() - cached[0] < ACCOUNT_CACHE_SECONDS:
            return cached[1]
        async with pool.acquire() as conn:
            account = await store.load_account(conn, firm_id, provider)
        if account is not None:  # made-up firm ids must not grow the cache
            self.entries[key] = (time.monotonic(), account)
        return account


def refuse(status: int, reason: str) -> JSONResponse:
    metrics.HTTP_REJECTIONS.labels(SERVICE, "webhooks", str(status)).inc()
    return JSONResponse({"detail": reason}, status_code=status)


@router.post("/webhooks/ringcentral/{firm_id}")
async def ringcentral_webhook(firm_id: str, request: Request) -> Response:
    runtime = request.app.state.runtime
    body = await request.body()
    account = await request.app.state.accounts.get(runtime.pool, firm_id, "ringcentral")
    if account is None:
        return refuse(404, "no RingCentral account is registered for this firm")
    handshake = rc.is_validation_request(request.headers, body)
    if handshake is not None:
        # RingCentral requires the echo in a response of at most 1 KB, JSON content type.
        return Response(status_code=200, media_type="application/json",
                        headers={"Validation-Token": handshake})
    if not domain.token_accepted(rc.presented_token(request.headers),
                                 account.verification_token_sha256):
        return refuse(401, "verification token missing or wrong")
    try:
        notification = rc.parse_notification(body)
    except rc.InvalidNotification as exc:
        return refuse(400, f"not a RingCentral notification: {exc}")
    if not notification.is_telephony_session:
        return JSONResponse({"status": "ignored", "reason": "not a telephony-session event"})
    with bound(firm_id=firm_id, call_id=domain.call_id_for(
            "ringcentral", notification.telephony_session_id)):
        status = await accept_notification(runtime.pool, account, notification, body)
        log.info("ringcentral notification", extra={"status": status,
                                                    "sequence": notification.sequence})
    return JSONResponse({"status": status})


async def accept_notification(pool, account: store.ProviderAccount,
                              notification: rc.SessionNotification, body: bytes) -> str:
    session_id = notification.telephony_session_id
    async with pool.acquire() as conn, conn.transaction():
        await store.lock_session(conn, account.firm_id, session_id)
        if not await store.record_ringcentral_notification(
                conn, account.firm_id, notification.uuid, session_id,
                notification.sequence, body):
            return "duplicate"
        bodies = await store.ringcentral_session_bodies(conn, account.firm_id, session_id)
        notifications = [rc.parse_notification(b) for b in bodies]
        tracked = domain.tracked_extensions(notifications, account.account_id,
                                            account.attorneys_by_user)
        finished = rc.assemble_call(notifications, tracked, account.phone_region)
        if finished is None:
            return "recorded"
        attorney = account.attorneys_by_user.get(finished.provider_user_id)
        if attorney is None:
            metrics.OUTCOMES.labels(SERVICE, "call", "unmapped_extension").inc()
            log.warning("call on an extension with no attorney mapping",
                        extra={"extension_id": finished.provider_user_id})
        event = domain.call_ended(finished, firm_id=account.firm_id, provider="ringcentral",
                                  attorney_user_id=attorney,
                                  received_at=datetime.now(timezone.utc))
        revision = await store.announce_call(conn, event, domain.fingerprint(finished))
    if revision is None:
        return "recorded"
    metrics.OUTCOMES.labels(SERVICE, "call", "announced" if revision == 1 else "revised").inc()
    return "call-ended" if revision == 1 else f"call-revised-{revision}"
