"""A Microsoft Graph (Teams Phone callRecords) stand-in: change notifications, the call-record
API and subscriptions, shaped like the reference samples (providers.md §2,
samples/providers/graph_*).

`GraphSimulator` turns a `SimulatedCall` into the expanded callRecord Graph would keep and the
id-only `created` notification it would POST (with the subscription's `clientState`); a corrected
record (`update_call`) gets a bumped `version` and an `updated` notification. It also runs the
`validationToken` handshake. `create_api_app(state)` serves the pull side: the client-credentials
token endpoint, `GET /v1.0/communications/callRecords` with `$filter` on startDateTime and
`@odata.nextLink` paging, `GET …/callRecords/{id}?$expand=sessions(…)` (30-day retention, 404
beyond), and subscriptions with a 4230-minute ceiling, renewal by PATCH and validation on POST.

How the simulator writes a call (Graph documents no answered flag; these are calltime's
assumptions, mirrored by the adapter): the firm user's session starts when the call is answered,
so its length is the connected time; an unanswered call leaves a session that failed at
`callSetup`; an inbound call that reached voicemail adds a session whose callee endpoint has
`userAgent.role = "voicemail"`. See `expected_outcome` for what calltime must then report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from calltime.fakes.calls import SimulatedCall
from calltime.fakes.provider_common import (SlidingWindow, TokenStore, WebhookSimulator, arrange,
                                            bearer_token, error_answer, form_fields, require_copies,
                                            utc_now, utc_text)

VALIDATION_DEADLINE_SECONDS = 10.0
MAX_SUBSCRIPTION_LIFETIME = timedelta(minutes=4230)
RETENTION = timedelta(days=30)
DEFAULT_PAGE_SIZE = 60  # Graph's default for callRecords and for sessions
SCOPE = "https://graph.microsoft.com/.default"
_RECORD_NAMESPACE = uuid.UUID("5b0f6c7e-2f57-4bd4-9b8d-3c7a1f0e9a11")
_PUBLISH_DELAY = timedelta(minutes=4)  # Graph writes a record minutes after the call


def graph_time(moment: datetime) -> str:
    """`2020-02-25T18:52:21.2169880Z`, seven fractional digits as Graph writes them."""
    return utc_text(moment, digits=7)


def parse_time(text: str) -> datetime:
    """Graph-style times (up to 7 fractional digits, `Z` or an offset); ValueError otherwise."""
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})", text.strip())
    if match is None:
        raise ValueError(f"not a time: {text!r}")
    whole, fraction, zone = match.groups()
    micro = (fraction or "").ljust(6, "0")[:6]
    moment = datetime.fromisoformat(f"{whole}.{micro}{'+00:00' if zone == 'Z' else zone}")
    return moment.astimezone(timezone.utc)


# --- The API's state -------------------------------------------------------------------------


@dataclass
class GraphApiState:
    """What the fake Graph tenant holds. Mutated by the simulator and by tests (from another
    thread than the server's), hence the lock."""

    tenant_id: str
    client_id: str = "calltime-graph-app"
    client_secret: str = field(default="calltime-graph-secret", repr=False)
    page_size: int = DEFAULT_PAGE_SIZE
    sessions_page_size: int = DEFAULT_PAGE_SIZE
    rate_limit: int | None = None  # requests per token per window; None: unlimited
    rate_window_seconds: float = 1.0
    token_lifetime_seconds: int = 3599
    clock: Callable[[], datetime] = utc_now
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: TokenStore = field(default_factory=TokenStore, repr=False)  # token -> monotonic expiry
    tokens_issued: int = 0
    throttled: int = 0
    requests: list[str] = field(default_factory=list)  # "METHOD /path" of every API call
    injected: list[tuple[int, str | None]] = field(default_factory=list)  # (status, Retry-After)
    _window: SlidingWindow = field(default_factory=SlidingWindow, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put_record(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.records[record["id"]] = record

    def inject(self, status: int, *, retry_after: str | None = None, times: int = 1) -> None:
        """Answer the next `times` authorised API calls with `status` (a simulated fault)."""
        with self.lock:
            self.injected.extend([(status, retry_after)] * times)

    def add_subscription(self, subscription: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.subscriptions[subscription["id"]] = subscription
        return subscription

    def active_subscription(self, subscription_id: str) -> dict[str, Any] | None:
        """Graph deletes a subscription once it expires."""
        with self.lock:
            found = self.subscriptions.get(subscription_id)
            if found is not None and parse_time(found["expirationDateTime"]) <= self.clock():
                del self.subscriptions[subscription_id]
                return None
            return found

    def retained(self, record: dict[str, Any]) -> bool:
        return parse_time(record["startDateTime"]) >= self.clock() - RETENTION


# --- The simulator ---------------------------------------------------------------------------


class GraphSimulator(WebhookSimulator):
    """Stands in for Microsoft Graph towards one firm's webhook endpoint and API state.

    Pass `http` (e.g. an `httpx.AsyncClient` on an `ASGITransport`) to skip the network. The
    simulator's subscription exists from the start (created without a handshake; use
    `create_subscription` to go through one); deliveries stop once it has expired.
    """

    def __init__(self, webhook_url: str, webhook_secret: str, *, account_id: str,
                 http: httpx.AsyncClient | None = None, state: GraphApiState | None = None,
                 subscription_id: str | None = None) -> None:
        super().__init__(webhook_url, account_id, http)
        self.webhook_secret = webhook_secret
        self.state = state or GraphApiState(tenant_id=account_id)
        self.subscription_id = subscription_id or str(uuid.uuid4())
        self.state.add_subscription(self._subscription(self.subscription_id, webhook_url))

    # --- Handshake and subscriptions ----------------------------------------------------------

    async def handshake(self) -> bool:
        """Graph's notification-URL validation; True only if Graph would create the
        subscription (200 within 10 s, text/plain, the URL-decoded token as the body)."""
        return await validate_notification_url(self._client(), self.webhook_url)

    async def create_subscription(self, *, minutes: int = 4230) -> dict[str, Any]:
        """A new subscription, as Graph creates one: only after the handshake succeeds."""
        if not await self.handshake():
            raise RuntimeError("the notification URL failed Graph's validation")
        expires = self.state.clock() + timedelta(minutes=minutes)
        subscription = self._subscription(str(uuid.uuid4()), self.webhook_url, expires)
        self.subscription_id = subscription["id"]
        return self.state.add_subscription(subscription)

    def _subscription(self, subscription_id: str, url: str, expires: datetime | None = None) -> dict[str, Any]:
        expires = expires or self.state.clock() + MAX_SUBSCRIPTION_LIFETIME
        return {
            "id": subscription_id,
            "resource": "/communications/callRecords",
            "applicationId": self.state.client_id,
            "changeType": "created,updated",
            "notificationUrl": url,
            "lifecycleNotificationUrl": url,
            "expirationDateTime": graph_time(expires),
            "latestSupportedTlsVersion": "v1_2",
        }

    # --- Calls --------------------------------------------------------------------------------

    def provider_call_id(self, call: SimulatedCall) -> str:
        """The callRecord id (`callChainId`), stable per `call.call_key`."""
        return str(uuid.uuid5(_RECORD_NAMESPACE, call.call_key))

    @staticmethod
    def expected_outcome(call: SimulatedCall) -> tuple[str, int]:
        """(result, seconds) calltime must report for `call` as Graph records it: Graph keeps
        no reason we read for a declined call, so `rejected` reads as `missed`; a PSTN
        callee's voicemail is a connected call for Teams, so an outbound `voicemail` reads as
        `answered` for its `talk_seconds`."""
        if call.outcome == "rejected":
            return "missed", 0
        if call.outcome == "voicemail" and call.direction == "outbound":
            return "answered", call.talk_seconds
        return call.outcome, call.connected_seconds

    def call_record(self, call: SimulatedCall, *, version: int = 1) -> dict[str, Any]:
        """The record as `GET …/callRecords/{id}?$expand=sessions($expand=segments)` returns it."""
        record_id = self.provider_call_id(call)
        user = _user_endpoint(call, self.account_id)
        phone = _phone_endpoint(call)
        caller, callee = (user, phone) if call.direction == "outbound" else (phone, user)
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#communications/callRecords(sessions(segments()))/$entity",
            "version": version,
            "type": "peerToPeer",
            "modalities": ["audio"],
            "lastModifiedDateTime": graph_time(call.ended_at + _PUBLISH_DELAY * version),
            "startDateTime": graph_time(call.started_at),
            "endDateTime": graph_time(call.ended_at),
            "id": record_id,
            "joinWebUrl": None,
            "organizer_v2": {"id": caller["identity"][_kind(caller)]["id"], "identity": caller["identity"]},
            "sessions": [
                _session(record_id, index, s_caller, s_callee, start, end, failure)
                for index, (s_caller, s_callee, start, end, failure) in enumerate(
                    _sessions(call, caller, callee, user)
                )
            ],
        }

    def webhook_requests(
        self, call: SimulatedCall, *, change_type: str = "created"
    ) -> list[tuple[dict[str, str], bytes]]:
        """The POSTs Graph sends for the record of `call`: one id-only change notification."""
        record_id = self.provider_call_id(call)
        subscription = self.state.subscriptions.get(self.subscription_id) or {}
        item = {
            "subscriptionId": self.subscription_id,
            "clientState": self.webhook_secret,
            "changeType": change_type,
            "resource": f"communications/callRecords/{record_id}",
            "subscriptionExpirationDateTime": subscription.get("expirationDateTime"),
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.callRecord",
                "@odata.id": f"communications/callRecords/{record_id}",
                "id": record_id,
            },
            "tenantId": self.account_id,
        }
        return [(_JSON_HEADERS, json.dumps({"value": [item]}).encode())]

    def lifecycle_request(self, event: str = "reauthorizationRequired") -> tuple[dict[str, str], bytes]:
        subscription = self.state.subscriptions.get(self.subscription_id) or {}
        item = {
            "subscriptionId": self.subscription_id,
            "subscriptionExpirationDateTime": subscription.get("expirationDateTime"),
            "tenantId": self.account_id,
            "clientState": self.webhook_secret,
            "lifecycleEvent": event,
        }
        return _JSON_HEADERS, json.dumps({"value": [item]}).encode()

    async def place_call(self, call: SimulatedCall, *, deliver: bool = True, shuffle: bool = False,
                         duplicate_each: int = 1, rng: random.Random | None = None) -> list[httpx.Response]:
        """Write the call's record (version 1) and notify. `deliver=False` or a lapsed
        subscription: the record exists but no webhook arrives (reconciliation finds it)."""
        self.state.put_record(self.call_record(call, version=1))
        return await self._notify(call, "created", deliver, shuffle, duplicate_each, rng)

    async def update_call(
        self,
        corrected: SimulatedCall,
        *,
        deliver: bool = True,
        duplicate_each: int = 1,
    ) -> list[httpx.Response]:
        """Graph corrects a record: same id (same `call_key`), `version` bumped, `updated` sent."""
        record_id = self.provider_call_id(corrected)
        with self.state.lock:
            previous = self.state.records.get(record_id)
        if previous is None:
            raise KeyError(f"no record {record_id} to update; place the call first")
        self.state.put_record(self.call_record(corrected, version=previous["version"] + 1))
        return await self._notify(corrected, "updated", deliver, False, duplicate_each, None)

    async def _notify(self, call, change_type, deliver, shuffle, duplicate_each, rng) -> list[httpx.Response]:
        require_copies(duplicate_each)
        if not deliver or self.state.active_subscription(self.subscription_id) is None:
            return []
        deliveries = arrange(self.webhook_requests(call, change_type=change_type), duplicate_each, shuffle, rng)
        return [await self.send(headers, body) for headers, body in deliveries]

    async def send(self, headers: dict[str, str], body: bytes) -> httpx.Response:
        return await self._post(headers, body)


_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


async def validate_notification_url(http: httpx.AsyncClient, url: str) -> bool:
    # Graph's real tokens are sentences with spaces and colons, which must come back decoded.
    token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
    try:
        async with asyncio.timeout(VALIDATION_DEADLINE_SECONDS):
            response = await http.post(
                url, params={"validationToken": token}, headers={"Content-Type": "text/plain; charset=utf-8"}
            )
    except (TimeoutError, httpx.HTTPError):
        return False
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return response.status_code == 200 and media_type == "text/plain" and response.text == token


def _kind(endpoint: dict[str, Any]) -> str:
    return "user" if endpoint["identity"].get("user") else "phone"


def _user_identity(call: SimulatedCall, tenant_id: str) -> dict[str, Any]:
    return {"id": call.user_id, "displayName": f"User {call.extension_number}", "tenantId": tenant_id}


def _user_endpoint(call: SimulatedCall, tenant_id: str, *, role: str | None = None) -> dict[str, Any]:
    identity = _user_identity(call, tenant_id)
    agent: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.callRecords.clientUserAgent",
        "headerValue": "Teams/1.7.00.1234 (Windows)",
        "platform": "windows",
        "productFamily": "teams",
    }
    if role is not None:
        agent = {"@odata.type": "#microsoft.graph.callRecords.serviceUserAgent", "role": role}
    return {
        "@odata.type": "#microsoft.graph.callRecords.participantEndpoint",
        "identity": {"user": identity, "phone": None},
        "associatedIdentity": {**identity, "userPrincipalName": f"user{call.extension_number}@firm.example"},
        "userAgent": agent,
    }


def _phone_endpoint(call: SimulatedCall) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.callRecords.participantEndpoint",
        "identity": {"user": None, "phone": {"id": call.external_number, "displayName": None, "tenantId": None}},
        "userAgent": {"@odata.type": "#microsoft.graph.callRecords.serviceUserAgent", "role": "mediationServer"},
    }


def _sessions(call: SimulatedCall, caller, callee, user) -> list[tuple[Any, Any, datetime, datetime, Any]]:
    rung = call.started_at + timedelta(seconds=call.ring_seconds)
    unanswered = {"stage": "callSetup", "reason": "NoAnswer"}
    if call.outcome == "answered" or (call.outcome == "voicemail" and call.direction == "outbound"):
        return [(caller, callee, rung, call.ended_at, None)]
    sessions = [(caller, callee, call.started_at, rung, unanswered)]
    if call.outcome == "voicemail":
        voicemail = _user_endpoint(call, user["identity"]["user"]["tenantId"], role="voicemail")
        sessions.append((caller, voicemail, rung, call.ended_at, None))
    return sessions


def _session(record_id: str, index: int, caller, callee, start: datetime, end: datetime, failure) -> dict[str, Any]:
    session_id = str(uuid.uuid5(uuid.UUID(record_id), str(index)))
    session: dict[str, Any] = {
        "modalities": ["audio"],
        "startDateTime": graph_time(start),
        "endDateTime": graph_time(end),
        "id": session_id,
        "isTest": False,
        "caller": caller,
        "callee": callee,
        "failureInfo": failure,
        "segments": [{"startDateTime": graph_time(start), "endDateTime": graph_time(end), "id": session_id}],
    }
    return session


# --- The API ---------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, *, wait: float | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return error_answer(status, {"error": {"code": code, "message": message}}, wait=wait, headers=headers)


def _filter_bounds(expression: str) -> list[tuple[str, datetime]]:
    """`startDateTime ge X and startDateTime lt Y`: the only filter callRecords accept
    besides participants (providers.md §2.5)."""
    bounds = []
    for clause in re.split(r"\s+and\s+", expression.strip()):
        match = re.fullmatch(r"startDateTime\s+(ge|gt|le|lt)\s+(\S+)", clause.strip())
        if match is None:
            raise ValueError(f"unsupported filter clause: {clause!r}")
        bounds.append((match.group(1), parse_time(match.group(2))))
    return bounds


def _within(moment: datetime, bounds: list[tuple[str, datetime]]) -> bool:
    checks = {"ge": moment.__ge__, "gt": moment.__gt__, "le": moment.__le__, "lt": moment.__lt__}
    return all(checks[op](value) for op, value in bounds)


def _max_page_size(request: Request, default: int) -> int:
    match = re.search(r"odata\.maxpagesize=(\d+)", request.headers.get("prefer", ""))
    return min(default, int(match.group(1))) if match else default


def create_api_app(state: GraphApiState) -> FastAPI:
    app = FastAPI(title="fake Microsoft Graph")

    def authorise(request: Request) -> JSONResponse | None:
        with state.lock:
            state.requests.append(f"{request.method} {request.url.path}")
            token = bearer_token(request.headers.get("authorization"))
            now = time.monotonic()
            if not state.tokens.live(token, now):
                return _error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
            if state.injected:
                status, retry_after = state.injected.pop(0)
                headers = {"Retry-After": retry_after} if retry_after is not None else None
                return _error(status, "InjectedFault", "simulated fault", headers=headers)
            wait = state._window.take(token, now, state.rate_limit, state.rate_window_seconds)
            if wait is not None:
                state.throttled += 1
                return _error(429, "TooManyRequests", "Too many requests.", wait=wait)
            return None

    @app.post("/{tenant}/oauth2/v2.0/token")
    async def token(tenant: str, request: Request) -> JSONResponse:
        form = await form_fields(request)
        if tenant != state.tenant_id:
            return JSONResponse({"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant not found."}, 400)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if form.get("client_id") != state.client_id or not secrets.compare_digest(
            form.get("client_secret", ""), state.client_secret
        ):
            return JSONResponse({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}, 401)
        if form.get("scope") != SCOPE:
            return JSONResponse({"error": "invalid_scope"}, 400)
        with state.lock:
            issued = state.tokens.issue(time.monotonic() + state.token_lifetime_seconds)
            state.tokens_issued += 1
        lifetime = state.token_lifetime_seconds
        return JSONResponse({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                             "access_token": issued})

    @app.get("/v1.0/communications/callRecords")
    async def list_records(request: Request) -> JSONResponse:
        if (refusal := authorise(request)) is not None:
            return refusal
        expression = request.query_params.get("$filter", "")
        try:
            bounds = _filter_bounds(expression) if expression else []
            offset = int(request.query_params.get("$skiptoken", "0"))
        except ValueError as error:
            return _error(400, "BadRequest", str(error))
        with state.lock:
            records = [r for r in state.records.values() if state.retained(r)]
        records = sorted((r for r in records if _within(parse_time(r["startDateTime"]), bounds)),
                         key=lambda r: (r["startDateTime"], r["id"]))
        size = _max_page_size(request, state.page_size)
        page: dict[str, Any] = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#communications/callRecords",
            "value": [_listed(r) for r in records[offset:offset + size]],
        }
        if offset + size < len(records):
            query = {"$filter": expression, "$skiptoken": str(offset + size)} if expression else {"$skiptoken": str(offset + size)}
            page["@odata.nextLink"] = f"{str(request.base_url).rstrip('/')}{request.url.path}?{urlencode(query)}"
        return JSONResponse(page)

    @app.get("/v1.0/communications/callRecords/{record_id}")
    async def get_record(record_id: str, request: Request) -> JSONResponse:
        record = _authorised_record(request, record_id)
        if isinstance(record, JSONResponse):
            return record
        if "sessions" not in request.query_params.get("$expand", ""):
            return JSONResponse(_listed(record))
        sessions, link = _sessions_page(request, record_id, record, 0)
        body = {**record, "sessions": sessions}
        if link is not None:
            body["sessions@odata.nextLink"] = link
        return JSONResponse(body)

    @app.get("/v1.0/communications/callRecords/{record_id}/sessions")
    async def get_sessions(record_id: str, request: Request) -> JSONResponse:
        record = _authorised_record(request, record_id)
        if isinstance(record, JSONResponse):
            return record
        sessions, link = _sessions_page(request, record_id, record, int(request.query_params.get("$skiptoken", "0")))
        page: dict[str, Any] = {"value": sessions}
        if link is not None:
            page["@odata.nextLink"] = link
        return JSONResponse(page)

    def _authorised_record(request: Request, record_id: str) -> dict[str, Any] | JSONResponse:
        """The record, or the refusal: unauthorised, or 404 for one unknown or past retention."""
        if (refusal := authorise(request)) is not None:
            return refusal
        with state.lock:
            record = state.records.get(record_id)
        if record is None or not state.retained(record):
            return _error(404, "NotFound", f"callRecord {record_id} not found")
        return record

    def _sessions_page(request: Request, record_id: str, record: dict[str, Any],
                       offset: int) -> tuple[list[Any], str | None]:
        """Graph pages a record's sessions (`state.sessions_page_size` at a time): this page,
        and the link to the next one while any remain."""
        size = state.sessions_page_size
        if offset + size >= len(record["sessions"]):
            return record["sessions"][offset:offset + size], None
        query = urlencode({"$expand": "segments", "$skiptoken": str(offset + size)})
        link = f"{str(request.base_url).rstrip('/')}/v1.0/communications/callRecords/{record_id}/sessions?{query}"
        return record["sessions"][offset:offset + size], link

    @app.get("/v1.0/subscriptions")
    async def list_subscriptions(request: Request) -> JSONResponse:
        if (refusal := authorise(request)) is not None:
            return refusal
        with state.lock:
            ids = list(state.subscriptions)
        active = [s for i in ids if (s := state.active_subscription(i)) is not None]
        return JSONResponse({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions",
                             "value": [dict(s) for s in active]})

    @app.patch("/v1.0/subscriptions/{subscription_id}")
    async def renew(subscription_id: str, request: Request) -> JSONResponse:
        if (refusal := authorise(request)) is not None:
            return refusal
        subscription = state.active_subscription(subscription_id)
        if subscription is None:
            return _error(404, "ResourceNotFound", "The object was not found.")
        try:
            expires = _acceptable_expiry((await request.json()).get("expirationDateTime"))
        except (ValueError, AttributeError) as error:
            return _error(400, "ExtensionError", str(error))
        with state.lock:
            subscription["expirationDateTime"] = graph_time(expires)
        return JSONResponse(dict(subscription))

    @app.post("/v1.0/subscriptions")
    async def create(request: Request) -> JSONResponse:
        if (refusal := authorise(request)) is not None:
            return refusal
        try:
            wanted = await request.json()
            expires = _acceptable_expiry(wanted.get("expirationDateTime"))
            if str(wanted.get("resource", "")).strip("/") != "communications/callRecords":
                raise ValueError("only /communications/callRecords is served here")
            url = wanted["notificationUrl"]
        except (ValueError, KeyError, AttributeError) as error:
            return _error(400, "ExtensionError", str(error))
        async with httpx.AsyncClient() as http:
            if not await validate_notification_url(http, url):
                return _error(400, "ValidationError", "Subscription validation request failed.")
        subscription = {
            "id": str(uuid.uuid4()), "resource": "/communications/callRecords",
            "applicationId": state.client_id, "changeType": wanted.get("changeType", "created"),
            "notificationUrl": url, "lifecycleNotificationUrl": wanted.get("lifecycleNotificationUrl"),
            "expirationDateTime": graph_time(expires), "latestSupportedTlsVersion": "v1_2",
        }
        state.add_subscription(subscription)
        return JSONResponse(dict(subscription), status_code=201)

    def _acceptable_expiry(value: Any) -> datetime:
        if not isinstance(value, str):
            raise ValueError("expirationDateTime is required")
        expires = parse_time(value)
        now = state.clock()
        if expires <= now:
            raise ValueError("Subscription expiration must be in the future.")
        if expires > now + MAX_SUBSCRIPTION_LIFETIME:
            raise ValueError("Subscription expiration can only be 4230 minutes in the future.")
        return expires

    return app


def _listed(record: dict[str, Any]) -> dict[str, Any]:
    """The list (and an unexpanded GET) omits sessions (providers.md §2.5)."""
    return {k: v for k, v in record.items() if k != "sessions" and k != "@odata.context"}


def main(argv: list[str] | None = None) -> None:
    """`python -m calltime.fakes.graph --port 8091 --tenant <id>`: the fake Graph API alone."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--tenant", default="11111111-2222-3333-4444-555555555555")
    parser.add_argument("--client-id", default="calltime-graph-app")
    parser.add_argument("--client-secret", default="calltime-graph-secret")
    args = parser.parse_args(argv)
    state = GraphApiState(tenant_id=args.tenant, client_id=args.client_id, client_secret=args.client_secret)
    uvicorn.run(create_api_app(state), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
