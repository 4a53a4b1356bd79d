"""RingCentral webhook adapter: telephony-session notifications in, one finished call out.

Pure functions, no I/O. The ingest entrypoint hands in the raw request (headers and body
bytes); this module answers the subscription handshake, checks the shared verification token,
parses each notification into frozen values, and — once the firm user's party has hung up —
assembles a session's notifications into one `FinishedCall`. `ADAPTER` (a `RingCentral`) speaks
the same through the provider-neutral `PhoneProvider` contract of `model.py`.

Contract: /work/shared/reference/providers.md §1 and the RingCentral samples beside it.
RingCentral sends no duration: it is computed from `eventTime` deltas. Delivery order is not
guaranteed (order by `body.sequence`) and duplicates are possible (dedupe on envelope `uuid`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from calltime.ingest.providers.fields import (firm_side_number, load_json, optional, optional_time,
                                              require_object, required, required_time, secret_matches,
                                              span_seconds)
from calltime.ingest.providers.model import (Account, FinishedCall, InvalidNotification, Notice, Refused,
                                             Reply, WebhookRequest, checked_call)
from calltime.phone import is_extension, normalise

__all__ = [
    "ADAPTER",
    "FinishedCall",
    "InvalidNotification",
    "Party",
    "RingCentral",
    "SessionNotification",
    "assemble_call",
    "is_validation_request",
    "parse_notification",
    "presented_token",
    "token_matches",
]

# Both the account-level and the extension-level filter deliver telephony sessions; one
# subscription may hold both, so one call's notifications can arrive under either URI.
_TELEPHONY_SESSIONS_EVENT = re.compile(
    r"/restapi/v1\.0/account/[^/?]+(?:/extension/[^/?]+)?/telephony/sessions(?:\?.*)?"
)

_ANSWERED = "Answered"
_VOICEMAIL = "VoiceMail"
# `Gone` means the party left for another session (transfer); for the firm user the call in
# this session is over either way.
_ENDED = frozenset({"Disconnected", "Gone"})


@dataclass(frozen=True)
class Party:
    """One leg of a telephony session as one notification saw it."""

    id: str
    extension_id: str | None
    account_id: str | None
    direction: str | None  # RingCentral's technical, party-relative "Inbound" | "Outbound"
    from_number: str | None
    from_extension_id: str | None
    to_number: str | None
    to_extension_id: str | None
    status_code: str
    missed_call: bool
    status_reason: str | None = None  # why a Disconnected party left, e.g. "Rejected"


@dataclass(frozen=True)
class SessionNotification:
    """One webhook delivery. Body fields are None/empty unless `is_telephony_session`."""

    uuid: str
    event: str
    timestamp: datetime | None
    subscription_id: str | None
    owner_id: str | None
    sequence: int | None = None
    telephony_session_id: str | None = None
    session_id: str | None = None
    event_time: datetime | None = None
    parties: tuple[Party, ...] = ()

    @property
    def is_telephony_session(self) -> bool:
        return _TELEPHONY_SESSIONS_EVENT.fullmatch(self.event) is not None


# --- Subscription handshake and verification token -------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def is_validation_request(headers: Mapping[str, str], raw_body: bytes) -> str | None:
    """The token to echo when this is the subscription-creation handshake, else None.

    The handshake is a POST carrying a `Validation-Token` header and no body. A notification
    that happens to carry a `Validation-Token` header (see `presented_token`) has a body, so the
    two cannot be confused.
    """
    token = _header(headers, "Validation-Token")
    if token is None or raw_body.strip():
        return None
    return token


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The shared verification token a notification presents, if any.

    UNCONFIRMED (providers.md §1.3): the API field is `deliveryMode.verificationToken` and the
    2023 docs named the header `Verification-Token`; the December 2023 rewrite says
    `Validation-Token`, probably an editorial slip. Until a live test settles it, accept both;
    `Verification-Token` wins when both are sent. This is the only place that knows.
    """
    for name in ("Verification-Token", "Validation-Token"):
        value = _header(headers, name)
        if value is not None:
            return value
    return None


# Constant-time comparison; an unset expected token never matches anything.
token_matches = secret_matches


# --- Parsing ---------------------------------------------------------------------------------


def parse_notification(raw_body: bytes) -> SessionNotification:
    """Parse one webhook body. Raises InvalidNotification naming the offending field.

    Only what the pipeline relies on is required — `uuid`, `event`, `body`, and for telephony
    sessions `body.sequence`, `body.telephonySessionId`, `body.eventTime`, `body.parties[]` with
    `id` and `status.code`. Every other field is checked for type only when present: rejecting a
    harmless variation would answer RingCentral with a 4xx, and enough of those blacklist the
    subscription. Unknown keys are ignored.
    """
    envelope = load_json(raw_body)
    require_object(envelope, "notification")
    body = required(envelope, "body", dict, "")
    notification = SessionNotification(
        uuid=required(envelope, "uuid", str, ""),
        event=required(envelope, "event", str, ""),
        timestamp=optional_time(envelope, "timestamp", ""),
        subscription_id=optional(envelope, "subscriptionId", str, ""),
        owner_id=optional(envelope, "ownerId", str, ""),
    )
    if not notification.is_telephony_session:
        return notification
    return SessionNotification(
        uuid=notification.uuid,
        event=notification.event,
        timestamp=notification.timestamp,
        subscription_id=notification.subscription_id,
        owner_id=notification.owner_id,
        sequence=required(body, "sequence", int, "body."),
        telephony_session_id=required(body, "telephonySessionId", str, "body."),
        session_id=optional(body, "sessionId", str, "body."),
        event_time=required_time(body, "eventTime", "body."),
        parties=_parse_parties(body),
    )


def _parse_parties(body: Mapping[str, Any]) -> tuple[Party, ...]:
    parties = required(body, "parties", list, "body.")
    return tuple(_parse_party(raw, f"body.parties[{index}].") for index, raw in enumerate(parties))


def _parse_party(raw: Any, where: str) -> Party:
    require_object(raw, where.rstrip("."))
    caller = optional(raw, "from", dict, where) or {}
    callee = optional(raw, "to", dict, where) or {}
    status = required(raw, "status", dict, where)
    return Party(
        id=required(raw, "id", str, where),
        extension_id=optional(raw, "extensionId", str, where),
        account_id=optional(raw, "accountId", str, where),
        direction=optional(raw, "direction", str, where),
        from_number=optional(caller, "phoneNumber", str, f"{where}from."),
        from_extension_id=optional(caller, "extensionId", str, f"{where}from."),
        to_number=optional(callee, "phoneNumber", str, f"{where}to."),
        to_extension_id=optional(callee, "extensionId", str, f"{where}to."),
        status_code=required(status, "code", str, f"{where}status."),
        missed_call=optional(raw, "missedCall", bool, where) or False,
        status_reason=optional(status, "reason", str, f"{where}status."),
    )


# --- Assembling one call ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    """One party's state at one point of the session."""

    event_time: datetime
    party: Party


def assemble_call(
    notifications: Sequence[SessionNotification],
    firm_extension_ids: Collection[str],
    default_region: str = "US",
) -> FinishedCall | None:
    """The finished call of one telephony session, or None while the firm user is still on it.

    Rules (providers.md §1.1, §1.2, §1.4):

    * Delivery is unordered and may repeat: notifications are deduplicated on `uuid` and read
      in `sequence` order. Notifications of other event filters are ignored; mixing two
      telephony sessions is a caller error (ValueError).
    * The tracked party is the firm user's own leg: `parties[].extensionId` in
      `firm_extension_ids`. If several firm legs exist (ring group, internal call), the first
      one to answer is tracked, else the first one seen.
    * The call is finished when the tracked party reaches `Disconnected` (or `Gone`, i.e.
      transferred away); until then the result is None.
    * Direction is from the firm user's side. RingCentral's `direction` is technical and
      party-relative ("Inbound" = RingCentral set up this leg towards the endpoint), so it is
      only the fallback: the user is the callee when their extension is in `to`, the caller
      when it is in `from` (a RingOut leg can be "Inbound" for the user who is calling out).
      The call is `internal` when the other side is an extension: its `extensionId` is set
      (RingCentral resolves only its own account's extensions — INFERRED) or its number is a
      short extension number.
    * `started_at` is the earliest `eventTime` of the session; `ended_at` the tracked party's
      Disconnected/Gone `eventTime`.
    * `duration_seconds` is connected time: the tracked party's first `Answered` to its end,
      hold included, rounded half up to whole seconds (RingCentral drops calls under half a
      second of talk); 0 when never answered.
    * `result`: `voicemail` if the tracked party reached `VoiceMail`, else `answered` if it was
      `Answered`, else `rejected` if it ended for a rejection (`rejected_by_reason`), else
      `missed` (whether or not RingCentral set `missedCall`).
    * The tracked party's end is authoritative: events after it do not change the call.
    * Numbers: the other side's number as sent (`external_number_raw`) and in E.164 (None for
      extensions); the firm side's number in E.164 when it is one, else as sent (an extension).
    """
    ordered = _in_delivery_order(notifications)
    if not ordered:
        return None
    _require_one_session(ordered)
    snapshots = list(_snapshots(ordered))
    tracked = _tracked_party_id(snapshots, firm_extension_ids)
    if tracked is None:
        return None
    history = _history_until_end(snapshots, tracked)
    if history[-1].party.status_code not in _ENDED:
        return None
    return _finished_call(ordered, history, default_region)


def _in_delivery_order(notifications: Sequence[SessionNotification]) -> list[SessionNotification]:
    unique = {n.uuid: n for n in notifications if n.is_telephony_session}
    return sorted(unique.values(), key=lambda n: (n.sequence, n.event_time, n.uuid))


def _require_one_session(ordered: Sequence[SessionNotification]) -> None:
    sessions = {n.telephony_session_id for n in ordered}
    if len(sessions) > 1:
        raise ValueError(f"notifications of several telephony sessions: {sorted(sessions)}")


def _snapshots(ordered: Sequence[SessionNotification]) -> Iterator[_Snapshot]:
    for notification in ordered:
        # Only telephony-session notifications get here, and those always carry an eventTime.
        assert notification.event_time is not None
        for party in notification.parties:
            yield _Snapshot(notification.event_time, party)


def _tracked_party_id(
    snapshots: Sequence[_Snapshot], firm_extension_ids: Collection[str]
) -> str | None:
    firm = [s for s in snapshots if s.party.extension_id in firm_extension_ids]
    answered = [s for s in firm if s.party.status_code == _ANSWERED]
    chosen = answered or firm
    return chosen[0].party.id if chosen else None


def _history_until_end(snapshots: Sequence[_Snapshot], party_id: str) -> list[_Snapshot]:
    history: list[_Snapshot] = []
    for snapshot in snapshots:
        if snapshot.party.id != party_id:
            continue
        history.append(snapshot)
        if snapshot.party.status_code in _ENDED:
            break
    return history


def _finished_call(
    ordered: Sequence[SessionNotification],
    history: Sequence[_Snapshot],
    default_region: str,
) -> FinishedCall:
    end = history[-1]
    user = _merged_party(history)
    user_is_caller = _user_is_caller(user)
    other_number = user.to_number if user_is_caller else user.from_number
    other_extension = user.to_extension_id if user_is_caller else user.from_extension_id
    firm_number = user.from_number if user_is_caller else user.to_number
    internal = other_extension is not None or is_extension(other_number)
    started_at = min(n.event_time for n in ordered if n.event_time is not None)
    answered_at = next((s.event_time for s in history if s.party.status_code == _ANSWERED), None)
    return FinishedCall(
        provider_call_id=str(ordered[0].telephony_session_id),
        direction="internal" if internal else ("outbound" if user_is_caller else "inbound"),
        external_number_e164=normalise(other_number, default_region),
        external_number_raw=other_number,
        internal_number=firm_side_number(firm_number, default_region),
        provider_user_id=str(user.extension_id),
        started_at=started_at,
        ended_at=end.event_time,
        duration_seconds=span_seconds(end.event_time - answered_at) if answered_at else 0,
        result=_result(history),
        last_sequence=max(n.sequence for n in ordered if n.sequence is not None),
    )


def _merged_party(history: Sequence[_Snapshot]) -> Party:
    """The tracked party with each field's latest non-null value: later events may omit some."""
    merged = history[0].party
    for snapshot in history[1:]:
        present = {
            field.name: value
            for field in fields(Party)
            if (value := getattr(snapshot.party, field.name)) is not None
        }
        merged = replace(merged, **present)
    return merged


def _user_is_caller(user: Party) -> bool:
    if user.extension_id is not None:
        if user.to_extension_id == user.extension_id:
            return False
        if user.from_extension_id == user.extension_id:
            return True
    return user.direction == "Outbound"


def _result(history: Sequence[_Snapshot]) -> str:
    codes = {s.party.status_code for s in history}
    if _VOICEMAIL in codes:
        return "voicemail"
    if _ANSWERED in codes:
        return "answered"
    if rejected_by_reason(history[-1].party.status_reason):
        return "rejected"
    return "missed"


def rejected_by_reason(reason: str | None) -> bool:
    """Whether a party's end `status.reason` says the call was rejected rather than missed.

    UNCONFIRMED (providers.md §1.2 lists `status.reason` but not its values): RingCentral's SDK
    (`CallStatusInfo.reason`, "for 'Disconnected' code only") enumerates `Rejected` among
    `Pickup`, `NoAnswer`, `TargetBusy`, ...; no captured notification shows it. Without a
    reason an unanswered call stays `missed`, as before.
    """
    return reason == "Rejected"


# --- The provider-neutral adapter ------------------------------------------------------------

# Our whole handshake answer must stay within RingCentral's 1024 bytes (providers.md §1.3); the
# echoed token is the only part of it we do not choose, so a longer one is not RingCentral's.
MAX_VALIDATION_TOKEN_CHARS = 512

_ACCOUNT_IN_EVENT = re.compile(r"/restapi/v1\.0/account/([^/?]+)")


class RingCentral:
    """RingCentral's webhook dialect behind `PhoneProvider` (see `model.py`)."""

    name = "ringcentral"
    # Delivery order is not guaranteed (providers.md §1.4): wait this long after the hang-up for
    # stragglers, so a shuffled call is announced once, complete, rather than revised.
    settle_after_seconds = 1.5

    def handshake(self, request: WebhookRequest, account: Account) -> Reply | None:
        """The subscription-creation echo: 200, the same `Validation-Token` header, JSON content
        type and an empty body (providers.md §1.3). RingCentral does not sign it."""
        token = is_validation_request(request.headers, request.body)
        if token is None:
            return None
        if len(token) > MAX_VALIDATION_TOKEN_CHARS:
            raise Refused(400, "validation token longer than RingCentral sends")
        return Reply(status=200, body=b"", media_type="application/json",
                     headers={"Validation-Token": token})

    def authenticate(self, request: WebhookRequest, account: Account) -> None:
        """The shared verification token, compared in constant time (401), then the account
        the notification names (403). RingCentral signs nothing else (providers.md §1.3)."""
        if not token_matches(presented_token(request.headers), account.webhook_secret):
            raise Refused(401, "verification token missing or wrong")
        for named in named_account_ids(request.body):
            if named != account.account_id:
                raise Refused(403, "the notification is for another RingCentral account")

    def notices(self, request: WebhookRequest, account: Account) -> Sequence[Notice]:
        """One notice per telephony-session notification, kept whole: the call is assembled
        from the whole session, not only from its Disconnected event. Re-deliveries share the
        envelope `uuid` (providers.md §6); other event filters are acknowledged and ignored."""
        notification = parse_notification(request.body)
        if not notification.is_telephony_session:
            return []
        assert notification.telephony_session_id is not None  # required for telephony sessions
        return [Notice(dedupe_key=notification.uuid,
                       provider_call_id=notification.telephony_session_id,
                       body=request.body)]

    def finished_call(self, bodies: Sequence[bytes], account: Account) -> FinishedCall | None:
        """The session as its stored notifications tell it (`assemble_call`: the firm user's
        own Disconnected/Gone event ends the call; later events do not change it). The call
        log, read by reconciliation, is the more complete record of the same call."""
        notifications = [parse_notification(body) for body in bodies]
        tracked = firm_extension_ids(notifications, account.account_id,
                                     account.attorneys_by_user)
        call = assemble_call(notifications, tracked, account.phone_region)
        return None if call is None else checked_call(call)


ADAPTER = RingCentral()


def firm_extension_ids(
    notifications: Iterable[SessionNotification], account_id: str, mapped: Iterable[str]
) -> set[str]:
    """The firm's own legs: extensions mapped to an attorney, and any other extension of the
    firm's account, so that a call on an unmapped extension is still reported."""
    own = {party.extension_id for n in notifications for party in n.parties
           if party.account_id == account_id and party.extension_id}
    return own | set(mapped)


def named_account_ids(raw_body: bytes) -> set[str]:
    """The RingCentral account ids a notification names: `body.accountId` and the account in
    its `event` filter URI (`~`, "the subscriber's own", names none).

    `ownerId` is not among them: it is the subscribing *extension* (the account-level sample
    has ownerId 400144455008 under account 400144452008). A body that is not a JSON object
    names nothing here; `notices` rejects it with its reason.
    """
    try:
        envelope = load_json(raw_body)
    except InvalidNotification:
        return set()
    if not isinstance(envelope, dict):
        return set()
    named: set[str] = set()
    event = envelope.get("event")
    if isinstance(event, str) and (match := _ACCOUNT_IN_EVENT.match(event)):
        named.add(match.group(1))
    body = envelope.get("body")
    if isinstance(body, dict):
        account = body.get("accountId")
        # Some RingCentral bodies write ids as JSON numbers (the presence sample does).
        if isinstance(account, (str, int)) and not isinstance(account, bool):
            named.add(str(account))
    named.discard("~")
    return named
