"""Zoom Phone webhook adapter: signed events in, one finished call out (providers.md §3).

Pure, no I/O. Zoom signs every request, the URL-validation CRC included, with
`x-zm-signature: v0=<hex HMAC-SHA256(secret, "v0:{x-zm-request-timestamp}:{raw body}")>`.

A finished call reaches us in up to four shapes, all keyed by the same `call_id` (the id Zoom's
call-history API gives too, so webhooks and reconciliation agree on `provider_call_id`):

* real time: `phone.callee_ended` / `phone.caller_ended` (no duration: answer → end);
* the call record, in three generations Zoom runs side by side (an app may be subscribed to
  several): legacy `phone.*_call_log_completed` (`duration`), v2 `phone.*_call_history_completed`
  and v3 `phone.*_call_element_completed` (`talk_time` + `hold_time` seconds; `wait_time`, the
  ringing, is not connected time).

Authority, lowest to highest: ended < legacy log < v2 history < v3 element. The record is what
Zoom itself bills and shows; the ended event is only what was known when the line dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from calltime.ingest.providers.fields import (load_json, optional, optional_time, require_object, required,
                                              required_time, span_seconds, typed)
from calltime.ingest.providers.model import (Account, FinishedCall, InvalidNotification, Notice, Refused,
                                             Reply, WebhookRequest, checked_call)
from calltime.phone import is_extension, normalise

NAME = "zoom"
REPLAY_TOLERANCE = timedelta(seconds=300)
SIGNATURE_HEADER = "x-zm-signature"
TIMESTAMP_HEADER = "x-zm-request-timestamp"
SIGNATURE_VERSION = "v0"
URL_VALIDATION_EVENT = "endpoint.url_validation"

CALLER, CALLEE = "caller", "callee"

# Authority of each shape; a higher one replaces whatever a lower one said.
ENDED, LEGACY_LOG, CALL_HISTORY, CALL_ELEMENT = 0, 1, 2, 3

# event name -> (the side whose record it is, generation, key of the records array)
RECORD_EVENTS: Mapping[str, tuple[str, int, str]] = {
    "phone.callee_call_log_completed": (CALLEE, LEGACY_LOG, "call_logs"),
    "phone.caller_call_log_completed": (CALLER, LEGACY_LOG, "call_logs"),
    "phone.callee_call_history_completed": (CALLEE, CALL_HISTORY, "call_logs"),
    "phone.caller_call_history_completed": (CALLER, CALL_HISTORY, "call_logs"),
    "phone.callee_call_element_completed": (CALLEE, CALL_ELEMENT, "call_elements"),
    "phone.caller_call_element_completed": (CALLER, CALL_ELEMENT, "call_elements"),
}
ENDED_EVENTS: Mapping[str, str] = {"phone.callee_ended": CALLEE, "phone.caller_ended": CALLER}

# Zoom's result vocabularies (v2/v3 `result`, API `call_result`, legacy `result`, real-time
# `handup_result`), lower-cased with spaces as underscores.
_ANSWERED = frozenset({"answered", "accepted", "picked_up", "connected", "succeeded", "call_connected"})
_VOICEMAIL = frozenset({"voicemail", "voice_mail"})
_REJECTED = frozenset({"rejected", "declined", "call_rejected"})
_MISSED = frozenset({
    "no_answer", "missed", "ring_timeout", "timeout", "canceled", "cancelled", "hang_up", "abandoned",
    "busy", "call_failed", "unconnected", "overflowed", "invalid_key", "invalid_operation",
    "system_blocked", "service_unavailable",
})
_LEGACY_EXTENSION_NUMBER_TYPE = 1  # legacy `*_number_type`: 1 extension, 2 phone number


# --- Signature, replay window, URL validation ---------------------------------------------------


def request_time(header_value: str) -> datetime:
    """When Zoom says it sent the request, from `x-zm-request-timestamp`.

    UNCONFIRMED (providers.md §3.3, §8.3): the unit of the header. Zoom's sample and SDK treat it
    as an opaque number; read here as Unix epoch SECONDS. If Zoom sends milliseconds every
    request falls outside the replay window and is refused (401) — loud, not silent. This is the
    only place that knows the unit.
    """
    text = header_value.strip()
    if not text.isascii() or not text.isdigit():
        raise ValueError("the timestamp is not a whole number")
    try:
        return datetime.fromtimestamp(int(text), tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ValueError("the timestamp is out of range") from None


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `x-zm-signature` value Zoom sends for `body` at `timestamp`."""
    message = f"{SIGNATURE_VERSION}:{timestamp}:".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def encrypted_token(secret: str, plain_token: str) -> str:
    """The URL-validation answer: hex HMAC-SHA256 of the plain token under the secret."""
    return hmac.new(secret.encode(), plain_token.encode(), hashlib.sha256).hexdigest()


def verify_signature(request: WebhookRequest, secret: str) -> None:
    """Raise Refused(401) unless the request is signed with `secret` within the replay window."""
    if not secret:
        raise Refused(401, "no Zoom secret token is configured for this account")
    presented = request.header(SIGNATURE_HEADER)
    timestamp = request.header(TIMESTAMP_HEADER)
    if not presented or not timestamp:
        raise Refused(401, f"{SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header missing")
    expected = signature(secret, timestamp, request.body)
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Refused(401, "x-zm-signature does not match the body")
    try:
        sent_at = request_time(timestamp)
    except ValueError as error:
        raise Refused(401, f"{TIMESTAMP_HEADER}: {error}") from None
    if abs(request.received_at - sent_at) > REPLAY_TOLERANCE:
        raise Refused(401, f"{TIMESTAMP_HEADER} is outside the {REPLAY_TOLERANCE.seconds} s window")


def _utf8(text: str) -> bool:
    """False for text holding a lone surrogate escape (\ud800), which has no UTF-8 to sign."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _loads_or_none(body: bytes) -> Any:
    try:
        return load_json(body)
    except InvalidNotification:
        return None


# --- The adapter ----------------------------------------------------------------------------------


class ZoomPhone:
    """Zoom Phone's webhook dialect (see the module docstring)."""

    name = NAME

    def handshake(self, request: WebhookRequest, account: Account) -> Reply | None:
        """Answer `endpoint.url_validation` (setup and every 72 h) once its signature checks."""
        envelope = _loads_or_none(request.body)
        if not isinstance(envelope, dict) or envelope.get("event") != URL_VALIDATION_EVENT:
            return None
        verify_signature(request, account.webhook_secret)
        payload = envelope.get("payload")
        plain = payload.get("plainToken") if isinstance(payload, dict) else None
        if not isinstance(plain, str) or not plain or not _utf8(plain):
            body = json.dumps({"detail": "payload.plainToken must be a non-empty string"}).encode()
            return Reply(status=400, body=body)
        answer = {"plainToken": plain, "encryptedToken": encrypted_token(account.webhook_secret, plain)}
        return Reply(status=200, body=json.dumps(answer, separators=(",", ":")).encode())

    def authenticate(self, request: WebhookRequest, account: Account) -> None:
        verify_signature(request, account.webhook_secret)
        envelope = _loads_or_none(request.body)
        payload = envelope.get("payload") if isinstance(envelope, dict) else None
        claimed = payload.get("account_id") if isinstance(payload, dict) else None
        # A missing or mistyped account_id is a malformed body, reported by `notices` (400).
        if isinstance(claimed, str) and claimed != account.account_id:
            raise Refused(403, "payload.account_id is not this firm's Zoom account")

    def notices(self, request: WebhookRequest, account: Account) -> Sequence[Notice]:
        envelope = _envelope(load_json(request.body))
        event = envelope["event"]
        if event in ENDED_EVENTS:
            record = _parse_ended(envelope)
            return [Notice(_dedupe_key(event, record.record_id, envelope["payload"]["object"]),
                           record.call_id, request.body)]
        if event in RECORD_EVENTS:
            return [
                Notice(_dedupe_key(event, record.record_id, item), record.call_id, body)
                for record, item, body in _split_records(envelope)
            ]
        return []

    def finished_call(self, bodies: Sequence[bytes], account: Account) -> FinishedCall | None:
        """The most authoritative record wins (module docstring); one record per record id, the
        latest arrival (a re-issued record replaces the earlier one). Among equals an answered
        record beats an unanswered one (a ring group: one member answered, the others did not),
        then the later arrival."""
        records: dict[tuple[int, str], tuple[int, _Record]] = {}
        for arrival, body in enumerate(bodies):
            for record in _records_of(body):
                records[(record.authority, record.record_id)] = (arrival, record)
        if not records:
            return None
        call_ids = {record.call_id for _, record in records.values()}
        if len(call_ids) > 1:
            raise ValueError(f"notices of several Zoom calls: {sorted(call_ids)}")
        _, best = max(records.values(), key=lambda a_r: (a_r[1].authority, _answered(a_r[1]), a_r[0]))
        return checked_call(to_finished_call(best, account))


ADAPTER = ZoomPhone()


# --- Parsed values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Party:
    ext_id: str | None = None
    user_id: str | None = None
    ext_number: str | None = None
    number: str | None = None  # a phone number (DID or PSTN), as Zoom wrote it
    extension_like: bool = False  # Zoom says this side is one of the account's extensions
    ext_type: str | None = None  # user, call_queue, auto_receptionist, ... (v2/v3 and API only)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(i for i in (self.ext_id, self.user_id) if i)


@dataclass(frozen=True)
class _Record:
    """One shape of one call, from one side's point of view (`owner`)."""

    authority: int
    record_id: str
    call_id: str
    owner: str  # CALLER | CALLEE: whose record (event name) or, from the API, the direction
    caller: _Party
    callee: _Party
    internal: bool | None  # Zoom's `connect_type`; None when the shape has none
    started_at: datetime
    ended_at: datetime
    connected_seconds: int
    result: str  # answered | missed | voicemail | rejected


def _answered(record: _Record) -> bool:
    return record.result == "answered"


# --- Envelope and records -------------------------------------------------------------------------


def _envelope(envelope: Any) -> dict[str, Any]:
    require_object(envelope, "body")
    event = required(envelope, "event", str, "")
    if event not in ENDED_EVENTS and event not in RECORD_EVENTS:
        return envelope
    payload = required(envelope, "payload", dict, "")
    required(payload, "account_id", str, "payload.")
    required(payload, "object", dict, "payload.")
    optional(envelope, "event_ts", int, "")
    return envelope


def _records_of(body: bytes) -> list[_Record]:
    envelope = _envelope(load_json(body))
    if envelope["event"] in ENDED_EVENTS:
        return [_parse_ended(envelope)]
    if envelope["event"] in RECORD_EVENTS:
        return [record for record, _, _ in _split_records(envelope)]
    return []


def _split_records(envelope: dict[str, Any]) -> list[tuple[_Record, dict[str, Any], bytes]]:
    """Each record of a record event, with the single-record envelope stored for it (one event
    may list several records, possibly of different calls)."""
    event = envelope["event"]
    owner, authority, key = RECORD_EVENTS[event]
    payload = envelope["payload"]
    obj = payload["object"]
    owner_user = optional(obj, "user_id", str, "payload.object.")
    items = required(obj, key, list, "payload.object.")
    out = []
    for index, item in enumerate(items):
        where = f"payload.object.{key}[{index}]."
        require_object(item, where.rstrip("."))
        record = _parse_record_item(item, where, owner, authority, owner_user)
        single = {
            "event": event,
            "event_ts": envelope.get("event_ts"),
            "payload": {"account_id": payload["account_id"],
                        "object": {"user_id": owner_user, key: [item]}},
        }
        out.append((record, item, json.dumps(single, separators=(",", ":")).encode()))
    return out


def _parse_record_item(item: Mapping[str, Any], where: str, owner: str, authority: int,
                       owner_user: str | None) -> _Record:
    if authority == LEGACY_LOG:
        return _parse_legacy_log(item, where, owner, owner_user)
    id_key = "call_element_id" if authority == CALL_ELEMENT else "id"
    parties = {side: _v2_party(item, side, where) for side in (CALLER, CALLEE)}
    if owner_user and not parties[owner].user_id:
        parties[owner] = replace(parties[owner], user_id=owner_user)
    connected = (_optional_count(item, "talk_time", where) or 0) + (_optional_count(item, "hold_time", where) or 0)
    return _v2_record(item, where, authority, id_key, owner, parties, connected, "result")


def _v2_record(item: Mapping[str, Any], where: str, authority: int, id_key: str, owner: str,
               parties: Mapping[str, _Party], connected: int, result_key: str) -> _Record:
    """A record in the v2/v3 (and call-history API) shape: `start_time`/`end_time`,
    `connect_type`, and a result Zoom's vocabulary names."""
    return _Record(
        authority=authority,
        record_id=required(item, id_key, str, where),
        call_id=required(item, "call_id", str, where),
        owner=owner,
        caller=parties[CALLER],
        callee=parties[CALLEE],
        internal=_connect_type(item, where),
        started_at=required_time(item, "start_time", where),
        ended_at=required_time(item, "end_time", where),
        connected_seconds=connected,
        result=_result(optional(item, result_key, str, where), connected),
    )


def _v2_party(item: Mapping[str, Any], side: str, where: str) -> _Party:
    ext_type = optional(item, f"{side}_ext_type", str, where)
    number_type = optional(item, f"{side}_number_type", str, where)
    ext_id = optional(item, f"{side}_ext_id", str, where)
    return _Party(
        ext_id=ext_id,
        ext_number=_optional_text(item, f"{side}_ext_number", where),
        number=optional(item, f"{side}_did_number", str, where),
        extension_like=bool(ext_id) and ext_type is not None and not (number_type or "").startswith("external"),
        ext_type=ext_type,
    )


def _parse_legacy_log(item: Mapping[str, Any], where: str, owner: str, owner_user: str | None) -> _Record:
    parties = {side: _legacy_party(item, side, where) for side in (CALLER, CALLEE)}
    if owner_user and not parties[owner].user_id:
        parties[owner] = replace(parties[owner], user_id=owner_user)
    started = required_time(item, "date_time", where)
    connected = legacy_duration_seconds(_optional_count(item, "duration", where) or 0)
    return _Record(
        authority=LEGACY_LOG,
        record_id=required(item, "id", str, where),
        call_id=required(item, "call_id", str, where),
        owner=owner,
        caller=parties[CALLER],
        callee=parties[CALLEE],
        internal=None,
        started_at=started,
        ended_at=optional_time(item, "call_end_time", where) or started + timedelta(seconds=connected),
        connected_seconds=connected,
        result=_result(optional(item, "result", str, where), connected),
    )


def legacy_duration_seconds(duration: int) -> int:
    """The legacy record's `duration` as connected seconds.

    UNCONFIRMED (providers.md §3.2, §8.3): the webhook schema gives no unit; Zoom's API docs
    say seconds for the same field, and seconds it is taken to be here. Also assumed: it is the
    connected time (hold included, ringing not), as the v2/v3 `talk_time` + `hold_time` are.
    """
    return duration


def _legacy_party(item: Mapping[str, Any], side: str, where: str) -> _Party:
    number = _optional_text(item, f"{side}_number", where)
    number_type = optional(item, f"{side}_number_type", int, where)
    is_ext = number_type == _LEGACY_EXTENSION_NUMBER_TYPE
    return _Party(
        user_id=optional(item, f"{side}_user_id", str, where),
        ext_number=number if is_ext else None,
        number=optional(item, f"{side}_did_number", str, where) or (None if is_ext else number),
        extension_like=is_ext,
    )


def _parse_ended(envelope: Mapping[str, Any]) -> _Record:
    event = envelope["event"]
    owner = ENDED_EVENTS[event]
    where = "payload.object."
    obj = envelope["payload"]["object"]
    caller = _ended_party(optional(obj, "caller", dict, where) or {}, f"{where}caller.")
    callee = _ended_party(optional(obj, "callee", dict, where) or {}, f"{where}callee.")
    ended = required_time(obj, "call_end_time", where)
    answered = optional_time(obj, "answer_start_time", where)
    started = optional_time(obj, "ringing_start_time", where) or answered or ended
    connected = span_seconds(ended - answered) if answered else 0
    outcome = optional(obj, "handup_result", str, where)
    owner_party = callee if owner == CALLEE else caller
    return _Record(
        authority=ENDED,
        record_id=f"{owner}:{owner_party.ext_id or owner_party.user_id or ''}",
        call_id=required(obj, "call_id", str, where),
        owner=owner,
        caller=caller,
        callee=callee,
        internal=None,
        started_at=started,
        ended_at=ended,
        connected_seconds=connected,
        result="answered" if answered else _result(outcome, 0),
    )


def _ended_party(raw: Mapping[str, Any], where: str) -> _Party:
    ext_id = optional(raw, "extension_id", str, where)
    user_id = optional(raw, "user_id", str, where)
    return _Party(
        ext_id=ext_id,
        user_id=user_id,
        ext_number=_optional_text(raw, "extension_number", where),
        number=optional(raw, "phone_number", str, where),
        extension_like=bool(ext_id or user_id),
    )


# --- The call-history API record (`GET /v2/phone/call_history`) --------------------------------------


def api_connected_seconds(item: Mapping[str, Any], where: str = "") -> int:
    """Connected seconds of one `call_history[]` item of the call-history API.

    UNCONFIRMED (providers.md §3.5): `duration` is documented as "the duration of the call in
    seconds" (unit CONFIRMED) but not whether ringing is included. Taken here as connected time
    (hold included, ringing not), the same measure as the webhook's `talk_time` + `hold_time`.
    """
    return _optional_count(item, "duration", where) or 0


def history_call(item: Any, account: Account) -> FinishedCall | None:
    """The call one call-history API item describes, as the webhooks would give it; None when
    no user of the account is on it (e.g. a call that only reached an auto receptionist).
    Raises InvalidNotification when the item is malformed."""
    where = "call_history[]."
    require_object(item, "call_history[]")
    parties = {side: _v2_party(item, side, where) for side in (CALLER, CALLEE)}
    direction = optional(item, "direction", str, where)
    owner = CALLER if direction == "outbound" else CALLEE
    record = _v2_record(item, where, CALL_HISTORY, "call_history_uuid", owner, parties,
                        api_connected_seconds(item, where), "call_result")
    user = _side(record, _firm_side(record, account))
    if not user.ids or user.ext_type not in (None, "user"):
        return None
    return to_finished_call(record, account)


# --- One record -> FinishedCall -------------------------------------------------------------------


def _firm_side(record: _Record, account: Account) -> str:
    """Which side is the firm user: a mapped callee, else a mapped caller, else the record's
    owner. Decided from the record's content, so that both sides' records of an internal call
    — and the API's single record of it — tell the call from the same side."""
    for side in (CALLEE, CALLER):
        if any(i in account.attorneys_by_user for i in _side(record, side).ids):
            return side
    return record.owner


def firm_user_id(party_ids: Sequence[str], account: Account) -> str:
    """The firm user's id as `attorneys_by_user` knows it.

    Zoom names a phone user by two ids: the extension id (`*_ext_id`, `extension_id`: every
    shape but the legacy log, and the only one the call-history API gives) and the Zoom user id
    (`user_id`: real-time events, record owners, the legacy log). UNCONFIRMED whether the two
    ever coincide. The first id that is mapped wins, the extension id first; unmapped, the
    extension id is reported. Map attorneys by extension id (adding the user id where the
    legacy log is subscribed) so webhooks and reconciliation name the same user.
    """
    for candidate in party_ids:
        if candidate in account.attorneys_by_user:
            return candidate
    return party_ids[0]


def _side(record: _Record, side: str) -> _Party:
    return record.caller if side == CALLER else record.callee


def to_finished_call(record: _Record, account: Account) -> FinishedCall:
    side = _firm_side(record, account)
    user = _side(record, side)
    other = _side(record, CALLEE if side == CALLER else CALLER)
    internal = _is_internal(record, other)
    other_raw = (other.ext_number or other.number) if internal else (other.number or other.ext_number)
    ids = user.ids
    if not ids:
        raise InvalidNotification(f"the {side}'s side of Zoom call {record.call_id} names no user")
    answered = _answered(record)
    return FinishedCall(
        provider_call_id=record.call_id,
        direction="internal" if internal else ("outbound" if side == CALLER else "inbound"),
        external_number_e164=None if internal else normalise(other_raw, account.phone_region),
        external_number_raw=other_raw,
        internal_number=_firm_number(user, account.phone_region),
        provider_user_id=firm_user_id(ids, account),
        started_at=record.started_at,
        ended_at=record.ended_at,
        duration_seconds=record.connected_seconds if answered else 0,
        result=record.result,
    )


def _is_internal(record: _Record, other: _Party) -> bool:
    if record.internal is not None:
        return record.internal
    return other.extension_like or (other.number is None and is_extension(other.ext_number))


def _firm_number(user: _Party, region: str) -> str | None:
    if user.number:
        return normalise(user.number, region) or user.number.strip() or user.ext_number
    return user.ext_number


def _result(raw: str | None, connected_seconds: int) -> str:
    """Zoom's many outcomes as answered | missed | voicemail | rejected; an outcome Zoom adds
    later counts as answered when it carried connected time, else missed."""
    key = (raw or "").strip().lower().replace(" ", "_")
    if key in _ANSWERED:
        return "answered"
    if key in _VOICEMAIL:
        return "voicemail"
    if key in _REJECTED:
        return "rejected"
    if key in _MISSED:
        return "missed"
    return "answered" if connected_seconds > 0 else "missed"


def _connect_type(item: Mapping[str, Any], where: str) -> bool | None:
    value = optional(item, "connect_type", str, where)
    return None if value is None else value == "internal"


def _dedupe_key(event: str, record_id: str, item: Any) -> str:
    """(event, record id) as providers.md §3.4/§6 advise, plus a digest of the record, so a
    retry (same record) is stored once but a re-issued, corrected record is kept."""
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return f"{event}:{record_id}:{digest}"


# --- Field access -----------------------------------------------------------------------------------


def _optional_text(container: Mapping[str, Any], key: str, where: str) -> str | None:
    """Extension numbers arrive as strings in records and as integers in real-time events."""
    value = container.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return typed(value, key, str, where)


def _optional_count(container: Mapping[str, Any], key: str, where: str) -> int | None:
    value = optional(container, key, int, where)
    if value is not None and value < 0:
        raise InvalidNotification(f"{where}{key} cannot be negative: {value}")
    return value
