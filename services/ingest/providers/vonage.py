"""Vonage Business Communications (VBC) webhook adapter: Vonage Integration Platform (VIS) CALL
events in, one finished call out.

Pure functions, no I/O. Contract: /work/shared/reference/providers.md §5.A and the
`vonage_vbc_*` samples beside it.

* VIS posts one event per state change of a user's call (`RINGING`, `ACTIVE`, `HELD`, ...).
  Only the final states say the call is over: `ANSWERED` ("a call of non-zero duration has
  ended"), `MISSED` (inbound, unanswered), `REJECTED` (rejected / sent to voicemail) and
  `CANCELLED` (outbound, given up before the far end answered). Every other state, and every
  event that is not a CALL, is acknowledged and ignored.
* Authenticity: an HMAC-SHA256 hex `signature` over the `event` object (not the raw body), in
  `metadata.signature` (metadataPolicy=BODY) or the `X-VON-Signature` header (HEADER). We always
  register webhooks with a signing key, so an unsigned delivery is refused. The scheme carries
  no timestamp, so there is no replay window: a replayed event has the same dedupe key and is
  stored once.
* Re-deliveries (up to 5 retries, same event, new `attempt`) share the dedupe key
  `{event.id}:{event.state}`; `deliveryId`/`attempt` name deliveries, not events.
* `duration` is milliseconds; times look like `2020-10-01T16:10:06.000+0000`.

The Vonage Voice API (CPaaS, §5.B) is a different product with its own account identity, no
firm user and its own call log; it is not handled here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from calltime.ingest.providers.fields import (json_type, load_json, optional, optional_time, require_object,
                                              required, required_time, whole_units)
from calltime.ingest.providers.model import (Account, FinishedCall, InvalidNotification, Notice, Refused,
                                             Reply, WebhookRequest, checked_call)
from calltime.phone import normalise

SIGNATURE_HEADER = "X-VON-Signature"
CALL_EVENT_TYPE = "CALL"

# CANCELLED is VBC's word for an outbound call the firm user gave up on before anyone answered:
# for a billing clerk that is a missed call (nothing was connected), so it maps to "missed".
RESULT_BY_FINAL_STATE: Mapping[str, str] = {
    "ANSWERED": "answered",
    "MISSED": "missed",
    "REJECTED": "rejected",
    "CANCELLED": "missed",
}
FINAL_STATES = frozenset(RESULT_BY_FINAL_STATE)

# When one call id has several final events (a ring group: one extension answered, the others
# missed), the one that says most about connected time wins; ties go to the latest arrival.
_AUTHORITY: Mapping[str, int] = {"ANSWERED": 2, "REJECTED": 1, "MISSED": 0, "CANCELLED": 0}

_DIRECTIONS: Mapping[str, str] = {"INBOUND": "inbound", "OUTBOUND": "outbound"}
_MILLISECONDS_PER_SECOND = 1000
# No call lasts a week; a larger `duration` is corrupt (and would overflow time arithmetic).
MAX_DURATION_MS = 7 * 24 * 3600 * _MILLISECONDS_PER_SECOND


# --- The UNCONFIRMED assumptions, one place each -----------------------------------------------


def canonical_event_bytes(event: Mapping[str, Any]) -> bytes:
    """The bytes VIS signs: the `event` object as JSON, keys sorted alphabetically (at every
    level), no whitespace, UTF-8 without \\u escapes.

    UNCONFIRMED (providers.md §5.A, open question 5): the documentation describes exactly this,
    but its worked example (key `mysecretkey` -> `95aafd08...`) could not be reproduced with this
    or any nearby variant (its values look redacted). Until a live delivery settles it, this is
    the only function that knows how the event is serialised for signing; the simulator signs
    through it too.
    """
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def number_e164(raw: str | None, region: str) -> str | None:
    """The E.164 form of a VBC number (`event.phoneNumber`, Reports `from`/`to`), or None.

    UNCONFIRMED (providers.md §5.A, open question 5): whether VBC writes numbers with a `+`.
    The VIS example is redacted to ten characters (a national number?) and the Reports examples
    read `17325550100` (E.164 without the `+`). So the number is first read as written, in the
    firm's region, and only if that fails an all-digit number is read as international.
    """
    found = normalise(raw, region)
    if found is None and raw is not None and raw.strip().isdigit():
        found = normalise("+" + raw.strip(), region)
    return found


# --- Signing ---------------------------------------------------------------------------------


def sign_event(event: Mapping[str, Any], signing_key: str) -> str:
    """The hex HMAC-SHA256 VIS puts in `signature` for `event` under `signing_key`."""
    return hmac.new(signing_key.encode(), canonical_event_bytes(event), hashlib.sha256).hexdigest()


def signature_matches(presented: str | None, event: Mapping[str, Any], signing_key: str) -> bool:
    """Constant-time comparison; an unset key never matches anything."""
    if presented is None or not signing_key:
        return False
    try:
        expected = sign_event(event, signing_key).encode()
        return hmac.compare_digest(presented.strip().lower().encode(), expected)
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800), in the event or in
        return False  # metadata.signature: VIS signs UTF-8 and writes hex, neither holds one


# --- Parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallEvent:
    """One VIS CALL event, as much as calltime needs of it."""

    id: str
    state: str
    account_id: str
    user_id: str
    direction: str  # INBOUND | OUTBOUND
    internal: bool
    phone_number: str | None  # the remote party
    external_id: str
    start_time: datetime
    answer_time: datetime | None
    end_time: datetime | None
    duration_ms: int

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def call_id(self) -> str:
        return split_external_id(self.external_id)[0]

    @property
    def extension(self) -> str | None:
        return split_external_id(self.external_id)[1]


def split_external_id(external_id: str) -> tuple[str, str | None]:
    """(call id, extension) of an `externalId`, "commonly formatted as `{call_id}_{extension}`".

    Split on the last `_` because a call id may itself contain one; with no `_` the whole value
    is the call id.
    """
    call_id, separator, extension = external_id.rpartition("_")
    if not separator or not call_id:
        return external_id, None
    return call_id, extension or None


def delivery_parts(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(event, metadata) of one delivery body; metadata is {} when the policy is not BODY."""
    envelope = load_json(body)
    require_object(envelope, "body")
    event = envelope.get("event")
    require_object(event, "event")
    metadata = envelope.get("metadata")
    if metadata is None:
        return event, {}
    require_object(metadata, "metadata")
    return event, metadata


def event_type_and_state(event: Mapping[str, Any]) -> tuple[str, str]:
    return required(event, "type", str, "event."), required(event, "state", str, "event.")


def parse_call_event(event: Mapping[str, Any]) -> CallEvent:
    """A final-or-not CALL event, every field calltime relies on checked. Raises
    InvalidNotification naming the offending field; unknown keys are ignored."""
    where = "event."
    direction = required(event, "direction", str, where)
    if direction not in _DIRECTIONS:
        raise InvalidNotification(f"event.direction must be INBOUND or OUTBOUND, not {direction!r}")
    duration = optional(event, "duration", int, where) or 0
    if not 0 <= duration <= MAX_DURATION_MS:
        raise InvalidNotification(f"event.duration is out of range: {duration}")
    return CallEvent(
        id=_required_id(event, "id", where),
        state=required(event, "state", str, where),
        account_id=_required_id(event, "accountId", where),
        user_id=_required_id(event, "userId", where),
        direction=direction,
        internal=optional(event, "internal", bool, where) or False,
        phone_number=optional(event, "phoneNumber", str, where),
        external_id=required(event, "externalId", str, where),
        start_time=required_time(event, "startTime", where),
        answer_time=optional_time(event, "answerTime", where),
        end_time=optional_time(event, "endTime", where),
        duration_ms=duration,
    )


def whole_seconds(milliseconds: int) -> int:
    """Milliseconds to whole seconds, half up, in integers only."""
    return whole_units(milliseconds, _MILLISECONDS_PER_SECOND)


def _required_id(container: Mapping[str, Any], key: str, where: str) -> str:
    """Ids are strings in the webhook example and int64 in the OpenAPI schema: take either."""
    value = container.get(key)
    if value is None:
        raise InvalidNotification(f"{where}{key} is missing")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidNotification(f"{where}{key} must be a string or an integer, not {json_type(value)}")
    text = str(value)
    if not text:
        raise InvalidNotification(f"{where}{key} is empty")
    return text


# --- Assembling one call ---------------------------------------------------------------------


def stored_body(event: Mapping[str, Any]) -> bytes:
    """What the inbox keeps: the event alone (the metadata differs between re-deliveries)."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def authoritative_event(events: Sequence[CallEvent]) -> CallEvent | None:
    """The final event that tells the call (see `_AUTHORITY`), or None while none is final."""
    finals = [(index, event) for index, event in enumerate(events) if event.is_final]
    if not finals:
        return None
    return max(finals, key=lambda item: (_AUTHORITY[item[1].state], item[0]))[1]


def finished_call_of(event: CallEvent, region: str) -> FinishedCall:
    """The call a final event describes, from the firm user's (`userId`'s) side.

    `ended_at` is `endTime`; should a final event lack it, the end is reconstructed from the
    answer (or start) time plus the connected duration.
    """
    return FinishedCall(
        provider_call_id=event.call_id,
        direction="internal" if event.internal else _DIRECTIONS[event.direction],
        external_number_e164=number_e164(event.phone_number, region),
        external_number_raw=event.phone_number,
        internal_number=event.extension,
        provider_user_id=event.user_id,
        started_at=event.start_time,
        ended_at=_ended_at(event),
        duration_seconds=whole_seconds(event.duration_ms),
        result=RESULT_BY_FINAL_STATE[event.state],
    )


def _ended_at(event: CallEvent) -> datetime:
    if event.end_time is not None:
        return event.end_time
    began_talking = event.answer_time or event.start_time
    try:
        return began_talking + timedelta(milliseconds=event.duration_ms)
    except OverflowError:
        raise InvalidNotification("event ends after the last representable time") from None


# --- The adapter -----------------------------------------------------------------------------


class VonageProvider:
    """VBC through the Vonage Integration Platform; see the module docstring."""

    name = "vonage"

    def handshake(self, request: WebhookRequest, account: Account) -> Reply | None:
        # VIS registers a webhook with a plain POST /self/webhooks; it never probes the URL.
        return None

    def authenticate(self, request: WebhookRequest, account: Account) -> None:
        try:
            event, metadata = delivery_parts(request.body)
        except InvalidNotification as error:
            raise Refused(401, f"cannot verify the signature: {error}") from None
        presented = request.header(SIGNATURE_HEADER)
        if presented is None and isinstance(metadata.get("signature"), str):
            presented = metadata["signature"]
        if presented is None:
            raise Refused(401, "no signature (neither X-VON-Signature nor metadata.signature)")
        if not signature_matches(presented, event, account.webhook_secret):
            raise Refused(401, "signature does not match the event")
        try:
            account_id = _required_id(event, "accountId", "event.")
        except InvalidNotification as error:
            raise Refused(403, f"the event names no account: {error}") from None
        if account_id != account.account_id:
            raise Refused(403, "the event belongs to another Vonage account")

    def notices(self, request: WebhookRequest, account: Account) -> Sequence[Notice]:
        event, _ = delivery_parts(request.body)
        event_type, state = event_type_and_state(event)
        if event_type != CALL_EVENT_TYPE or state not in FINAL_STATES:
            return []
        call = parse_call_event(event)
        return [
            Notice(
                dedupe_key=f"{call.id}:{call.state}",
                provider_call_id=call.call_id,
                body=stored_body(event),
            )
        ]

    def finished_call(self, bodies: Sequence[bytes], account: Account) -> FinishedCall | None:
        event = authoritative_event([_stored_event(body) for body in bodies])
        return None if event is None else checked_call(finished_call_of(event, account.phone_region))


def _stored_event(body: bytes) -> CallEvent:
    event = load_json(body, "stored body")
    require_object(event, "event")
    return parse_call_event(event)


ADAPTER = VonageProvider()
