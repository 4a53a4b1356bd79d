"""PracticePanther API v2 adapter for the billing-system port: directory reads and once-only time-entry writes.

Facts from billing-apis.md §3 (S-PP2, the v2 swagger-codegen client): `/api/v2/...` snake_case JSON, OData
`$top/$skip/$orderby` paging, `updated_since` on accounts, contacts and matters, time entries in decimal HOURS with
a required `billed_by_user_ref`, a `private_notes` field "visible to PracticePanther users but ... not added to the
invoice" (where the draft marker goes), and OAuth 2.0 at `/oauth/token`. Much of the rest is UNCONFIRMED; each such
assumption lives in one named function or constant below.

A matter belongs to an account (the client); contacts are people within an account. The directory therefore lists
ACCOUNTS as contacts (contact_id = account id, every phone of every person in it), so that a matter's client_id
(its account) matches the contact a caller's number finds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Unpack
from urllib.parse import quote

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

DEFAULT_BASE_URL = "https://app.practicepanther.com"
TOKEN_URL = "https://app.practicepanther.com/oauth/token"
_PHONE_FIELDS = ("phone_mobile", "phone_work", "phone_home")  # the fax line is left out: nobody calls from it

ASSUMED_RATE_LIMIT = 120
ASSUMED_RATE_WINDOW_SECONDS = 60.0
"""UNCONFIRMED (billing-apis.md §3): PracticePanther publishes no rate limit ("communicated during the API access
approval process"). The client paces at this assumed allowance unless given a `rate_gate` built from the firm's
actual one, and still honours 429 + Retry-After."""

PAGE_SIZE = 200
"""UNCONFIRMED (billing-apis.md §3): the maximum OData `$top`. 200 is what a 2026 third-party client allows."""


def page_params(skip: int, page_size: int) -> dict[str, str]:
    """UNCONFIRMED (billing-apis.md §3): OData paging as a third-party client uses it; ordering by id keeps pages
    stable between requests. A page shorter than `$top` is the last."""
    return {"$top": str(page_size), "$skip": str(skip), "$orderby": "id asc"}


def entry_marker(draft_id: str) -> str:
    """The draft's marker, kept in `private_notes` (not on the invoice). UNCONFIRMED (billing-apis.md §3) that
    PracticePanther stores private_notes verbatim; the time-entry list cannot search text, so `find_entry` reads
    the entries of the matter, user and date and compares."""
    return f"[calltime:{draft_id}]"


def is_token_rejection(response: httpx.Response) -> bool:
    """UNCONFIRMED (billing-apis.md §3): a third-party client reports `400 {"error":"invalid_grant"}` when the
    access token needs refreshing; 401 is the usual answer. Both are treated as a rejected token."""
    if response.status_code == 401:
        return True
    if response.status_code != 400:
        return False
    body = wire.decode_or_none(response.content)
    return isinstance(body, dict) and body.get("error") == "invalid_grant"


def parse_pp_datetime(raw: Any) -> datetime | None:
    """UNCONFIRMED (billing-apis.md §3): PracticePanther writes timestamps without an offset
    ("2026-02-20T14:01:44"); they are read as UTC."""
    return wire.parse_datetime(raw)


def since_param(moment: datetime) -> str:
    """UNCONFIRMED (billing-apis.md §3): which zone PracticePanther reads `updated_since` in. Asking from 14 hours
    earlier (the widest UTC offset) can only repeat records, never miss one."""
    widened = wire.as_utc(moment) - timedelta(hours=14)
    return widened.replace(tzinfo=None).isoformat(timespec="seconds")


def account_is_client(account: Mapping[str, Any]) -> bool:
    """UNCONFIRMED (billing-apis.md §3): v2 accounts carry no client/prospect flag; every account is a client."""
    return True


def matter_status(raw: Any) -> str:
    """v2 says "open, closed or pending"; the casing (v1: Closed|Pending|Open|Archived) is UNCONFIRMED. Archived
    counts as closed; anything unknown stays out of automatic billing as 'pending'."""
    status = str(raw or "").lower()
    if status in ("open", "closed", "pending"):
        return status
    if status == "archived":
        return "closed"
    log.warning("unknown PracticePanther matter status %r treated as pending", raw)
    return "pending"


def hours_for(billed_seconds: int) -> Decimal:
    """PracticePanther `hours` ("fifteen minutes will be added as 0.25") for whole seconds, exactly.

    Only multiples of 9 s have a finite decimal form (9 s = 0.0025 h); anything else would have to be rounded, which
    changes what the client is billed, so it is refused. How many places PracticePanther keeps is UNCONFIRMED.
    """
    return wire.exact_hours(billed_seconds, "PracticePanther")


def _pp_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise PermanentBillingError(f"{what} {value!r} is not a PracticePanther id", error_type="InvalidReference")
    return value.strip()


# ---------------------------------------------------------------------------------------------------------------
# Client


class PracticePantherClient(wire.WireClient):
    """Implements `BillingSystem` against one PracticePanther account through one OAuth grant."""

    def __init__(
        self,
        base_url: str,
        tokens: AccessTokens,
        *,
        page_size: int = PAGE_SIZE,
        **options: Unpack[wire.HttpOptions],
    ) -> None:
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{PAGE_SIZE}")
        self._base = httpx.URL(base_url.rstrip("/"))
        self._wire = wire.BillingHttp(
            "PracticePanther", tokens, log=log, client_error=_client_error, retry_after=_retry_after_seconds,
            is_rejection=is_token_rejection, limit=ASSUMED_RATE_LIMIT, window_seconds=ASSUMED_RATE_WINDOW_SECONDS,
            **options,
        )
        self._page_size = page_size
        self._attempts = wire.RecentWrites()

    def __repr__(self) -> str:
        return f"PracticePantherClient(base_url={str(self._base)!r})"

    # -- directory ------------------------------------------------------------------------------------------------

    async def who_am_i(self) -> BillingUser:
        return _user_from(await self._get_object("/api/v2/users/me"))

    async def list_users(self) -> list[BillingUser]:
        return [_user_from(item) async for item in self._paginate("/api/v2/users", {})]

    async def iter_contacts(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryContact]:
        """One directory contact per account. With `updated_since`, accounts changed since then, plus the accounts of
        people changed since then (whether editing a person bumps its account's updated_at is UNCONFIRMED)."""
        since = {"updated_since": since_param(updated_since)} if updated_since is not None else {}
        seen: set[str] = set()
        async for account in self._paginate("/api/v2/accounts", since):
            seen.add(str(account["id"]))
            yield _account_contact(account)
        if updated_since is None:
            return
        async for person in self._paginate("/api/v2/contacts", since):
            account_id = str((person.get("account_ref") or {}).get("id") or "")
            if account_id and account_id not in seen:
                seen.add(account_id)
                yield _account_contact(await self._get_object(f"/api/v2/accounts/{quote(account_id, safe='')}"))

    async def iter_matters(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryMatter]:
        since = {"updated_since": since_param(updated_since)} if updated_since is not None else {}
        async for item in self._paginate("/api/v2/matters", since):
            yield _matter_from(item)

    # -- writing --------------------------------------------------------------------------------------------------

    async def find_entry(self, draft_id: str, *, hint: TimeEntryRequest | None = None) -> WrittenEntry | None:
        """The time entry whose private notes carry this draft's marker. `hint` (or a write this client attempted)
        narrows the search to its matter, user and date (a day either side); without either every entry is read."""
        hint = hint or self._attempts.get(draft_id)
        params: dict[str, str] = {}
        if hint is not None:
            day = timedelta(days=1)
            params = {"matter_id": _pp_id(hint.matter_id, "matter"), "user_id": _pp_id(hint.user_id, "user"),
                      "date_from": (hint.entry_date - day).isoformat(), "date_to": (hint.entry_date + day).isoformat()}
        else:
            log.warning("looking up draft %s without a hint: reading every PracticePanther time entry", draft_id)
        marker = entry_marker(draft_id)
        async for item in self._paginate("/api/v2/timeentries", params):
            if marker in str(item.get("private_notes") or ""):
                return WrittenEntry(entry_id=str(item["id"]), communication_id=None)
        return None

    async def write_entry(self, req: TimeEntryRequest, *, resume: bool = False) -> WrittenEntry:
        body = time_entry_body(req, account_id="")  # refuses bad input before anything is sent
        if resume:
            found = await self.find_entry(req.draft_id, hint=req)
            if found is not None:
                return found
        matter = await self._get_object(f"/api/v2/matters/{quote(body['matter_ref']['id'], safe='')}")
        account_id = str((matter.get("account_ref") or {}).get("id") or "")
        if not account_id:
            raise PermanentBillingError(f"matter {req.matter_id} has no account", error_type="MatterWithoutAccount")
        body["account_ref"] = {"id": account_id}
        self._attempts.remember(req)
        what = "POST /api/v2/timeentries"
        response = await self._wire.send("POST", self._base.join("/api/v2/timeentries"), body=body)
        created = wire.json_body(response, what, is_write=True)
        if not isinstance(created, dict) or not created.get("id"):
            raise AmbiguousWriteError(f"{what}: HTTP {response.status_code} without an id; look up before retrying")
        wire.check_hours_echo(created, body, "PracticePanther")
        self._attempts.forget(req.draft_id)
        return WrittenEntry(entry_id=str(created["id"]), communication_id=None)

    # -- HTTP -----------------------------------------------------------------------------------------------------

    async def _get_object(self, path: str) -> dict[str, Any]:
        url = self._base.join(path)
        body = wire.json_body(await self._wire.send("GET", url), f"GET {url.path}")
        if not isinstance(body, dict):
            raise TransientBillingError(f"GET {url.path}: expected a JSON object")
        return body

    async def _paginate(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        url = self._base.join(path)
        skip = 0
        while True:
            response = await self._wire.send("GET", url, params={**params, **page_params(skip, self._page_size)})
            items = wire.json_body(response, f"GET {url.path}")
            if not isinstance(items, list):
                raise TransientBillingError(f"GET {url.path}: expected a JSON array", status=response.status_code)
            for item in items:
                yield item
            if len(items) < self._page_size:
                return
            skip += len(items)



def _retry_after_seconds(headers: httpx.Headers, now: float, attempt: int) -> float:
    delay = wire.retry_after_header(headers, now)
    return delay if delay is not None else min(60.0, float(2 ** attempt))


def error_message(response: httpx.Response) -> str:
    """Readable text from an error body. UNCONFIRMED (billing-apis.md §3): PracticePanther's error shape is not
    documented; ASP.NET's `{"Message", "ModelState"}` and OAuth's `{"error", "error_description"}` are both read."""
    body = wire.decode_or_none(response.content)
    if not isinstance(body, dict):
        return response.reason_phrase
    parts = [str(body.get(k)) for k in ("Message", "message", "error", "error_description") if body.get(k)]
    model_state = body.get("ModelState")
    if isinstance(model_state, dict):
        parts += [f"{field}: {'; '.join(map(str, errors))}" for field, errors in model_state.items()
                  if isinstance(errors, list)]
    return " | ".join(parts) or response.reason_phrase


def _client_error(response: httpx.Response, what: str) -> PermanentBillingError:
    return wire.client_error(response, what, error_message(response), rejected=is_token_rejection(response),
                             auth_error_type="TokenRejected", error_type=response.reason_phrase or None)


# ---------------------------------------------------------------------------------------------------------------
# Mapping between PracticePanther's shapes and the port's model


def time_entry_body(req: TimeEntryRequest, *, account_id: str) -> dict[str, Any]:
    if not req.rate.is_finite() or req.rate < 0:
        raise PermanentBillingError(f"rate must be a finite amount of at least 0, not {req.rate}",
                                    error_type="InvalidRate")
    notes = f"Call {req.call_id}" + (f" with {req.external_number}" if req.external_number else "")
    return {
        "is_billable": True,
        "is_billed": False,
        "date": f"{req.entry_date.isoformat()}T00:00:00",  # as the sample: a date at midnight, no offset
        "hours": hours_for(req.billed_seconds),  # HOURS, not seconds or minutes
        "rate": req.rate,  # sent explicitly: the default would be the user's or matter's rate
        "description": req.narrative,  # on the client's invoice
        "private_notes": f"{notes} {entry_marker(req.draft_id)}",
        "account_ref": {"id": account_id},
        "matter_ref": {"id": _pp_id(req.matter_id, "matter")},
        "billed_by_user_ref": {"id": _pp_id(req.user_id, "user")},
    }


def _phones(person: Mapping[str, Any] | None) -> list[str]:
    if not isinstance(person, Mapping):
        return []
    return [str(person[f]).strip() for f in _PHONE_FIELDS if person.get(f) and str(person[f]).strip()]


def _account_contact(account: Mapping[str, Any]) -> DirectoryContact:
    people = [account.get("primary_contact"), *(account.get("other_contacts") or ())]
    numbers = tuple(dict.fromkeys(n for person in people for n in _phones(person)))
    return DirectoryContact(
        contact_id=str(account["id"]),
        name=str(account.get("display_name") or account.get("company_name") or ""),
        is_client=account_is_client(account),
        phone_numbers=numbers,
        updated_at=parse_pp_datetime(account.get("updated_at")),
    )


def _user_from(item: Mapping[str, Any]) -> BillingUser:
    name = item.get("display_name") or " ".join(p for p in (item.get("first_name"), item.get("last_name")) if p)
    return BillingUser(
        user_id=str(item["id"]),
        name=str(name or ""),
        # The v2 User model has no rate (billing-apis.md §3); 0 keeps the type and makes the gap visible.
        rate=Decimal("0"),
        time_zone=None,  # no time zone in the v2 User model
        phone_number=None,
        enabled=bool(item.get("is_active", True)),
    )


def _matter_from(item: Mapping[str, Any]) -> DirectoryMatter:
    account = item.get("account_ref") or {}
    name = str(item.get("name") or "")
    return DirectoryMatter(
        matter_id=str(item["id"]),
        client_id=str(account["id"]) if account.get("id") else None,
        display_number=str(item.get("display_name") or item.get("number") or name),
        description=name,
        status=matter_status(item.get("status")),
        updated_at=parse_pp_datetime(item.get("updated_at")),
    )
