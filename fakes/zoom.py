"""A Zoom Phone simulator: the signed webhooks one call produces, their delivery, the 72-hourly
URL re-validation, and the call-history API with Server-to-Server OAuth (providers.md §3).

Record shapes follow Zoom's own OpenAPI examples (tests/fixtures/zoom/zoom_phone.*.json). The
real-time events besides `*_ended` (ringing, answered, hold, missed, ...) are written in the
shape of the `*_ended` example; ingest ignores them. Simplification: the simulator uses one id for
the firm user's Zoom user and phone extension (`SimulatedCall.user_id`); real Zoom has two.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from calltime.fakes.calls import SimulatedCall
from calltime.fakes.provider_common import (SlidingWindow, TokenStore, WebhookSimulator, arrange,
                                            basic_credentials, bearer_token, error_answer, require_copies,
                                            utc_now)
from calltime.phone import is_extension

VALIDATION_DEADLINE_SECONDS = 3.0  # Zoom's answer deadline for every request
REVALIDATION_INTERVAL = timedelta(hours=72)
NEXT_PAGE_TOKEN_LIFETIME_SECONDS = 15 * 60
MAX_PAGE_SIZE = 300
DEFAULT_PAGE_SIZE = 30
MAX_RANGE = timedelta(days=31)

# Which record events an app subscribed to: legacy log (deprecated), v2 history, v3 element.
GENERATIONS = ("log", "history", "element")
_RECORD_EVENT = {"log": "call_log_completed", "history": "call_history_completed",
                 "element": "call_element_completed"}
_RESULTS = {"answered": "answered", "missed": "no_answer", "voicemail": "voicemail", "rejected": "rejected"}
_LEGACY_RESULTS = {"answered": "Call connected", "missed": "No Answer", "voicemail": "Voicemail",
                   "rejected": "Rejected"}
# `handup_result` besides "Call connected" (the sample's) is UNCONFIRMED; these are guesses.
_HANGUP = {"missed": "No Answer", "voicemail": "Voicemail", "rejected": "Rejected"}
_NAMESPACE = uuid.UUID("0b7c6a52-59a4-4c0e-9d0e-5a1f6f3b2c11")


def _zoom_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Zoom's `x-zm-signature`, written independently of the adapter so one cannot hide the other's bug."""
    mac = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
    return "v0=" + mac.hexdigest()


# --- Ids and the two sides of a call ------------------------------------------------------------------


def call_id_for(call: SimulatedCall) -> str:
    """Zoom's numeric `call_id` (19 digits), derived from the call key."""
    digest = int(hashlib.sha256(f"call:{call.call_key}".encode()).hexdigest(), 16)
    return str(7_000_000_000_000_000_000 + digest % 1_000_000_000_000_000_000)


def _dated_uuid(call: SimulatedCall, kind: str) -> str:
    return f"{call.started_at:%Y%m%d}-{uuid.uuid5(_NAMESPACE, f'{kind}:{call.call_key}')}"


def _internal(call: SimulatedCall) -> bool:
    """A SimulatedCall whose other side is a short number is a call to a colleague's extension."""
    return is_extension(call.external_number)


def _firm_side(call: SimulatedCall) -> dict[str, Any]:
    return {"ext_id": call.user_id, "ext_number": call.extension_number, "did": call.user_number,
            "name": f"User {call.extension_number}", "ext_type": "user", "number_type": "zoom_pstn"}


def _other_side(call: SimulatedCall) -> dict[str, Any]:
    if _internal(call):
        return {"ext_id": f"ext-{call.external_number}", "ext_number": call.external_number, "did": None,
                "name": f"User {call.external_number}", "ext_type": "user", "number_type": "zoom_pstn"}
    return {"ext_id": None, "ext_number": None, "did": call.external_number, "name": call.external_number,
            "ext_type": None, "number_type": "external_pstn"}


def _sides(call: SimulatedCall) -> tuple[dict[str, Any], dict[str, Any]]:
    """(caller, callee)."""
    firm, other = _firm_side(call), _other_side(call)
    return (firm, other) if call.direction == "outbound" else (other, firm)


def _prefixed(prefix: str, side: dict[str, Any]) -> dict[str, Any]:
    fields = {
        f"{prefix}_ext_id": side["ext_id"], f"{prefix}_name": side["name"],
        f"{prefix}_did_number": side["did"], f"{prefix}_ext_number": side["ext_number"],
        f"{prefix}_ext_type": side["ext_type"], f"{prefix}_number_type": side["number_type"],
        f"{prefix}_country_iso_code": "US",
    }
    return {key: value for key, value in fields.items() if value is not None}


# --- Records ------------------------------------------------------------------------------------------


def _common_record(call: SimulatedCall) -> dict[str, Any]:
    caller, callee = _sides(call)
    record: dict[str, Any] = {
        "call_id": call_id_for(call),
        "connect_type": "internal" if _internal(call) else "external",
        "call_type": "general",
        "direction": call.direction,
        **_prefixed("caller", caller),
        **_prefixed("callee", callee),
        "start_time": _zoom_time(call.started_at),
    }
    if call.answered_at is not None:
        record["answer_time"] = _zoom_time(call.answered_at)
    record["end_time"] = _zoom_time(call.ended_at)
    return record


def call_element(call: SimulatedCall) -> dict[str, Any]:
    """One v3 `call_elements[]` item (and, renamed, the v2 `call_logs[]` item)."""
    return {
        "call_element_id": _dated_uuid(call, "element"),
        "call_history_uuid": _dated_uuid(call, "history"),
        **_common_record(call),
        "event": "outgoing" if call.direction == "outbound" else "incoming",
        "result": _RESULTS[call.outcome],
        "talk_time": call.talk_seconds if call.answered else 0,
        "hold_time": call.hold_seconds if call.answered else 0,
        "wait_time": call.ring_seconds,
    }


def history_log(call: SimulatedCall) -> dict[str, Any]:
    element = call_element(call)
    return {"id": element.pop("call_element_id"), "call_path_id": element.pop("call_history_uuid"), **element}


def legacy_log(call: SimulatedCall) -> dict[str, Any]:
    """One legacy `call_logs[]` item: numbers with a type (1 extension, 2 phone number)."""
    caller, callee = _sides(call)
    record: dict[str, Any] = {"id": str(uuid.uuid5(_NAMESPACE, f"log:{call.call_key}")), "call_type": "voip"}
    for prefix, side in (("caller", caller), ("callee", callee)):
        record[f"{prefix}_number"] = side["ext_number"] or side["did"]
        record[f"{prefix}_number_type"] = 1 if side["ext_number"] else 2
        record[f"{prefix}_name"] = side["name"]
        if side["did"]:
            record[f"{prefix}_did_number"] = side["did"]
        if side["ext_id"] == call.user_id:
            record[f"{prefix}_user_id"] = call.user_id
    record.update({
        "direction": call.direction,
        "duration": call.connected_seconds,
        "result": _LEGACY_RESULTS[call.outcome],
        "date_time": _zoom_time(call.started_at),
        "path": "extension" if _internal(call) else "pstn",
        "has_recording": False,
        "has_voicemail": call.outcome == "voicemail",
        "call_id": call_id_for(call),
        "call_end_time": _zoom_time(call.ended_at),
    })
    if call.answered_at is not None:
        record["answer_start_time"] = _zoom_time(call.answered_at)
    return record


def call_history_item(call: SimulatedCall) -> dict[str, Any]:
    """The call as `GET /v2/phone/call_history` lists it (`duration`: connected seconds)."""
    common = _common_record(call)
    return {
        "call_history_uuid": _dated_uuid(call, "history"),
        **common,
        "international": False,
        "duration": call.connected_seconds,
        "call_result": _RESULTS[call.outcome],
        "hide_caller_id": False,
        "end_to_end": False,
        "recording_status": "non_recorded",
    }


# --- Real-time events ---------------------------------------------------------------------------------


def _realtime_party(side: dict[str, Any], *, firm: bool) -> dict[str, Any]:
    party: dict[str, Any] = {}
    if side["ext_id"]:
        number = side["ext_number"]
        # Real-time events write extension numbers as JSON numbers (see the *_ended samples).
        party |= {"extension_id": side["ext_id"], "extension_type": "user",
                  "extension_number": int(number) if number.isdigit() else number}
        if firm:
            party["user_id"] = side["ext_id"]
    if side["did"]:
        party["phone_number"] = side["did"]
    party["connection_type"] = "voip" if side["ext_id"] else "pstn_off_net"
    return party


def _realtime_object(call: SimulatedCall, at_key: str | None = None, at: datetime | None = None,
                     **extra: Any) -> dict[str, Any]:
    caller, callee = _sides(call)
    firm_is_caller = call.direction == "outbound"
    obj: dict[str, Any] = {
        "call_id": call_id_for(call),
        "caller": _realtime_party(caller, firm=firm_is_caller),
        "callee": _realtime_party(callee, firm=not firm_is_caller),
        "ringing_start_time": _zoom_time(call.started_at),
    }
    if at_key and at is not None:
        obj[at_key] = _zoom_time(at)
    return obj | extra


def _realtime_events(call: SimulatedCall) -> list[tuple[str, datetime, dict[str, Any]]]:
    side = "caller" if call.direction == "outbound" else "callee"
    events = [(f"phone.{side}_ringing", call.started_at, _realtime_object(call))]
    if call.answered:
        answered = call.answered_at or call.started_at
        events.append((f"phone.{side}_{'connected' if side == 'caller' else 'answered'}", answered,
                       _realtime_object(call, "answer_start_time", answered)))
        if call.hold_seconds:
            held = answered + timedelta(seconds=call.talk_seconds // 2)
            events.append((f"phone.{side}_hold", held, _realtime_object(call, "hold_start_time", held)))
            back = held + timedelta(seconds=call.hold_seconds)
            events.append((f"phone.{side}_unhold", back, _realtime_object(call, "unhold_start_time", back)))
        ended = _realtime_object(call, "answer_start_time", answered, call_end_time=_zoom_time(call.ended_at),
                                 handup_result="Call connected")
        events.append((f"phone.{side}_ended", call.ended_at, ended))
    elif side == "caller":
        ended = _realtime_object(call, "call_end_time", call.ended_at, handup_result=_HANGUP[call.outcome])
        events.append(("phone.caller_ended", call.ended_at, ended))
    else:
        final = "phone.callee_rejected" if call.outcome == "rejected" else "phone.callee_missed"
        events.append((final, call.ended_at, _realtime_object(call, "call_end_time", call.ended_at)))
    return events


# --- The call-history API state -----------------------------------------------------------------------


@dataclass
class ZoomApiState:
    """The provider's side of the pull API: the account's call history, OAuth clients and tokens,
    per-token rate limiting and switchable faults. Thread-safe (the server runs in a thread)."""

    account_id: str
    client_id: str = "zoom-client-id"
    client_secret: str = "zoom-client-secret"
    token_lifetime_seconds: int = 3599
    rate_limit: int | None = None  # requests per token per window; None: unlimited
    rate_window_seconds: float = 1.0
    retry_after_seconds: int = 1
    clock: Callable[[], float] = time.time
    fail_next_n_with_5xx: int = 0
    throttle_next_n: int = 0  # the next n API calls answer 429 regardless of the rate
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # call_history_uuid -> item
    tokens: TokenStore = field(default_factory=TokenStore)  # access token -> expires at
    tokens_issued: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    _page_tokens: dict[str, tuple[tuple[str, ...], int, float]] = field(default_factory=dict)
    _window: SlidingWindow = field(default_factory=SlidingWindow)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __repr__(self) -> str:
        return f"ZoomApiState(account_id={self.account_id!r}, records={len(self.records)})"

    def record(self, call: SimulatedCall) -> dict[str, Any]:
        item = call_history_item(call)
        with self._lock:
            self.records[item["call_history_uuid"]] = item
        return item

    def issue_token(self) -> str:
        with self._lock:
            self.tokens_issued += 1
            return self.tokens.issue(self.clock() + self.token_lifetime_seconds, nbytes=32)

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.expire_all(0.0)

    def _over_rate(self, token: str) -> bool:
        now = self.clock()
        with self._lock:
            if self.throttle_next_n > 0:
                self.throttle_next_n -= 1
                return True
            return self._window.take(token, now, self.rate_limit, self.rate_window_seconds) is not None

    def _page(self, query: tuple[str, ...], offset: int, size: int) -> dict[str, Any]:
        start, end, time_type = query
        low, high = datetime.fromisoformat(start), datetime.fromisoformat(end)
        with self._lock:
            matching = sorted(
                (item for item in self.records.values() if low <= datetime.fromisoformat(item[time_type]) <= high),
                key=lambda item: (item["start_time"], item["call_history_uuid"]),
            )
            page = matching[offset:offset + size]
            token = ""
            if offset + size < len(matching):
                token = secrets.token_urlsafe(24)
                self._page_tokens[token] = (query, offset + size, self.clock())
        return {
            "call_history": page, "from": start, "to": end, "page_count": -(-len(matching) // size),
            "page_size": size, "total_records": len(matching), "next_page_token": token,
        }

    def _resume(self, token: str) -> tuple[tuple[str, ...], int] | None:
        with self._lock:
            found = self._page_tokens.get(token)
        if found is None or self.clock() - found[2] > NEXT_PAGE_TOKEN_LIFETIME_SECONDS:
            return None
        return found[0], found[1]


def _error(status: int, code: int, message: str, *, wait: float | None = None) -> JSONResponse:
    return error_answer(status, {"code": code, "message": message}, wait=wait)


def _parse_query_time(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def create_api_app(state: ZoomApiState) -> FastAPI:
    """`POST /oauth/token` (account_credentials) and `GET /v2/phone/call_history`."""
    app = FastAPI(title="fake Zoom Phone API")

    @app.post("/oauth/token")
    async def token(request: Request) -> JSONResponse:
        credentials = basic_credentials(request.headers.get("authorization"))
        valid = credentials is not None and hmac.compare_digest(
            f"{credentials[0]}:{credentials[1]}".encode(), f"{state.client_id}:{state.client_secret}".encode())
        if not valid:
            return JSONResponse({"reason": "Invalid client_id or client_secret", "error": "invalid_client"},
                                status_code=401)
        if request.query_params.get("grant_type") != "account_credentials":
            return JSONResponse({"reason": "Unsupported grant type", "error": "unsupported_grant_type"},
                                status_code=400)
        if request.query_params.get("account_id") != state.account_id:
            return JSONResponse({"reason": "Invalid account_id", "error": "invalid_request"}, status_code=400)
        return JSONResponse({"access_token": state.issue_token(), "token_type": "bearer",
                             "expires_in": state.token_lifetime_seconds,
                             "scope": "phone:read:list_call_logs:admin", "api_url": "https://api.zoom.us"})

    @app.get("/v2/phone/call_history")
    async def call_history(request: Request) -> JSONResponse:
        params = dict(request.query_params)
        state.requests.append(("call_history", params))
        bearer = bearer_token(request.headers.get("authorization"))
        if not state.tokens.live(bearer, state.clock()):
            return _error(401, 124, "Invalid access token.")
        if state.fail_next_n_with_5xx > 0:
            state.fail_next_n_with_5xx -= 1
            return _error(503, 503, "Service temporarily unavailable.")
        if state._over_rate(bearer):
            return _error(429, 429, "You have reached the maximum per-second rate limit for this API.",
                          wait=state.retry_after_seconds)
        return _call_history_answer(state, params)

    return app


def _call_history_answer(state: ZoomApiState, params: dict[str, str]) -> JSONResponse:
    try:
        size = int(params.get("page_size", DEFAULT_PAGE_SIZE))
    except ValueError:
        return _error(400, 300, "Invalid field: page_size.")
    if not 1 <= size <= MAX_PAGE_SIZE:
        return _error(400, 300, f"page_size must be between 1 and {MAX_PAGE_SIZE}.")
    if params.get("next_page_token"):
        resumed = state._resume(params["next_page_token"])
        if resumed is None:
            return _error(400, 300, "The next page token is invalid or expired.")
        return JSONResponse(state._page(resumed[0], resumed[1], size))
    now = datetime.fromtimestamp(state.clock(), tz=timezone.utc)
    low = _parse_query_time(params["from"]) if "from" in params else now - timedelta(days=1)
    high = _parse_query_time(params["to"]) if "to" in params else (now if "from" not in params else None)
    if low is None or high is None:
        return _error(400, 300, "Invalid from or to; to is required with from.")
    if high - low > MAX_RANGE:
        return _error(400, 300, "The date range must not exceed one month.")
    time_type = params.get("time_type", "start_time")
    if time_type not in ("start_time", "end_time"):
        return _error(400, 300, "Invalid field: time_type.")
    return JSONResponse(state._page((low.isoformat(), high.isoformat(), time_type), 0, size))


# --- The simulator ------------------------------------------------------------------------------------


class ZoomSimulator(WebhookSimulator):
    """Delivers a Zoom Phone account's webhooks to `webhook_url` and keeps its call history.

    `generations` are the record events the app is subscribed to (any of "log", "history",
    "element"); `realtime` adds the real-time events (ringing ... ended). A failed (re)validation
    stops deliveries until a validation succeeds, as Zoom stops sending to an endpoint that no
    longer answers its check. Pass `http` (e.g. an `httpx.AsyncClient` on an `ASGITransport`) to
    skip the network, `clock` to choose the signing time.
    """

    def __init__(self, webhook_url: str, webhook_secret: str, *, account_id: str,
                 http: httpx.AsyncClient | None = None, state: ZoomApiState | None = None,
                 generations: Sequence[str] = ("element",), realtime: bool = True,
                 clock: Callable[[], datetime] = utc_now) -> None:
        unknown = set(generations) - set(GENERATIONS)
        if unknown:
            raise ValueError(f"unknown record generations {sorted(unknown)}; use {GENERATIONS}")
        super().__init__(webhook_url, account_id, http, timeout=10.0)
        self._secret = webhook_secret
        self.state = state or ZoomApiState(account_id=account_id)
        self.generations = tuple(generations)
        self.realtime = realtime
        self.clock = clock
        self.validated: bool | None = None  # None: never checked
        self.last_validated_at: datetime | None = None

    # -- URL validation --

    async def handshake(self) -> bool:
        """Zoom's `endpoint.url_validation`: a signed plainToken; accepted only for a 200 within
        3 s whose JSON echoes the plainToken with its HMAC as encryptedToken."""
        plain = secrets.token_urlsafe(16)
        body = _compact({"payload": {"plainToken": plain}, "event_ts": _ms(self.clock()),
                         "event": "endpoint.url_validation"})
        try:
            async with asyncio.timeout(VALIDATION_DEADLINE_SECONDS):
                response = await self.send(self.signed(body))
            answer = response.json()
        except (TimeoutError, httpx.HTTPError, ValueError):
            answer, response = None, None
        expected = hmac.new(self._secret.encode(), plain.encode(), hashlib.sha256).hexdigest()
        accepted = (
            response is not None and response.status_code == 200 and isinstance(answer, dict)
            and answer.get("plainToken") == plain
            and isinstance(answer.get("encryptedToken"), str)
            and hmac.compare_digest(answer["encryptedToken"], expected)
        )
        self.validated = accepted
        if accepted:
            self.last_validated_at = self.clock()
        return accepted

    async def revalidate(self) -> bool:
        """The check Zoom repeats every 72 hours (REVALIDATION_INTERVAL) with a new plainToken."""
        return await self.handshake()

    def revalidation_due(self) -> bool:
        return self.last_validated_at is None or self.clock() - self.last_validated_at >= REVALIDATION_INTERVAL

    # -- Webhooks --

    def provider_call_id(self, call: SimulatedCall) -> str:
        return call_id_for(call)

    def event_bodies(self, call: SimulatedCall) -> list[bytes]:
        """Every event body for `call`, in Zoom's order: real-time events, then the records."""
        bodies = []
        if self.realtime:
            bodies = [self._envelope(event, at, obj) for event, at, obj in _realtime_events(call)]
        return bodies + self._record_bodies(call)

    def _record_bodies(self, call: SimulatedCall) -> list[bytes]:
        side = "caller" if call.direction == "outbound" else "callee"
        written = call.ended_at + timedelta(seconds=30)
        bodies = []
        for generation in self.generations:
            key, item = {
                "log": ("call_logs", legacy_log),
                "history": ("call_logs", history_log),
                "element": ("call_elements", call_element),
            }[generation]
            obj = {key: [item(call)], "user_id": call.user_id}
            bodies.append(self._envelope(f"phone.{side}_{_RECORD_EVENT[generation]}", written, obj))
        return bodies

    def _envelope(self, event: str, at: datetime, obj: dict[str, Any]) -> bytes:
        return _compact({"event": event, "payload": {"account_id": self.account_id, "object": obj},
                         "event_ts": _ms(at)})

    def signed(self, body: bytes, at: datetime | None = None) -> tuple[dict[str, str], bytes]:
        timestamp = str(int((at or self.clock()).timestamp()))
        headers = {
            "content-type": "application/json; charset=utf-8",
            "user-agent": "Zoom Marketplace/1.0a",
            "clientid": "simulated-zoom-app",
            "x-zm-trackingid": f"v=2.0&c={uuid.uuid4().hex}",
            "x-zm-request-timestamp": timestamp,
            "x-zm-signature": sign(self._secret, timestamp, body),
        }
        return headers, body

    def webhook_requests(self, call: SimulatedCall) -> list[tuple[dict[str, str], bytes]]:
        """The signed deliveries for `call`, in Zoom's order, signed now (`clock`)."""
        return [self.signed(body) for body in self.event_bodies(call)]

    async def send(self, delivery: tuple[dict[str, str], bytes]) -> httpx.Response:
        headers, body = delivery
        return await self._post(headers, body)

    async def place_call(self, call: SimulatedCall, *, deliver: bool = True, shuffle: bool = False,
                         duplicate_each: int = 1, rng: random.Random | None = None) -> list[httpx.Response]:
        """Record `call` in the call history and POST its events; `deliver=False` loses them
        (a dropped webhook: only reconciliation finds the call). Each copy of a duplicated event
        is signed when sent, as Zoom's retries are."""
        require_copies(duplicate_each)
        self.state.record(call)
        if not deliver:
            return []
        return await self._deliver(self.event_bodies(call), shuffle, duplicate_each, rng)

    async def update_call(self, call: SimulatedCall, *, deliver: bool = True) -> list[httpx.Response]:
        """A corrected call (same `call_key`): the call history changes and, with `deliver`, the
        record events are issued again with the corrected record (same record ids)."""
        self.state.record(call)
        if not deliver:
            return []
        return await self._deliver(self._record_bodies(call), False, 1, None)

    async def _deliver(self, bodies: Iterable[bytes], shuffle: bool, duplicate_each: int,
                       rng: random.Random | None) -> list[httpx.Response]:
        if self.validated is False:
            return []
        return [await self.send(self.signed(body)) for body in arrange(list(bodies), duplicate_each, shuffle, rng)]


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the fake call-history API: `python -m calltime.fakes.zoom --port 8090`."""
    import uvicorn

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account-id", default="fake-zoom-account")
    args = parser.parse_args(argv)
    uvicorn.run(create_api_app(ZoomApiState(account_id=args.account_id)), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
