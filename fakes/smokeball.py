"""A fake Smokeball API (several firms, in memory) served over real HTTP for tests and local runs.

Modelled on the official docs (billing-apis.md §5, samples/billing/smokeball_*): Cognito-style
OAuth at /oauth2/token (Basic client auth; the refresh answer carries no new refresh token),
`x-api-key` on every call, offset paging (Limit ≤ 500) with {offset, limit, size, first, next,
last, value}, .NET-tick `UpdatedSince`, fees on matters with `duration` in minutes, and — the
part that bites — asynchronous writes: POST answers 202 with a Link, the fee becomes readable
only once "processed", and a failure after acceptance surfaces only as an `error` webhook.
Webhook deliveries are recorded (with their Signature headers), not sent over the network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import Response

from calltime.fakes import billing_common
from calltime.fakes.billing_common import (
    ApiError,
    DroppedResponse,
    FakeBillingServer,
    FakeBillingState,
    JsonStyle,
    loads,
)

RATE_PER_SECOND, BURST = 5.0, 5  # Introduction §2
ACCESS_LIFETIME = 3600  # "The returned access_token is valid for 60 minutes"
REFRESH_LIFETIME = 30 * 86_400  # "By default, the returned refresh_token is valid for 30 days"
CODE_LIFETIME = 300  # "The code is single-use and valid for 5 minutes"
MAX_LIMIT = 500
EVENT_TYPES = (
    "contact.created", "contact.updated", "contact.deleted", "contact.restored", "matter.created",
    "matter.updated", "fee.created", "fee.updated", "fee.deleted", "staff.created", "staff.updated", "error",
)
MATTER_STATUSES = ("Open", "Pending", "Closed", "Deleted", "Cancelled")
# UNCONFIRMED (billing-apis.md §5): whether Smokeball refuses fees on a closed matter; the fake does.
CLOSED_STATUSES = frozenset({"Closed", "Deleted", "Cancelled"})
_FEE_DTO_FIELDS = frozenset({
    "updatedByUserId", "staffId", "invoiceId", "activityCode", "feeType", "feeDate", "subject", "description",
    "duration", "durationWorked", "rate", "tax", "taxInclusive", "taxExempt", "taxOutOfScope", "finalized",
    "isWrittenOff", "isBillable", "isInvoicedExternally", "sourceItems", "createdFromActivityId",
})
_TICKS_AT_UNIX_EPOCH = 621_355_968_000_000_000
_BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)


def _ticks(unix_seconds: float) -> int:
    # Written here rather than imported from the adapter so a bug in one cannot hide the same bug in the other.
    return _TICKS_AT_UNIX_EPOCH + round(unix_seconds * 1_000_000) * 10


def _iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------------------
# JSON

_json = JsonStyle().response


class _ApiError(ApiError):
    """An error answer: ProblemDetails from the API, or {"message"} from the gateway in front of it."""


def _problem(status: int, title: str, detail: str) -> _ApiError:
    # The swagger names the schema ProblemDetails; its fields (RFC 7807, as ASP.NET emits them) are assumed.
    return _ApiError(status, {"type": f"https://httpstatuses.io/{status}", "title": title, "status": status,
                              "detail": detail, "instance": None})


def _gateway(status: int, message: str, headers: Mapping[str, str] | None = None) -> _ApiError:
    # UNCONFIRMED (billing-apis.md §5): API Gateway's {"message": ...} for 401/403/429/503.
    return _ApiError(status, {"message": message}, headers)


def _link(base: str, path: str, record_id: str | None, relation: str | None = None) -> dict[str, Any]:
    return {"id": record_id, "href": f"{base}{path}" if record_id else None, "relation": relation, "method": "GET"}


def _empty_link() -> dict[str, Any]:
    return {"id": None, "href": None, "relation": None, "method": None}


# ---------------------------------------------------------------------------------------------------------------
# State


@dataclass
class Faults(billing_common.Faults):
    """The faults every billing fake has, and Smokeball's own: how long an accepted fee stays invisible, and the
    share that fails after a 202."""

    processing_delay_seconds: float = 0.0
    fail_after_accept_fraction: float = 0.0


@dataclass
class _Pending:
    fee: dict[str, Any]
    due_at: float
    fails: bool
    request_id: str


@dataclass
class _Firm:
    key: str
    account_id: str
    staff: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    matters: dict[str, dict[str, Any]] = field(default_factory=dict)
    fees: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[_Pending] = field(default_factory=list)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    notifications: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Grant:
    firm: str
    staff_id: str
    expires_at: float


class FakeSmokeballState(FakeBillingState[Faults]):
    """Every firm's data, grants, rate buckets, faults and statistics, guarded by one lock."""

    STATS = ("requests", "rate_limited", "unauthorized", "forbidden", "server_errors_injected",
             "dropped_after_commit")

    def __init__(
        self, *, clock: Callable[[], float] = time.time, api_key: str = "fake-api-key",
        client_id: str = "calltime-client", client_secret: str = "calltime-secret",
        redirect_uri: str = "https://calltime.example/oauth/smokeball", rate_per_second: float = RATE_PER_SECOND,
        burst: int = BURST,
    ) -> None:
        super().__init__(Faults(), clock)
        self.api_key, self.client_id, self.client_secret, self.redirect_uri = (
            api_key, client_id, client_secret, redirect_uri)
        self.rate_per_second, self.burst = rate_per_second, burst
        self._firms: dict[str, _Firm] = {}
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._codes: dict[str, _Grant] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        # Per firm, and kept by reset_stats: `accepted` counts these.
        self._failed_after_accept: Counter[str] = Counter()

    # -- seeding ---------------------------------------------------------------------------------------------------

    def add_firm(self, key: str) -> str:
        return self._add_firm(key, lambda: _Firm(key, str(uuid.uuid4()))).account_id

    def add_user(
        self, firm: str, *, first_name: str, last_name: str = "", rate: Decimal | str | int = "0",
        phone: tuple[str, str] | None = None, email: str | None = None, enabled: bool = True,
        former: bool = False, tokens: Iterable[str] = (),
    ) -> str:
        """A staff member (who fees are billed by); `tokens` become access tokens acting as them."""
        with self._lock:
            staff_id = str(uuid.uuid4())
            self._firm(firm).staff[staff_id] = self._stamp({
                "id": staff_id, "firstName": first_name, "lastName": last_name, "email": email,
                "rate": Decimal(str(rate)), "phone": _phone(phone), "enabled": enabled, "former": former,
                "userId": str(uuid.uuid4()),
            })
            for token in tokens:
                self._access[token] = _Grant(firm, staff_id, math.inf)
            return staff_id

    def add_contact(
        self, firm: str, *, first_name: str | None = None, last_name: str = "", company: str | None = None,
        phone: tuple[str, str] | None = None, cell: tuple[str, str] | None = None,
        phone2: tuple[str, str, str] | None = None, deleted: bool = False,
    ) -> str:
        """A person (first/last name, phone/cell/phone2 as (areaCode, number[, extension])) or a company."""
        with self._lock:
            contact_id = str(uuid.uuid4())
            record: dict[str, Any] = {"id": contact_id, "isDeleted": deleted}
            if company is not None:
                record["company"] = {"name": company, "phone": _phone(phone)}
            else:
                record["person"] = {"firstName": first_name, "lastName": last_name, "phone": _phone(phone),
                                    "cell": _phone(cell), "phone2": _phone(phone2)}
            self._firm(firm).contacts[contact_id] = self._stamp(record)
            return contact_id

    def update_contact(self, firm: str, contact_id: str, **changes: Any) -> None:
        """Edit a person's fields (firstName, lastName, phone, cell) or `deleted`; bumps lastUpdated."""
        with self._lock:
            record = self._firm(firm).contacts[contact_id]
            if "deleted" in changes:
                record["isDeleted"] = changes.pop("deleted")
            holder = record.get("person") or record.get("company")
            for name, value in changes.items():
                holder[name] = _phone(value) if name in ("phone", "cell", "phone2") else value
            self._stamp(record)

    def add_matter(self, firm: str, *, number: str, title: str = "", description: str = "", status: str = "Open",
                   client_ids: Iterable[str] = ()) -> str:
        with self._lock:
            the_firm = self._firm(firm)
            clients = list(client_ids)
            unknown = [c for c in clients if c not in the_firm.contacts]
            if unknown or status not in MATTER_STATUSES:
                raise ValueError(f"bad matter: unknown clients {unknown} or status {status!r}")
            matter_id = str(uuid.uuid4())
            the_firm.matters[matter_id] = self._stamp({
                "id": matter_id, "number": number, "title": title, "description": description, "status": status,
                "clients": clients, "openedDate": _iso(self.clock()),
            })
            return matter_id

    def update_matter(self, firm: str, matter_id: str, **changes: Any) -> None:
        with self._lock:
            record = self._firm(firm).matters[matter_id]
            if changes.get("status", "Open") not in MATTER_STATUSES:
                raise ValueError(f"bad status {changes['status']!r}")
            record.update(changes)
            self._stamp(record)

    def issue_code(self, firm: str, staff_id: str) -> str:
        with self._lock:
            code = secrets.token_urlsafe(12)
            self._codes[code] = _Grant(firm, staff_id, self.clock() + CODE_LIFETIME)
            return code

    def revoke_grant(self, firm: str) -> None:
        """Access revoked: tokens stop working and, as documented since 30 May 2025, subscriptions are deleted."""
        with self._lock:
            for table in (self._access, self._refresh, self._codes):
                for key in [k for k, g in table.items() if g.firm == firm]:
                    del table[key]
            self._firm(firm).subscriptions.clear()

    # -- inspection ------------------------------------------------------------------------------------------------

    def entries(self, firm: str) -> list[dict[str, Any]]:
        """Fees Smokeball holds (processed), duration in minutes and rate in dollars."""
        with self._lock:
            self._process_due(self._firm(firm))
            return [dict(fee) for fee in self._firm(firm).fees.values()]

    def accepted(self, firm: str) -> int:
        """How many fee POSTs were accepted (202), processed or not."""
        with self._lock:
            the_firm = self._firm(firm)
            return len(the_firm.fees) + len(the_firm.pending) + self._failed_after_accept[firm]

    def notifications(self, firm: str) -> list[dict[str, Any]]:
        """Webhook deliveries that would have been sent: {"url", "headers", "body"}."""
        with self._lock:
            self._process_due(self._firm(firm))
            return [dict(n) for n in self._firm(firm).notifications]

    # -- OAuth -----------------------------------------------------------------------------------------------------

    def exchange(self, authorization: str | None, form: Mapping[str, str]) -> dict[str, Any]:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if authorization != f"Basic {expected}":
            raise _ApiError(401, {"error": "invalid_client"})
        with self._lock:
            now = self.clock()
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                grant = self._codes.pop(form.get("code", ""), None)  # single use
                if grant is None or grant.expires_at <= now or form.get("redirect_uri") != self.redirect_uri:
                    raise _ApiError(400, {"error": "invalid_grant"})
                refresh_token = secrets.token_urlsafe(24)
                self._refresh[refresh_token] = _Grant(grant.firm, grant.staff_id, now + REFRESH_LIFETIME)
                answer = {"refresh_token": refresh_token}
            elif grant_type == "refresh_token":
                grant = self._refresh.get(form.get("refresh_token", ""))
                if grant is not None and grant.expires_at <= now:
                    self._firm(grant.firm).subscriptions.clear()  # deleted when the refresh token expires
                    grant = None
                if grant is None:
                    raise _ApiError(400, {"error": "invalid_grant"})
                answer = {}  # "The refresh answer returns only access_token"
            else:
                raise _ApiError(400, {"error": "unsupported_grant_type"})
            access_token = secrets.token_urlsafe(24)
            self._access[access_token] = _Grant(grant.firm, grant.staff_id, now + ACCESS_LIFETIME)
            return answer | {"access_token": access_token, "token_type": "Bearer", "expires_in": ACCESS_LIFETIME}

    # -- admission -------------------------------------------------------------------------------------------------

    def admit(self, route: str, api_key: str | None, authorization: str | None) -> _Grant:
        with self._lock:
            self._count_request(route)
            if api_key != self.api_key:
                self._stats["forbidden"] += 1
                raise _gateway(403, "Forbidden")
            match = _BEARER.fullmatch(authorization or "")
            grant = self._access.get(match.group(1)) if match else None
            if grant is None or grant.expires_at <= self.clock():
                self._stats["unauthorized"] += 1
                raise _gateway(401, "Unauthorized")
            if self._take_burst_429():
                raise _gateway(429, "Too Many Requests", {"Retry-After": "1"})
            self._take_token(match.group(1))
            if self._take_injected_5xx():
                raise _gateway(503, "Service Unavailable")
            self._process_due(self._firm(grant.firm))
            return grant

    def _take_token(self, token: str) -> None:
        now = self.clock()
        level, last = self._buckets.get(token, (float(self.burst), now))
        level = min(float(self.burst), level + (now - last) * self.rate_per_second)
        if level < 1:
            self._stats["rate_limited"] += 1
            wait = math.ceil((1 - level) / self.rate_per_second)
            self._buckets[token] = (level, now)
            raise _gateway(429, "Too Many Requests", {"Retry-After": str(max(1, wait))})
        self._buckets[token] = (level - 1, now)

    # -- resources -------------------------------------------------------------------------------------------------

    def staff_page(self, grant: _Grant, query: _Query, base: str) -> dict[str, Any]:
        query.only("offset", "limit", "fields", "search")
        with_rate = "rate" in {f.strip().lower() for f in (query.one("fields") or "").split(",")}
        with self._lock:
            rows = [_render_staff(s, base, with_rate) for s in self._firm(grant.firm).staff.values()]
        return _page(rows, query, base, "/staff")

    def contacts_page(self, grant: _Grant, query: _Query, base: str) -> dict[str, Any]:
        query.only("offset", "limit", "updatedsince", "excludedeletedcontacts", "type", "sort", "search")
        since = query.ticks("updatedsince")
        exclude_deleted = (query.one("excludedeletedcontacts") or "").lower() == "true"
        with self._lock:
            rows = [_render_contact(c, base) for c in self._firm(grant.firm).contacts.values()
                    if (since is None or c["_ticks"] >= since) and not (exclude_deleted and c["isDeleted"])]
        return _page(rows, query, base, "/contacts")

    def matters_page(self, grant: _Grant, query: _Query, base: str) -> dict[str, Any]:
        query.only("offset", "limit", "status", "updatedsince", "lastupdated", "contactid", "islead", "search",
                   "sort", "fields", "mattertypeid")
        statuses = query.all("status")
        if any(s not in MATTER_STATUSES for s in statuses):
            raise _problem(400, "Bad Request", f"Status must be one of {', '.join(MATTER_STATUSES)}")
        since = query.ticks("updatedsince")
        last_updated = query.one("lastupdated")
        if since is not None and last_updated is not None:
            raise _problem(400, "Bad Request", "UpdatedSince cannot be used in conjunction with LastUpdated")
        if last_updated is not None:
            since = _ticks(_parse_instant(last_updated))
        contact = query.one("contactid")
        with self._lock:
            rows = [_render_matter(m, base) for m in self._firm(grant.firm).matters.values()
                    if (not statuses or m["status"] in statuses) and (since is None or m["_ticks"] >= since)
                    and (contact is None or contact in m["clients"])]
        return _page(rows, query, base, "/matters")

    def matter(self, grant: _Grant, matter_id: str, base: str) -> dict[str, Any]:
        with self._lock:
            return _render_matter(self._matter(grant, matter_id), base)

    def fees_page(self, grant: _Grant, matter_id: str, query: _Query, base: str) -> dict[str, Any]:
        query.only("offset", "limit", "updatedsince")
        since = query.ticks("updatedsince")
        with self._lock:
            self._matter(grant, matter_id)
            rows = [_render_fee(f, base) for f in self._firm(grant.firm).fees.values()
                    if f["matterId"] == matter_id and (since is None or f["_ticks"] >= since)]
        return _page(rows, query, base, f"/matters/{matter_id}/fees")

    def fee(self, grant: _Grant, matter_id: str, fee_id: str, base: str) -> dict[str, Any]:
        with self._lock:
            self._matter(grant, matter_id)
            fee = self._firm(grant.firm).fees.get(fee_id)
            if fee is None or fee["matterId"] != matter_id:
                raise _problem(404, "Not Found", f"Fee {fee_id} does not exist")
            return _render_fee(fee, base)

    def accept_fee(self, grant: _Grant, matter_id: str, body: Any, request_id: str, base: str) -> dict[str, Any]:
        """Validate what can be validated now; queue the rest as Smokeball does (202 + Link)."""
        with self._lock:
            firm = self._firm(grant.firm)
            matter = self._matter(grant, matter_id)
            fee = _validate_fee(body, firm, grant)
            if matter["status"] in CLOSED_STATUSES:
                raise _problem(400, "Bad Request", f"Matter {matter_id} is {matter['status']}; fees cannot be added")
            now = self.clock()
            fee_id = str(uuid.uuid4())
            fee.update(id=fee_id, matterId=matter_id, createdByUserId=firm.staff[grant.staff_id]["userId"],
                       createdDate=_iso(now), _ticks=_ticks(now))
            fails = self._chance(self.faults.fail_after_accept_fraction)
            firm.pending.append(_Pending(fee, now + self.faults.processing_delay_seconds, fails, request_id))
            self._process_due(firm)
            return _link(base, f"/matters/{matter_id}/fees/{fee_id}", fee_id, "Fee")

    def subscribe(self, grant: _Grant, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("eventNotificationUrl"), str):
            raise _problem(400, "Bad Request", "name, eventTypes and eventNotificationUrl are required")
        types = body.get("eventTypes")
        if not isinstance(types, list) or not types or not set(types) <= set(EVENT_TYPES):
            raise _problem(400, "Bad Request", f"eventTypes must be a non-empty subset of {', '.join(EVENT_TYPES)}")
        now = datetime.fromtimestamp(self.clock(), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
        subscription = {
            "id": str(uuid.uuid4()), "key": body.get("key") or secrets.token_hex(8), "name": body.get("name"),
            "eventTypes": list(types), "eventNotificationUrl": body["eventNotificationUrl"],
            "createdDateUtc": now, "updatedDateUtc": now,
        }
        with self._lock:
            self._firm(grant.firm).subscriptions[subscription["id"]] = subscription
        return dict(subscription)

    def subscriptions(self, grant: _Grant) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(s) for s in self._firm(grant.firm).subscriptions.values()]

    # -- asynchronous processing -----------------------------------------------------------------------------------

    def _process_due(self, firm: _Firm) -> None:
        now = self.clock()
        due = [p for p in firm.pending if p.due_at <= now]
        firm.pending = [p for p in firm.pending if p.due_at > now]
        for item in due:
            fee = item.fee
            if item.fails:
                self._failed_after_accept[firm.key] += 1
                self._notify(firm, "error", {
                    "message": f"Fee could not be created on matter {fee['matterId']}.",
                    "resourceName": "fee", "resourceId": fee["id"],
                }, item.request_id)
            else:
                firm.fees[fee["id"]] = fee
                self._notify(firm, "fee.created", _render_fee(fee, ""), item.request_id)

    def _notify(self, firm: _Firm, event: str, payload: Mapping[str, Any], request_id: str) -> None:
        ticks = _ticks(self.clock())
        for subscription in firm.subscriptions.values():
            if event not in subscription["eventTypes"]:
                continue
            message = f"{ticks}|{request_id}|{self.client_id}".encode()
            signature = hmac.new(subscription["key"].encode(), message, hashlib.sha256).hexdigest()
            firm.notifications.append({
                "url": subscription["eventNotificationUrl"],
                "headers": {"Timestamp": str(ticks), "RequestId": request_id, "Signature": signature},
                "body": {"accountId": firm.account_id, "subscriptionId": subscription["id"], "type": event,
                         "source": "API", "payload": dict(payload), "timestamp": ticks},
            })

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _matter(self, grant: _Grant, matter_id: str) -> dict[str, Any]:
        matter = self._firm(grant.firm).matters.get(matter_id)
        if matter is None:
            raise _problem(404, "Not Found", f"Matter {matter_id} does not exist")
        return matter

    def _stamp(self, record: dict[str, Any]) -> dict[str, Any]:
        record["_ticks"] = _ticks(self.clock())
        record["versionId"] = str(uuid.uuid4())
        return record


def _phone(parts: tuple[str, ...] | None) -> dict[str, str] | None:
    if parts is None:
        return None
    keys = ("areaCode", "number", "extension")
    return dict(zip(keys, parts, strict=False))


def _parse_instant(raw: str) -> float:
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _problem(400, "Bad Request", "LastUpdated must be an ISO-8601 date-time") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _validate_fee(body: Any, firm: _Firm, grant: _Grant) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _problem(400, "Bad Request", "The body must be a FeeDto object")
    unknown = set(body) - _FEE_DTO_FIELDS
    if unknown:
        raise _problem(400, "Bad Request", f"Unknown field(s): {', '.join(sorted(unknown))}")
    try:
        fee_date = date.fromisoformat(body["feeDate"])
    except (KeyError, TypeError, ValueError):
        raise _problem(400, "Bad Request", "feeDate is required (yyyy-mm-dd)") from None
    if not isinstance(body.get("subject"), str) or not body["subject"].strip():
        raise _problem(400, "Bad Request", "subject is required")
    fee_type = body.get("feeType", 1)
    if fee_type not in (0, 1) or isinstance(fee_type, bool):
        raise _problem(400, "Bad Request", "feeType must be 0 (Fixed) or 1 (Time)")
    duration = _whole(body, "duration")
    if fee_type == 1 and not duration:
        raise _problem(400, "Bad Request", "duration (minutes) must be more than 0 for a time fee")
    rate = body.get("rate", None)
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, Decimal)) or rate < 0):
        raise _problem(400, "Bad Request", "rate must be a non-negative number of dollars")
    staff_id = body.get("staffId") or grant.staff_id  # "the API will attempt to match your User Id"
    if staff_id not in firm.staff:
        raise _problem(400, "Bad Request", f"Staff {staff_id} does not exist")
    rate = Decimal(rate) if rate is not None else firm.staff[staff_id]["rate"]
    amount = rate if fee_type == 0 else (rate * duration / 60).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return {
        "staffId": staff_id, "activityCode": body.get("activityCode"), "subject": body["subject"],
        "description": body.get("description"), "feeDate": fee_date.isoformat(), "feeType": fee_type,
        "duration": duration, "durationWorked": _whole(body, "durationWorked"), "rate": rate, "amount": amount,
        "isBillable": bool(body.get("isBillable", True)), "isWrittenOff": bool(body.get("isWrittenOff", False)),
        "finalized": bool(body.get("finalized", False)),
    }


def _whole(body: Mapping[str, Any], name: str) -> int:
    raw = body.get(name, 0)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        # int64 minutes: 12.5 or "12" is refused rather than rounded.
        raise _problem(400, "Bad Request", f"{name} must be a whole number of minutes")
    return raw


# ---------------------------------------------------------------------------------------------------------------
# Rendering (field sets follow the swagger examples in samples/billing/smokeball_*)


def _render_staff(staff: Mapping[str, Any], base: str, with_rate: bool) -> dict[str, Any]:
    first, last = staff["firstName"], staff["lastName"]
    out = {
        "href": f"{base}/staff/{staff['id']}", "relation": None, "method": None, "self": _empty_link(),
        "id": staff["id"], "versionId": staff["versionId"], "title": None, "firstName": first, "middleName": "",
        "lastName": last, "initials": (first[:1] + last[:1]).upper(), "phone": staff["phone"], "cell": None,
        "email": staff["email"], "role": None, "rate": staff["rate"], "avatar": None, "former": staff["former"],
        "enabled": staff["enabled"], "userId": staff["userId"], "colorFill": None, "colorStroke": None,
        "licenceNumbers": [], "outOfOffice": {"startDate": None, "endDate": None},
    }
    if not with_rate:
        # UNCONFIRMED (billing-apis.md §5): the docs ask for the rate with Fields=rate; the fake omits it otherwise.
        del out["rate"]
    return out


def _render_contact(contact: Mapping[str, Any], base: str) -> dict[str, Any]:
    person = contact.get("person")
    return {
        "href": f"{base}/contacts/{contact['id']}", "relation": None, "method": None, "self": _empty_link(),
        "id": contact["id"], "externalSystemId": None, "versionId": contact["versionId"],
        "person": {
            "title": None, "firstName": person["firstName"], "middleName": None, "lastName": person["lastName"],
            "phone": person["phone"], "phone2": person["phone2"], "fax": None, "cell": person["cell"],
            "email": None,
        } if person else None,
        "company": dict(contact["company"]) if contact.get("company") else None,
        "trust": None, "groupOfPeople": None, "isDeleted": contact["isDeleted"], "lastUpdated": contact["_ticks"],
        "tags": [],
    }


def _render_matter(matter: Mapping[str, Any], base: str) -> dict[str, Any]:
    return {
        "href": f"{base}/matters/{matter['id']}", "relation": None, "method": None, "self": _empty_link(),
        "id": matter["id"], "externalSystemId": None, "versionId": str(matter["_ticks"]), "number": matter["number"],
        "title": matter["title"], "matterType": _empty_link(),
        "clients": [_link(base, f"/contacts/{c}", c, "Contacts") for c in matter["clients"]], "otherSides": [],
        "description": matter["description"], "status": matter["status"], "personResponsible": _empty_link(),
        "personAssisting": _empty_link(), "personAssistingStaffs": [], "originatingStaff": _empty_link(),
        "originatingStaffs": [], "splitOriginatingStaffSettings": {
            "isEnabled": False, "splitMatterStaffs": [], "splitMethod": None, "remainderStaffId": None},
        "supervisor": _empty_link(), "clientCode": None, "openedDate": matter["openedDate"],
        "closedDate": None, "leadOpenedDate": None, "leadClosedDate": None, "leadClosedReason": None,
        "isLead": False, "branch": _empty_link(), "branchProviderId": "Smokeball", "referralType": None,
        "referrer": _empty_link(), "referralAgreementFeeType": None, "referralAgreementFee": None,
        "referralAgreementFeeComment": None, "items": {}, "tags": [],
    }


def _render_fee(fee: Mapping[str, Any], base: str) -> dict[str, Any]:
    return {
        "href": f"{base}/matters/{fee['matterId']}/fees/{fee['id']}", "relation": None, "method": None,
        "self": _empty_link(), "id": fee["id"], "versionId": str(fee["_ticks"]),
        "matter": _link(base, f"/matters/{fee['matterId']}", fee["matterId"]),
        "staff": _link(base, f"/staff/{fee['staffId']}", fee["staffId"]), "matterId": fee["matterId"],
        "staffId": fee["staffId"], "createdByUserId": fee["createdByUserId"], "createdDate": fee["createdDate"],
        "lastUpdatedByUserId": fee["createdByUserId"], "invoiceId": None, "activityCode": fee["activityCode"],
        "utbmsTaskCode": None, "subject": fee["subject"], "description": fee["description"],
        "feeDate": fee["feeDate"], "feeType": fee["feeType"], "finalized": fee["finalized"],
        "isInvoicedExternally": False, "isWrittenOff": fee["isWrittenOff"], "isBillable": fee["isBillable"],
        "tax": Decimal("0"), "taxInclusive": False, "taxExempt": False, "taxOutOfScope": False,
        "duration": fee["duration"], "durationWorked": fee["durationWorked"], "rate": fee["rate"],
        "amount": fee["amount"], "amountExcTax": fee["amount"], "amountIncTax": fee["amount"],
        "billableAmountExcTax": fee["amount"] if fee["isBillable"] else Decimal("0"), "billableTax": Decimal("0"),
        "isDeleted": False, "sourceItems": [], "createdFromActivityId": None,
    }


# ---------------------------------------------------------------------------------------------------------------
# Query strings and paging


class _Query:
    """Query parameters matched without case, as ASP.NET binds them (the docs' links say limit/offset)."""

    def __init__(self, request: Request) -> None:
        self.items = [(k.lower(), v) for k, v in request.query_params.multi_items()]

    def only(self, *allowed: str) -> None:
        unknown = {k for k, _ in self.items} - set(allowed)
        if unknown:
            raise _problem(400, "Bad Request", f"Unsupported parameter(s): {', '.join(sorted(unknown))}")

    def one(self, name: str) -> str | None:
        return next((v for k, v in self.items if k == name), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]

    def ticks(self, name: str) -> int | None:
        raw = self.one(name)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise _problem(400, "Bad Request", f"{name} must be .NET ticks (an integer)") from None

    def int_param(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.one(name)
        try:
            value = default if raw is None else int(raw)
        except ValueError:
            raise _problem(400, "Bad Request", f"{name} must be an integer") from None
        if not low <= value <= high:
            raise _problem(400, "Bad Request", f"{name} must be between {low} and {high}")
        return value


def _page(rows: list[dict[str, Any]], query: _Query, base: str, path: str) -> dict[str, Any]:
    offset = query.int_param("offset", 0, 0, 2_147_483_647)
    limit = query.int_param("limit", MAX_LIMIT, 1, MAX_LIMIT)
    kept = [(k, v) for k, v in query.items if k not in ("offset", "limit")]

    def href(at: int) -> str:
        return f"{base}{path}?" + urlencode(kept + [("limit", limit), ("offset", at)])

    page: dict[str, Any] = {"href": f"{base}{path}", "offset": offset, "limit": limit, "size": len(rows),
                            "first": {"href": f"{base}{path}"}}
    if offset + limit < len(rows):
        page["next"] = {"href": href(offset + limit), "rel": "collection"}
    last = max(0, (len(rows) - 1) // limit * limit)
    page["last"] = {"href": href(last), "rel": "collection"}
    page["value"] = rows[offset:offset + limit]
    return page


# ---------------------------------------------------------------------------------------------------------------
# ASGI app


def _read_json(raw: bytes) -> Any:
    try:
        return loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _problem(400, "Bad Request", "The request body is not valid JSON") from None


def create_app(state: FakeSmokeballState) -> FastAPI:
    """The fake's FastAPI app: /oauth2/token plus the API routes calltime uses."""
    app = FastAPI(title="fake Smokeball API", docs_url=None, redoc_url=None, openapi_url=None)

    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        try:
            return _json(200, state.exchange(request.headers.get("authorization"), form))
        except _ApiError as error:
            return error.response()

    def route(method: str, path: str, handler: Callable[..., Any]) -> None:
        async def endpoint(request: Request) -> Response:
            request_id = request.headers.get("requestid", "")
            try:
                grant = state.admit(f"{method} {path}", request.headers.get("x-api-key"),
                                    request.headers.get("authorization"))
                base = str(request.base_url).rstrip("/")
                response = await handler(grant, request, base, request_id, **request.path_params)
            except _ApiError as error:
                response = error.response()
            if request_id:
                response.headers["RequestId"] = request_id  # echoed on every answer (Making Requests §4)
            return await state._finish(response)

        app.add_api_route(path, endpoint, methods=[method])

    async def staff(grant, request, base, rid):
        return _json(200, state.staff_page(grant, _Query(request), base))

    async def contacts(grant, request, base, rid):
        return _json(200, state.contacts_page(grant, _Query(request), base))

    async def matters(grant, request, base, rid):
        return _json(200, state.matters_page(grant, _Query(request), base))

    async def matter(grant, request, base, rid, matterId):
        return _json(200, state.matter(grant, matterId, base))

    async def fees(grant, request, base, rid, matterId):
        return _json(200, state.fees_page(grant, matterId, _Query(request), base))

    async def fee(grant, request, base, rid, matterId, feeId):
        return _json(200, state.fee(grant, matterId, feeId, base))

    async def create_fee(grant, request, base, rid, matterId):
        link = state.accept_fee(grant, matterId, _read_json(await request.body()), rid, base)
        if state._take_drop():
            return DroppedResponse(202, "fake Smokeball dropped the connection after accepting")
        return _json(202, link)

    async def subscribe(grant, request, base, rid):
        return _json(200, state.subscribe(grant, _read_json(await request.body())))

    async def subscriptions(grant, request, base, rid):
        return _json(200, state.subscriptions(grant))

    async def event_types(grant, request, base, rid):
        return _json(200, list(EVENT_TYPES))

    app.add_api_route("/oauth2/token", token, methods=["POST"])
    route("GET", "/staff", staff)
    route("GET", "/contacts", contacts)
    route("GET", "/matters", matters)
    route("GET", "/matters/{matterId}", matter)
    route("GET", "/matters/{matterId}/fees", fees)
    route("POST", "/matters/{matterId}/fees", create_fee)
    route("GET", "/matters/{matterId}/fees/{feeId}", fee)
    route("POST", "/webhooks", subscribe)
    route("GET", "/webhooks", subscriptions)
    route("GET", "/webhooks/types", event_types)
    return app


class FakeSmokeballServer(FakeBillingServer):
    """The fake Smokeball over HTTP."""

    app_factory = staticmethod(create_app)
    server_name = "fake-smokeball"
    token_path = "/oauth2/token"

