"""Microsoft Teams Phone adapter: Graph callRecord change notifications in, one finished call out.

Pure functions, no I/O. Graph notifications carry only a record id (providers.md §2.2), so the
flow is in two steps:

1. `GraphProvider.notices` turns each `created`/`updated` notification into a `Notice` with
   `fetch_record=True`; the integrator's fetch worker then GETs the record
   (`calltime.ingest.call_logs.graph.GraphCallLogSource.fetch_record`).
2. `record_notice` turns the fetched record into a second `Notice` for the same call, and
   `finished_call` reads the call from the record with the highest `version` among them.

The reconciliation sweep reads the very same records through `call_from_record`, so the webhook
and the pull paths cannot disagree about a call.

Authenticity (§2.3): no signature exists; every notification must carry the subscription's
`clientState` (compared in constant time) and name the firm's tenant in `tenantId`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from calltime.ingest.providers.fields import (load_json, optional, require_object, required, secret_matches,
                                              whole_units)
from calltime.ingest.providers.model import (Account, FinishedCall, InvalidNotification, Notice, Refused,
                                             Reply, WebhookRequest, checked_call)
from calltime.phone import normalise

NAME = "graph"
VALIDATION_QUERY_PARAMETER = "validationToken"
# Graph writes 7 fractional digits (100 ns ticks); durations are computed in ticks, exactly.
TICKS_PER_SECOND = 10_000_000
_TICKS_PER_MICROSECOND = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_CHANGE_TYPES = frozenset({"created", "updated"})
_CALL_RECORD_RESOURCE = re.compile(r"/?communications/callRecords/([^/?#]+)", re.IGNORECASE)
_CALL_RECORD_TYPE = "#microsoft.graph.callrecord"
_MAX_ID_LENGTH = 256
_GRAPH_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE
)


# --- The adapter -----------------------------------------------------------------------------


class GraphProvider:
    """Microsoft Graph callRecords (Teams Phone), see module docstring."""

    name = NAME

    def handshake(self, request: WebhookRequest, account: Account) -> Reply | None:
        """Graph's URL validation (§2.3): `?validationToken=…` is echoed as text/plain.

        `request.query` holds decoded values (as Starlette's `query_params` gives them), which is
        exactly the URL-decoded token Graph wants back; decoding again would corrupt a token that
        contains `%`. Graph does not sign the validation request, so there is nothing to refuse.
        The same answer serves the `lifecycleNotificationUrl` validation.
        """
        token = request.query.get(VALIDATION_QUERY_PARAMETER)
        if token is None:
            return None
        return Reply(
            status=200,
            body=token.encode(),
            media_type="text/plain",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    def authenticate(self, request: WebhookRequest, account: Account) -> None:
        """Every item must carry the firm's `clientState` (else 401) and tenant (else 403).

        A body that cannot be read as a notification collection cannot prove its clientState,
        so it is refused as unauthenticated rather than reported as malformed.
        """
        try:
            items = _notification_items(request.body)
        except InvalidNotification as error:
            raise Refused(401, f"no clientState can be checked: {error}") from None
        if not items:
            raise Refused(401, "no notification to authenticate")
        for index, item in enumerate(items):
            if not secret_matches(item.get("clientState"), account.webhook_secret):
                raise Refused(401, f"value[{index}].clientState is missing or wrong")
        for index, item in enumerate(items):
            tenant = item.get("tenantId")
            if not isinstance(tenant, str) or not same_tenant(tenant, account.account_id):
                raise Refused(403, f"value[{index}].tenantId is not this firm's tenant")

    def notices(self, request: WebhookRequest, account: Account) -> Sequence[Notice]:
        """One id-only notice per callRecord `created`/`updated` item; lifecycle events and other
        resources are acknowledged and yield nothing (see `lifecycle_events`)."""
        items = _notification_items(request.body)
        found: list[Notice] = []
        for index, item in enumerate(items):
            notice = _change_notice(item, f"value[{index}].")
            if notice is not None:
                found.append(notice)
        return found

    def finished_call(self, bodies: Sequence[bytes], account: Account) -> FinishedCall | None:
        """The call as its latest fetched record tells it; None until a record was fetched.

        Stored bodies are id-only notification items and fetched records (`record_notice`).
        The record with the highest `version` wins (Graph bumps it on every correction); on a
        tie the later arrival wins. Records of several calls in one list are a caller error.
        """
        records = [_parse_record(body) for body in bodies if _is_record_body(body)]
        if not records:
            return None
        ids = {record.id for record in records}
        if len(ids) > 1:
            raise ValueError(f"records of several calls: {sorted(ids)}")
        latest = max(enumerate(records), key=lambda pair: (pair[1].version, pair[0]))[1]
        call = _call(latest, account)
        return None if call is None else checked_call(call)

    def record_notice(self, record_json: bytes, account: Account) -> Notice:
        """The fetched record as a notice of its call (see the module function)."""
        return record_notice(record_json, account)

    def lifecycle_events(self, request: WebhookRequest) -> list[str]:
        return lifecycle_events(request)


ADAPTER = GraphProvider()


def lifecycle_events(request: WebhookRequest) -> list[str]:
    """The lifecycle events (e.g. `reauthorizationRequired`) in an authenticated request, so the
    integrator can renew or re-authorise the subscription; [] for anything else, never raises.
    Call it only after `authenticate`: the body is otherwise untrusted."""
    try:
        items = _notification_items(request.body)
    except InvalidNotification:
        return []
    return [e for item in items if isinstance(e := item.get("lifecycleEvent"), str)]


def record_notice(record_json: bytes, account: Account) -> Notice:
    """The notice for a fetched callRecord (GET …/callRecords/{id}?$expand=sessions(…)).

    Its `dedupe_key` is (record id, version) — providers.md §2.2, §6 — so a re-fetch of the same
    version is stored once and a corrected version is stored beside it. The body is the record
    as fetched. Raises InvalidNotification when the bytes are not a callRecord.
    """
    record = _parse_record(record_json)
    return Notice(
        dedupe_key=f"graph:record:{record.id}:v{record.version}",
        provider_call_id=record.id,
        body=bytes(record_json),
    )


def call_from_record(record_json: bytes, account: Account) -> FinishedCall | None:
    """The finished call one fetched callRecord describes (None: no firm user in it). Shared by
    the webhook path (`finished_call`) and the reconciliation sweep."""
    return _call(_parse_record(record_json), account)


def same_tenant(presented: str, expected: str) -> bool:
    """Tenant ids are GUIDs; Graph's casing is not part of their identity."""
    if not expected:
        return False
    try:
        return hmac.compare_digest(presented.strip().lower().encode(), expected.strip().lower().encode())
    except UnicodeEncodeError:  # a lone surrogate escape names no tenant (and is no reason for a 500)
        return False


def parse_graph_time(text: str) -> int:
    """An ISO 8601 time as integer 100 ns ticks since 1970 UTC (Graph writes 7 digits; more are
    truncated). Raises ValueError for anything else."""
    match = _GRAPH_TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an ISO 8601 time with offset: {text!r}")
    whole, fraction, offset = match.groups()
    zone = "+00:00" if offset.upper() == "Z" else offset
    moment = datetime.fromisoformat(whole + zone)
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return seconds * TICKS_PER_SECOND + int((fraction or "").ljust(7, "0")[:7])


def ticks_to_datetime(ticks: int) -> datetime:
    """UTC datetime of a tick count (sub-microsecond digits dropped: datetime cannot hold them)."""
    return _EPOCH + timedelta(microseconds=ticks // _TICKS_PER_MICROSECOND)


def whole_seconds(ticks: int) -> int:
    """Ticks as whole seconds, rounded half up; negative spans count as 0."""
    return whole_units(ticks, TICKS_PER_SECOND)


# --- Notifications ---------------------------------------------------------------------------


def _notification_items(body: bytes) -> list[dict[str, Any]]:
    envelope = load_json(body)
    require_object(envelope, "notification collection")
    items = required(envelope, "value", list, "")
    for index, item in enumerate(items):
        require_object(item, f"value[{index}]")
    return items


def _change_notice(item: Mapping[str, Any], where: str) -> Notice | None:
    if optional(item, "lifecycleEvent", str, where) is not None:
        return None
    change = required(item, "changeType", str, where)
    resource = required(item, "resource", str, where)
    subscription = required(item, "subscriptionId", str, where)
    if change not in _CHANGE_TYPES:
        return None  # callRecords are never deleted by notification; anything else is noise
    record_id = _record_id(item, resource, where)
    if record_id is None:
        return None
    return Notice(
        dedupe_key=_delivery_key(item, record_id, change, subscription, where),
        provider_call_id=record_id,
        body=_stored_item(item),
        fetch_record=True,
    )


def _record_id(item: Mapping[str, Any], resource: str, where: str) -> str | None:
    """The callRecord id named by the notification, or None when it is about something else."""
    match = _CALL_RECORD_RESOURCE.fullmatch(resource.strip())
    data = optional(item, "resourceData", dict, where) or {}
    kind = optional(data, "@odata.type", str, f"{where}resourceData.")
    if match is None or (kind is not None and kind.lower() != _CALL_RECORD_TYPE):
        return None
    record_id = _checked_id(match.group(1), f"{where}resource")
    data_id = optional(data, "id", str, f"{where}resourceData.")
    if data_id is not None and data_id != record_id:
        raise InvalidNotification(f"{where}resourceData.id does not match {where}resource")
    return record_id


def _checked_id(record_id: str, name: str) -> str:
    # The id comes from an untrusted body and ends up in a URL path: no empty, dot or overlong ids.
    if not record_id.strip() or record_id in {".", ".."} or len(record_id) > _MAX_ID_LENGTH:
        raise InvalidNotification(f"{name} does not name a callRecord id")
    if any(ord(char) < 0x20 for char in record_id):
        raise InvalidNotification(f"{name} contains control characters")
    return record_id


def _delivery_key(
    item: Mapping[str, Any], record_id: str, change: str, subscription: str, where: str
) -> str:
    """What every re-delivery of one notification shares.

    UNCONFIRMED (providers.md §2.4, §8.2): Graph documents no duplicate/ordering rules for
    callRecord notifications and the notification carries no record version. The key is
    (record id, changeType, subscriptionId), refined by the notification's own optional `id`
    ("unique ID for the notification", changeNotification resource) or `resourceData.@odata.etag`
    when Graph sends them. Without either, a second `updated` for the same record on the same
    subscription is taken for a re-delivery: that correction then reaches calltime through the
    reconciliation sweep, not the webhook.
    """
    data = item.get("resourceData") if isinstance(item.get("resourceData"), dict) else {}
    parts = [record_id, change, subscription]
    notification_id = optional(item, "id", str, where)
    etag = optional(data, "@odata.etag", str, f"{where}resourceData.")
    if notification_id is not None:
        parts.append(f"id={notification_id}")
    elif etag is not None:
        parts.append(f"etag={etag}")
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    return f"graph:notification:{digest}"


def _stored_item(item: Mapping[str, Any]) -> bytes:
    """The notification as kept in the inbox, without `clientState`: the secret stays out of
    the database."""
    kept = {key: value for key, value in item.items() if key != "clientState"}
    return json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()


def _is_record_body(body: bytes) -> bool:
    """Stored notification items carry `changeType`; everything else stored is a record."""
    parsed = load_json(body, "a stored body")
    return isinstance(parsed, dict) and "changeType" not in parsed and "lifecycleEvent" not in parsed


# --- Records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """One side of a session, or the organizer / a participant."""

    kind: str  # user | phone | other
    id: str | None
    tenant_id: str | None = None
    role: str | None = None  # serviceUserAgent.role of the endpoint, e.g. "voicemail"


@dataclass(frozen=True)
class Session:
    caller: Party | None
    callee: Party | None
    start: int  # ticks
    end: int
    failure_stage: str | None  # failureInfo.stage; None when the session did not fail


@dataclass(frozen=True)
class CallRecord:
    id: str
    version: int
    start: int  # ticks
    end: int
    organizer: Party | None
    participants: tuple[Party, ...]
    sessions: tuple[Session, ...]


def _parse_record(raw: bytes) -> CallRecord:
    """A callRecord as fetched. Only what calltime relies on is required (`id`, `version`,
    `startDateTime`, `endDateTime`, and each session's times); other fields are type-checked
    when present. Raises InvalidNotification naming the field."""
    record = load_json(raw)
    require_object(record, "callRecord")
    sessions = optional(record, "sessions", list, "") or []
    participants = optional(record, "participants_v2", list, "") or []
    return CallRecord(
        id=_checked_id(required(record, "id", str, ""), "id"),
        version=required(record, "version", int, ""),
        start=_required_time(record, "startDateTime", ""),
        end=_required_time(record, "endDateTime", ""),
        organizer=_participant(record.get("organizer_v2"), "organizer_v2."),
        participants=tuple(
            party
            for index, raw_party in enumerate(participants)
            if (party := _participant(raw_party, f"participants_v2[{index}].")) is not None
        ),
        sessions=tuple(
            _session(raw_session, f"sessions[{index}].")
            for index, raw_session in enumerate(sessions)
        ),
    )


def _session(raw: Any, where: str) -> Session:
    require_object(raw, where.rstrip("."))
    failure = optional(raw, "failureInfo", dict, where)
    stage = None
    if failure is not None:
        stage = optional(failure, "stage", str, f"{where}failureInfo.") or "unknown"
    return Session(
        caller=_endpoint(raw.get("caller"), f"{where}caller."),
        callee=_endpoint(raw.get("callee"), f"{where}callee."),
        start=_required_time(raw, "startDateTime", where),
        end=_required_time(raw, "endDateTime", where),
        failure_stage=stage,
    )


def _endpoint(raw: Any, where: str) -> Party | None:
    """A participantEndpoint: `identity` (communicationsIdentitySet) when present, else the
    `associatedIdentity` (a user, as in the reference sample)."""
    if raw is None:
        return None
    require_object(raw, where.rstrip("."))
    agent = optional(raw, "userAgent", dict, where) or {}
    role = optional(agent, "role", str, f"{where}userAgent.")
    party = _identity_set(optional(raw, "identity", dict, where), f"{where}identity.")
    if party is None:
        associated = optional(raw, "associatedIdentity", dict, where)
        if associated is not None:
            party = _identity("user", associated, f"{where}associatedIdentity.")
    if party is None:
        return Party(kind="other", id=None, role=role)
    return Party(kind=party.kind, id=party.id, tenant_id=party.tenant_id, role=role)


def _participant(raw: Any, where: str) -> Party | None:
    if raw is None:
        return None
    require_object(raw, where.rstrip("."))
    return _identity_set(optional(raw, "identity", dict, where), f"{where}identity.")


def _identity_set(identities: Mapping[str, Any] | None, where: str) -> Party | None:
    """The one identity a communicationsIdentitySet names: user, then phone, then any other."""
    if not identities:
        return None
    for key in ("user", "phone"):
        value = optional(identities, key, dict, where)
        if value is not None:
            return _identity(key, value, f"{where}{key}.")
    for key, value in identities.items():
        if isinstance(value, dict) and not key.startswith("@"):
            return _identity("other", value, f"{where}{key}.")
    return None


def _identity(kind: str, raw: Mapping[str, Any], where: str) -> Party:
    return Party(
        kind=kind,
        id=optional(raw, "id", str, where),
        tenant_id=optional(raw, "tenantId", str, where),
    )


# --- Assembling the call ---------------------------------------------------------------------


def _call(record: CallRecord, account: Account) -> FinishedCall | None:
    """Rules (providers.md §2.2; INFERRED where Graph documents no semantics):

    * The firm user is the first user (organizer, then sessions' callers and callees, then
      participants) whose id is in `account.attorneys_by_user`; failing that, the first user of
      the firm's tenant (so a call of an unmapped user is still announced, as for RingCentral).
      No such user: None.
    * The other side is the opposite endpoint of the firm user's sessions, a phone preferred;
      without sessions, the organizer or first participant that is not the firm user.
    * Direction: `internal` when the other side is a user of the firm's tenant (or mapped);
      else `outbound` when the firm user is the caller of their first session (without
      sessions: the organizer), else `inbound`.
    * Numbers: a phone party's `identity.phone.id` (E.164 per the list sample) is the external
      number; Graph names no number for Teams users, so `internal_number` is None.
    * Times: the record's `startDateTime` / `endDateTime` (whole call, first join to last leave).
    * Duration and result: see `_outcome`.
    """
    user = _firm_user(record, account)
    if user is None:
        return None
    own_sessions = [s for s in record.sessions if _is(s.caller, user) or _is(s.callee, user)]
    other = _other_party(record, own_sessions, user)
    result, ticks = _outcome(record, own_sessions, user)
    raw_number = other.id if other is not None and other.kind == "phone" else None
    return FinishedCall(
        provider_call_id=record.id,
        direction=_direction(record, own_sessions, user, other, account),
        external_number_e164=normalise(raw_number, account.phone_region),
        external_number_raw=raw_number,
        internal_number=None,
        provider_user_id=str(user.id),
        started_at=ticks_to_datetime(record.start),
        ended_at=ticks_to_datetime(record.end),
        duration_seconds=whole_seconds(ticks),
        result=result,
    )


def _users(record: CallRecord) -> Iterable[Party]:
    if record.organizer is not None:
        yield record.organizer
    for session in record.sessions:
        yield from (p for p in (session.caller, session.callee) if p is not None)
    yield from record.participants


def _firm_user(record: CallRecord, account: Account) -> Party | None:
    users = [p for p in _users(record) if p.kind == "user" and p.id]
    mapped = next((p for p in users if p.id in account.attorneys_by_user), None)
    if mapped is not None:
        return mapped
    return next((p for p in users if p.tenant_id and same_tenant(p.tenant_id, account.account_id)), None)


def _is(party: Party | None, user: Party) -> bool:
    return party is not None and party.kind == "user" and party.id == user.id


def _other_party(record: CallRecord, own_sessions: Sequence[Session], user: Party) -> Party | None:
    opposite = [s.callee if _is(s.caller, user) else s.caller for s in own_sessions]
    candidates = [p for p in opposite if p is not None and not _is(p, user)]
    if not candidates:
        everyone = [record.organizer, *record.participants]
        candidates = [p for p in everyone if p is not None and not _is(p, user)]
    phones = [p for p in candidates if p.kind == "phone"]
    return (phones or candidates or [None])[0]


def _direction(
    record: CallRecord,
    own_sessions: Sequence[Session],
    user: Party,
    other: Party | None,
    account: Account,
) -> str:
    if other is not None and other.kind == "user" and (
        other.id in account.attorneys_by_user
        or (other.tenant_id is not None and same_tenant(other.tenant_id, account.account_id))
    ):
        return "internal"
    if own_sessions:
        first = min(own_sessions, key=lambda s: s.start)
        return "outbound" if _is(first.caller, user) else "inbound"
    return "outbound" if _is(record.organizer, user) else "inbound"


def _outcome(record: CallRecord, own_sessions: Sequence[Session], user: Party) -> tuple[str, int]:
    """(result, connected ticks) of the firm user.

    Connected time is the union of the firm user's connected sessions (`_connected`), so a call
    the user joined late, or left early, counts only their own time, and ringing before the
    session does not count. This is preferred to `endDateTime - startDateTime`, which spans the
    whole call for everyone. Only a record with no sessions at all (fetched without the
    `$expand`, which calltime never does) falls back to that span, as `answered`.
    """
    if not record.sessions:
        return "answered", max(record.end - record.start, 0)
    connected = [s for s in own_sessions if _connected(s) and not _reached_users_voicemail(s, user)]
    if connected:
        return "answered", _union_length((s.start, s.end) for s in connected)
    if any(_reached_users_voicemail(s, user) for s in own_sessions):
        return "voicemail", 0
    return "missed", 0


def _connected(session: Session) -> bool:
    """UNCONFIRMED (providers.md §2.2): Graph has no answered flag. A session counts as
    connected unless it failed at call setup (`failureInfo.stage` = `callSetup`, or a
    failure without a known stage); a `midcall` failure connected first and its time counts."""
    return session.end > session.start and session.failure_stage in (None, "midcall")


def _reached_users_voicemail(session: Session, user: Party) -> bool:
    """UNCONFIRMED (providers.md §2.2): a caller reached the firm user's voicemail when the firm
    user is the callee and the callee endpoint's `userAgent.role` is `voicemail` (a documented
    serviceRole value). The firm user calling someone's voicemail is an answered call."""
    return _is(session.callee, user) and session.callee is not None and session.callee.role == "voicemail"


def _union_length(spans: Iterable[tuple[int, int]]) -> int:
    total = 0
    reach: int | None = None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


# --- Graph's times --------------------------------------------------------------------------


def _required_time(container: Mapping[str, Any], key: str, where: str) -> int:
    text = required(container, key, str, where)
    try:
        return parse_graph_time(text)
    except ValueError:
        raise InvalidNotification(f"{where}{key} is not an ISO 8601 time: {text[:40]!r}") from None
