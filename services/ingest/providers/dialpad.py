"""Dialpad webhook adapter: signed call events in, the firm user's finished call out.

Pure, no I/O. Contract: /work/shared/reference/providers.md §4 and the Dialpad samples beside it.

* Transport (§4.3): we always register a webhook secret, so Dialpad posts each event as a compact
  JWS (HS256, the secret as HMAC key) whose payload is the event JSON. The signature is checked
  by hand over the segments exactly as received; any `alg` but HS256 (including "none") is
  refused, and so is a plain JSON body: Dialpad only sends those when no secret is registered.
* Event (§4.2): the payload is a `CallProto`. int64 values (ids, `date_*`, `event_timestamp`,
  ms since the epoch) arrive as JSON strings; `duration` / `total_duration` are ms as numbers.
* Call ended = state `hangup` (§4.1); every other state is acknowledged and ignored.
* One end-to-end call is several legs, each with its own `call_id` and its own hangup; legs of
  one call share `master_call_id` / `entry_point_call_id` (an inbound call's first leg targets
  the office or department that was dialled). The firm user's call is the leg whose `target`
  is that user (`target.type == "user"`): its `call_id` is `provider_call_id`, the same id
  `GET /api/v2/call` lists for it, so webhooks and reconciliation agree. Legs targeting an
  office, department, call centre... are ignored; a transfer gives each user their own leg.
* No account check (403): a `CallProto` names no company (only the user, office `group_id`
  and numbers), so an authentic event cannot be told apart as another firm's. The per-firm
  secret is what binds an event to the firm.

The same conversion (`to_finished_call`) serves the pull API (`calltime.ingest.call_logs.
dialpad`), whose list items are `CallProto`s too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from calltime.ingest.providers.fields import firm_side_number, load_json, optional, required, whole_units
from calltime.ingest.providers.model import (Account, FinishedCall, InvalidNotification, Notice, Refused,
                                             Reply, WebhookRequest, checked_call, json_text)
from calltime.phone import normalise

REPLAY_TOLERANCE = timedelta(seconds=300)  # how far `iat` may be from our arrival time
CLOCK_SKEW = timedelta(seconds=30)  # grace after `exp`: Dialpad's clock is not ours
HANGUP = "hangup"
SIGNING_ALGORITHM = "HS256"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS_PER_SECOND = 1000
_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last moment a datetime holds
_LAST_NUMERIC_DATE = Decimal(_LAST_MS // _MS_PER_SECOND + 1)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_DIGITS = re.compile(r"-?[0-9]{1,19}")
_USER = "user"
_DIRECTIONS = ("inbound", "outbound")


# --- Signature ---------------------------------------------------------------------------------


def _b64url_decode(segment: str) -> bytes:
    """Unpadded base64url (RFC 7515 §2); raises ValueError on anything else."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _segments(body: bytes) -> tuple[str, str, str]:
    try:
        text = body.strip().decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not a compact JWS (non-ASCII bytes)") from None
    parts = text.split(".")
    if len(parts) != 3:
        raise ValueError(f"not a compact JWS ({len(parts)} dot-separated parts, expected 3)")
    return parts[0], parts[1], parts[2]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def verify_signature(body: bytes, secret: str) -> None:
    """Raise Refused(401) unless `body` is a compact JWS signed HS256 with `secret`."""
    if not secret:
        raise Refused(401, "no Dialpad webhook secret is registered for this firm")
    if body.lstrip()[:1] in (b"{", b"["):
        raise Refused(401, "unsigned JSON body: with a registered secret Dialpad signs every event")
    try:
        header_segment, payload_segment, signature_segment = _segments(body)
        header = json.loads(json_text(_b64url_decode(header_segment)))
        signature = _b64url_decode(signature_segment)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise Refused(401, f"not a signed Dialpad event: {error}") from None
    if not isinstance(header, dict):
        raise Refused(401, "JWS header is not a JSON object")
    if header.get("alg") != SIGNING_ALGORITHM:
        raise Refused(401, f"JWS alg {_short(header.get('alg'))} is not {SIGNING_ALGORITHM}")
    if "crit" in header:
        raise Refused(401, "JWS header names critical extensions we do not understand")
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    expected = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise Refused(401, "JWS signature does not match the webhook secret")


def check_time_claims(claims: Mapping[str, Any], received_at: datetime) -> None:
    """Enforce `exp` and an `iat` replay window, each only when the claim is present.

    UNCONFIRMED (providers.md §4.3, §8.4): whether Dialpad puts registered claims (`exp`,
    `iat`) in its webhook JWTs at all. Its docs mention none, so a token without them is
    accepted (re-deliveries are then caught by the inbox's dedupe key, not here). Claims are
    RFC 7519 NumericDates (seconds since the epoch, possibly fractional).
    """
    now = _seconds_since_epoch(received_at)
    if "exp" in claims:
        expires = _numeric_date(claims["exp"], "exp")
        if now > expires + Decimal(CLOCK_SKEW // timedelta(seconds=1)):
            raise Refused(401, "the event's JWT has expired (exp)")
    if "iat" in claims:
        issued = _numeric_date(claims["iat"], "iat")
        if abs(now - issued) > Decimal(REPLAY_TOLERANCE // timedelta(seconds=1)):
            raise Refused(401, "the event's JWT was issued outside the replay window (iat)")


def _seconds_since_epoch(moment: datetime) -> Decimal:
    microseconds = (moment.astimezone(timezone.utc) - _EPOCH) // timedelta(microseconds=1)
    return Decimal(microseconds).scaleb(-6)


def _numeric_date(value: Any, name: str) -> Decimal:
    # Past year 9999 a NumericDate names no date, and arithmetic on `1e999999999` would overflow
    # the decimal context (a 500) instead of refusing the token.
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or not Decimal(value).is_finite() \
            or Decimal(value).copy_abs() > _LAST_NUMERIC_DATE:  # copy_abs: no context, cannot overflow
        raise Refused(401, f"JWT claim {name} is not a NumericDate")
    return Decimal(value)


# --- Decoding the event ------------------------------------------------------------------------


def event_payload(body: bytes) -> bytes:
    """The JWS payload (the event JSON bytes), unverified: `authenticate` is the gate."""
    try:
        _, payload_segment, _ = _segments(body)
        return _b64url_decode(payload_segment)
    except ValueError as error:
        raise InvalidNotification(f"not a Dialpad event JWS: {error}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_event(payload: bytes) -> dict[str, Any]:
    """The event object; JSON floats become Decimal so no duration is ever a float."""
    event = load_json(payload, "event payload", parse_float=Decimal, parse_constant=_reject_constant)
    if not isinstance(event, dict):
        raise InvalidNotification("event payload must be a JSON object")
    return event


@dataclass(frozen=True)
class CallLeg:
    """One leg of a Dialpad call as one `CallProto` (event or call-log item) tells it."""

    call_id: str
    state: str
    event_ms: int | None
    master_call_id: str | None
    entry_point_call_id: str | None
    target_id: str | None
    target_type: str | None
    target_phone: str | None
    contact_type: str | None
    contact_phone: str | None
    direction: str | None
    started_ms: int | None
    connected_ms: int | None
    ended_ms: int | None
    external_number: str | None
    internal_number: str | None
    voicemail_evidence: bool


def parse_leg(event: Mapping[str, Any]) -> CallLeg:
    """Validate what the conversion relies on; other fields are not checked (a harmless new
    or differently typed field must not turn a real hangup into a 400)."""
    target = optional(event, "target", dict, "") or {}
    contact = optional(event, "contact", dict, "") or {}
    return CallLeg(
        call_id=str(_required_int64(event, "call_id")),
        state=required(event, "state", str, ""),
        event_ms=_moment(event, "event_timestamp"),
        master_call_id=_optional_id(event, "master_call_id"),
        entry_point_call_id=_optional_id(event, "entry_point_call_id"),
        target_id=_contact_id(target, "target."),
        target_type=optional(target, "type", str, "target."),
        target_phone=optional(target, "phone", str, "target."),
        contact_type=optional(contact, "type", str, "contact."),
        contact_phone=optional(contact, "phone", str, "contact."),
        direction=optional(event, "direction", str, ""),
        started_ms=_moment(event, "date_started"),
        connected_ms=_moment(event, "date_connected"),
        ended_ms=_moment(event, "date_ended"),
        external_number=optional(event, "external_number", str, ""),
        internal_number=optional(event, "internal_number", str, ""),
        voicemail_evidence=_went_to_voicemail(event),
    )


def _went_to_voicemail(event: Mapping[str, Any]) -> bool:
    """UNCONFIRMED (providers.md §4.2): a call that reached the user's voicemail is taken to be
    one carrying a `voicemail_share_link` or a `recording_details[]` entry of type `voicemail`
    (both `CallProto` fields). No hangup sample shows what Dialpad sends for it."""
    if event.get("voicemail_share_link"):
        return True
    details = event.get("recording_details")
    if not isinstance(details, list):
        return False
    return any(isinstance(d, dict) and d.get("recording_type") == "voicemail" for d in details)


def _int64(value: Any, name: str) -> int:
    """Dialpad writes int64 as a JSON string of digits; a JSON integer is accepted too."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise InvalidNotification(f"{name} must be an int64 (a string of digits), not {_short(value)}")


def _required_int64(container: Mapping[str, Any], key: str) -> int:
    if container.get(key) in (None, ""):
        raise InvalidNotification(f"{key} is missing")
    return _int64(container[key], key)


def _optional_int64(container: Mapping[str, Any], key: str) -> int | None:
    return None if container.get(key) in (None, "") else _int64(container[key], key)


def _optional_id(container: Mapping[str, Any], key: str) -> str | None:
    value = _optional_int64(container, key)
    return None if value is None else str(value)


def _contact_id(contact: Mapping[str, Any], where: str) -> str | None:
    value = contact.get("id")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return str(_int64(value, f"{where}id"))


def _moment(container: Mapping[str, Any], key: str) -> int | None:
    """A `date_*` in ms since the epoch; absent, empty or 0 all mean "did not happen"."""
    value = _optional_int64(container, key)
    if value is not None and not 0 <= value <= _LAST_MS:
        raise InvalidNotification(f"{key} is not a time in ms since the epoch: {value}")
    return value or None


# --- Conversion --------------------------------------------------------------------------------


def is_concluded(leg: CallLeg) -> bool:
    return leg.state == HANGUP or leg.ended_ms is not None


def firm_user_of(leg: CallLeg, account: Account) -> str | None:
    """The firm user this leg belongs to: its `user` target. Every user of the Dialpad company is
    the firm's, mapped to an attorney or not — an unmapped user's call is still announced (and
    its draft flagged), as with every provider. Office and department legs belong to no one."""
    if leg.target_type != _USER or leg.target_id is None:
        return None
    return leg.target_id


def _end_ms(leg: CallLeg) -> int:
    """UNCONFIRMED (providers.md §4.2): when a hangup carries no `date_ended` (the only signed
    sample, built from the API example, has none) the hangup's `event_timestamp` — "when this
    call event happened" — is taken as the moment the call ended."""
    end = leg.ended_ms if leg.ended_ms is not None else leg.event_ms
    if end is None:
        raise InvalidNotification(f"call {leg.call_id} has neither date_ended nor event_timestamp")
    return end


def connected_seconds(connected_ms: int | None, ended_ms: int) -> int:
    """Connected time in whole seconds, rounded half up, from `date_connected`..`date_ended`.

    `duration` is not used: Dialpad reports 0 there for some legs whose `total_duration` is not
    (providers.md §4.2), and it is a float. The dates are exact integer ms. Never connected: 0.
    """
    if connected_ms is None:
        return 0
    return whole_units(ended_ms - connected_ms, _MS_PER_SECOND)


def _result(leg: CallLeg) -> str:
    """Connected wins over voicemail evidence: a call the user talked on stays billable. Dialpad
    has no "rejected" signal a hangup carries, so a declined call reads as missed."""
    if leg.connected_ms is not None:
        return "answered"
    return "voicemail" if leg.voicemail_evidence else "missed"


def _direction(leg: CallLeg) -> str:
    if leg.direction not in _DIRECTIONS:
        raise InvalidNotification(f"call {leg.call_id}: direction must be inbound or outbound")
    return "internal" if _is_internal(leg) else leg.direction


def _is_internal(leg: CallLeg) -> bool:
    """UNCONFIRMED (providers.md §4.2): the other party of a call between two users of the
    firm's Dialpad company is taken to be a `contact` of type `user`."""
    return leg.contact_type == _USER


def _at(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def to_finished_call(leg: CallLeg, account: Account) -> FinishedCall | None:
    """The firm user's finished call this concluded leg is, or None when the leg is not a
    firm user's (an office / department leg, or a user the firm does not bill)."""
    user = firm_user_of(leg, account)
    if user is None:
        return None
    if leg.started_ms is None:
        raise InvalidNotification(f"call {leg.call_id}: date_started is missing")
    ended_ms = _end_ms(leg)
    other = leg.external_number or leg.contact_phone
    firm_number = leg.internal_number or leg.target_phone
    return FinishedCall(
        provider_call_id=leg.call_id,
        direction=_direction(leg),
        external_number_e164=normalise(other, account.phone_region),
        external_number_raw=other,
        internal_number=firm_side_number(firm_number, account.phone_region),
        provider_user_id=user,
        started_at=_at(leg.started_ms),
        ended_at=_at(max(ended_ms, leg.started_ms)),
        duration_seconds=connected_seconds(leg.connected_ms, ended_ms),
        result=_result(leg),
    )


def _dedupe_key(leg: CallLeg) -> str:
    """(`call_id`, `state`, `event_timestamp`), providers.md §4.4: a re-delivery repeats all
    three; a second hangup Dialpad generates for the leg is kept as its own notice."""
    stamp = "" if leg.event_ms is None else str(leg.event_ms)
    return f"{leg.call_id}:{leg.state}:{stamp}"


def _most_authoritative(legs: Sequence[CallLeg]) -> CallLeg:
    """The hangup with the latest `event_timestamp`; on a tie, the one that arrived last."""
    ranked = sorted(
        enumerate(legs), key=lambda item: (-1 if item[1].event_ms is None else item[1].event_ms, item[0])
    )
    return ranked[-1][1]


# --- The adapter -------------------------------------------------------------------------------


class DialpadProvider:
    """Dialpad call events (providers.md §4) behind the common `PhoneProvider` interface."""

    name = "dialpad"

    def handshake(self, request: WebhookRequest, account: Account) -> Reply | None:
        # Dialpad documents no URL-validation request (providers.md §4.3).
        return None

    def authenticate(self, request: WebhookRequest, account: Account) -> None:
        verify_signature(request.body, account.webhook_secret)
        try:
            claims = parse_event(event_payload(request.body))
        except InvalidNotification:
            return  # authentic but malformed: `notices` answers that with a 400
        check_time_claims(claims, request.received_at)

    def notices(self, request: WebhookRequest, account: Account) -> Sequence[Notice]:
        payload = event_payload(request.body)
        event = parse_event(payload)
        state = required(event, "state", str, "")
        if state != HANGUP:
            return []
        leg = parse_leg(event)
        call = to_finished_call(leg, account)
        if call is None:
            return []
        checked_call(call)  # one hangup tells the whole call: refuse an impossible one before storing it
        return [Notice(dedupe_key=_dedupe_key(leg), provider_call_id=leg.call_id, body=payload)]

    def finished_call(self, bodies: Sequence[bytes], account: Account) -> FinishedCall | None:
        """Only hangups count; of several, `_most_authoritative` wins. Bodies of different
        legs are a caller error (ValueError)."""
        legs = [parse_leg(parse_event(body)) for body in bodies]
        hangups = [leg for leg in legs if leg.state == HANGUP]
        if not hangups:
            return None
        call_ids = {leg.call_id for leg in legs}
        if len(call_ids) > 1:
            raise ValueError(f"bodies of several Dialpad calls: {sorted(call_ids)}")
        call = to_finished_call(_most_authoritative(hangups), account)
        return None if call is None else checked_call(call)


ADAPTER = DialpadProvider()
