"""TimeSolv adapter for the billing-system port: directory reads and once-only time-card writes.

Evidence for TimeSolv's API is thin (billing-apis.md §4). What a source shows — the token
endpoint, the `<entity>Search` POST style with {OrderBy, SortOrderAscending, PageSize,
PageNumber, Criteria}, `firmUserSearch`/`FirmUsers`, `clientSearch`/`Clients`,
`timecardSearch`/`TimeCards` with `FirmUserId` and `Date` criteria — is used as such. Everything
else is an assumption, and every assumption lives in `TimeSolvAssumptions` below, so that the
day TimeSolv's real documentation is read, one block changes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Unpack

import httpx

from calltime import units
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

# Seen in use (S-TS: Epona plugin doc and alexandrarh/timesolv-python), not assumed.
TOKEN_PATH = "/Services/rest/oAuth2V1/Token"
API_PREFIX = "/Services/rest/oauth2v1"
FIRM_USER_SEARCH, FIRM_USERS_KEY = "firmUserSearch", "FirmUsers"
CLIENT_SEARCH, CLIENTS_KEY = "clientSearch", "Clients"
TIMECARD_SEARCH, TIMECARDS_KEY = "timecardSearch", "TimeCards"
TIMECARD_USER_FIELD, TIMECARD_DATE_FIELD = "FirmUserId", "Date"

# Windows zone ids, in case TimeSolv (an ASP.NET application) answers with those.
_WINDOWS_ZONES = MappingProxyType({
    "Hawaiian Standard Time": "Pacific/Honolulu",
    "Alaskan Standard Time": "America/Anchorage",
    "Pacific Standard Time": "America/Los_Angeles",
    "US Mountain Standard Time": "America/Phoenix",
    "Mountain Standard Time": "America/Denver",
    "Central Standard Time": "America/Chicago",
    "Eastern Standard Time": "America/New_York",
    "Atlantic Standard Time": "America/Halifax",
    "GMT Standard Time": "Europe/London",
    "UTC": "UTC",
})


@dataclass(frozen=True)
class TimeSolvAssumptions:
    """UNCONFIRMED (billing-apis.md §4): every TimeSolv fact no stored source settled.

    "Time-card create endpoint, body, hours unit, phone search, matter (project) fields, rate
    limits and webhooks are all UNCONFIRMED." Token lifetime and refresh are UNCONFIRMED too;
    the client leaves those to `AccessTokens`. The fake TimeSolv server reads this same block so
    the two agree; replace a value here when a TimeSolv source confirms or corrects it.
    """

    # -- writing a time card
    timecard_create_path: str = "timecard"  # POST {API_PREFIX}/timecard; answer = the created record
    timecard_project_field: str = "ProjectId"
    timecard_hours_field: str = "Hours"  # decimal HOURS (not minutes, not seconds)
    timecard_rate_field: str = "Rate"  # hourly rate in the firm's currency
    timecard_description_field: str = "Description"
    # Date criterion/field values as ISO dates ("2026-03-02"), as the seen timecardSearch sends them.
    # -- finding a time card by our marker without knowing its user and date
    contains_operator: str = "Contains"
    # -- records
    id_field: str = "Id"
    user_first_name_field: str = "FirstName"
    user_last_name_field: str = "LastName"
    user_rate_field: str = "BillingRate"
    user_time_zone_field: str = "TimeZone"  # an IANA name or a Windows zone id (mapped below)
    user_phone_field: str = "Phone"
    user_status_field: str = "UserStatus"  # seen as a criterion with value "Active"
    user_active_value: str = "Active"
    client_name_field: str = "ClientName"
    client_phone_fields: tuple[str, ...] = ("Phone", "Mobile")  # typed free text
    project_search_path: str = "projectSearch"  # matters are "projects" in TimeSolv
    projects_key: str = "Projects"
    project_client_field: str = "ClientId"
    project_code_field: str = "ProjectCode"
    project_name_field: str = "ProjectName"
    project_status_field: str = "ProjectStatus"
    project_statuses: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({
        "Active": "open", "Pending": "pending", "Inactive": "closed", "Closed": "closed",
    }))
    # -- incremental reads: a modification stamp usable as a `>=` criterion, UTC without offset
    updated_field: str | None = "LastModifiedDate"
    # -- paging and pacing
    max_page_size: int = 100  # the largest PageSize seen in use; the true maximum is unknown
    rate_limit: int = 60  # requests per window per token: nothing is published, so be modest
    rate_window_seconds: float = 60.0
    windows_time_zones: Mapping[str, str] = field(default_factory=lambda: _WINDOWS_ZONES)


ASSUMED = TimeSolvAssumptions()


def marker(draft_id: str) -> str:
    """The text appended to a time card's description that ties it to its draft."""
    return f"[calltime:{draft_id}]"


def hours_from_seconds(billed_seconds: int) -> Decimal:
    """Exact decimal hours; refuses a duration that has no exact decimal (e.g. 100 s = 0.02777… h)."""
    return units.seconds_to_hours(billed_seconds)


def time_zone_from_timesolv(raw: str | None, assumptions: TimeSolvAssumptions = ASSUMED) -> str | None:
    """IANA name for a TimeSolv user's zone, or None when it cannot be mapped."""
    return wire.iana_zone(raw, assumptions.windows_time_zones)


def _stamp_criterion(since: datetime) -> str:
    return wire.as_utc(since).strftime("%Y-%m-%dT%H:%M:%S")


def _int_id(value: str, what: str) -> int:
    return wire.int_id(value, what, "TimeSolv")


# ---------------------------------------------------------------------------------------------------------------
# Client


class TimeSolvClient(wire.WireClient):
    """Implements `BillingSystem` against one TimeSolv firm through one OAuth grant."""

    def __init__(
        self,
        base_url: str,
        tokens: AccessTokens,
        *,
        assumptions: TimeSolvAssumptions = ASSUMED,
        page_size: int | None = None,
        **options: Unpack[wire.HttpOptions],
    ) -> None:
        self._base = base_url.rstrip("/")
        self.assumptions = assumptions
        self._page_size = page_size or assumptions.max_page_size
        if not 1 <= self._page_size <= assumptions.max_page_size:
            raise ValueError(f"page_size must be within 1..{assumptions.max_page_size}")
        self._wire = wire.BillingHttp(
            "TimeSolv", tokens, log=log, client_error=_client_error, limit=assumptions.rate_limit,
            window_seconds=assumptions.rate_window_seconds, **options,
        )

    def __repr__(self) -> str:
        return f"TimeSolvClient(base_url={self._base!r})"

    # -- directory ------------------------------------------------------------------------------------------------

    async def list_users(self) -> list[BillingUser]:
        # No UserStatus criterion: the port wants disabled users too.
        return [self._user_from(u) async for u in self._search(FIRM_USER_SEARCH, FIRM_USERS_KEY, [])]

    async def iter_contacts(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryContact]:
        """TimeSolv's directory holds clients only, so every contact is a client."""
        async for item in self._search(CLIENT_SEARCH, CLIENTS_KEY, self._since(updated_since)):
            yield self._contact_from(item)

    async def iter_matters(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryMatter]:
        a = self.assumptions
        async for item in self._search(a.project_search_path, a.projects_key, self._since(updated_since)):
            yield self._matter_from(item)

    def _since(self, updated_since: datetime | None) -> list[dict[str, Any]]:
        if updated_since is None:
            return []
        if self.assumptions.updated_field is None:
            raise PermanentBillingError("this TimeSolv configuration has no incremental reads; read in full")
        return [_criterion(self.assumptions.updated_field, ">=", _stamp_criterion(updated_since))]

    # -- writing --------------------------------------------------------------------------------------------------

    async def find_entry(
        self, draft_id: str, *, user_id: str | None = None, entry_date: date | None = None
    ) -> WrittenEntry | None:
        """The time card carrying this draft's marker. With the user and date it narrows the search
        with the criteria seen in use; without them it asks for a description match."""
        a = self.assumptions
        tag = marker(draft_id)
        if user_id is not None and entry_date is not None:
            criteria = [
                _criterion(TIMECARD_USER_FIELD, "=", _int_id(user_id, "user")),
                _criterion(TIMECARD_DATE_FIELD, ">=", entry_date.isoformat()),
                _criterion(TIMECARD_DATE_FIELD, "<=", entry_date.isoformat()),
            ]
        else:
            criteria = [_criterion(a.timecard_description_field, a.contains_operator, tag)]
        async for card in self._search(TIMECARD_SEARCH, TIMECARDS_KEY, criteria):
            # The filter is applied here too: a server that ignores a criterion must not fool us.
            if tag in str(card.get(a.timecard_description_field) or ""):
                return WrittenEntry(entry_id=str(card[a.id_field]), communication_id=None)
        return None

    async def write_entry(self, req: TimeEntryRequest, *, resume: bool = False) -> WrittenEntry:
        body = self._timecard_body(req)
        if resume:
            found = await self.find_entry(req.draft_id, user_id=req.user_id, entry_date=req.entry_date)
            if found is not None:
                return found
        created = await self._request("POST", self._api(self.assumptions.timecard_create_path), body=body,
                                      is_write=True)
        entry_id = created.get(self.assumptions.id_field)
        if entry_id is None:
            raise AmbiguousWriteError("TimeSolv accepted the time card but named no id; look up before retrying")
        return WrittenEntry(entry_id=str(entry_id), communication_id=None)

    def _timecard_body(self, req: TimeEntryRequest) -> dict[str, Any]:
        a = self.assumptions
        try:
            hours = hours_from_seconds(req.billed_seconds)
        except ValueError as exc:
            raise PermanentBillingError(f"draft {req.draft_id}: {exc}") from None
        if not isinstance(req.rate, Decimal) or not req.rate.is_finite() or req.rate < 0:
            raise PermanentBillingError(f"draft {req.draft_id}: rate must be a non-negative Decimal")
        narrative = req.narrative.strip()
        return {
            TIMECARD_USER_FIELD: _int_id(req.user_id, "user"),
            a.timecard_project_field: _int_id(req.matter_id, "matter"),
            TIMECARD_DATE_FIELD: req.entry_date.isoformat(),
            a.timecard_hours_field: hours,
            a.timecard_rate_field: req.rate,
            a.timecard_description_field: f"{narrative} {marker(req.draft_id)}".strip(),
        }

    # -- mapping --------------------------------------------------------------------------------------------------

    def _user_from(self, item: Mapping[str, Any]) -> BillingUser:
        a = self.assumptions
        name = " ".join(str(item.get(f) or "").strip() for f in (a.user_first_name_field, a.user_last_name_field))
        return BillingUser(
            user_id=str(item[a.id_field]),
            name=name.strip(),
            rate=wire.to_decimal(item.get(a.user_rate_field), invalid_is_zero=True),
            time_zone=time_zone_from_timesolv(item.get(a.user_time_zone_field), a),
            phone_number=item.get(a.user_phone_field) or None,
            enabled=item.get(a.user_status_field) == a.user_active_value,
        )

    def _contact_from(self, item: Mapping[str, Any]) -> DirectoryContact:
        a = self.assumptions
        numbers = tuple(str(item[f]) for f in a.client_phone_fields if item.get(f))
        return DirectoryContact(
            contact_id=str(item[a.id_field]),
            name=str(item.get(a.client_name_field) or ""),
            is_client=True,
            phone_numbers=numbers,
            updated_at=wire.parse_datetime(item.get(a.updated_field)) if a.updated_field else None,
        )

    def _matter_from(self, item: Mapping[str, Any]) -> DirectoryMatter:
        a = self.assumptions
        raw_status = str(item.get(a.project_status_field) or "")
        status = a.project_statuses.get(raw_status)
        if status is None:
            # An unknown status is shown as closed so the drafts flag it for a human rather than bill into it.
            log.warning("unknown TimeSolv project status %r; treating as closed", raw_status)
            status = "closed"
        client = item.get(a.project_client_field)
        return DirectoryMatter(
            matter_id=str(item[a.id_field]),
            client_id=str(client) if client is not None else None,
            display_number=str(item.get(a.project_code_field) or ""),
            description=str(item.get(a.project_name_field) or ""),
            status=status,
            updated_at=wire.parse_datetime(item.get(a.updated_field)) if a.updated_field else None,
        )

    # -- HTTP -----------------------------------------------------------------------------------------------------

    def _api(self, endpoint: str) -> str:
        return f"{self._base}{API_PREFIX}/{endpoint}"

    async def _search(
        self, endpoint: str, key: str, criteria: list[dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        """Every record of a search, page by page; a short page is the last (no total is known)."""
        page_number = 1
        previous_first: Any = object()
        while True:
            body = {
                "OrderBy": self.assumptions.id_field, "SortOrderAscending": True,
                "PageSize": self._page_size, "PageNumber": page_number, "Criteria": criteria,
            }
            answer = await self._request("POST", self._api(endpoint), body=body, is_write=False)
            items = answer.get(key)
            if not isinstance(items, list):
                raise TransientBillingError(f"{endpoint}: answer has no {key} list")
            if items and items[0].get(self.assumptions.id_field) == previous_first:
                raise PermanentBillingError(f"{endpoint}: page {page_number} repeats the previous page")
            for item in items:
                yield item
            if len(items) < self._page_size:
                return
            previous_first = items[0].get(self.assumptions.id_field)
            page_number += 1

    async def _request(self, method: str, url: str, *, body: Any, is_write: bool) -> dict[str, Any]:
        response = await self._wire.send(method, url, body=body, is_write=is_write)
        return wire.json_object(response, f"{method} {httpx.URL(url).path}", is_write=is_write)


def _criterion(field_name: str, operator: str, value: Any) -> dict[str, Any]:
    return {"FieldName": field_name, "Operator": operator, "Value": value}


def _error_message(response: httpx.Response) -> str:
    """The message of an error answer in any of the shapes an ASP.NET or OAuth server uses."""
    body = wire.decode_or_none(response.content)
    if isinstance(body, dict):
        for key in ("Message", "message", "error_description", "error"):
            if isinstance(body.get(key), str):
                return body[key]
    return response.reason_phrase


def _client_error(response: httpx.Response, what: str) -> PermanentBillingError:
    return wire.client_error(response, what, _error_message(response))
