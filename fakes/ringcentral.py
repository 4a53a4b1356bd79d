"""A RingCentral call simulator: the webhook notifications a call produces, their delivery, and
the REST API (OAuth, call log, subscriptions) that reconciliation reads.

Used by the demo, the tests and the benchmarks to stand in for RingCentral. `notifications_for`
writes the telephony-session envelopes of one call in the shapes of the reference samples
(/work/shared/reference/samples/providers/ringcentral_*); `RingCentralSimulator` POSTs them to
an ingest endpoint the way RingCentral would — including the subscription handshake, and
out-of-order or repeated delivery, which RingCentral does not rule out — and writes each placed
call into a `RingCentralApiState`, served by `create_api_app`. `call_log_record` writes the call
as the call log shows it, so that the pull side reads the same call (same telephonySessionId,
seconds, numbers, times) as the webhooks.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import math
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from calltime.fakes.calls import SimulatedCall
from calltime.fakes.provider_common import (SlidingWindow, TokenStore, WebhookSimulator, arrange,
                                            basic_credentials, bearer_token, error_answer, form_fields,
                                            require_copies, retry_after, utc_now, utc_text)

DIRECTIONS = ("inbound", "outbound")
OUTCOMES = ("answered", "missed", "voicemail", "rejected")
DEFAULT_ACCOUNT_ID = "400000001"

# RingCentral's handshake limits (providers.md §1.3).
VALIDATION_DEADLINE = timedelta(seconds=3)
VALIDATION_MAX_RESPONSE_BYTES = 1024

_SERVER_ID = "10.13.22.243.TAM"
# Gaps RingCentral shows between a state change and what follows (cf. the full-call sample).
_PROCEEDING_AFTER_SETUP = timedelta(milliseconds=36)
_SENT_AFTER_EVENT = timedelta(milliseconds=73)


def _new_session_id() -> str:
    return f"s-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class CallSpec:
    """One call as the firm user experienced it; the simulator derives RingCentral's view.

    `talk_seconds` is time spent talking; `hold_seconds` is one hold in the middle of it, so the
    connected time a billing clerk would see is `talk_seconds + hold_seconds`. For `missed`,
    `rejected` and `voicemail` the user never answers: the call rings `ring_seconds` (then is
    turned down, for `rejected`), and for `voicemail` the caller then records for
    `talk_seconds`. For an internal call set `other_extension_id` (the
    far end's extension) and give its extension number as `external_number`.
    """

    telephony_session_id: str = field(default_factory=_new_session_id)
    account_id: str = DEFAULT_ACCOUNT_ID
    extension_id: str = "400000101"
    extension_number: str = "101"
    firm_number: str = "+14155550100"
    external_number: str = "+12125550123"
    direction: str = "inbound"
    started_at: datetime = field(default_factory=utc_now)
    ring_seconds: int = 6
    talk_seconds: int = 120
    hold_seconds: int = 0
    outcome: str = "answered"
    other_extension_id: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {self.direction!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.direction == "outbound" and self.outcome == "voicemail":
            # RingCentral sees the far end's voicemail box answer like a person: "Answered".
            raise ValueError("an outbound call reaching voicemail is an 'answered' call")
        if min(self.ring_seconds, self.talk_seconds, self.hold_seconds) < 0:
            raise ValueError("ring, talk and hold seconds cannot be negative")
        if self.started_at.tzinfo is None:
            raise ValueError("started_at must be timezone-aware")


@dataclass(frozen=True)
class _Change:
    """One state change of the firm user's party."""

    status: str
    at: datetime
    missed_call: bool = False
    reason: str | None = None  # status.reason, sent with Disconnected only


def notifications_for(
    spec: CallSpec, subscription_id: str, *, include_far_party: bool = False
) -> list[dict[str, Any]]:
    """The webhook envelopes RingCentral sends for `spec`, in `sequence` order.

    Only the firm user's party is reported by default, as an extension-level subscription
    sees it. With `include_far_party`, an outbound call also reports the called PSTN party
    (account-level filter, as in the reference full-call sample), which ingest must ignore.
    """
    session = _Session(spec, subscription_id)
    changes = _user_changes(spec)
    internal = spec.other_extension_id is not None
    if include_far_party and spec.direction == "outbound" and not internal:
        return session.envelopes(changes, _far_party_changes(spec, changes))
    return session.envelopes(changes, [])


def _user_changes(spec: CallSpec) -> list[_Change]:
    setup = _to_milliseconds(spec.started_at)
    rung = setup + timedelta(seconds=spec.ring_seconds)
    changes = [_Change("Setup", setup), _Change("Proceeding", setup + _PROCEEDING_AFTER_SETUP)]
    if spec.outcome == "missed":
        return [*changes, _Change("Disconnected", rung, missed_call=spec.direction == "inbound")]
    if spec.outcome == "rejected":
        return [*changes, _Change("Disconnected", rung, missed_call=spec.direction == "inbound",
                                  reason="Rejected")]
    if spec.outcome == "voicemail":
        recorded = rung + timedelta(seconds=spec.talk_seconds)
        return [
            *changes,
            _Change("VoiceMail", rung),
            _Change("Disconnected", recorded, missed_call=True),
        ]
    return [*changes, *_connected_changes(spec, rung)]


def _connected_changes(spec: CallSpec, answered: datetime) -> list[_Change]:
    talk = timedelta(seconds=spec.talk_seconds)
    hold = timedelta(seconds=spec.hold_seconds)
    changes = [_Change("Answered", answered)]
    if spec.hold_seconds:
        held = answered + talk // 2
        changes += [_Change("Hold", held), _Change("Answered", held + hold)]
    return [*changes, _Change("Disconnected", answered + talk + hold)]


def _far_party_changes(spec: CallSpec, user_changes: Sequence[_Change]) -> list[_Change]:
    """The called party's leg: it rings with the user's, answers just before, ends just after."""
    setup = user_changes[0].at
    far = [_Change("Proceeding", setup + _PROCEEDING_AFTER_SETUP / 2)]
    answered = next((c.at for c in user_changes if c.status == "Answered"), None)
    if answered is not None:
        far.append(_Change("Answered", answered - timedelta(milliseconds=28)))
    far.append(_Change("Disconnected", user_changes[-1].at + timedelta(milliseconds=14)))
    return far


class _Session:
    """Writes envelopes for one telephony session, numbering them as RingCentral does."""

    def __init__(self, spec: CallSpec, subscription_id: str) -> None:
        self.spec = spec
        self.subscription_id = subscription_id
        self.session_hex = spec.telephony_session_id.removeprefix("s-")
        self.legacy_session_id = _legacy_session_id(spec.telephony_session_id)

    def envelopes(
        self, user_changes: Sequence[_Change], far_changes: Sequence[_Change]
    ) -> list[dict[str, Any]]:
        timeline = [(c, self._user_party) for c in user_changes]
        timeline += [(c, self._far_party) for c in far_changes]
        timeline.sort(key=lambda item: item[0].at)
        return [
            self._envelope(sequence, change, party(change))
            for sequence, (change, party) in enumerate(timeline, start=1)
        ]

    def _envelope(self, sequence: int, change: _Change, party: dict[str, Any]) -> dict[str, Any]:
        spec = self.spec
        # A party without an extension reaches the subscription only through the account-level
        # filter, as the far party does in the reference full-call sample.
        event = f"/restapi/v1.0/account/{spec.account_id}"
        if "extensionId" in party:
            event += f"/extension/{spec.extension_id}"
        return {
            # Derived from what the event says, so that re-sending it repeats its uuid.
            "uuid": _digits(self.spec.telephony_session_id, str(sequence), party["id"],
                            change.status, utc_text(change.at), bits=63),
            "event": f"{event}/telephony/sessions",
            "timestamp": utc_text(change.at + _SENT_AFTER_EVENT),
            "subscriptionId": self.subscription_id,
            "ownerId": spec.extension_id,
            "body": {
                "sequence": sequence,
                "sessionId": self.legacy_session_id,
                "telephonySessionId": spec.telephony_session_id,
                "serverId": _SERVER_ID,
                "eventTime": utc_text(change.at),
                "parties": [party],
                "origin": {"type": "Call"},
            },
        }

    def _user_party(self, change: _Change) -> dict[str, Any]:
        spec = self.spec
        internal = spec.other_extension_id is not None
        user_side: dict[str, Any] = {
            "phoneNumber": spec.extension_number if internal else spec.firm_number,
            "extensionId": spec.extension_id,
        }
        other_side: dict[str, Any] = {"phoneNumber": spec.external_number}
        if internal:
            other_side["extensionId"] = spec.other_extension_id
        outbound = spec.direction == "outbound"
        # RingCentral numbers the caller's leg 1 and the callee's leg 2.
        return _party(
            party_id=f"p-{self.session_hex}-{1 if outbound else 2}",
            account_id=spec.account_id,
            extension_id=spec.extension_id,
            direction="Outbound" if outbound else "Inbound",
            caller=user_side if outbound else other_side,
            callee=other_side if outbound else user_side,
            change=change,
        )

    def _far_party(self, change: _Change) -> dict[str, Any]:
        spec = self.spec
        return _party(
            party_id=f"p-{self.session_hex}-2",
            account_id=spec.account_id,
            extension_id=None,
            direction="Inbound",
            caller={"phoneNumber": spec.firm_number, "extensionId": spec.extension_id},
            callee={"phoneNumber": spec.external_number},
            change=change,
        )


def _party(
    *,
    party_id: str,
    account_id: str,
    extension_id: str | None,
    direction: str,
    caller: dict[str, Any],
    callee: dict[str, Any],
    change: _Change,
) -> dict[str, Any]:
    party: dict[str, Any] = {"accountId": account_id}
    if extension_id is not None:
        party["extensionId"] = extension_id
    party.update(
        {
            "id": party_id,
            "direction": direction,
            "to": dict(callee),
            "from": dict(caller),
            "status": _status(change),
            "park": {},
            "missedCall": change.missed_call,
            "standAlone": False,
            "muted": False,
        }
    )
    return party


def _status(change: _Change) -> dict[str, Any]:
    status: dict[str, Any] = {"code": change.status}
    if change.reason is not None:
        status["reason"] = change.reason
    status["rcc"] = False
    return status


def _digits(*parts: str, bits: int) -> str:
    """A decimal id (as RingCentral writes uuids and session ids) stable for the same parts."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return str(int.from_bytes(digest[:8], "big") >> (64 - bits))


def _legacy_session_id(telephony_session_id: str) -> str:
    return str(int(_digits(telephony_session_id, "session", bits=40)) % 10**12)


def _to_milliseconds(moment: datetime) -> datetime:
    """RingCentral times carry milliseconds; drop finer digits so sums stay exact."""
    moment = moment.astimezone(timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# --- A provider-neutral call, as RingCentral sees it ------------------------------------------


def session_id_for(call: SimulatedCall) -> str:
    """The telephonySessionId RingCentral gives `call`: stable for its `call_key`."""
    return "s-" + hashlib.sha256(f"ringcentral\x00{call.call_key}".encode()).hexdigest()[:32]


def call_spec_for(call: SimulatedCall, account_id: str = DEFAULT_ACCOUNT_ID) -> CallSpec:
    """`call` on a RingCentral account: the firm user is the extension `call.user_id`.

    RingCentral cannot tell an outbound call that reached the far end's voicemail from an
    answered one (the box answers like a person), so such a call has no RingCentral form.
    """
    if call.direction == "outbound" and call.outcome == "voicemail":
        raise ValueError("on RingCentral an outbound call reaching voicemail is an answered call")
    return CallSpec(
        telephony_session_id=session_id_for(call),
        account_id=account_id,
        extension_id=call.user_id,
        extension_number=call.extension_number,
        firm_number=call.user_number,
        external_number=call.external_number,
        direction=call.direction,
        started_at=call.started_at,
        ring_seconds=call.ring_seconds,
        talk_seconds=call.talk_seconds,
        hold_seconds=call.hold_seconds,
        outcome=call.outcome,
    )


# --- The call log ----------------------------------------------------------------------------

# What the call log writes in `result` for each outcome, by direction (RingCentral's SDK enum).
_LOG_RESULTS = {
    ("inbound", "answered"): "Accepted",
    ("outbound", "answered"): "Call connected",
    ("inbound", "missed"): "Missed",
    ("outbound", "missed"): "No Answer",
    ("inbound", "voicemail"): "Voicemail",
    ("inbound", "rejected"): "Rejected",
    ("outbound", "rejected"): "Rejected",
}


def call_log_record(spec: CallSpec) -> dict[str, Any]:
    """The company call-log record (view=Detailed) of `spec`, as the pull side reads it.

    It agrees with the webhooks of the same call by construction: `startTime` is the Setup
    `eventTime`, `durationMs`/`duration` the firm user's connected time (Answered to
    Disconnected; the recording, for voicemail; 0 when nobody was connected), and the one leg
    runs from Setup to the user's Disconnected. These are the reading rules of
    `calltime.ingest.call_logs.ringcentral.call_times` (UNCONFIRMED there).
    """
    changes = _user_changes(spec)
    setup, end = changes[0].at, changes[-1].at
    kept_from = next((c.at for c in changes if c.status in ("Answered", "VoiceMail")), None)
    duration_ms = _milliseconds(end - kept_from) if kept_from is not None else 0
    total_ms = _milliseconds(end - setup)
    firm_side, other_side = _log_sides(spec)
    inbound = spec.direction == "inbound"
    internal = spec.other_extension_id is not None
    common = {
        "type": "Voice",
        "direction": "Inbound" if inbound else "Outbound",
        "action": "Phone Call" if inbound else "VoIP Call",
        "result": _LOG_RESULTS[(spec.direction, spec.outcome)],
        "to": firm_side if inbound else other_side,
        "from": other_side if inbound else firm_side,
        "extension": {"id": spec.extension_id},
    }
    session_hex = spec.telephony_session_id.removeprefix("s-")
    return {
        "id": "A" + _digits(spec.telephony_session_id, "record", bits=60),
        "sessionId": _legacy_session_id(spec.telephony_session_id),
        "telephonySessionId": spec.telephony_session_id,
        "partyId": f"p-{session_hex}-{2 if inbound else 1}",
        "startTime": utc_text(setup),
        "duration": _round_seconds(duration_ms),
        "durationMs": duration_ms,
        **common,
        "transport": "VoIP" if internal else "PSTN",
        "lastModifiedTime": utc_text(end + timedelta(seconds=20)),
        "legs": [{
            "startTime": utc_text(setup),
            "duration": _round_seconds(total_ms),
            "durationMs": total_ms,
            **common,
            "legType": "ExtensionToExtension" if internal else (
                "PstnToSip" if inbound else "SipToPstnMetered"),
            "master": True,
        }],
    }


def _log_sides(spec: CallSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the firm user's side, the other side) as the call log shows them."""
    firm: dict[str, Any] = {"extensionNumber": spec.extension_number,
                            "extensionId": spec.extension_id}
    if spec.other_extension_id is not None:
        return firm, {"extensionNumber": spec.external_number,
                      "extensionId": spec.other_extension_id}
    return {"phoneNumber": spec.firm_number, **firm}, {"phoneNumber": spec.external_number}


def _milliseconds(span: timedelta) -> int:
    return span // timedelta(milliseconds=1)


def _round_seconds(milliseconds: int) -> int:
    return (milliseconds + 500) // 1000


# --- The simulator ---------------------------------------------------------------------------


Call = CallSpec | SimulatedCall


class RingCentralSimulator(WebhookSimulator):
    """Delivers simulated RingCentral webhooks to `webhook_url`, and keeps the call log.

    `header_name` is where the verification token travels; providers.md §1.3 leaves open
    whether production uses `Verification-Token` or `Validation-Token`, so tests try both.
    Pass `http` (e.g. an `httpx.AsyncClient` on an `ASGITransport`) to skip the network.
    Every placed call is written into `api` (a `RingCentralApiState`, one of its own unless
    given), which `create_api_app` serves; a `SimulatedCall` is placed on `account_id`.
    """

    def __init__(self, webhook_url: str, webhook_secret: str, *, account_id: str = DEFAULT_ACCOUNT_ID,
                 http: httpx.AsyncClient | None = None, header_name: str = "Verification-Token",
                 subscription_id: str | None = None, api: RingCentralApiState | None = None) -> None:
        super().__init__(webhook_url, account_id, http)
        self.verification_token = webhook_secret
        self.header_name = header_name
        self.subscription_id = subscription_id or str(uuid.uuid4())
        self.api = api or RingCentralApiState(account_id)
        self.api.add_subscription(webhook_url, subscription_id=self.subscription_id)

    @property
    def webhook_secret(self) -> str:
        return self.verification_token

    async def validate(self) -> bool:
        """Run the subscription-creation handshake; True only if RingCentral would accept it.

        Accepted means: HTTP 200 within 3 s, the same `Validation-Token` echoed as a response
        header, and the whole response (status line, headers, body) at most 1024 bytes.
        """
        token = secrets.token_urlsafe(24)
        try:
            async with asyncio.timeout(VALIDATION_DEADLINE.total_seconds()):
                response = await self._client().post(
                    self.webhook_url, headers={"Validation-Token": token}, content=b""
                )
        except (TimeoutError, httpx.HTTPError):
            return False
        return (
            response.status_code == 200
            and response.headers.get("Validation-Token") == token
            and _response_size(response) <= VALIDATION_MAX_RESPONSE_BYTES
        )

    async def handshake(self) -> bool:
        """The provider-neutral name of `validate`."""
        return await self.validate()

    def spec_for(self, call: Call) -> CallSpec:
        return call if isinstance(call, CallSpec) else call_spec_for(call, self.account_id)

    def provider_call_id(self, call: Call) -> str:
        """What `FinishedCall.provider_call_id` must be for `call`: its telephonySessionId."""
        return self.spec_for(call).telephony_session_id

    def webhook_requests(
        self, call: Call, *, include_far_party: bool = False
    ) -> list[tuple[dict[str, str], bytes]]:
        """The (headers, body) deliveries RingCentral sends for `call`, in `sequence` order —
        every state change, not only the final one. The same call gives the same deliveries."""
        envelopes = notifications_for(
            self.spec_for(call), self.subscription_id, include_far_party=include_far_party
        )
        return [(self._headers(), json.dumps(e).encode()) for e in envelopes]

    def _headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", self.header_name: self.verification_token}

    async def send(self, envelope: dict[str, Any]) -> httpx.Response:
        """POST one notification, JSON, with the verification token header."""
        return await self.post(self._headers(), json.dumps(envelope).encode())

    async def post(self, headers: Mapping[str, str], body: bytes) -> httpx.Response:
        return await self._post(headers, body)

    async def place_call(self, call: Call, *, deliver: bool = True, shuffle: bool = False,
                         duplicate_each: int = 1, rng: random.Random | None = None,
                         include_far_party: bool = False) -> list[httpx.Response]:
        """Write `call` into the call log and deliver every notification of it, one at a time,
        in the order delivery chose; `deliver=False` drops every webhook (the call is then
        only in the call log).

        `duplicate_each` re-sends each notification (same `uuid`) that many times in all;
        `shuffle` scrambles the delivery order, since RingCentral guarantees none.
        """
        require_copies(duplicate_each)
        spec = self.spec_for(call)
        self.api.record_call(spec)
        if not deliver:
            return []
        requests = self.webhook_requests(spec, include_far_party=include_far_party)
        return [await self.post(headers, body) for headers, body in arrange(requests, duplicate_each, shuffle, rng)]


# --- The REST API: OAuth (JWT bearer), call log, subscriptions ---------------------------------

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_PER_PAGE = 1000
DEFAULT_PER_PAGE = 100
DEFAULT_SUBSCRIPTION_SECONDS = 7 * 24 * 3600  # RingCentral's default is UNCONFIRMED (§8)


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None, *, oauth: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.oauth = oauth

    def response(self) -> JSONResponse:
        if self.oauth:  # the token endpoint answers in RFC 6749's shape
            body: dict[str, Any] = {"error": self.code, "error_description": self.message}
        else:
            body = {"errorCode": self.code, "message": self.message,
                    "errors": [{"errorCode": self.code, "message": self.message}]}
        return error_answer(self.status, body, headers=self.headers)


class RingCentralApiState:
    """One RingCentral account's API as the fake serves it. Thread-safe: the app runs in a
    server thread while tests place calls and inspect it from theirs.

    `rate_limit` requests per `rate_window_seconds` per access token (None: unlimited) on the
    REST endpoints; over it, 429 with `Retry-After`. `clock` (epoch seconds) drives token and
    subscription expiry and the rate window, so tests can move time.
    """

    def __init__(
        self,
        account_id: str = DEFAULT_ACCOUNT_ID,
        *,
        clock: Callable[[], float] = time.time,
        token_ttl_seconds: int = 3600,
        rate_limit: int | None = None,
        rate_window_seconds: float = 60.0,
    ) -> None:
        self.account_id = account_id
        self.clock = clock
        self.token_ttl_seconds = token_ttl_seconds
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.stats: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._apps: dict[str, tuple[str, str]] = {}  # client id -> (secret, JWT credential)
        self._tokens = TokenStore()  # access token -> expires at (clock)
        self._window = SlidingWindow()
        self._subscriptions: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"RingCentralApiState(account_id={self.account_id!r})"

    # -- setup and inspection --

    def add_app(self, client_id: str, client_secret: str, jwt: str | None = None) -> dict[str, str]:
        """Registers an app with a JWT credential; returns the `ringcentral.api` credential."""
        jwt = jwt or _fake_jwt(self.account_id)
        with self._lock:
            self._apps[client_id] = (client_secret, jwt)
        return {"client_id": client_id, "client_secret": client_secret, "jwt": jwt}

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def record_call(self, spec: CallSpec) -> dict[str, Any]:
        record = call_log_record(spec)
        with self._lock:
            self._records[spec.telephony_session_id] = record
        return record

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records.values()]

    def add_subscription(self, address: str, *, subscription_id: str | None = None,
                         expires_in: int = DEFAULT_SUBSCRIPTION_SECONDS,
                         status: str = "Active") -> dict[str, Any]:
        subscription_id = subscription_id or str(uuid.uuid4())
        now = self.clock()
        with self._lock:
            self._subscriptions[subscription_id] = {
                "id": subscription_id,
                "creationTime": utc_text(_from_epoch(now)),
                "status": status,
                "eventFilters": [f"/restapi/v1.0/account/{self.account_id}/telephony/sessions"],
                "expires_at": now + expires_in,
                "requested_seconds": expires_in,
                "deliveryMode": {"transportType": "WebHook", "encryption": False,
                                 "address": address},
            }
        return self.subscription(subscription_id)

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        with self._lock:
            return self._render_subscription(self._subscriptions[subscription_id])

    # -- what the endpoints do --

    def issue_token(self, authorization: str | None, form: Mapping[str, str]) -> dict[str, Any]:
        client_id = self._basic_client(authorization)
        if form.get("grant_type") != JWT_BEARER_GRANT:
            raise _ApiError(400, "unsupported_grant_type", "Unsupported grant type", oauth=True)
        with self._lock:
            _secret, jwt = self._apps[client_id]
            if not hmac.compare_digest(form.get("assertion", "").encode(), jwt.encode()):
                raise _ApiError(400, "invalid_grant", "Invalid token", oauth=True)
            token = self._tokens.issue(self.clock() + self.token_ttl_seconds)
            self.stats["tokens_issued"] += 1
        return {"access_token": token, "token_type": "bearer",
                "expires_in": self.token_ttl_seconds, "scope": "ReadCallLog",
                "owner_id": self.account_id, "endpoint_id": secrets.token_urlsafe(8)}

    def _basic_client(self, authorization: str | None) -> str:
        client_id, secret = basic_credentials(authorization) or ("", "")
        with self._lock:
            app = self._apps.get(client_id)
        if app is None or not hmac.compare_digest(secret.encode(), app[0].encode()):
            raise _ApiError(401, "invalid_client", "Invalid client", oauth=True)
        return client_id

    def admit(self, authorization: str | None) -> None:
        """The bearer token must be live and within its rate; raises _ApiError otherwise."""
        token = bearer_token(authorization)
        now = self.clock()
        with self._lock:
            self.stats["api_requests"] += 1
            if not self._tokens.live(token, now):
                self.stats["unauthorized"] += 1
                raise _ApiError(401, "TokenInvalid", "Access token corrupted or expired")
            wait = self._window.take(token, now, self.rate_limit, self.rate_window_seconds)
            if wait is not None:
                self.stats["rate_limited"] += 1
                raise _ApiError(429, "CMN-301", "Request rate exceeded", {
                    "X-Rate-Limit-Group": "heavy", "X-Rate-Limit-Limit": str(self.rate_limit),
                    "X-Rate-Limit-Window": str(int(self.rate_window_seconds)),
                    "X-Rate-Limit-Remaining": "0", "Retry-After": retry_after(wait)})

    def call_log(self, account: str, params: Mapping[str, str], base_url: str) -> dict[str, Any]:
        if account not in ("~", self.account_id):
            raise _ApiError(404, "CMN-102", "Resource for parameter [accountId] is not found")
        now = _from_epoch(self.clock())
        date_to = _param_time(params, "dateTo", now)
        date_from = _param_time(params, "dateFrom", date_to - timedelta(hours=24))
        page = _param_int(params, "page", 1, 1, 10**6)
        per_page = _param_int(params, "perPage", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
        with self._lock:
            records = [r for r in self._records.values()
                       if date_from <= _parse_rc_time(r["startTime"]) <= date_to
                       and params.get("type", r["type"]) == r["type"]]
        records.sort(key=lambda r: (r["startTime"], r["id"]), reverse=True)  # newest first
        start = (page - 1) * per_page
        shown = [_view(r, params.get("view", "Simple"), base_url, self.account_id)
                 for r in records[start:start + per_page]]
        last_page = max(1, math.ceil(len(records) / per_page))
        uri = f"{base_url}/restapi/v1.0/account/{account}/call-log"
        return {
            "uri": _page_uri(uri, params, page),
            "records": shown,
            "paging": {"page": page, "perPage": per_page, "pageStart": start,
                       "pageEnd": start + max(len(shown) - 1, 0), "totalPages": last_page,
                       "totalElements": len(records)},
            "navigation": _navigation(uri, params, page, last_page),
        }

    def subscriptions(self, base_url: str) -> dict[str, Any]:
        with self._lock:
            self._drop_expired()
            records = [self._render_subscription(s, base_url) for s in self._subscriptions.values()]
        return {"uri": f"{base_url}/restapi/v1.0/subscription", "records": records}

    def renew(self, subscription_id: str, base_url: str) -> dict[str, Any]:
        with self._lock:
            self._drop_expired()
            subscription = self._subscriptions.get(subscription_id)
            if subscription is None:
                raise _ApiError(404, "SUB-404", "Subscription not found")
            if subscription["status"] == "Blacklisted":
                raise _ApiError(400, "SUB-406", "Blacklisted subscription cannot be renewed")
            subscription["expires_at"] = self.clock() + subscription["requested_seconds"]
            self.stats["renewals"] += 1
            return self._render_subscription(subscription, base_url)

    def _drop_expired(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._subscriptions.items() if s["expires_at"] <= now]:
            del self._subscriptions[key]

    def _render_subscription(self, subscription: dict[str, Any],
                             base_url: str = "https://platform.ringcentral.com") -> dict[str, Any]:
        shown = {k: v for k, v in subscription.items() if k not in ("expires_at", "requested_seconds")}
        shown["uri"] = f"{base_url}/restapi/v1.0/subscription/{subscription['id']}"
        shown["expirationTime"] = utc_text(_from_epoch(subscription["expires_at"]))
        shown["expiresIn"] = max(0, int(subscription["expires_at"] - self.clock()))
        return shown


def create_api_app(state: RingCentralApiState) -> FastAPI:
    """RingCentral's REST API for one account: the JWT-bearer token endpoint, the company call
    log and webhook subscriptions (list, renew)."""
    app = FastAPI(title="fake RingCentral")

    @app.exception_handler(_ApiError)
    async def api_error(_request: Request, error: _ApiError) -> JSONResponse:
        return error.response()

    @app.post("/restapi/oauth/token")
    async def token(request: Request) -> JSONResponse:
        form = await form_fields(request)
        return JSONResponse(state.issue_token(request.headers.get("authorization"), form))

    @app.get("/restapi/v1.0/account/{account}/call-log")
    async def call_log(account: str, request: Request) -> JSONResponse:
        state.admit(request.headers.get("authorization"))
        return JSONResponse(state.call_log(account, request.query_params, _base(request)))

    @app.get("/restapi/v1.0/subscription")
    async def subscriptions(request: Request) -> JSONResponse:
        state.admit(request.headers.get("authorization"))
        return JSONResponse(state.subscriptions(_base(request)))

    @app.post("/restapi/v1.0/subscription/{subscription_id}/renew")
    async def renew(subscription_id: str, request: Request) -> JSONResponse:
        state.admit(request.headers.get("authorization"))
        return JSONResponse(state.renew(subscription_id, _base(request)))

    return app


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _view(record: Mapping[str, Any], view: str, base_url: str, account_id: str) -> dict[str, Any]:
    shown = dict(record)
    shown["uri"] = f"{base_url}/restapi/v1.0/account/{account_id}/call-log/{record['id']}?view={view}"
    if view != "Detailed":  # legs and lastModifiedTime are in the Detailed view only
        shown.pop("legs", None)
        shown.pop("lastModifiedTime", None)
    return shown


def _page_uri(uri: str, params: Mapping[str, str], page: int) -> str:
    return uri + "?" + urlencode({**params, "page": str(page)})


def _navigation(uri: str, params: Mapping[str, str], page: int, last_page: int) -> dict[str, Any]:
    navigation = {"firstPage": {"uri": _page_uri(uri, params, 1)},
                  "lastPage": {"uri": _page_uri(uri, params, last_page)}}
    if page < last_page:
        navigation["nextPage"] = {"uri": _page_uri(uri, params, page + 1)}
    if page > 1:
        navigation["previousPage"] = {"uri": _page_uri(uri, params, page - 1)}
    return navigation


def _param_time(params: Mapping[str, str], name: str, default: datetime) -> datetime:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return _parse_rc_time(raw)
    except ValueError:
        raise _ApiError(400, "CMN-101", f"Parameter [{name}] value is invalid") from None


def _param_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _ApiError(400, "CMN-101", f"Parameter [{name}] value is invalid")
    return value


def _parse_rc_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _fake_jwt(account_id: str) -> str:
    """A JWT-shaped credential (RingCentral issues it; the app only passes it on)."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    signature = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return ".".join([part({"alg": "HS256", "typ": "JWT"}),
                     part({"aud": "https://platform.ringcentral.com/restapi/oauth/token",
                           "sub": account_id, "iss": "https://platform.ringcentral.com"}),
                     signature])


def _response_size(response: httpx.Response) -> int:
    status_line = f"{response.http_version} {response.status_code} {response.reason_phrase}\r\n"
    header_lines = sum(len(name) + len(value) + 4 for name, value in response.headers.raw)
    return len(status_line.encode()) + header_lines + 2 + len(response.content)
