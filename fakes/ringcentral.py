"""A RingCentral call simulator: the webhook notifications a call produces, and their delivery.

Used by the demo, the tests and the benchmarks to stand in for RingCentral. `notifications_for`
writes the telephony-session envelopes of one call in the shapes of the reference samples
(/work/shared/reference/samples/providers/ringcentral_*); `RingCentralSimulator` POSTs them to
an ingest endpoint the way RingCentral would — including the subscription handshake, and
out-of-order or repeated delivery, which RingCentral does not rule out.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

DIRECTIONS = ("inbound", "outbound")
OUTCOMES = ("answered", "missed", "voicemail")

# RingCentral's handshake limits (providers.md §1.3).
VALIDATION_DEADLINE = timedelta(seconds=3)
VALIDATION_MAX_RESPONSE_BYTES = 1024

_SERVER_ID = "10.13.22.243.TAM"
# Gaps RingCentral shows between a state change and what follows (cf. the full-call sample).
_PROCEEDING_AFTER_SETUP = timedelta(milliseconds=36)
_SENT_AFTER_EVENT = timedelta(milliseconds=73)


def _new_session_id() -> str:
    return f"s-{uuid.uuid4().hex}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CallSpec:
    """One call as the firm user experienced it; the simulator derives RingCentral's view.

    `talk_seconds` is time spent talking; `hold_seconds` is one hold in the middle of it, so the
    connected time a billing clerk would see is `talk_seconds + hold_seconds`. For `missed` and
    `voicemail` the user never answers: the call rings `ring_seconds`, and for `voicemail` the
    caller then records for `talk_seconds`. For an internal call set `other_extension_id` (the
    far end's extension) and give its extension number as `external_number`.
    """

    telephony_session_id: str = field(default_factory=_new_session_id)
    account_id: str = "400000001"
    extension_id: str = "400000101"
    extension_number: str = "101"
    firm_number: str = "+14155550100"
    external_number: str = "+12125550123"
    direction: str = "inbound"
    started_at: datetime = field(default_factory=_now)
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
        self.legacy_session_id = str(secrets.randbelow(10**12))

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
            "uuid": str(secrets.randbits(63)),
            "event": f"{event}/telephony/sessions",
            "timestamp": _rc_time(change.at + _SENT_AFTER_EVENT),
            "subscriptionId": self.subscription_id,
            "ownerId": spec.extension_id,
            "body": {
                "sequence": sequence,
                "sessionId": self.legacy_session_id,
                "telephonySessionId": spec.telephony_session_id,
                "serverId": _SERVER_ID,
                "eventTime": _rc_time(change.at),
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
            "status": {"code": change.status, "rcc": False},
            "park": {},
            "missedCall": change.missed_call,
            "standAlone": False,
            "muted": False,
        }
    )
    return party


def _to_milliseconds(moment: datetime) -> datetime:
    """RingCentral times carry milliseconds; drop finer digits so sums stay exact."""
    moment = moment.astimezone(timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _rc_time(moment: datetime) -> str:
    """`2020-06-23T01:19:45.018Z`, the way RingCentral writes times."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class RingCentralSimulator:
    """Delivers simulated RingCentral webhooks to `webhook_url`.

    `header_name` is where the verification token travels; providers.md §1.3 leaves open
    whether production uses `Verification-Token` or `Validation-Token`, so tests try both.
    Pass `http` (e.g. an `httpx.AsyncClient` on an `ASGITransport`) to skip the network.
    """

    def __init__(
        self,
        webhook_url: str,
        verification_token: str,
        *,
        http: httpx.AsyncClient | None = None,
        header_name: str = "Verification-Token",
        subscription_id: str | None = None,
    ) -> None:
        self.webhook_url = webhook_url
        self.verification_token = verification_token
        self.header_name = header_name
        self.subscription_id = subscription_id or str(uuid.uuid4())
        self._http = http or httpx.AsyncClient()
        self._owns_http = http is None

    async def __aenter__(self) -> RingCentralSimulator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def validate(self) -> bool:
        """Run the subscription-creation handshake; True only if RingCentral would accept it.

        Accepted means: HTTP 200 within 3 s, the same `Validation-Token` echoed as a response
        header, and the whole response (status line, headers, body) at most 1024 bytes.
        """
        token = secrets.token_urlsafe(24)
        try:
            async with asyncio.timeout(VALIDATION_DEADLINE.total_seconds()):
                response = await self._http.post(
                    self.webhook_url, headers={"Validation-Token": token}, content=b""
                )
        except (TimeoutError, httpx.HTTPError):
            return False
        return (
            response.status_code == 200
            and response.headers.get("Validation-Token") == token
            and _response_size(response) <= VALIDATION_MAX_RESPONSE_BYTES
        )

    async def send(self, envelope: dict[str, Any]) -> httpx.Response:
        """POST one notification, JSON, with the verification token header."""
        return await self._http.post(
            self.webhook_url,
            content=json.dumps(envelope).encode(),
            headers={
                "Content-Type": "application/json",
                self.header_name: self.verification_token,
            },
        )

    async def place_call(
        self,
        spec: CallSpec,
        *,
        shuffle: bool = False,
        duplicate_each: int = 1,
        rng: random.Random | None = None,
        include_far_party: bool = False,
    ) -> list[httpx.Response]:
        """Deliver every notification of `spec`, one at a time, in the order delivery chose.

        `duplicate_each` re-sends each notification (same `uuid`) that many times in all;
        `shuffle` scrambles the delivery order, since RingCentral guarantees none.
        """
        if duplicate_each < 1:
            raise ValueError("duplicate_each must be at least 1")
        envelopes = notifications_for(
            spec, self.subscription_id, include_far_party=include_far_party
        )
        deliveries = [e for e in envelopes for _ in range(duplicate_each)]
        if shuffle:
            (rng or random.Random()).shuffle(deliveries)
        return [await self.send(envelope) for envelope in deliveries]


def _response_size(response: httpx.Response) -> int:
    status_line = f"{response.http_version} {response.status_code} {response.reason_phrase}\r\n"
    header_lines = sum(len(name) + len(value) + 4 for name, value in response.headers.raw)
    return len(status_line.encode()) + header_lines + 2 + len(response.content)
