"""Clio Manage API v4 adapter for the billing-system port: directory reads and once-only time-entry writes.

Regions: Clio keeps each account in one of four data regions, each its own host (`clio_base_url`). A token
is only valid on the host of the region that issued it (billing-apis.md §1.1); another region answers 401,
so store the region with the firm's credentials and build both the API and the token URL from it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Unpack

import httpx

from calltime.billing import clio_webhooks, wire
from calltime.billing.auth import AccessTokens, StaticToken
from calltime.billing.clio_webhooks import ClioWebhook
from calltime.billing.errors import (
    ApiVersionMismatch,
    AuthenticationError,
    PermanentBillingError,
)
from calltime.billing.model import (
    BillingUser,
    DirectoryContact,
    DirectoryMatter,
    TimeEntryRequest,
    WrittenEntry,
)

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "4.0.9"
# Activity quantity is hours up to 4.0.3 and seconds from 4.0.4 on; a wrong unit is a 3,600x billing error,
# so the client refuses to speak any version where quantity is hours.
FIRST_SECONDS_VERSION = (4, 0, 4)
DRAFT_PROPERTY = "calltime_draft_id"
CALL_PROPERTY = "calltime_call_id"

_CONTACT_FIELDS = "id,etag,name,is_client,updated_at,phone_numbers{id,name,number,primary}"
_MATTER_FIELDS = "id,etag,display_number,description,status,updated_at,client{id,name}"
_USER_FIELDS = "id,etag,name,rate,time_zone,phone_number,enabled,subscription_type"
_RATE_FIELDS = "id,name,type,default,category_type,utbms_activity_id,utbms_task_id,rate"
_WEBHOOK_FIELDS = "id,etag,url,model,events,fields,status,expires_at,shared_secret"
_PAGE_LIMIT = 200
_USER_PAGE_LIMIT = 2000

# Rails-style zone names, in case Clio answers with those rather than IANA names (its format is UNCONFIRMED).
_RAILS_ZONES = {
    "Hawaii": "Pacific/Honolulu",
    "Alaska": "America/Juneau",
    "Pacific Time (US & Canada)": "America/Los_Angeles",
    "Arizona": "America/Phoenix",
    "Mountain Time (US & Canada)": "America/Denver",
    "Central Time (US & Canada)": "America/Chicago",
    "Eastern Time (US & Canada)": "America/New_York",
    "Indiana (East)": "America/Indiana/Indianapolis",
    "Atlantic Time (Canada)": "America/Halifax",
    "Newfoundland": "America/St_Johns",
    "Saskatchewan": "America/Regina",
    "London": "Europe/London",
    "Edinburgh": "Europe/London",
    "Dublin": "Europe/Dublin",
    "Amsterdam": "Europe/Amsterdam",
    "Berlin": "Europe/Berlin",
    "Paris": "Europe/Paris",
    "Madrid": "Europe/Madrid",
    "Rome": "Europe/Rome",
    "Brisbane": "Australia/Brisbane",
    "Sydney": "Australia/Sydney",
    "Melbourne": "Australia/Melbourne",
    "Adelaide": "Australia/Adelaide",
    "Darwin": "Australia/Darwin",
    "Perth": "Australia/Perth",
    "Hobart": "Australia/Hobart",
    "UTC": "UTC",
}


# The API and OAuth endpoints of each data region share one host (billing-apis.md §1.1).
CLIO_REGION_HOSTS = {
    "US": "https://app.clio.com",
    "EU": "https://eu.app.clio.com",
    "CA": "https://ca.app.clio.com",
    "AU": "https://au.app.clio.com",
}


def clio_base_url(region: str) -> str:
    """The `base_url` for `ClioClient` in a data region (US, EU, CA or AU); API paths sit under /api/v4."""
    try:
        return CLIO_REGION_HOSTS[region.strip().upper()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown Clio region {region!r}; expected one of {sorted(CLIO_REGION_HOSTS)}") from None


def clio_token_url(region: str) -> str:
    """The OAuth token endpoint of a region (for `OAuthSession`): the same host as the API."""
    return clio_base_url(region) + "/oauth/token"


def clio_authorize_url(region: str) -> str:
    return clio_base_url(region) + "/oauth/authorize"


def time_zone_from_clio(raw: str | None) -> str | None:
    """The one place that maps Clio's user `time_zone` to an IANA name (None when it cannot)."""
    return wire.iana_zone(raw, _RAILS_ZONES)


def _to_decimal(value: Any) -> Decimal:
    # Clio answers null for "no rate", so a blank amount is a broken answer: it raises rather than bill at 0.
    return wire.to_decimal(value, blank_is_zero=False)


def _parse_datetime(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def _clio_id(value: str, what: str) -> int:
    return wire.int_id(value, what, "Clio")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# ---------------------------------------------------------------------------------------------------------------
# Client


@dataclass(frozen=True)
class EntryTerms:
    """What a TimeEntry is billed at: the price per hour and the activity description reference, if any."""

    price: Decimal
    activity_description: dict[str, int] | None = None
    rate_source: str = "request"  # 'request' (the draft's rate) or Clio's rate hierarchy name


class ClioClient(wire.WireClient):
    """Implements `BillingSystem` against one Clio account through one access token.

    `token` is a plain access token (kept as a `StaticToken`) or any `AccessTokens`, which is asked once
    for a fresh token after a 401. `activity_description` (a name such as "Telephone call") or
    `utbms_codes` (activity code, task code, e.g. ("A106", "L120")) make every TimeEntry carry that
    category and the hourly price Clio's rate hierarchy gives it, the draft's rate when Clio has none.
    """

    def __init__(
        self,
        base_url: str,
        token: str | AccessTokens,
        *,
        activity_description: str | None = None,
        utbms_codes: tuple[str, str] | None = None,
        api_version: str = DEFAULT_API_VERSION,
        **options: Unpack[wire.HttpOptions],
    ) -> None:
        if _version_tuple(api_version) < FIRST_SECONDS_VERSION:
            raise ValueError(f"API version {api_version} reports activity quantity in hours; use 4.0.4 or later")
        tokens = _token_source(token)
        self._description_name = _check_description_name(activity_description, utbms_codes)
        self._utbms_codes = _check_utbms_codes(utbms_codes)
        self._description_ids: dict[str, int] = {}
        self._utbms_ids: dict[tuple[str, str], tuple[int, int]] = {}
        self._base = httpx.URL(base_url.rstrip("/"))
        self.api_version = api_version
        # Clio states its allowance in X-RateLimit-* headers, so the gate needs no limit of its own.
        self._wire = wire.BillingHttp(
            "Clio", tokens, log=log,
            client_error=lambda response, what: _client_error(response, what, self.api_version),
            retry_after=_retry_after_seconds, refresh_failed=self._refresh_failed, server_error_type=_error_type,
            **options,
        )
        self._clock = self._wire.clock

    def __repr__(self) -> str:
        # Never show the token.
        return f"ClioClient(base_url={str(self._base)!r}, api_version={self.api_version!r})"

    # -- directory ------------------------------------------------------------------------------------------------

    async def who_am_i(self) -> BillingUser:
        body = await self._request("GET", "/api/v4/users/who_am_i.json", params={"fields": _USER_FIELDS})
        return _user_from(body["data"])

    async def list_users(self) -> list[BillingUser]:
        params = {"fields": _USER_FIELDS, "order": "id(asc)", "limit": str(_USER_PAGE_LIMIT)}
        return [_user_from(item) async for item in self._paginate("/api/v4/users.json", params)]

    async def iter_contacts(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryContact]:
        params = self._index_params(_CONTACT_FIELDS, updated_since)
        async for item in self._paginate("/api/v4/contacts.json", params):
            yield _contact_from(item)

    async def iter_matters(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryMatter]:
        params = self._index_params(_MATTER_FIELDS, updated_since)
        async for item in self._paginate("/api/v4/matters.json", params):
            yield _matter_from(item)

    @staticmethod
    def _index_params(fields: str, updated_since: datetime | None) -> dict[str, str]:
        params = {"fields": fields, "order": "id(asc)", "limit": str(_PAGE_LIMIT)}
        if updated_since is not None:
            since = updated_since if updated_since.tzinfo else updated_since.replace(tzinfo=timezone.utc)
            params["updated_since"] = since.isoformat()
        return params

    # -- writing --------------------------------------------------------------------------------------------------

    async def find_communication(self, draft_id: str) -> str | None:
        """The id of the first PhoneCommunication carrying this draft id, or None."""
        ids = await self._communication_ids(draft_id)
        return ids[0] if ids else None

    async def find_time_entry(self, communication_id: str) -> str | None:
        """The id of the first TimeEntry linked to this communication, or None."""
        params = {
            "communication_id": str(_clio_id(communication_id, "communication")), "type": "TimeEntry",
            "fields": "id,etag", "order": "id(asc)", "limit": "1",
        }
        body = await self._request("GET", "/api/v4/activities.json", params=params)
        items = body.get("data") or []
        return str(items[0]["id"]) if items else None

    async def find_entry(self, draft_id: str) -> WrittenEntry | None:
        # An earlier ambiguous write can leave more than one communication; any of them may hold the entry.
        for communication_id in await self._communication_ids(draft_id):
            entry_id = await self.find_time_entry(communication_id)
            if entry_id is not None:
                return WrittenEntry(entry_id=entry_id, communication_id=communication_id)
        return None

    async def ensure_communication(self, req: TimeEntryRequest, *, look_up_first: bool) -> str:
        """Create the call's PhoneCommunication (or, with look_up_first, reuse one carrying the draft id)."""
        if look_up_first:
            existing = await self.find_communication(req.draft_id)
            if existing is not None:
                return existing
        body = await self._request(
            "POST", "/api/v4/communications.json", params={"fields": "id,etag"}, body=_communication_body(req)
        )
        return str(body["data"]["id"])

    async def ensure_time_entry(
        self, req: TimeEntryRequest, communication_id: str, *, look_up_first: bool, terms: EntryTerms | None = None,
    ) -> str:
        """Create the TimeEntry linked to the communication (or, with look_up_first, reuse a linked one)."""
        if look_up_first:
            existing = await self.find_time_entry(communication_id)
            if existing is not None:
                return existing
        terms = terms or await self.entry_terms(req)
        body = await self._request(
            "POST", "/api/v4/activities.json", params={"fields": "id,etag"},
            body=_time_entry_body(req, communication_id, terms),
        )
        return str(body["data"]["id"])

    async def write_entry(self, req: TimeEntryRequest, *, resume: bool = False) -> WrittenEntry:
        """Log the call, then the TimeEntry linked to it. A resumed write (an earlier attempt may
        have landed) reuses whatever part of it Clio already holds instead of posting again."""
        if resume:
            found = await self.find_entry(req.draft_id)
            if found is not None:
                return found
        # Priced before anything is written, so a misconfigured category fails without leaving a stray phone log.
        terms = await self.entry_terms(req)
        communication_id = await self.ensure_communication(req, look_up_first=resume)
        entry_id = await self.ensure_time_entry(req, communication_id, look_up_first=resume, terms=terms)
        return WrittenEntry(entry_id=entry_id, communication_id=communication_id)

    # -- rates and activity descriptions ------------------------------------------------------------------------

    async def entry_terms(self, req: TimeEntryRequest) -> EntryTerms:
        """The price and category for this entry: the draft's rate unless the firm configured a category."""
        if self._description_name is None and self._utbms_codes is None:
            return EntryTerms(price=req.rate)
        rows = await self._rate_rows(req.matter_id, req.user_id)
        if self._description_name is not None:
            row = self._description_row(rows, self._description_name)
            reference = {"id": int(row["id"])}
        else:
            activity_id, task_id = await self._utbms_ids_for(self._utbms_codes)
            row = _utbms_row(rows, activity_id, task_id)
            reference = {"utbms_activity_id": activity_id, "utbms_task_id": task_id}
        if row is not None and _rate_type(row) == "FlatRate":
            raise PermanentBillingError(
                f"activity description {row.get('name')!r} is flat-rate; a call is billed by the hour"
            )
        amount = _hourly_amount(row) if row is not None else None
        if amount is None:
            return EntryTerms(price=req.rate, activity_description=reference)
        return EntryTerms(price=amount, activity_description=reference, rate_source=_rate_hierarchy(row))

    async def effective_rate(
        self, matter_id: str, user_id: str, activity_description_id: str | int | None = None,
    ) -> Decimal | None:
        """The hourly rate Clio's hierarchy gives this user on this matter for an activity description (without
        one: for the description marked `default`); None when Clio has no hourly rate for it."""
        rows = await self._rate_rows(matter_id, user_id)
        if activity_description_id is None:
            row = next((r for r in rows if r.get("default") is True), None)
        else:
            wanted = _clio_id(str(activity_description_id), "activity description")
            row = next((r for r in rows if r.get("id") == wanted), None)
        return _hourly_amount(row) if row is not None else None

    async def _rate_rows(self, matter_id: str, user_id: str) -> list[dict[str, Any]]:
        params = {
            "rate_for[matter_id]": str(_clio_id(matter_id, "matter")),
            "rate_for[user_id]": str(_clio_id(user_id, "user")),
            "fields": _RATE_FIELDS, "order": "id(asc)", "limit": str(_PAGE_LIMIT),
        }
        return [item async for item in self._paginate("/api/v4/activity_descriptions.json", params)]

    def _description_row(self, rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
        cached = self._description_ids.get(name)
        if cached is not None:
            row = next((r for r in rows if r.get("id") == cached), None)
            if row is not None:
                return row
        matches = [r for r in rows if str(r.get("name") or "").strip().casefold() == name.strip().casefold()]
        if len(matches) != 1:
            found = "no" if not matches else f"{len(matches)}"
            raise PermanentBillingError(f"Clio has {found} activity description named {name!r}")
        self._description_ids[name] = int(matches[0]["id"])
        return matches[0]

    async def _utbms_ids_for(self, codes: tuple[str, str]) -> tuple[int, int]:
        if codes not in self._utbms_ids:
            activity_code, task_code = codes
            self._utbms_ids[codes] = (
                await self._utbms_code_id("UtbmsActivity", activity_code),
                await self._utbms_code_id("UtbmsTask", task_code),
            )
        return self._utbms_ids[codes]

    async def _utbms_code_id(self, kind: str, code: str) -> int:
        params = {"type": kind, "fields": "id,code", "order": "id(asc)", "limit": str(_PAGE_LIMIT)}
        async for item in self._paginate("/api/v4/utbms/codes.json", params):
            if str(item.get("code") or "").upper() == code.upper():
                return int(item["id"])
        raise PermanentBillingError(f"Clio has no {kind} code {code!r} (is UTBMS enabled for the firm?)")

    # -- webhooks -------------------------------------------------------------------------------------------------

    async def create_webhook(
        self, url: str, model: str, events: tuple[str, ...] | list[str], fields: str,
        expires_at: datetime | None = None,
    ) -> ClioWebhook:
        """Subscribe `url` (https) to changes of `model`. Clio then POSTs a handshake carrying X-Hook-Secret;
        the webhook stays `pending` until that is echoed (or `activate_webhook` is called). Not retried: after
        an AmbiguousWriteError, `list_webhooks` shows whether it was created."""
        clio_webhooks.check_subscription(model, events, fields)
        if httpx.URL(url).scheme != "https":
            raise ValueError("Clio delivers webhooks to https URLs only")
        data: dict[str, Any] = {"url": url, "model": model, "events": list(events), "fields": fields}
        if expires_at is not None:
            data["expires_at"] = self._expiry(expires_at)
        body = await self._request(
            "POST", "/api/v4/webhooks.json", params={"fields": _WEBHOOK_FIELDS}, body={"data": data}
        )
        return clio_webhooks.webhook_from(body["data"])

    async def list_webhooks(self) -> list[ClioWebhook]:
        params = {"fields": _WEBHOOK_FIELDS, "order": "id(asc)", "limit": str(_PAGE_LIMIT)}
        return [clio_webhooks.webhook_from(item) async for item in self._paginate("/api/v4/webhooks.json", params)]

    async def renew_webhook(self, webhook_id: int | str, expires_at: datetime) -> ClioWebhook:
        """Move a subscription's expiry (at most 31 days ahead); safe to repeat."""
        webhook = _clio_id(str(webhook_id), "webhook")
        body = await self._request(
            "PATCH", f"/api/v4/webhooks/{webhook}.json", params={"fields": _WEBHOOK_FIELDS},
            body={"data": {"expires_at": self._expiry(expires_at)}},
        )
        return clio_webhooks.webhook_from(body["data"])

    async def activate_webhook(self, webhook_id: int | str, secret: str) -> None:
        """Complete the handshake later, when the endpoint did not echo X-Hook-Secret in time."""
        webhook = _clio_id(str(webhook_id), "webhook")
        await self._request(
            "PUT", f"/api/v4/webhooks/{webhook}/activate", extra_headers={clio_webhooks.SECRET_HEADER: secret},
        )

    def _expiry(self, expires_at: datetime) -> str:
        now = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        return clio_webhooks.check_expiry(expires_at, now).isoformat()

    async def _communication_ids(self, draft_id: str) -> list[str]:
        params = {
            "external_property_name": DRAFT_PROPERTY, "external_property_value": draft_id,
            "type": "PhoneCommunication", "fields": "id,etag", "order": "id(asc)", "limit": str(_PAGE_LIMIT),
        }
        return [str(item["id"]) async for item in self._paginate("/api/v4/communications.json", params)]

    # -- HTTP -----------------------------------------------------------------------------------------------------

    async def _paginate(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        url: httpx.URL | str = path
        page_params: dict[str, str] | None = params
        while True:
            body = await self._request("GET", url, params=page_params)
            for item in body.get("data") or ():
                yield item
            next_url = ((body.get("meta") or {}).get("paging") or {}).get("next")
            if not next_url:
                return
            url, page_params = wire.same_origin(next_url, self._base, "Clio"), None

    async def _request(
        self, method: str, path_or_url: str | httpx.URL, *, params: Mapping[str, str] | None = None,
        body: Any = None, extra_headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        url = self._base.join(path_or_url) if isinstance(path_or_url, str) else path_or_url
        response = await self._wire.send(method, url, params=params, body=body,
                                         headers={"X-API-VERSION": self.api_version, **(extra_headers or {})})
        return self._success_body(response, f"{method} {url.path}", is_write=method != "GET")

    def _refresh_failed(self, response: httpx.Response, what: str, exc: AuthenticationError) -> AuthenticationError:
        # Report Clio's own 401 (its error type tells expired from missing), noting that no refresh was possible.
        error = _client_error(response, what, self.api_version)
        return AuthenticationError(f"{error}; no fresh token: {exc}", status=401, error_type=error.error_type)

    def _success_body(self, response: httpx.Response, what: str, is_write: bool) -> dict[str, Any]:
        body = wire.decode_or_none(response.content)
        echoed = response.headers.get("X-API-VERSION")
        if echoed != self.api_version:
            created = body.get("data", {}).get("id") if is_write and isinstance(body, dict) else None
            raise ApiVersionMismatch(
                f"{what}: sent X-API-VERSION {self.api_version}, answer says {echoed or 'nothing'}",
                sent=self.api_version, received=echoed, status=response.status_code,
                resource_id=str(created) if created is not None else None,
            )
        if not isinstance(body, dict):
            raise wire.unreadable(response, what, is_write=is_write)
        return body


def _retry_after_seconds(headers: httpx.Headers, now: float, attempt: int) -> float:
    delay = wire.retry_after_header(headers, now)
    if delay is not None:
        return delay
    try:
        return max(1.0, float(headers["X-RateLimit-Reset"]) - now)
    except (KeyError, ValueError):
        return 1.0


def _error_type(response: httpx.Response) -> str | None:
    return _error_parts(response)[0]


def _error_parts(response: httpx.Response) -> tuple[str | None, str]:
    """(type, message) from either of Clio's error shapes: {"error":{type,message}} or RFC 6750."""
    body = wire.decode_or_none(response.content)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error.get("type"), str(error.get("message") or "")
    if isinstance(error, str):
        return error, str(body.get("error_description") or "")
    return None, response.reason_phrase


def _client_error(response: httpx.Response, what: str, api_version: str) -> PermanentBillingError:
    status = response.status_code
    error_type, message = _error_parts(response)
    text = f"{what}: HTTP {status} {error_type or ''}: {message}".strip()
    if status == 401:
        return AuthenticationError(text, status=status, error_type=error_type)
    if status == 410:
        return ApiVersionMismatch(
            f"{what}: Clio rejected X-API-VERSION {api_version} (410 Gone)", sent=api_version,
            received=response.headers.get("X-API-VERSION"), status=status,
        )
    return PermanentBillingError(text, status=status, error_type=error_type)


# ---------------------------------------------------------------------------------------------------------------
# Mapping between Clio's shapes and the port's model


def _user_from(item: Mapping[str, Any]) -> BillingUser:
    return BillingUser(
        user_id=str(item["id"]),
        name=item.get("name") or "",
        # A user without a default rate comes back as null; 0 keeps the type and makes the gap visible.
        rate=_to_decimal(item.get("rate")),
        time_zone=time_zone_from_clio(item.get("time_zone")),
        phone_number=item.get("phone_number") or None,
        enabled=bool(item.get("enabled", True)),
    )


def _contact_from(item: Mapping[str, Any]) -> DirectoryContact:
    numbers = tuple(p["number"] for p in item.get("phone_numbers") or () if p.get("number"))
    return DirectoryContact(
        contact_id=str(item["id"]),
        name=item.get("name") or "",
        is_client=bool(item.get("is_client")),
        phone_numbers=numbers,
        updated_at=_parse_datetime(item.get("updated_at")),
    )


def _matter_from(item: Mapping[str, Any]) -> DirectoryMatter:
    client = item.get("client")
    return DirectoryMatter(
        matter_id=str(item["id"]),
        client_id=str(client["id"]) if client and client.get("id") is not None else None,
        display_number=item.get("display_number") or "",
        description=item.get("description") or "",
        status=(item.get("status") or "").lower(),
        updated_at=_parse_datetime(item.get("updated_at")),
    )


def _communication_body(req: TimeEntryRequest) -> dict[str, Any]:
    subject = f"Phone call with {req.external_number}" if req.external_number else "Phone call"
    data: dict[str, Any] = {
        "type": "PhoneCommunication",
        "subject": subject,
        "body": req.narrative or subject,  # body is required and may not be blank
        "date": req.entry_date.isoformat(),
        "matter": {"id": _clio_id(req.matter_id, "matter")},
        "external_properties": [
            {"name": DRAFT_PROPERTY, "value": req.draft_id},
            {"name": CALL_PROPERTY, "value": req.call_id},
        ],
    }
    if req.call_started_at.tzinfo is None:
        # A naive time would be read in the firm's zone or UTC depending on Clio's setting; refuse to guess.
        raise ValueError("call_started_at must be timezone-aware")
    data["received_at"] = req.call_started_at.isoformat()
    return {"data": data}


def _time_entry_body(req: TimeEntryRequest, communication_id: str, terms: EntryTerms) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "TimeEntry",
        "date": req.entry_date.isoformat(),
        "quantity": req.billed_seconds,  # seconds: the client only speaks versions >= 4.0.4
        # Always sent: whether Clio fills an omitted price on create is UNCONFIRMED (billing-apis.md §1.7).
        "price": terms.price,
        "note": req.narrative,
        "matter": {"id": _clio_id(req.matter_id, "matter")},
        "user": {"id": _clio_id(req.user_id, "user")},
        "communication": {"id": _clio_id(communication_id, "communication")},
    }
    if terms.activity_description is not None:
        data["activity_description"] = terms.activity_description
    return {"data": data}


# ---------------------------------------------------------------------------------------------------------------
# Construction checks and rate rows


def _token_source(token: str | AccessTokens) -> AccessTokens:
    if isinstance(token, str):
        if not token:
            raise ValueError("access token is empty")
        return StaticToken(token)
    if not (callable(getattr(token, "bearer", None)) and callable(getattr(token, "after_rejection", None))):
        raise TypeError("token must be a str or an AccessTokens (bearer() and after_rejection())")
    return token


def _check_description_name(name: str | None, utbms_codes: tuple[str, str] | None) -> str | None:
    if name is not None and utbms_codes is not None:
        # Clio takes activity_description as {id} or as {utbms_activity_id, utbms_task_id}, not both.
        raise ValueError("configure activity_description or utbms_codes, not both")
    if name is not None and not name.strip():
        raise ValueError("activity_description is blank")
    return name


def _check_utbms_codes(codes: tuple[str, str] | None) -> tuple[str, str] | None:
    if codes is None:
        return None
    if len(codes) != 2 or not all(isinstance(c, str) and c.strip() for c in codes):
        raise ValueError("utbms_codes is (activity code, task code), e.g. ('A106', 'L120')")
    activity, task = (c.strip().upper() for c in codes)
    # ABA activity codes are A###; a swapped pair would bill the call under the wrong phase of the matter.
    if not activity.startswith("A") or task.startswith("A"):
        raise ValueError(f"utbms_codes must be (activity code, task code); got {codes!r}")
    return activity, task


def _utbms_row(rows: list[dict[str, Any]], activity_id: int, task_id: int) -> dict[str, Any] | None:
    return next(
        (r for r in rows if r.get("utbms_activity_id") == activity_id and r.get("utbms_task_id") == task_id), None
    )


def _rate_type(row: Mapping[str, Any]) -> str | None:
    rate = row.get("rate")
    return rate.get("type") if isinstance(rate, Mapping) else None


def _rate_hierarchy(row: Mapping[str, Any]) -> str:
    rate = row.get("rate")
    return str(rate.get("hierarchy") or "Clio") if isinstance(rate, Mapping) else "Clio"


def _hourly_amount(row: Mapping[str, Any]) -> Decimal | None:
    """An hourly rate from a rate_for row; None for a flat rate or a missing amount."""
    rate = row.get("rate")
    if not isinstance(rate, Mapping) or rate.get("type") == "FlatRate" or rate.get("amount") is None:
        return None
    amount = _to_decimal(rate["amount"])
    return amount if amount.is_finite() and amount >= 0 else None
