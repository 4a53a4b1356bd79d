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

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from calltime.billing.auth import AccessTokens
from calltime.billing.errors import (
    AmbiguousWriteError,
    AuthenticationError,
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
from calltime.billing.pacing import RateGate

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://app.practicepanther.com"
TOKEN_URL = "https://app.practicepanther.com/oauth/token"
SECONDS_PER_HOUR = 3600
_REMEMBERED_ATTEMPTS = 1000
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
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
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("error") == "invalid_grant"


def parse_pp_datetime(raw: Any) -> datetime | None:
    """UNCONFIRMED (billing-apis.md §3): PracticePanther writes timestamps without an offset
    ("2026-02-20T14:01:44"); they are read as UTC."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def since_param(moment: datetime) -> str:
    """UNCONFIRMED (billing-apis.md §3): which zone PracticePanther reads `updated_since` in. Asking from 14 hours
    earlier (the widest UTC offset) can only repeat records, never miss one."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    widened = aware.astimezone(timezone.utc) - timedelta(hours=14)
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
    if isinstance(billed_seconds, bool) or not isinstance(billed_seconds, int) or billed_seconds <= 0:
        raise PermanentBillingError(f"billed_seconds must be a positive whole number, not {billed_seconds!r}",
                                    error_type="InvalidDuration")
    if billed_seconds % 9:
        raise PermanentBillingError(
            f"{billed_seconds} s is not an exact decimal number of hours; round the draft to a multiple of 36 s"
            " (0.01 h) before writing to PracticePanther", error_type="InvalidDuration")
    return Decimal(billed_seconds) / SECONDS_PER_HOUR


# ---------------------------------------------------------------------------------------------------------------
# JSON with exact numbers


def _encode(value: Any) -> str:
    """JSON text in which a Decimal is written as the exact number it holds (json.dumps cannot do that)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("money and quantities must be finite")
        return format(value, "f")
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if isinstance(value, float):
        raise TypeError("floats are not sent to PracticePanther; use Decimal")
    return json.dumps(value)


def _decode(content: bytes) -> Any:
    return json.loads(content, parse_float=Decimal)


def _to_decimal(value: Any) -> Decimal:
    if value is None or value == "":
        return Decimal("0")
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _pp_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise PermanentBillingError(f"{what} {value!r} is not a PracticePanther id", error_type="InvalidReference")
    return value.strip()


# ---------------------------------------------------------------------------------------------------------------
# Client


class PracticePantherClient:
    """Implements `BillingSystem` against one PracticePanther account through one OAuth grant."""

    def __init__(
        self,
        base_url: str,
        tokens: AccessTokens,
        *,
        http: httpx.AsyncClient | None = None,
        rate_gate: RateGate | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        timeout: float = 10.0,
        max_rate_limit_retries: int = 3,
        max_read_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        rng: Callable[[], float] = random.random,
        page_size: int = PAGE_SIZE,
    ) -> None:
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{PAGE_SIZE}")
        self._base = httpx.URL(base_url.rstrip("/"))
        self._tokens = tokens
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient()
        self._timeout = httpx.Timeout(timeout)
        self._clock = clock
        self._sleep = sleep
        self._gate = rate_gate or RateGate(clock, sleep, limit=ASSUMED_RATE_LIMIT,
                                           window_seconds=ASSUMED_RATE_WINDOW_SECONDS)
        self._max_429 = max_rate_limit_retries
        self._max_read_retries = max_read_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._rng = rng
        self._page_size = page_size
        self._attempts: OrderedDict[str, TimeEntryRequest] = OrderedDict()

    def __repr__(self) -> str:
        return f"PracticePantherClient(base_url={str(self._base)!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> PracticePantherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

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
        self._remember(req)
        what = "POST /api/v2/timeentries"
        response = await self._send("POST", self._base.join("/api/v2/timeentries"), body=body)
        created = self._json(response, what, is_write=True)
        if not isinstance(created, dict) or not created.get("id"):
            raise AmbiguousWriteError(f"{what}: HTTP {response.status_code} without an id; look up before retrying")
        _check_echo(created, body)
        self._attempts.pop(req.draft_id, None)
        return WrittenEntry(entry_id=str(created["id"]), communication_id=None)

    def _remember(self, req: TimeEntryRequest) -> None:
        self._attempts[req.draft_id] = req
        self._attempts.move_to_end(req.draft_id)
        while len(self._attempts) > _REMEMBERED_ATTEMPTS:
            self._attempts.popitem(last=False)

    # -- HTTP -----------------------------------------------------------------------------------------------------

    async def _get_object(self, path: str) -> dict[str, Any]:
        url = self._base.join(path)
        body = self._json(await self._send("GET", url), f"GET {url.path}")
        if not isinstance(body, dict):
            raise TransientBillingError(f"GET {url.path}: expected a JSON object")
        return body

    async def _paginate(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        url = self._base.join(path)
        skip = 0
        while True:
            response = await self._send("GET", url, params={**params, **page_params(skip, self._page_size)})
            items = self._json(response, f"GET {url.path}")
            if not isinstance(items, list):
                raise TransientBillingError(f"GET {url.path}: expected a JSON array", status=response.status_code)
            for item in items:
                yield item
            if len(items) < self._page_size:
                return
            skip += len(items)

    async def _send(
        self, method: str, url: httpx.URL, *, params: Mapping[str, str] | None = None, body: Any = None,
    ) -> httpx.Response:
        what = f"{method} {url.path}"
        is_write = method != "GET"
        content = _encode(body).encode() if body is not None else None
        token = await self._tokens.bearer()
        refreshed = False
        rate_limited = retried = 0
        while True:
            await self._gate.before_request()
            try:
                response = await self._http.request(
                    method, url, params=params, content=content, headers=_headers(token, content is not None),
                    timeout=self._timeout,
                )
            except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
                # Not chained: h11's message can quote the Authorization header.
                raise PermanentBillingError(f"{what}: request could not be sent ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                sent = not isinstance(exc, _NOT_SENT)
                if sent and is_write:
                    raise AmbiguousWriteError(
                        f"{what}: no answer after sending ({type(exc).__name__}); look up before retrying"
                    ) from exc
                if retried < self._max_read_retries:
                    retried += 1
                    await self._backoff(retried, what, type(exc).__name__)
                    continue
                raise TransientBillingError(f"{what}: {type(exc).__name__} after {retried} retries") from exc
            self._gate.observe(response.headers)
            status = response.status_code
            if is_token_rejection(response):
                # A rejected request was not processed, so even a write may be sent again with a fresh token.
                if refreshed:
                    raise AuthenticationError(f"{what}: HTTP {status}: {error_message(response)}", status=status,
                                              error_type="TokenRejected")
                refreshed = True
                token = await self._tokens.after_rejection(token)
                continue
            if status == 429:
                if rate_limited >= self._max_429:
                    raise TransientBillingError(f"{what}: still rate limited after {rate_limited} retries", status=429)
                rate_limited += 1
                delay = _retry_after_seconds(response.headers, self._clock(), rate_limited)
                log.warning("%s rate limited by PracticePanther; retrying in %.2fs", what, delay)
                await self._sleep(delay)
                continue
            if status >= 500 or status == 408:
                if is_write:
                    raise AmbiguousWriteError(f"{what}: HTTP {status} after sending; look up before retrying",
                                              status=status)
                if retried < self._max_read_retries:
                    retried += 1
                    await self._backoff(retried, what, f"HTTP {status}")
                    continue
                raise TransientBillingError(f"{what}: HTTP {status} after {retried} retries", status=status)
            if status >= 400:
                raise PermanentBillingError(f"{what}: HTTP {status}: {error_message(response)}", status=status,
                                            error_type=response.reason_phrase or None)
            return response

    def _json(self, response: httpx.Response, what: str, *, is_write: bool = False) -> Any:
        try:
            return _decode(response.content)
        except ValueError:
            error = AmbiguousWriteError if is_write else TransientBillingError
            raise error(f"{what}: HTTP {response.status_code} with an unreadable body",
                        status=response.status_code) from None

    async def _backoff(self, attempt: int, what: str, reason: str) -> None:
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
        delay = ceiling / 2 + self._rng() * ceiling / 2  # jitter keeps many workers from retrying in step
        log.warning("%s failed (%s); retry %d in %.2fs", what, reason, attempt, delay)
        await self._sleep(delay)


def _headers(token: str, has_body: bool) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if has_body:
        headers["Content-Type"] = "application/json"
    return headers


def _retry_after_seconds(headers: httpx.Headers, now: float, attempt: int) -> float:
    raw = headers.get("Retry-After")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(raw).timestamp() - now)
        except (TypeError, ValueError):
            pass
    return min(60.0, float(2 ** attempt))


def error_message(response: httpx.Response) -> str:
    """Readable text from an error body. UNCONFIRMED (billing-apis.md §3): PracticePanther's error shape is not
    documented; ASP.NET's `{"Message", "ModelState"}` and OAuth's `{"error", "error_description"}` are both read."""
    try:
        body = _decode(response.content)
    except ValueError:
        return response.reason_phrase
    if not isinstance(body, dict):
        return response.reason_phrase
    parts = [str(body.get(k)) for k in ("Message", "message", "error", "error_description") if body.get(k)]
    model_state = body.get("ModelState")
    if isinstance(model_state, dict):
        parts += [f"{field}: {'; '.join(map(str, errors))}" for field, errors in model_state.items()
                  if isinstance(errors, list)]
    return " | ".join(parts) or response.reason_phrase


def _check_echo(created: Mapping[str, Any], sent: Mapping[str, Any]) -> None:
    """The created entry must say what was sent: a unit or rounding change is a billing error a human must see."""
    hours, rate = _to_decimal(created.get("hours")), _to_decimal(created.get("rate"))
    if hours != sent["hours"] or rate != sent["rate"]:
        raise PermanentBillingError(
            f"PracticePanther stored time entry {created.get('id')} as {hours} h at {rate} (sent {sent['hours']} h"
            f" at {sent['rate']}); the entry exists and needs a human look", error_type="EchoMismatch")


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
