"""A Dialpad stand-in: the signed call events a call produces, their delivery, and the call log.

`DialpadSimulator` turns a provider-neutral `SimulatedCall` into Dialpad's view of it
(providers.md §4): one `CallProto` per state transition of each leg, shaped like the reference
sample `dialpad_call_get_response.json`, posted as compact JWS (HS256 with the webhook secret).
An inbound call has two legs, as Dialpad routes it: the entry-point leg targeting the dialled
office, and the firm user's leg (the one calltime bills). Both legs are written to the call log
that `create_api_app` serves as `GET /api/v2/call`.

How a `SimulatedCall` outcome reads in Dialpad's terms: `answered` is connected; `voicemail`
(inbound) rings, goes to voicemail and carries a voicemail recording, never connected; an
outbound `voicemail` is the far end's mailbox picking up, i.e. connected for `talk_seconds`;
`missed` and `rejected` ring and hang up without connecting (Dialpad has no "rejected").

Dialpad documents no URL handshake, no retry policy and no corrected records, so `handshake`
is trivially True and there is no `update_call`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from calltime.fakes.calls import SimulatedCall
from calltime.fakes.provider_common import (SlidingWindow, WebhookSimulator, arrange, bearer_token,
                                            error_answer, require_copies, utc_now)

ALL_STATES = ("calling", "ringing", "connected", "hold", "voicemail", "missed", "hangup")
DEFAULT_PAGE_SIZE = 10
DEFAULT_RATE_LIMIT = 1200  # GET /api/v2/call: 1200 per minute (providers.md §4.5)
DEFAULT_RATE_WINDOW_SECONDS = 60.0
# UNCONFIRMED (providers.md §4.3): the Content-Type of signed posts; calltime does not read it.
SIGNED_CONTENT_TYPE = "application/jwt"
JWT_LIFETIME = timedelta(minutes=5)  # only with time_claims=True: Dialpad's claims are unknown

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_OFFICE_ID = "124"
_OFFICE_NUMBER = "+14155551000"


def _ms(moment: datetime) -> int:
    return (moment.astimezone(timezone.utc) - _EPOCH) // timedelta(milliseconds=1)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign(claims: dict[str, Any], secret: str, *, alg: str = "HS256") -> bytes:
    """A compact JWS of `claims` as Dialpad would post it (header per the COMPUTED sample)."""
    header = _b64url(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = _b64url(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}".encode("ascii")


def leg_ids(call: SimulatedCall) -> tuple[str, str]:
    """(the firm user's leg `call_id`, the entry-point leg `call_id`), stable per `call_key`."""
    base = int(hashlib.sha256(call.call_key.encode()).hexdigest()[:12], 16) * 10
    return str(base + 1), str(base)


@dataclass(frozen=True)
class _Transition:
    state: str
    at: datetime


def _user_transitions(call: SimulatedCall) -> list[_Transition]:
    first = "calling" if call.direction == "outbound" else "ringing"
    rung = call.started_at + timedelta(seconds=call.ring_seconds)
    steps = [_Transition(first, call.started_at)]
    if _connected_at(call) is not None:
        steps.append(_Transition("connected", rung))
        if call.hold_seconds:
            held = rung + timedelta(seconds=call.talk_seconds) / 2
            steps += [_Transition("hold", held),
                      _Transition("connected", held + timedelta(seconds=call.hold_seconds))]
    elif call.outcome == "voicemail":
        steps.append(_Transition("voicemail", rung))
    elif call.direction == "inbound":
        steps.append(_Transition("missed", rung))
    return [*steps, _Transition("hangup", call.ended_at)]


def _connected_at(call: SimulatedCall) -> datetime | None:
    outbound_mailbox = call.direction == "outbound" and call.outcome == "voicemail"
    if call.answered or outbound_mailbox:
        return call.started_at + timedelta(seconds=call.ring_seconds)
    return None


class _CallView:
    """Writes the `CallProto`s of one simulated call."""

    def __init__(self, call: SimulatedCall) -> None:
        self.call = call
        self.user_leg, self.entry_leg = leg_ids(call)
        self.inbound = call.direction == "inbound"

    def events(self) -> list[dict[str, Any]]:
        """Every state transition of every leg, in event-time order."""
        timeline = [(t, self._user_proto) for t in _user_transitions(self.call)]
        if self.inbound:
            timeline += [(t, self._entry_proto) for t in self._entry_transitions()]
        timeline.sort(key=lambda item: (item[0].at, item[0].state == "hangup"))
        return [write(t) for t, write in timeline]

    def records(self) -> list[dict[str, Any]]:
        """The call-log items: each leg as it concluded."""
        records = [self._user_proto(_Transition("hangup", self.call.ended_at))]
        if self.inbound:
            records.append(self._entry_proto(_Transition("hangup", self.call.ended_at)))
        return records

    def _entry_transitions(self) -> list[_Transition]:
        return [_Transition("ringing", self.call.started_at),
                _Transition("hangup", self.call.ended_at)]

    def _common(self, call_id: str, transition: _Transition, connected: datetime | None) -> dict[str, Any]:
        call = self.call
        ended = transition.state == "hangup"
        proto: dict[str, Any] = {
            "call_id": call_id,
            "contact": {"email": "", "id": str(int(call_id) + 7), "name": call.external_number,
                        "phone": call.external_number, "type": "local"},
            "date_rang": str(_ms(call.started_at)) if self.inbound else None,
            "date_started": str(_ms(call.started_at)),
            "direction": call.direction,
            "entry_point_call_id": self.entry_leg if self.inbound else call_id,
            "master_call_id": self.entry_leg if self.inbound else call_id,
            "event_timestamp": str(_ms(transition.at)),
            "external_number": call.external_number,
            "is_transferred": False,
            "proxy_target": {},
            "state": transition.state,
            "was_recorded": False,
        }
        if connected is not None and connected <= transition.at:
            proto["date_connected"] = str(_ms(connected))
        if ended:
            proto["date_ended"] = str(_ms(transition.at))
            proto["total_duration"] = _ms(transition.at) - _ms(call.started_at)
            proto["duration"] = _ms(transition.at) - _ms(connected) if connected else 0
        return {k: v for k, v in proto.items() if v is not None}

    def _user_proto(self, transition: _Transition) -> dict[str, Any]:
        call = self.call
        proto = self._common(self.user_leg, transition, _connected_at(call))
        proto.update({
            "internal_number": call.user_number,
            "target": {"email": "", "id": call.user_id, "name": "Firm User",
                       "phone": call.user_number, "type": "user"},
        })
        if self.inbound:
            proto["entry_point_target"] = self._office()
            proto["group_id"] = f"Office:{_OFFICE_ID}"
        if call.outcome == "voicemail" and self.inbound and transition.state in ("voicemail", "hangup"):
            proto["voicemail_share_link"] = f"https://dialpad.com/shared/voicemail/{self.user_leg}"
            rung = call.started_at + timedelta(seconds=call.ring_seconds)
            proto["recording_details"] = [{
                "id": f"vm-{self.user_leg}", "recording_type": "voicemail",
                "duration": call.talk_seconds * 1000, "start_time": str(_ms(rung)),
                "url": f"https://dialpad.com/recordings/vm-{self.user_leg}",
            }]
        return proto

    def _entry_proto(self, transition: _Transition) -> dict[str, Any]:
        # The office leg bridges to the user's; it is connected whenever the user's leg is.
        proto = self._common(self.entry_leg, transition, _connected_at(self.call))
        proto.update({"internal_number": _OFFICE_NUMBER, "target": self._office(),
                      "entry_point_target": self._office(), "group_id": f"Office:{_OFFICE_ID}"})
        return proto

    @staticmethod
    def _office() -> dict[str, str]:
        return {"email": "", "id": _OFFICE_ID, "name": "Firm Office", "phone": _OFFICE_NUMBER,
                "type": "office"}


# --- The pull API ------------------------------------------------------------------------------


@dataclass
class DialpadApiState:
    """The company's call log, its API keys, per-key rate windows and injected faults.

    Shared between the simulator (test thread) and the API app (server thread), so every
    access takes the lock. `clock` is injectable so a test can step through a rate window.
    """

    api_keys: set[str] = field(default_factory=set)
    page_size: int = DEFAULT_PAGE_SIZE
    rate_limit: int = DEFAULT_RATE_LIMIT
    rate_window_seconds: float = DEFAULT_RATE_WINDOW_SECONDS
    clock: Callable[[], float] = time.monotonic
    # UNCONFIRMED (providers.md §4.5) whether started_after / started_before are inclusive.
    inclusive_bounds: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    faults: deque[int] = field(default_factory=deque)
    requests: int = 0
    rate_limited: int = 0
    _window: SlidingWindow = field(default_factory=SlidingWindow)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_records(self, records: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            self.records.extend(json.loads(json.dumps(r)) for r in records)

    def fail_next(self, status: int, times: int = 1) -> None:
        """The next `times` authorised requests answer `status` (e.g. 503)."""
        with self._lock:
            self.faults.extend([status] * times)

    def admit(self, key: str | None) -> tuple[int, float | None]:
        """(status, retry_after): 200 admitted, 401 bad key, 429 over the rate, else a fault."""
        with self._lock:
            self.requests += 1
            if key is None or key not in self.api_keys:
                return 401, None
            retry_after = self._window.take(key, self.clock(), self.rate_limit, self.rate_window_seconds)
            if retry_after is not None:
                self.rate_limited += 1
                return 429, retry_after
            if self.faults:
                return self.faults.popleft(), None
            return 200, None

    def page(self, after: int | None, before: int | None, target_id: str | None,
             target_type: str | None, offset: int) -> tuple[list[dict[str, Any]], int | None]:
        with self._lock:
            chosen = [r for r in self.records
                      if _selected(r, after, before, target_id, target_type, self.inclusive_bounds)]
        chosen.sort(key=lambda r: (int(r["date_started"]), int(r["call_id"])), reverse=True)
        end = offset + self.page_size
        return chosen[offset:end], (end if end < len(chosen) else None)


def _selected(record: dict[str, Any], after: int | None, before: int | None,
              target_id: str | None, target_type: str | None, inclusive: bool) -> bool:
    started = int(record["date_started"])
    target = record.get("target") or {}
    lower_ok = after is None or started > after or (inclusive and started == after)
    upper_ok = before is None or started < before or (inclusive and started == before)
    return (lower_ok and upper_ok
            and (target_id is None or target.get("id") == target_id)
            and (target_type is None or target.get("type") == target_type))


def _cursor(offset: int, query: str) -> str:
    return _b64url(json.dumps({"o": offset, "q": query}).encode())


def _offset(cursor: str, query: str) -> int:
    decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    if not isinstance(decoded, dict) or decoded.get("q") != query or not isinstance(decoded.get("o"), int):
        raise ValueError("cursor belongs to another query")
    return decoded["o"]


def _error(status: int, message: str, *, wait: float | None = None) -> JSONResponse:
    return error_answer(status, {"error": {"code": status, "message": message}}, wait=wait)


def _presented_key(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization")) or request.query_params.get("apikey")


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    return None if value is None else int(value)


def create_api_app(state: DialpadApiState) -> FastAPI:
    app = FastAPI(title="Fake Dialpad API v2")

    @app.get("/api/v2/call")
    async def list_calls(request: Request) -> JSONResponse:
        status, retry_after = state.admit(_presented_key(request))
        if status == 401:
            return _error(401, "Invalid or missing API key")
        if status == 429:
            return _error(429, "Rate limit exceeded", wait=retry_after)
        if status != 200:
            return _error(status, "Injected fault")
        params = request.query_params
        query = "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in ("cursor", "apikey"))
        try:
            after, before = _int_param(request, "started_after"), _int_param(request, "started_before")
            offset = _offset(params["cursor"], query) if "cursor" in params else 0
        except (ValueError, KeyError):
            return _error(400, "Invalid parameters")
        items, next_offset = state.page(after, before, params.get("target_id"),
                                        params.get("target_type"), offset)
        body: dict[str, Any] = {"items": items}
        if next_offset is not None:
            body["cursor"] = _cursor(next_offset, query)
        return JSONResponse(body)

    return app


# --- The simulator -----------------------------------------------------------------------------


class DialpadSimulator(WebhookSimulator):
    """Delivers simulated Dialpad call events to `webhook_url` and keeps the call log.

    `account_id` is the Dialpad company id; events do not carry it (providers.md §4.2).
    `call_states` is the subscription's state filter (default: every state the simulator
    writes). `time_claims=True` adds `iat`/`exp` to each JWT, which Dialpad may or may not do
    (UNCONFIRMED, providers.md §4.3), to exercise calltime's checks of them.
    """

    def __init__(self, webhook_url: str, webhook_secret: str, *, account_id: str,
                 http: httpx.AsyncClient | None = None, state: DialpadApiState | None = None,
                 call_states: Collection[str] = ALL_STATES, time_claims: bool = False,
                 clock: Callable[[], datetime] = utc_now) -> None:
        super().__init__(webhook_url, account_id, http)
        self._secret = webhook_secret
        self.state = state or DialpadApiState()
        self.call_states = frozenset(call_states)
        self.time_claims = time_claims
        self._clock = clock

    async def handshake(self) -> bool:
        return True  # Dialpad validates no webhook URL (providers.md §4.3)

    def provider_call_id(self, call: SimulatedCall) -> str:
        return leg_ids(call)[0]

    def events(self, call: SimulatedCall) -> list[dict[str, Any]]:
        """The `CallProto` events the subscription receives for `call`, in Dialpad's order."""
        return [e for e in _CallView(call).events() if e["state"] in self.call_states]

    def call_log_records(self, call: SimulatedCall) -> list[dict[str, Any]]:
        return _CallView(call).records()

    def webhook_requests(self, call: SimulatedCall) -> list[tuple[dict[str, str], bytes]]:
        return [({"Content-Type": SIGNED_CONTENT_TYPE}, sign(self._claims(e), self._secret))
                for e in self.events(call)]

    def _claims(self, event: dict[str, Any]) -> dict[str, Any]:
        if not self.time_claims:
            return event
        issued = int(self._clock().timestamp())
        return {**event, "iat": issued, "exp": issued + int(JWT_LIFETIME.total_seconds())}

    async def place_call(self, call: SimulatedCall, *, deliver: bool = True, shuffle: bool = False,
                         duplicate_each: int = 1, rng: random.Random | None = None) -> list[httpx.Response]:
        """Record `call` in the call log and POST its events (none if `deliver` is False, a
        dropped webhook). `duplicate_each` re-sends each event identically; `shuffle`
        scrambles the order, since Dialpad documents no ordering (providers.md §4.4)."""
        require_copies(duplicate_each)
        self.state.add_records(self.call_log_records(call))
        if not deliver:
            return []
        deliveries = arrange(self.webhook_requests(call), duplicate_each, shuffle, rng)
        return [await self._post(headers, body) for headers, body in deliveries]


def main(argv: list[str] | None = None) -> None:
    """Serve the fake Dialpad API: `python -m calltime.fakes.dialpad --port N --api-key K`."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", action="append", default=[])
    args = parser.parse_args(argv)
    state = DialpadApiState(api_keys=set(args.api_key))
    uvicorn.run(create_api_app(state), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
