"""A Vonage Business Communications (VBC) stand-in: the Vonage Integration Platform (VIS) CALL
webhooks a call produces, signed and delivered as VIS delivers them, and the APIs behind them —
OAuth token, Reports call log, VIS webhook registrations (providers.md §5.A).

Used by the demo, the tests and the benchmarks. `VonageSimulator.place_call` writes the call
into the fake's call log and POSTs the firm user's events (`RINGING`, `ACTIVE`, `HELD`, ...,
then one final state) to the registered webhook URL. `create_api_app(state)` serves the pull
side over the same state.

How a `SimulatedCall` reads in VBC terms (the adapter's mapping must give the call back):
* answered -> `ANSWERED` with `duration` = connected milliseconds; Reports `Answered`.
* missed -> inbound `MISSED`, outbound `CANCELLED` (the user gave up before an answer).
* voicemail -> as missed: VIS has no voicemail state, and the firm user was never connected
  (`SimulatedCall` counts recording time as not connected); Reports `Voicemail`.
* rejected -> `REJECTED`; Reports `Rejected`.
* A call whose `external_number` is an extension ("102") is internal (`internal: true`).
Numbers are written as E.164 digits without the `+`, as in the Reports examples.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from calltime.fakes.calls import SimulatedCall
from calltime.fakes.provider_common import (SlidingWindow, TokenStore, WebhookSimulator, arrange,
                                            bearer_token, error_answer, form_fields, require_copies,
                                            utc_now, utc_text)
from calltime.ingest.providers.vonage import SIGNATURE_HEADER, sign_event
from calltime.phone import is_extension

WEBHOOK_TTL = timedelta(days=10)  # "typically 10 days"
WEBHOOK_PURGE_AFTER = timedelta(days=90)
MAX_RETRIES = 5  # "retried a maximum of 5 times ... before the webhook is marked as failed"
METADATA_POLICIES = ("BODY", "HEADER")
_NAMESPACE = uuid.UUID("5b0a3c1e-7d0e-4a55-9c51-6f3f2a9e0b17")
# Written out here rather than imported from the client, so a typo in one shows up against the other.
CALL_LOGS_PATH = "/t/vbc.prod/reports/v1/accounts/{account_id}/call-logs"
WEBHOOKS_PATH = "/t/vbc.prod/vis/v1/self/webhooks"
REPORTS_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def vis_time(moment: datetime) -> str:
    """`2020-10-01T16:10:06.000+0000`, the way VIS writes times."""
    return utc_text(moment, zone="+0000")


def _digits(number: str) -> str:
    return number.strip().removeprefix("+")


def _reports_number(number: str) -> int | str:
    """Reports types numbers as strings, but its examples send JSON numbers: do as they do."""
    digits = _digits(number)
    return int(digits) if digits.isdigit() and not digits.startswith("0") else digits


# --- One call in VBC's terms -----------------------------------------------------------------


def vbc_call_id(call: SimulatedCall) -> str:
    """The call's id: Reports `id`, and the part of VIS `externalId` before the last `_`."""
    return str(uuid.uuid5(_NAMESPACE, f"call:{call.call_key}"))


def vis_event_id(call: SimulatedCall) -> str:
    """VIS `id` (an int64): one per user's call; its state changes share it."""
    return str(int(hashlib.sha256(call.call_key.encode()).hexdigest()[:15], 16))


def final_state(call: SimulatedCall) -> str:
    if call.answered:
        return "ANSWERED"
    if call.outcome == "rejected":
        return "REJECTED"
    return "MISSED" if call.direction == "inbound" else "CANCELLED"


def _is_internal(call: SimulatedCall) -> bool:
    return is_extension(call.external_number)


def call_events(call: SimulatedCall, account_id: str) -> list[dict[str, Any]]:
    """The firm user's VIS events for `call`, in order. Keys are deliberately not in alphabetical
    order (and the bodies are not compact): the signature is over a canonical form, not the body."""
    rung = call.started_at + timedelta(seconds=call.ring_seconds)
    changes: list[tuple[str, datetime]] = [("RINGING", call.started_at)]
    if call.answered:
        changes.append(("ACTIVE", rung))
        if call.hold_seconds:
            held = rung + timedelta(seconds=call.talk_seconds // 2)
            changes += [("HELD", held), ("ACTIVE", held + timedelta(seconds=call.hold_seconds))]
    changes.append((final_state(call), call.ended_at))
    return [_event(call, account_id, state) for state, _ in changes]


def _event(call: SimulatedCall, account_id: str, state: str) -> dict[str, Any]:
    final = state == final_state(call)
    event: dict[str, Any] = {
        "type": "CALL",
        "state": state,
        "id": vis_event_id(call),
        "externalId": f"{vbc_call_id(call)}_{call.extension_number}",
        "userId": call.user_id,
        "accountId": account_id,
        "direction": call.direction.upper(),
        "internal": _is_internal(call),
        "phoneNumber": _digits(call.external_number),
        "callerId": "WIRELESS CALLER",
        "ucpType": "VBS",
        "startTime": vis_time(call.started_at),
        "duration": call.connected_seconds * 1000 if final else 0,
    }
    if call.answered_at is not None and state != "RINGING":
        event["answerTime"] = vis_time(call.answered_at)
    if final:
        event["endTime"] = vis_time(call.ended_at)
    return event


_REPORTS_RESULT = {"answered": "Answered", "voicemail": "Voicemail", "rejected": "Rejected"}


def call_log_record(call: SimulatedCall, user_full_name: str = "Firm User") -> dict[str, Any]:
    """The Reports call-log record of `call` (field names and types of the reports.yml schema)."""
    user_side = {
        "user": call.user_id,
        "user_full_name": user_full_name,
        "device_name": user_full_name.split()[-1],
        "sip_id": f"VH{call.extension_number.rjust(7, '0')}",
        "extension": _reports_number(call.extension_number),
    }
    other_side: dict[str, Any] = dict.fromkeys(user_side)
    if _is_internal(call):
        other_side |= {"user": f"ext-{call.external_number}", "user_full_name": "Colleague",
                       "extension": _reports_number(call.external_number)}
    inbound = call.direction == "inbound"
    source, destination = (other_side, user_side) if inbound else (user_side, other_side)
    user_number = call.extension_number if _is_internal(call) else call.user_number
    record: dict[str, Any] = {
        "id": vbc_call_id(call),
        "in_network": _is_internal(call),
        "international": False,
        "from": _reports_number(call.external_number if inbound else user_number),
        "to": _reports_number(user_number if inbound else call.external_number),
        "direction": "Inbound" if inbound else "Outbound",
        "length": call.connected_seconds,
        "start": call.started_at.astimezone(timezone.utc).strftime(REPORTS_TIME_FORMAT),
        "end": call.ended_at.astimezone(timezone.utc).strftime(REPORTS_TIME_FORMAT),
        "charge": 0,
        "rate": 0,
    }
    for prefix, side in (("destination", destination), ("source", source)):
        record |= {f"{prefix}_{key}": value for key, value in side.items()}
    missed = "Missed" if inbound else "Cancelled"
    record |= {"custom_tag": None, "result": _REPORTS_RESULT.get(call.outcome, missed), "recorded": False}
    return record


# --- API state -------------------------------------------------------------------------------


@dataclass
class VonageApiState:
    """What the fake APIs know: one account, one integration user, its webhooks and call log.

    `rate_limit` requests per `rate_window_seconds` per access token; beyond it 429 with
    `Retry-After: retry_after_seconds`. `now` is the clock for token and webhook expiry.
    """

    account_id: str
    client_id: str = "fake-client-id"
    client_secret: str = "fake-client-secret"
    username: str = "firm.integration@vbc.prod"
    password: str = "fake-password"
    token_ttl_seconds: int = 3600
    rate_limit: int | None = None
    rate_window_seconds: float = 60.0
    retry_after_seconds: int = 1
    now: Callable[[], datetime] = utc_now
    call_logs: list[dict[str, Any]] = field(default_factory=list)
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: TokenStore = field(default_factory=TokenStore)  # access token -> expires at
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    _window: SlidingWindow = field(default_factory=SlidingWindow, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __repr__(self) -> str:
        return f"VonageApiState(account_id={self.account_id!r}, calls={len(self.call_logs)})"

    def credentials(self) -> dict[str, str]:
        """What the firm would store as its `vonage.api` credential for this fake."""
        return {"client_id": self.client_id, "client_secret": self.client_secret,
                "username": self.username, "password": self.password}

    def record_call(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.call_logs = [r for r in self.call_logs if r["id"] != record["id"]] + [record]

    def register_webhook(self, url: str, signing_key: str, metadata_policy: str = "BODY",
                         webhook_id: str | None = None) -> dict[str, Any]:
        now = self.now()
        webhook = {
            "id": webhook_id or str(uuid.uuid4()),
            "userId": "integration-user",
            "accountId": self.account_id,
            "url": url,
            "status": "ACTIVE",
            "events": ["CALL"],
            "signingAlgo": "HMAC_SHA256",
            "signingKey": signing_key,
            "metadataPolicy": metadata_policy,
            "expireAt": utc_text(now + WEBHOOK_TTL),
            "createdAt": utc_text(now),
            "renewedAt": utc_text(now),
            "purgeAt": utc_text(now + WEBHOOK_PURGE_AFTER),
            "statistics": {"totalAttempts": 0, "totalSuccesses": 0, "totalFailures": 0, "failed": False},
        }
        with self._lock:
            self.webhooks[webhook["id"]] = webhook
        return webhook

    def renew_webhook(self, webhook_id: str) -> dict[str, Any] | None:
        """Extends the expiry and clears a `failed` status, as VIS's renew does."""
        now = self.now()
        with self._lock:
            webhook = self.webhooks.get(webhook_id)
            if webhook is None:
                return None
            webhook["expireAt"] = utc_text(now + WEBHOOK_TTL)
            webhook["renewedAt"] = utc_text(now)
            webhook["statistics"]["failed"] = False
            return dict(webhook)

    def accepts_deliveries(self, webhook_id: str) -> bool:
        webhook = self.webhooks.get(webhook_id)
        if webhook is None or webhook["statistics"]["failed"]:
            return False
        return datetime.fromisoformat(webhook["expireAt"]) > self.now()

    def count_delivery(self, webhook_id: str, succeeded: bool, *, gave_up: bool = False) -> None:
        with self._lock:
            statistics = self.webhooks[webhook_id]["statistics"]
            statistics["totalAttempts"] += 1
            statistics["totalSuccesses" if succeeded else "totalFailures"] += 1
            if gave_up:
                statistics["failed"] = True

    def issue_token(self) -> str:
        with self._lock:
            return self.tokens.issue(self.now() + timedelta(seconds=self.token_ttl_seconds))

    def token_valid(self, token: str) -> bool:
        return self.tokens.live(token, self.now())

    def over_rate(self, token: str) -> bool:
        with self._lock:
            return self._window.take(token, time.monotonic(), self.rate_limit, self.rate_window_seconds) is not None


# --- The APIs --------------------------------------------------------------------------------


def create_api_app(state: VonageApiState) -> FastAPI:
    """Token endpoint, Reports call log and VIS webhook registrations over `state`."""
    app = FastAPI(title="Fake Vonage Business Communications")
    vis_webhooks = WEBHOOKS_PATH

    @app.middleware("http")
    async def record_requests(request: Request, call_next):
        state.requests.append((request.method, request.url.path, dict(request.query_params)))
        return await call_next(request)

    @app.post("/token")
    async def token(request: Request) -> Response:
        form = await form_fields(request)
        if form.get("grant_type") != "password":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        expected = state.credentials()
        if any(not secrets.compare_digest(form.get(key, ""), value) for key, value in expected.items()):
            return JSONResponse({"error": "invalid_client",
                                 "error_description": "A valid OAuth client could not be found"},
                                status_code=401)
        return JSONResponse({"access_token": state.issue_token(), "refresh_token": secrets.token_urlsafe(24),
                             "scope": "openid", "token_type": "Bearer",
                             "expires_in": state.token_ttl_seconds})

    @app.get(CALL_LOGS_PATH)
    async def list_call_logs(account_id: str, request: Request) -> Response:
        refused = _refusal(state, request)
        if refused is not None:
            return refused
        if account_id != state.account_id:
            return JSONResponse({"msg": "Forbidden", "status": 403}, status_code=403)
        try:
            window = _window(request.query_params)
            page = int(request.query_params.get("page", 1))
            page_size = int(request.query_params.get("page_size", 10))
        except ValueError as error:
            return JSONResponse({"status": 400, "title": "Invalid parameters",
                                 "invalid_parameters": [{"name": "query", "reason": str(error)}]},
                                status_code=400)
        if page < 1 or page_size < 1:
            return JSONResponse({"status": 400, "title": "page and page_size start at 1"}, status_code=400)
        return JSONResponse(_hal_page(state, request, window, page, page_size))

    @app.get(vis_webhooks)
    async def list_webhooks(request: Request) -> Response:
        return _refusal(state, request) or JSONResponse(list(state.webhooks.values()))

    @app.post(vis_webhooks)
    async def create_webhook(request: Request) -> Response:
        refused = _refusal(state, request)
        if refused is not None:
            return refused
        body = await request.json()
        webhook = state.register_webhook(body["url"], body.get("signingKey", ""),
                                         body.get("metadataPolicy", "NONE"))
        return JSONResponse(webhook, status_code=201)

    @app.get(vis_webhooks + "/{webhook_id}")
    async def get_webhook(webhook_id: str, request: Request) -> Response:
        refused = _refusal(state, request)
        if refused is not None:
            return refused
        webhook = state.webhooks.get(webhook_id)
        return JSONResponse(webhook) if webhook else _not_found(webhook_id)

    @app.delete(vis_webhooks + "/{webhook_id}")
    async def delete_webhook(webhook_id: str, request: Request) -> Response:
        refused = _refusal(state, request)
        if refused is not None:
            return refused
        return Response(status_code=204) if state.webhooks.pop(webhook_id, None) else _not_found(webhook_id)

    @app.put(vis_webhooks + "/{webhook_id}/renew")
    async def renew_webhook(webhook_id: str, request: Request) -> Response:
        refused = _refusal(state, request)
        if refused is not None:
            return refused
        webhook = state.renew_webhook(webhook_id)
        return JSONResponse(webhook) if webhook else _not_found(webhook_id)

    return app


def _refusal(state: VonageApiState, request: Request) -> Response | None:
    token = bearer_token(request.headers.get("Authorization"))
    if not state.token_valid(token):
        return error_answer(401, {"errorCode": "401", "errorMessage": "Invalid access token"})
    if state.over_rate(token):
        return error_answer(429, {"msg": "Too Many Requests", "status": 429}, wait=state.retry_after_seconds)
    return None


def _not_found(webhook_id: str) -> Response:
    return JSONResponse({"errorCode": "404", "errorMessage": f"webhook {webhook_id} not found"},
                        status_code=404)


def _window(query: Any) -> tuple[datetime, datetime]:
    bounds = []
    for name in ("start:gte", "start:lte"):
        text = query.get(name)
        if text is None:
            raise ValueError(f"{name} is required")
        bounds.append(datetime.strptime(text, REPORTS_TIME_FORMAT))
    return bounds[0], bounds[1]


def _hal_page(state: VonageApiState, request: Request, window: tuple[datetime, datetime],
              page: int, page_size: int) -> dict[str, Any]:
    first, last = window
    with state._lock:
        matching = [r for r in state.call_logs
                    if first <= datetime.strptime(r["start"], REPORTS_TIME_FORMAT) <= last]
    matching.sort(key=lambda r: (r["start"], r["id"]))
    total_pages = math.ceil(len(matching) / page_size)
    items = matching[(page - 1) * page_size: page * page_size]

    def href(number: int) -> dict[str, str]:
        return {"href": str(request.url.include_query_params(page=number))}

    links = {"first": href(1), "self": href(page)}
    if page > 1:
        links["prev"] = href(page - 1)
    if page < total_pages:
        links["next"] = href(page + 1)
    return {"page_size": page_size, "page": page, "total_pages": total_pages,
            "total_items": len(matching), "_links": links, "_embedded": {"call_logs": items}}


# --- The webhook side ------------------------------------------------------------------------


Delivery = tuple[dict[str, str], bytes]


class VonageSimulator(WebhookSimulator):
    """Delivers one firm user's VIS CALL events to `webhook_url`, signed with `webhook_secret`.

    On creation it registers its webhook in `state` (as `POST /self/webhooks` would), with
    `metadata_policy` BODY (metadata and signature in the body) or HEADER (`X-VON-*` headers).
    A delivery not answered 200 is retried up to 5 times (`retry_pause_seconds` apart; VIS
    pauses 10 s), then the webhook is marked failed and gets nothing until renewed; an expired
    webhook gets nothing either. Pass `http` (e.g. an `httpx.AsyncClient` on an
    `ASGITransport`) to skip the network.
    """

    def __init__(self, webhook_url: str, webhook_secret: str, *, account_id: str,
                 http: httpx.AsyncClient | None = None, state: VonageApiState | None = None,
                 metadata_policy: str = "BODY", webhook_id: str | None = None,
                 retry_pause_seconds: float = 0.0) -> None:
        if metadata_policy not in METADATA_POLICIES:
            raise ValueError(f"metadata_policy must be one of {METADATA_POLICIES} (NONE sends no signature)")
        super().__init__(webhook_url, account_id, http)
        self._secret = webhook_secret
        self.state = state or VonageApiState(account_id=account_id)
        self.metadata_policy = metadata_policy
        self.retry_pause_seconds = retry_pause_seconds
        self.webhook_id = self.state.register_webhook(webhook_url, webhook_secret, metadata_policy,
                                                      webhook_id)["id"]

    async def handshake(self) -> bool:
        """VIS has no URL validation: registering a webhook never calls it."""
        return True

    def provider_call_id(self, call: SimulatedCall) -> str:
        return vbc_call_id(call)

    def webhook_requests(self, call: SimulatedCall) -> list[Delivery]:
        """First attempts of every event of `call`, in VIS's order."""
        return [self._delivery(event, attempt=1) for event in call_events(call, self.account_id)]

    def retry_of(self, delivery: Delivery) -> Delivery:
        """The same event delivered again: same `deliveryId`, `attempt` + 1, same signature."""
        headers, body = delivery
        envelope = json.loads(body)
        attempt = int(headers.get("X-VON-Attempt") or envelope.get("metadata", {}).get("attempt", 1))
        return self._delivery(envelope["event"], attempt=attempt + 1)

    async def deliver(self, delivery: Delivery) -> httpx.Response:
        headers, body = delivery
        return await self._post(headers, body)

    async def place_call(self, call: SimulatedCall, *, deliver: bool = True, shuffle: bool = False,
                         duplicate_each: int = 1, rng: random.Random | None = None) -> list[httpx.Response]:
        """Write `call` into the call log and (unless `deliver` is False: a dropped webhook) POST
        its events. `duplicate_each` delivers each event that many times (attempt 1, 2, ...), as
        VIS does when an answer is lost; `shuffle` scrambles the order."""
        require_copies(duplicate_each)
        self.state.record_call(call_log_record(call))
        if not deliver:
            return []
        deliveries = []
        for first in self.webhook_requests(call):
            attempts = [first]
            while len(attempts) < duplicate_each:
                attempts.append(self.retry_of(attempts[-1]))
            deliveries += attempts
        responses: list[httpx.Response] = []
        for delivery in arrange(deliveries, shuffle=shuffle, rng=rng):
            responses += await self._deliver_with_retries(delivery)
        return responses

    async def _deliver_with_retries(self, delivery: Delivery) -> list[httpx.Response]:
        responses: list[httpx.Response] = []
        for retry in range(MAX_RETRIES + 1):
            if not self.state.accepts_deliveries(self.webhook_id):
                break
            response = await self.deliver(delivery)
            responses.append(response)
            succeeded = response.status_code == 200  # VIS asks for a 200, not any 2xx
            self.state.count_delivery(self.webhook_id, succeeded, gave_up=not succeeded and retry == MAX_RETRIES)
            if succeeded:
                break
            await asyncio.sleep(self.retry_pause_seconds)
            delivery = self.retry_of(delivery)
        return responses

    def _delivery(self, event: dict[str, Any], *, attempt: int) -> Delivery:
        signature = sign_event(event, self._secret)
        delivery_id = str(uuid.uuid5(_NAMESPACE, f"{self.webhook_id}:{event['id']}:{event['state']}"))
        headers = {"Content-Type": "application/json"}
        envelope: dict[str, Any] = {"event": event}
        metadata = {"attempt": attempt, "deliveryId": delivery_id, "signature": signature,
                    "webhookId": self.webhook_id}
        if self.metadata_policy == "BODY":
            envelope["metadata"] = metadata
        else:
            headers |= {SIGNATURE_HEADER: signature, "X-VON-Webhook-Id": self.webhook_id,
                        "X-VON-Delivery-Id": delivery_id, "X-VON-Attempt": str(attempt)}
        return headers, json.dumps(envelope).encode()


def main() -> None:
    """Serve the fake APIs: `python -m calltime.fakes.vonage --port 8095 --account-id 257073`."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8095)
    parser.add_argument("--account-id", default="257073")
    arguments = parser.parse_args()
    uvicorn.run(create_api_app(VonageApiState(account_id=arguments.account_id)),
                host="127.0.0.1", port=arguments.port)


if __name__ == "__main__":
    main()
