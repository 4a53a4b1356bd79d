"""MyCase Open API adapter for the billing-system port: directory reads and once-only time-entry writes.

Facts from billing-apis.md §2 (S-MYC): JSON without a `data` wrapper, cursor paging through a `Link: rel="next"`
header, `filter[updated_after]` (inclusive) for incremental reads, time entries in decimal HOURS, 25 requests per
second per client, errors as `{"errors": [{"description", "source": {"pointer" | "parameter"}}]}`, 24-hour access
tokens (refresh with `OAuthSession`, token URL `TOKEN_URL`). MyCase has no idempotency key and no reference field on
a time entry, so the draft id travels as a marker in the description and `find_entry` searches for it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Unpack

import httpx

from calltime.billing import wire
from calltime.billing.auth import AccessTokens
from calltime.billing.errors import (
    AmbiguousWriteError,
    PermanentBillingError,
    TransientBillingError,
)
from calltime.billing.model import (
    BillingUser,
    DirectoryContact,
    DirectoryMatter,
    TimeEntryRequest,
    WrittenEntry,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://external-integrations.mycase.com"
TOKEN_URL = "https://auth.mycase.com/tokens"
# "The current limits are 25 requests per second per client" (S-MYC Getting Started).
RATE_LIMIT = 25
RATE_WINDOW_SECONDS = 1.0
PAGE_SIZE = 1000  # the documented maximum; the default is 25
# A write lands after the call started; the slack absorbs clock skew between the phone provider, us and MyCase.
LOOKUP_SLACK = timedelta(days=1)

ACTIVITY_NAME = "Telephone Call"
"""UNCONFIRMED (billing-apis.md §2, mycase_time_entry_create_request.src.txt): whether `activity_name` must name an
activity that already exists in the firm's MyCase account. The sample uses "Telephone Call"; a firm can pass its own
through `MyCaseClient(activity_name=...)`."""


def entry_marker(draft_id: str) -> str:
    """UNCONFIRMED (billing-apis.md §2): MyCase time entries have no reference field, so the draft id is appended to
    the description and found again by text. That MyCase keeps the description verbatim, and whether it is shown on
    the client's invoice, are not documented."""
    return f"[calltime:{draft_id}]"


def is_client_person(item: Mapping[str, Any]) -> bool:
    """UNCONFIRMED (billing-apis.md §2): `/v1/clients` lists every person ("Clients have been renamed to People"),
    not only clients, and no field says "client". A person linked to at least one case is taken to be a client."""
    return bool(item.get("cases"))


def company_contact_id(company_id: Any) -> str:
    """UNCONFIRMED (billing-apis.md §2): whether people and companies share one id space. Companies get a prefixed
    contact id so they can never collide with a person's."""
    return f"company-{company_id}"


def retry_after_seconds(headers: httpx.Headers, now: float, attempt: int) -> float:
    """UNCONFIRMED (billing-apis.md §2): whether a 429 carries `Retry-After`. Honour it when present; otherwise wait
    out the one-second window, doubling with each further 429."""
    delay = wire.retry_after_header(headers, now)
    return delay if delay is not None else min(8.0, RATE_WINDOW_SECONDS * 2 ** (attempt - 1))


def hours_for(billed_seconds: int) -> Decimal:
    """MyCase `hours` ("The duration in hours") for a whole number of seconds, exactly.

    seconds / 3600 has a finite decimal form only for multiples of 9 s (at most 4 places: 9 s = 0.0025 h). Anything
    else would have to be rounded, which changes what the client is billed, so it is refused instead. How many
    decimal places MyCase keeps is UNCONFIRMED.
    """
    return wire.exact_hours(billed_seconds, "MyCase")


def _parse_datetime(raw: Any) -> datetime | None:
    # "If a timezone is not specified, the API will default to UTC" (S-MYC Time Zones).
    return wire.parse_datetime(raw)


def _since_param(moment: datetime) -> str:
    return wire.as_utc(moment).isoformat(timespec="seconds").replace("+00:00", "Z")


def _mycase_id(value: str, what: str) -> int:
    return wire.int_id(value, what, "MyCase", error_type="InvalidReference")


# ---------------------------------------------------------------------------------------------------------------
# Client


class MyCaseClient(wire.WireClient):
    """Implements `BillingSystem` against one MyCase firm through one OAuth grant."""

    def __init__(
        self,
        base_url: str,
        tokens: AccessTokens,
        *,
        activity_name: str = ACTIVITY_NAME,
        page_size: int = PAGE_SIZE,
        **options: Unpack[wire.HttpOptions],
    ) -> None:
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{PAGE_SIZE}")
        self._base = httpx.URL(base_url.rstrip("/"))
        self._wire = wire.BillingHttp("MyCase", tokens, log=log, client_error=_client_error,
                                      retry_after=retry_after_seconds, limit=RATE_LIMIT,
                                      window_seconds=RATE_WINDOW_SECONDS, **options)
        self.activity_name = activity_name
        self._page_size = page_size
        self._attempts = wire.RecentWrites()

    def __repr__(self) -> str:
        return f"MyCaseClient(base_url={str(self._base)!r})"

    # -- directory ------------------------------------------------------------------------------------------------

    async def who_am_i(self) -> BillingUser:
        response = await self._wire.send("GET", self._base.join("/v1/me"))
        return _user_from(self._json_object(response, "GET /v1/me"))

    async def list_users(self) -> list[BillingUser]:
        return [_user_from(item) async for item in self._paginate("/v1/staff", self._page_params(None))]

    async def iter_contacts(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryContact]:
        """People, then companies (two endpoints), each in the order MyCase lists them."""
        async for item in self._paginate("/v1/clients", self._page_params(updated_since)):
            yield _person_from(item)
        async for item in self._paginate("/v1/companies", self._page_params(updated_since)):
            yield _company_from(item)

    async def iter_matters(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryMatter]:
        async for item in self._paginate("/v1/cases", self._page_params(updated_since)):
            yield _matter_from(item)

    def _page_params(self, updated_since: datetime | None) -> dict[str, str]:
        params = {"page_size": str(self._page_size)}
        if updated_since is not None:
            params["filter[updated_after]"] = _since_param(updated_since)
        return params

    # -- writing --------------------------------------------------------------------------------------------------

    async def find_entry(self, draft_id: str, *, hint: TimeEntryRequest | None = None) -> WrittenEntry | None:
        """The time entry whose description carries this draft's marker. `hint` (or a write this client attempted)
        narrows the search to entries changed since the call; without either every time entry is read."""
        hint = hint or self._attempts.get(draft_id)
        params = {"page_size": str(self._page_size)}
        if hint is not None:
            params["filter[updated_after]"] = _since_param(hint.call_started_at - LOOKUP_SLACK)
        else:
            log.warning("looking up draft %s without a hint: reading every MyCase time entry", draft_id)
        marker = entry_marker(draft_id)
        async for item in self._paginate("/v1/time_entries", params):
            if marker in str(item.get("description") or ""):
                return WrittenEntry(entry_id=str(item["id"]), communication_id=None)
        return None

    async def write_entry(self, req: TimeEntryRequest, *, resume: bool = False) -> WrittenEntry:
        body = time_entry_body(req, self.activity_name)  # refuses bad input before anything is sent
        if resume:
            found = await self.find_entry(req.draft_id, hint=req)
            if found is not None:
                return found
        self._attempts.remember(req)
        what = "POST /v1/time_entries"
        response = await self._wire.send("POST", self._base.join("/v1/time_entries"), body=body)
        created = self._json_object(response, what, is_write=True)
        if created.get("id") is None:
            raise AmbiguousWriteError(f"{what}: HTTP {response.status_code} without an id; look up before retrying")
        wire.check_hours_echo(created, body, "MyCase")
        self._attempts.forget(req.draft_id)
        return WrittenEntry(entry_id=str(created["id"]), communication_id=None)

    # -- HTTP -----------------------------------------------------------------------------------------------------

    async def _paginate(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        url = self._base.join(path)
        page_params: dict[str, str] | None = params
        while True:
            response = await self._wire.send("GET", url, params=page_params)
            items = wire.json_body(response, f"GET {url.path}")
            if not isinstance(items, list):
                raise TransientBillingError(f"GET {url.path}: expected a JSON array", status=response.status_code)
            for item in items:
                yield item
            next_url = response.links.get("next", {}).get("url")
            if not next_url:
                return
            url, page_params = wire.same_origin(next_url, self._base, "MyCase"), None


    def _json_object(self, response: httpx.Response, what: str, *, is_write: bool = False) -> dict[str, Any]:
        body = wire.json_body(response, what, is_write=is_write)
        if not isinstance(body, dict):
            error = AmbiguousWriteError if is_write else TransientBillingError
            raise error(f"{what}: expected a JSON object", status=response.status_code)
        return body


def error_descriptions(response: httpx.Response) -> list[str]:
    """The human-readable parts of MyCase's documented error body, each with the field or parameter it names."""
    body = wire.decode_or_none(response.content)
    errors = body.get("errors") if isinstance(body, dict) else None
    out = []
    for error in errors if isinstance(errors, list) else ():
        if not isinstance(error, dict):
            continue
        source = error.get("source") if isinstance(error.get("source"), dict) else {}
        where = source.get("pointer") or source.get("parameter")
        text = str(error.get("description") or "")
        out.append(f"{text} ({where})" if where else text)
    return out


def _client_error(response: httpx.Response, what: str) -> PermanentBillingError:
    detail = "; ".join(error_descriptions(response)) or response.reason_phrase
    return wire.client_error(response, what, detail, auth_error_type="Unauthorized",
                             error_type=response.reason_phrase or None)


# ---------------------------------------------------------------------------------------------------------------
# Mapping between MyCase's shapes and the port's model


def time_entry_body(req: TimeEntryRequest, activity_name: str = ACTIVITY_NAME) -> dict[str, Any]:
    if not req.rate.is_finite() or req.rate < 0:
        raise PermanentBillingError(f"rate must be a finite amount of at least 0, not {req.rate}",
                                    error_type="InvalidRate")
    narrative = req.narrative.strip()
    marker = entry_marker(req.draft_id)
    return {
        "activity_name": activity_name,
        "description": f"{narrative} {marker}" if narrative else marker,
        "billable": True,
        "entry_date": req.entry_date.isoformat(),
        "rate": req.rate,  # dollars
        "hours": hours_for(req.billed_seconds),  # HOURS, not seconds or minutes
        "flat_fee": False,
        "case": {"id": _mycase_id(req.matter_id, "case")},
        "staff": {"id": _mycase_id(req.user_id, "staff")},
    }


def _full_name(item: Mapping[str, Any]) -> str:
    parts = (item.get("first_name"), item.get("middle_name"), item.get("last_name"))
    return " ".join(str(p).strip() for p in parts if p and str(p).strip())


def _phones(item: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(item[n]).strip() for n in names if item.get(n) and str(item[n]).strip())


def _user_from(item: Mapping[str, Any]) -> BillingUser:
    phones = _phones(item, ("work_phone_number", "cell_phone_number", "home_phone_number"))
    return BillingUser(
        user_id=str(item["id"]),
        name=_full_name(item),
        rate=wire.to_decimal(item.get("default_hourly_rate")),
        time_zone=None,  # MyCase staff (and firm) records carry no time zone (S-MYC Staff.json, Firm.json)
        phone_number=phones[0] if phones else None,
        enabled=bool(item.get("active", True)),
    )


def _person_from(item: Mapping[str, Any]) -> DirectoryContact:
    return DirectoryContact(
        contact_id=str(item["id"]),
        name=_full_name(item),
        is_client=is_client_person(item),
        # The fax number is left out: nobody calls from a fax line.
        phone_numbers=_phones(item, ("cell_phone_number", "work_phone_number", "home_phone_number")),
        updated_at=_parse_datetime(item.get("updated_at")),
    )


def _company_from(item: Mapping[str, Any]) -> DirectoryContact:
    return DirectoryContact(
        contact_id=company_contact_id(item["id"]),
        name=str(item.get("name") or ""),
        is_client=is_client_person(item),
        phone_numbers=_phones(item, ("main_phone_number",)),
        updated_at=_parse_datetime(item.get("updated_at")),
    )


def case_client_id(item: Mapping[str, Any]) -> str | None:
    """One client per matter for the directory: the billing contact when it is one of the case's clients or
    companies, else the first client, else the first company."""
    people = [c["id"] for c in item.get("clients") or () if isinstance(c, dict) and c.get("id") is not None]
    companies = [c["id"] for c in item.get("companies") or () if isinstance(c, dict) and c.get("id") is not None]
    billing = (item.get("billing_contact") or {}).get("id")
    if billing is not None and billing in people:
        return str(billing)
    if billing is not None and billing in companies:
        return company_contact_id(billing)
    if people:
        return str(people[0])
    return company_contact_id(companies[0]) if companies else None


def case_status(raw: Any) -> str:
    """MyCase cases are `open` or `closed`; anything else is kept out of automatic billing as 'pending'."""
    status = str(raw or "").lower()
    if status in ("open", "closed", "pending"):
        return status
    log.warning("unknown MyCase case status %r treated as pending", raw)
    return "pending"


def _matter_from(item: Mapping[str, Any]) -> DirectoryMatter:
    name = str(item.get("name") or "")
    return DirectoryMatter(
        matter_id=str(item["id"]),
        client_id=case_client_id(item),
        display_number=str(item.get("case_number") or name),
        description=name,
        status=case_status(item.get("status")),
        updated_at=_parse_datetime(item.get("updated_at")),
    )
