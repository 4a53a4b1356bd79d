"""Smokeball adapter for the billing-system port: directory reads and once-only fee writes.

Source: the official `smokeballdev/api-docs` repository (billing-apis.md §5). Time entries are
"fees" on a matter, `duration` in whole MINUTES. Every call carries `x-api-key` and a Cognito
bearer token; the documented allowance is a token bucket of 5 requests/second, burst 5.

Smokeball accepts every POST asynchronously (202 and a `Link`), and a failure after acceptance
only arrives later as an `error` webhook. So a fee is reported written only once it can be read
back; until then the write is ambiguous and the caller must look before writing again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
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

# Regional hosts (Introduction §1): "You MUST use the URLs for the region you are targeting."
API_HOSTS = {"US": "https://api.smokeball.com", "AU": "https://api.smokeball.com.au",
             "UK": "https://api.smokeball.co.uk"}
TOKEN_URLS = {"US": "https://auth.smokeball.com/oauth2/token", "AU": "https://auth.smokeball.com.au/oauth2/token",
              "UK": "https://auth.smokeball.co.uk/oauth2/token"}
TOKEN_CLIENT_AUTH = "basic"  # the token endpoint takes Authorization: Basic base64(client_id:client_secret)
RATE_LIMIT, RATE_WINDOW_SECONDS = 5, 1.0  # token bucket: rate 5/s, burst 5
PAGE_LIMIT = 500  # "By default, the limit will be set to a maximum of 500 results"
FEE_TYPE_TIME = 1  # FeeDto.feeType: 0 = Fixed, 1 = Time
MATTER_STATUSES = ("Open", "Pending", "Closed", "Cancelled", "Deleted")
_STATUS_TO_PORT = {"open": "open", "pending": "pending", "closed": "closed", "cancelled": "closed",
                   "deleted": "closed"}
_TICKS_AT_UNIX_EPOCH = 621_355_968_000_000_000  # .NET ticks (100 ns since 0001-01-01) at 1970-01-01 UTC
_REQUEST_ID_NAMESPACE = uuid.UUID("8a1f6c52-1d2e-4c8b-9a57-6b0c2e7d3f10")

ASYNC_CONFIRM_SECONDS = 30.0
"""UNCONFIRMED (billing-apis.md §5): how long Smokeball takes to process an accepted (202) write.

The docs say only that POST/PUT "are handled asynchronously". A fee not readable within this
many seconds is reported as an ambiguous write, and a resumed write waits this long for an
earlier attempt to surface before it writes again."""


def request_id_for(draft_id: str) -> str:
    """The `RequestId` sent with a draft's fee: a GUID derived from the draft, so any webhook the
    write triggers (including an `error`) can be traced back to it.

    UNCONFIRMED (billing-apis.md §5): the docs do not say what a RequestId may look like; a GUID is
    the format Smokeball uses for its own ids."""
    return str(uuid.uuid5(_REQUEST_ID_NAMESPACE, draft_id))


def marker(draft_id: str) -> str:
    """Put in the fee's description to find it again: no reference field or idempotency key exists."""
    return f"[calltime:{draft_id}]"


def minutes_from_seconds(billed_seconds: int) -> int:
    """Whole minutes for FeeDto.duration (int64); refuses any duration that is not exact minutes."""
    return units.seconds_to_minutes(billed_seconds)


def ticks_from_datetime(moment: datetime) -> int:
    """.NET ticks of a UTC instant, as `UpdatedSince` and webhook `timestamp` carry them (exact)."""
    delta = wire.as_utc(moment) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return _TICKS_AT_UNIX_EPOCH + micros * 10


def datetime_from_ticks(ticks: int) -> datetime:
    micros = (ticks - _TICKS_AT_UNIX_EPOCH) // 10
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)


def notification_signature(key: str, timestamp: str, request_id: str, client_id: str) -> str:
    """The webhook `Signature` header: hex HMAC-SHA256(key, Timestamp|RequestId|ClientId). It signs
    headers, not the body (k-Webhooks.md)."""
    message = f"{timestamp}|{request_id}|{client_id}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def verify_notification(key: str, headers: Mapping[str, str], client_id: str) -> bool:
    """True when a webhook delivery's Signature header matches its Timestamp and RequestId headers."""
    found = httpx.Headers(headers)
    signature = found.get("Signature")
    if not signature:
        return False
    expected = notification_signature(key, found.get("Timestamp", ""), found.get("RequestId", ""), client_id)
    return hmac.compare_digest(expected, signature.lower())


def phone_text(phone: Mapping[str, Any] | None) -> str | None:
    """A Smokeball {areaCode, number[, extension]} as one typed string, or None when empty."""
    if not isinstance(phone, Mapping):
        return None
    area = str(phone.get("areaCode") or "").strip()
    number = str(phone.get("number") or "").strip()
    if not number:
        return None
    text = f"({area}) {number}" if area else number
    extension = str(phone.get("extension") or "").strip()
    return f"{text} x{extension}" if extension else text


# ---------------------------------------------------------------------------------------------------------------
# Client


class SmokeballClient(wire.WireClient):
    """Implements `BillingSystem` against one Smokeball firm through one OAuth grant and API key."""

    def __init__(
        self,
        base_url: str,
        tokens: AccessTokens,
        *,
        api_key: str,
        acting_user_id: str | None = None,
        confirm_seconds: float = ASYNC_CONFIRM_SECONDS,
        confirm_interval: float = 1.0,
        **options: Unpack[wire.HttpOptions],
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty")
        # A client-credentials base URL ends in /{accountId}; paths are appended, never joined over it.
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        self._acting_user_id = acting_user_id
        options.setdefault("max_rate_limit_retries", 5)
        # Without a Retry-After a 429 waits one second, the time the documented bucket needs to refill; what
        # headers a 429 carries is UNCONFIRMED (billing-apis.md §5).
        self._wire = wire.BillingHttp("Smokeball", tokens, log=log, client_error=_client_error, limit=RATE_LIMIT,
                                      window_seconds=RATE_WINDOW_SECONDS, **options)
        self._clock, self._sleep = self._wire.clock, self._wire.sleep
        self._confirm_seconds = confirm_seconds
        self._confirm_interval = confirm_interval
        self._matter_of_draft: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"SmokeballClient(base_url={self._base!r})"

    # -- directory ------------------------------------------------------------------------------------------------

    async def list_users(self) -> list[BillingUser]:
        """Staff (the fee's `staffId`), with the hourly rate the docs say to ask for by name."""
        return [_user_from(item) async for item in self._paged("/staff", [("Fields", "rate")])]

    async def iter_contacts(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryContact]:
        """Contacts with their phone numbers. Smokeball has no client flag on a contact, so a contact
        is a client when some matter names it among its clients; that costs one read of all matters."""
        clients = {m.client_id async for m in self.iter_matters() if m.client_id is not None}
        params: list[tuple[str, str]] = [("ExcludeDeletedContacts", "true")]
        if updated_since is not None:
            params.append(("UpdatedSince", str(ticks_from_datetime(updated_since))))
        async for item in self._paged("/contacts", params):
            yield _contact_from(item, clients)

    async def iter_matters(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryMatter]:
        # Every status named explicitly: which statuses an unfiltered list returns is not documented.
        params = [("Status", status) for status in MATTER_STATUSES]
        if updated_since is not None:
            params.append(("LastUpdated", wire.as_utc(updated_since).strftime("%Y-%m-%dT%H:%M:%S.%fZ")))
        async for item in self._paged("/matters", params):
            yield _matter_from(item)

    # -- writing --------------------------------------------------------------------------------------------------

    async def find_entry(self, draft_id: str, *, matter_id: str | None = None) -> WrittenEntry | None:
        """The fee carrying this draft's marker. Fees live under their matter: with `matter_id` (or
        a matter this client wrote the draft to) one matter is searched, otherwise every matter."""
        known = matter_id or self._matter_of_draft.get(draft_id)
        matter_ids = [known] if known else [m.matter_id async for m in self.iter_matters()]
        for candidate in matter_ids:
            fee = await self._find_fee(candidate, draft_id)
            if fee is not None:
                return WrittenEntry(entry_id=str(fee["id"]), communication_id=None)
        return None

    async def write_entry(self, req: TimeEntryRequest, *, resume: bool = False) -> WrittenEntry:
        body = _fee_body(req)
        self._matter_of_draft[req.draft_id] = req.matter_id
        if resume:
            # An earlier accepted write may still be in Smokeball's queue: give it time to surface.
            fee = await self._await_fee(req, fee_id=None)
            if fee is not None:
                return WrittenEntry(entry_id=str(fee["id"]), communication_id=None)
        status, link = await self._send(
            "POST", self._fees_path(req.matter_id), body=body, is_write=True, request_id=request_id_for(req.draft_id)
        )
        fee_id = link.get("id") if isinstance(link, dict) and link.get("id") else None
        fee = await self._await_fee(req, fee_id=str(fee_id) if fee_id else None)
        if fee is None:
            raise AmbiguousWriteError(
                f"Smokeball accepted fee {fee_id or '(no id)'} (HTTP {status}) for draft {req.draft_id} but it was"
                f" not readable within {self._confirm_seconds:.0f}s; an 'error' webhook with RequestId"
                f" {request_id_for(req.draft_id)} would say it failed. Look up before retrying.",
                status=status,
            )
        return WrittenEntry(entry_id=str(fee["id"]), communication_id=None)

    async def _await_fee(self, req: TimeEntryRequest, *, fee_id: str | None) -> dict[str, Any] | None:
        """Poll until the fee is readable (by id when Smokeball named one) or the wait is over."""
        deadline = self._clock() + self._confirm_seconds
        while True:
            if fee_id is not None:
                fee = await self._fee_by_id(req.matter_id, fee_id)
                if fee is not None and marker(req.draft_id) not in str(fee.get("description") or ""):
                    raise AmbiguousWriteError(f"fee {fee_id} named by Smokeball does not carry draft {req.draft_id}")
            else:
                fee = await self._find_fee(req.matter_id, req.draft_id)
            if fee is not None:
                return fee
            if self._clock() >= deadline:
                return None
            await self._sleep(self._confirm_interval)

    async def _fee_by_id(self, matter_id: str, fee_id: str) -> dict[str, Any] | None:
        status, fee = await self._send("GET", f"{self._fees_path(matter_id)}/{fee_id}", accept_404=True)
        return fee if status == 200 and isinstance(fee, dict) else None

    async def _find_fee(self, matter_id: str, draft_id: str) -> dict[str, Any] | None:
        tag = marker(draft_id)
        # A deleted fee still counts: it was written once, and a human removed it on purpose.
        async for fee in self._paged(self._fees_path(matter_id), []):
            if tag in str(fee.get("description") or ""):
                return fee
        return None

    @staticmethod
    def _fees_path(matter_id: str) -> str:
        try:
            return f"/matters/{uuid.UUID(matter_id)}/fees"
        except ValueError:
            raise PermanentBillingError(f"matter {matter_id!r} is not a Smokeball id") from None

    # -- HTTP -----------------------------------------------------------------------------------------------------

    async def _paged(self, path: str, params: Iterable[tuple[str, str]]) -> AsyncIterator[dict[str, Any]]:
        """Offset paging built here rather than by following `next` links, so our filters always go along."""
        offset = 0
        base_params = list(params)
        while True:
            query = base_params + [("Offset", str(offset)), ("Limit", str(PAGE_LIMIT))]
            _, page = await self._send("GET", path, params=query)
            items = page.get("value") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise TransientBillingError(f"GET {path}: answer is not a paged collection")
            for item in items:
                yield item
            offset += len(items)
            size = page.get("size")
            more = offset < size if isinstance(size, int) else bool(page.get("next"))
            if not items or not more:
                return

    async def _send(
        self, method: str, path: str, *, params: list[tuple[str, str]] | None = None, body: Any = None,
        is_write: bool = False, request_id: str | None = None, accept_404: bool = False,
    ) -> tuple[int, Any]:
        what = f"{method} {path}"
        response = await self._wire.send(
            method, f"{self._base}{path}", what=what, is_write=is_write, params=params, body=body,
            headers=self._headers(request_id), accept=(404,) if accept_404 else (),
        )
        status = response.status_code
        if status == 404:
            return status, None
        try:
            return status, wire.decode_json(response.content) if response.content else None
        except ValueError:
            if is_write:
                return status, None  # accepted; the read-back decides
            raise wire.unreadable(response, what, is_write=False) from None

    def _headers(self, request_id: str | None) -> dict[str, str]:
        headers = {"x-api-key": self._api_key}
        if request_id:
            headers["RequestId"] = request_id
        if self._acting_user_id:
            headers["UserId"] = self._acting_user_id
        return headers


def _error_message(response: httpx.Response) -> str:
    """Text of an error answer: ProblemDetails {title, detail}, or an API gateway's {message}."""
    body = wire.decode_or_none(response.content)
    if not isinstance(body, dict):
        return response.reason_phrase
    parts = [str(body[k]) for k in ("title", "detail", "message", "Message") if body.get(k)]
    return " — ".join(parts) or response.reason_phrase


def _client_error(response: httpx.Response, what: str) -> PermanentBillingError:
    return wire.client_error(response, what, _error_message(response))


# ---------------------------------------------------------------------------------------------------------------
# Mapping between Smokeball's shapes and the port's model


def _fee_body(req: TimeEntryRequest) -> dict[str, Any]:
    try:
        minutes = minutes_from_seconds(req.billed_seconds)
    except ValueError as exc:
        raise PermanentBillingError(f"draft {req.draft_id}: {exc}") from None
    if not isinstance(req.rate, Decimal) or not req.rate.is_finite() or req.rate < 0:
        raise PermanentBillingError(f"draft {req.draft_id}: rate must be a non-negative Decimal")
    return {
        "staffId": req.user_id,
        "feeType": FEE_TYPE_TIME,
        "feeDate": req.entry_date.isoformat(),
        "subject": req.narrative.strip() or "Telephone call",
        "description": marker(req.draft_id),
        "duration": minutes,  # minutes billed: 60x too much if seconds, 60x too little if hours
        "durationWorked": minutes,
        "rate": req.rate,  # dollars per hour
        "isBillable": True,
    }


def _user_from(item: Mapping[str, Any]) -> BillingUser:
    name = " ".join(str(item.get(k) or "").strip() for k in ("firstName", "lastName")).strip()
    return BillingUser(
        user_id=str(item["id"]),
        name=name,
        # Without Fields=rate, or for staff without one, the rate is absent; 0 keeps the type and shows the gap.
        rate=wire.to_decimal(item.get("rate"), invalid_is_zero=True),
        time_zone=None,  # Smokeball keeps no time zone on a staff member
        phone_number=phone_text(item.get("phone")) or phone_text(item.get("cell")),
        enabled=bool(item.get("enabled", True)) and not item.get("former"),
    )


def _contact_from(item: Mapping[str, Any], clients: set[str]) -> DirectoryContact:
    person, company = item.get("person"), item.get("company")
    if isinstance(person, Mapping):
        name = " ".join(str(person.get(k) or "").strip() for k in ("firstName", "lastName")).strip()
        phones = [person.get(k) for k in ("phone", "phone2", "cell")]
    elif isinstance(company, Mapping):
        name, phones = str(company.get("name") or ""), [company.get("phone")]
    else:
        other = item.get("trust") or item.get("groupOfPeople") or {}
        name, phones = str(other.get("name") or "") if isinstance(other, Mapping) else "", []
    last_updated = item.get("lastUpdated")
    return DirectoryContact(
        contact_id=str(item["id"]),
        name=name,
        is_client=str(item["id"]) in clients,
        phone_numbers=tuple(text for text in map(phone_text, phones) if text),
        updated_at=datetime_from_ticks(last_updated) if isinstance(last_updated, int) else None,
    )


def _matter_from(item: Mapping[str, Any]) -> DirectoryMatter:
    clients = [c for c in item.get("clients") or () if isinstance(c, Mapping) and c.get("id")]
    raw_status = str(item.get("status") or "")
    status = _STATUS_TO_PORT.get(raw_status.lower())
    if status is None:
        log.warning("unknown Smokeball matter status %r; treating as closed", raw_status)
        status = "closed"
    return DirectoryMatter(
        matter_id=str(item["id"]),
        client_id=str(clients[0]["id"]) if clients else None,
        display_number=str(item.get("number") or ""),
        description=str(item.get("title") or item.get("description") or ""),
        status=status,
        updated_at=None,  # the Matter schema carries no update stamp
    )
