"""RingCentral's call log and webhook subscriptions, read and renewed for reconciliation.

Auth is the JWT bearer grant (RFC 7523): `POST /restapi/oauth/token` with
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT credential>` and the
app's client id and secret as HTTP Basic. The call log is the company log,
`GET /restapi/v1.0/account/~/call-log` (view=Detailed, dateFrom/dateTo, page/perPage, paged by
`navigation.nextPage`); each record becomes the same `FinishedCall` the telephony-session
webhooks give for that call: `provider_call_id` is the record's `telephonySessionId`, the firm
user is `extension.id`. Reference: providers.md §1.4 (subscriptions) and §1.5 (pull API).

`credentials` (the decrypted `ringcentral.api` credential): {"client_id", "client_secret",
"jwt"}.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from calltime.ingest.call_logs.http import ApiClient, BearerToken, Clock, HttpSource, Sleep
from calltime.ingest.call_logs.port import CallLogError, CallLogPage, Subscription
from calltime.ingest.providers.fields import firm_side_number, parse_time, whole_units
from calltime.ingest.providers.model import Account, FinishedCall, InvalidNotification
from calltime.phone import is_extension, normalise

log = logging.getLogger(__name__)

PROVIDER = "ringcentral"
TOKEN_PATH = "/restapi/oauth/token"
CALL_LOG_PATH = "/restapi/v1.0/account/~/call-log"
SUBSCRIPTIONS_PATH = "/restapi/v1.0/subscription"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

DEFAULT_PER_PAGE = 250  # documented default 100, maximum 1000 (providers.md §1.5)
MAX_PAGES = 10_000  # a paging loop that never ends is a provider bug, not a long day
TOKEN_REFRESH_MARGIN_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 120.0  # a longer wait is left to the next sweep
TIMEOUT_SECONDS = 30.0
_MILLISECONDS_PER_SECOND = 1000


# --- Records → FinishedCall (pure) -----------------------------------------------------------


class UnusableRecord(ValueError):
    """A call-log record that cannot become a call; the message says why."""


def outcome_of(result: str | None) -> str | None:
    """Our `result` for a call-log `result`, or None while the call is still going on.

    UNCONFIRMED (providers.md §1.5 gives only "Accepted, Missed, Voicemail, Call connected…";
    the rest is RingCentral's SDK enum `CallLogRecord.result`): `Accepted` and `Call connected`
    are answered, `Voicemail` is voicemail, `Rejected` and `Declined` are rejected, `In Progress`
    is not finished; every other value (Missed, No Answer, Busy, Hang Up, Abandoned, Call
    Failed, Blocked, ...) means no one was connected: missed.
    """
    if result in ("Accepted", "Call connected"):
        return "answered"
    if result == "Voicemail":
        return "voicemail"
    if result in ("Rejected", "Declined"):
        return "rejected"
    if result == "In Progress":
        return None
    return "missed"


def call_times(record: Mapping[str, Any], outcome: str) -> tuple[datetime, datetime, int]:
    """(started_at, ended_at, connected seconds) of one record.

    UNCONFIRMED (providers.md §1.5 says only "`duration` (s), `durationMs` (ms)"): the record's
    `durationMs` (else `duration`) is taken as the firm user's connected time — counted only
    for an answered call, rounded half up to whole seconds as the webhook path rounds its
    `eventTime` deltas — and the call as ended when its last Detailed-view leg ended
    (`legs[].startTime` + `legs[].durationMs`/`duration`), else at `startTime` + `duration`.
    `startTime` is when the session was set up, the webhook path's first `eventTime`.
    """
    started_at = _time(record.get("startTime"), "startTime")
    connected_ms = _duration_ms(record, "")
    ends = [_time(leg.get("startTime"), "legs[].startTime") + _ms(_duration_ms(leg, "legs[]."))
            for leg in _legs(record)]
    ended_at = max(ends) if ends else started_at + _ms(connected_ms)
    seconds = whole_units(connected_ms, _MILLISECONDS_PER_SECOND) if outcome == "answered" else 0
    return started_at, max(ended_at, started_at), seconds


def call_from_record(record: Mapping[str, Any], default_region: str) -> FinishedCall | None:
    """The finished call one company call-log record describes, or None when the record is
    not a finished voice call of one of the firm's extensions. Raises UnusableRecord for a
    record whose fields have the wrong shape."""
    if not isinstance(record, Mapping):
        raise UnusableRecord("a call-log record must be an object")
    if record.get("type", "Voice") != "Voice":
        return None  # faxes
    result = _text(record, "result")
    outcome = outcome_of(result) if result is not None else None
    session = _text(record, "telephonySessionId")
    user = _text(_object(record, "extension"), "id")
    if outcome is None or session is None or user is None:
        # No session id: webhooks could never name this call. No extension: an IVR or queue.
        return None
    started_at, ended_at, seconds = call_times(record, outcome)
    inbound = _text(record, "direction") == "Inbound"
    firm_side = _object(record, "to" if inbound else "from")
    other_side = _object(record, "from" if inbound else "to")
    other_number = _number(other_side)
    internal = _text(other_side, "extensionId") is not None or is_extension(other_number)
    return FinishedCall(
        provider_call_id=session,
        direction="internal" if internal else ("inbound" if inbound else "outbound"),
        external_number_e164=normalise(other_number, default_region),
        external_number_raw=other_number,
        internal_number=firm_side_number(_number(firm_side), default_region),
        provider_user_id=user,
        started_at=started_at,
        ended_at=ended_at,
        duration_seconds=seconds,
        result=outcome,
    )


def _number(side: Mapping[str, Any]) -> str | None:
    """A party's number as RingCentral shows it: the phone number, else (for an extension
    reached internally) its extension number."""
    return _text(side, "phoneNumber") or _text(side, "extensionNumber")


def _legs(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    legs = record.get("legs")
    if legs is None:
        return []
    if not isinstance(legs, list) or not all(isinstance(leg, Mapping) for leg in legs):
        raise UnusableRecord("legs must be an array of objects")
    return [leg for leg in legs if leg.get("startTime") is not None]


def _duration_ms(container: Mapping[str, Any], where: str) -> int:
    precise = container.get("durationMs")
    if _is_int(precise) and precise >= 0:
        return precise
    seconds = container.get("duration", 0)
    if not _is_int(seconds) or seconds < 0:
        raise UnusableRecord(f"{where}duration must be a non-negative integer of seconds")
    return seconds * _MILLISECONDS_PER_SECOND


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ms(milliseconds: int) -> timedelta:
    return timedelta(milliseconds=milliseconds)


def _time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise UnusableRecord(f"{name} must be an ISO 8601 time")
    try:
        return parse_time(value, name)
    except InvalidNotification as error:
        raise UnusableRecord(str(error)) from None


def _text(container: Mapping[str, Any], key: str) -> str | None:
    value = container.get(key)
    if value is None:
        return None
    if _is_int(value):
        return str(value)  # ids are sometimes JSON numbers
    if not isinstance(value, str):
        raise UnusableRecord(f"{key} must be a string")
    return value or None


def _object(container: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = container.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UnusableRecord(f"{key} must be an object")
    return value


def rc_time(moment: datetime) -> str:
    """`2020-06-23T01:19:45.018Z`, the way RingCentral writes times."""
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --- HTTP ------------------------------------------------------------------------------------


class RingCentralCallLog(HttpSource):
    """`CallLogSource` for one firm's RingCentral account."""

    provider = PROVIDER

    def __init__(self, account: Account, base_url: str, credentials: Mapping[str, Any],
                 http: httpx.AsyncClient | None = None, *, per_page: int = DEFAULT_PER_PAGE,
                 sleep: Sleep = asyncio.sleep, clock: Clock = time.monotonic) -> None:
        missing = [k for k in ("client_id", "client_secret", "jwt") if not credentials.get(k)]
        if missing:
            raise CallLogError(f"RingCentral API credential lacks {', '.join(missing)}",
                               transient=False)
        if not 1 <= per_page <= 1000:
            raise ValueError("per_page must be within 1..1000")
        token = BearerToken(self._fetch_token, clock=clock, refresh_margin=TOKEN_REFRESH_MARGIN_SECONDS)
        api = ApiClient("RingCentral", http, timeout=TIMEOUT_SECONDS, token=token,
                        max_retry_after=MAX_RETRY_AFTER_SECONDS, sleep=sleep)
        super().__init__(account, base_url, api)
        self._base_path = urlsplit(self.base_url).path
        self._client_id = str(credentials["client_id"])
        self._client_secret = str(credentials["client_secret"])
        self._jwt = str(credentials["jwt"])
        self.per_page = per_page

    # -- CallLogSource --

    async def pages(self, since: datetime, until: datetime) -> AsyncIterator[CallLogPage]:
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError("since and until must be timezone-aware")
        params: dict[str, Any] | None = {
            "dateFrom": rc_time(since), "dateTo": rc_time(until), "view": "Detailed",
            "type": "Voice", "page": 1, "perPage": self.per_page,
        }
        path = CALL_LOG_PATH
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            body = await self._call("GET", path, params=params)
            records = _records(body)
            yield CallLogPage(records_read=len(records),
                              calls=tuple(self._calls(records, since, until)))
            following = _next_page(body, self._base_path)
            if following is None or following in seen:
                return
            seen.add(following)
            path, params = following, None
        raise CallLogError(f"the call log did not stop paging after {MAX_PAGES} pages",
                           transient=True)

    async def renew_subscriptions(self, now: datetime, *, renew_within_seconds: float) -> list[Subscription]:
        """Renews (`POST /subscription/{id}/renew`) every active subscription expiring within
        the margin. A Blacklisted one cannot be renewed — RingCentral's fix is to delete and
        re-create it (providers.md §1.4) — so it is reported as it stands, with a warning."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        listing = await self._call("GET", SUBSCRIPTIONS_PATH)
        horizon = now + timedelta(seconds=renew_within_seconds)
        result = []
        for record in _records(listing):
            subscription = _subscription(record)
            if record.get("status") == "Blacklisted":
                log.warning("RingCentral subscription is blacklisted; it must be re-created",
                            extra={"subscription_id": subscription.subscription_id})
            elif subscription.expires_at is not None and subscription.expires_at <= horizon:
                renewed = await self._call(
                    "POST", f"{SUBSCRIPTIONS_PATH}/{subscription.subscription_id}/renew")
                subscription = _subscription(renewed)
            result.append(subscription)
        return result

    # -- internals --

    def _calls(self, records: list[Any], since: datetime, until: datetime) -> list[FinishedCall]:
        calls = []
        for record in records:
            try:
                call = call_from_record(record, self.account.phone_region)
            except UnusableRecord as exc:
                # One odd record must not hide the rest of the day's calls.
                log.warning("skipping an unusable RingCentral call-log record: %s", exc)
                continue
            # dateTo's inclusiveness is not documented; the port promises [since, until).
            if call is not None and since <= call.started_at < until:
                calls.append(call)
        return calls

    async def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        return await self._api.request_json(method, self.base_url + path, params=params,
                                            headers={"Accept": "application/json"})

    async def _fetch_token(self) -> tuple[str, float]:
        # A refused credential (invalid_client 401, invalid_grant 400) is permanent: the firm
        # must issue a new JWT or app.
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self._jwt}
        return await self._api.fetch_token("POST", self.base_url + TOKEN_PATH, data=form,
                                           auth=(self._client_id, self._client_secret),
                                           headers={"Accept": "application/json"})


# The port's entry point: source(account, base_url, credentials, http=None, **options).
source = RingCentralCallLog


def _records(body: Any) -> list[Any]:
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list):
        raise CallLogError("RingCentral list response has no records array", transient=True)
    return records


def _next_page(body: Mapping[str, Any], base_path: str) -> str | None:
    """The path (below our base URL) and query of `navigation.nextPage.uri`: the bearer token
    goes to no host but the one configured, whatever host the URI names."""
    navigation = body.get("navigation")
    following = navigation.get("nextPage") if isinstance(navigation, dict) else None
    uri = following.get("uri") if isinstance(following, dict) else None
    if not isinstance(uri, str) or not uri:
        return None
    parts = urlsplit(uri)
    path = parts.path.removeprefix(base_path) if base_path else parts.path
    return path + (f"?{parts.query}" if parts.query else "")


def _subscription(record: Any) -> Subscription:
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise CallLogError("RingCentral subscription without an id", transient=True)
    expires = record.get("expirationTime")
    try:
        expires_at = _time(expires, "expirationTime") if expires is not None else None
    except UnusableRecord as exc:
        raise CallLogError(f"RingCentral subscription: {exc}", transient=True) from None
    return Subscription(subscription_id=record["id"], expires_at=expires_at)
