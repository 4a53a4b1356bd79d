"""A fake PracticePanther API v2 (several firms, in memory) served over real HTTP for tests and local runs.

Follows billing-apis.md §3 (S-PP2 swagger-codegen client): snake_case JSON under `/api/v2`, GUID ids, OData
`$top/$skip/$orderby` paging with bare JSON arrays, `updated_since` on accounts, contacts, matters and time entries,
time entries in decimal hours with a required `billed_by_user_ref`, and OAuth 2.0 at `/oauth/token`
(form-encoded, authorization_code and refresh_token grants, rotating refresh tokens). Everything the sources leave
open is a named UNCONFIRMED constant or function below.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import Response

from calltime.fakes.rate_limits import SlidingWindow, retry_after
from calltime.fakes.billing_common import (
    ApiError,
    DroppedResponse,
    FakeBillingServer,
    FakeBillingState,
    Faults,
    JsonStyle,
    add_api_routes,
    OAuthGrants,
    OAuthRefused,
    RotatingOAuth,
    loads,
)

ACCESS_TOKEN_SECONDS = 86_400
REFRESH_TOKEN_SECONDS = 14 * 86_400
"""UNCONFIRMED (billing-apis.md §3): a third-party README says "24-hour access token" and refresh tokens valid "at
least 14 days" that "rotate on every refresh"."""

RATE_LIMIT = 120
RATE_WINDOW_SECONDS = 60.0
"""UNCONFIRMED (billing-apis.md §3): PracticePanther's rate limit is unpublished; this allowance is assumed."""

MAX_PAGE_SIZE = 200
"""UNCONFIRMED (billing-apis.md §3): the largest `$top` accepted."""

CREATED_STATUS = 200
"""UNCONFIRMED (billing-apis.md §3): the swagger lists the TimeEntry as the POST answer without a status code;
ASP.NET Web API answers 200 unless told otherwise."""

CLOSED_MATTER_REFUSES_TIME = True
"""UNCONFIRMED: whether PracticePanther refuses time on a closed matter. The fake refuses (400)."""


def expired_token_answer(style: str) -> tuple[int, dict[str, Any]]:
    """UNCONFIRMED (billing-apis.md §3): how an expired access token is refused. "401" answers 401 (ASP.NET's
    message); "invalid_grant" answers 400 {"error":"invalid_grant"} as a third-party client reports."""
    if style == "invalid_grant":
        return 400, {"error": "invalid_grant"}
    return 401, {"Message": "Authorization has been denied for this request."}


def validation_error(field_name: str, message: str) -> dict[str, Any]:
    """UNCONFIRMED (billing-apis.md §3): the error body is undocumented; ASP.NET Web API's model-state shape."""
    return {"Message": "The request is invalid.", "ModelState": {f"value.{field_name}": [message]}}


def render_datetime(moment: datetime) -> str:
    """UNCONFIRMED (practicepanther_v2_matter.src.txt): timestamps are shown without an offset, in UTC here."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------------
# JSON

_JSON = JsonStyle(moment=render_datetime, day=lambda day: f"{day.isoformat()}T00:00:00")
_json_response = _JSON.response


class _ApiError(ApiError):
    style = _JSON


def _invalid(field_name: str, message: str) -> _ApiError:
    return _ApiError(400, validation_error(field_name, message))


# ---------------------------------------------------------------------------------------------------------------
# State


@dataclass
class _Firm:
    key: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    matters: dict[str, dict[str, Any]] = field(default_factory=dict)
    time_entries: dict[str, dict[str, Any]] = field(default_factory=dict)


class FakePracticePantherState(RotatingOAuth, FakeBillingState[Faults]):
    """Every firm's data, OAuth grants, rate windows, faults and statistics, guarded by one lock."""

    def __init__(self, *, rate_limit: int = RATE_LIMIT, rate_window_seconds: float = RATE_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.time, expired_token_style: str = "401") -> None:
        super().__init__(Faults(), clock)
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.expired_token_style = expired_token_style
        self._firms: dict[str, _Firm] = {}
        self._oauth = OAuthGrants(access_seconds=ACCESS_TOKEN_SECONDS, refresh_seconds=REFRESH_TOKEN_SECONDS)
        self._window = SlidingWindow()
        self._numbers = itertools.count(1)

    # -- seeding --------------------------------------------------------------------------------------------------

    def add_firm(self, key: str) -> None:
        self._add_firm(key, lambda: _Firm(key))

    def add_user(self, firm: str, *, first_name: str, last_name: str, email: str | None = None,
                 is_active: bool = True, id: str | None = None) -> str:
        with self._lock:
            user_id = id or str(uuid.uuid4())
            self._firm(firm).users[user_id] = self._stamp({
                "id": user_id, "is_active": is_active, "display_name": f"{first_name} {last_name}",
                "first_name": first_name, "last_name": last_name, "middle_name": None,
                "email": email or f"{first_name.lower()}@firm.example",
            })
            return user_id

    def add_account(self, firm: str, *, display_name: str, company_name: str | None = None,
                    id: str | None = None) -> str:
        with self._lock:
            account_id = id or str(uuid.uuid4())
            self._firm(firm).accounts[account_id] = self._stamp({
                "id": account_id, "display_name": display_name, "number": next(self._numbers),
                "company_name": company_name, "tags": [], "assigned_to_users": [], "notes": None,
            })
            return account_id

    def add_contact(self, firm: str, *, first_name: str, last_name: str, account_id: str | None = None,
                    phone_mobile: str | None = None, phone_home: str | None = None, phone_work: str | None = None,
                    phone_fax: str | None = None, email: str | None = None, id: str | None = None) -> str:
        """A person; without `account_id` a new account is opened with this person as its primary contact."""
        with self._lock:
            the_firm = self._firm(firm)
            primary = account_id is None
            if account_id is None:
                account_id = self.add_account(firm, display_name=f"{last_name}, {first_name}")
            elif account_id not in the_firm.accounts:
                raise ValueError(f"no account {account_id} in firm {firm!r}")
            contact_id = id or str(uuid.uuid4())
            the_firm.contacts[contact_id] = self._stamp({
                "id": contact_id, "_account_id": account_id, "is_primary_contact": primary,
                "display_name": f"{first_name} {last_name}", "first_name": first_name, "last_name": last_name,
                "phone_mobile": phone_mobile, "phone_home": phone_home, "phone_fax": phone_fax,
                "phone_work": phone_work, "email": email, "notes": None,
            })
            return contact_id

    def update_contact(self, firm: str, contact_id: str, **changes: Any) -> None:
        """Edit a person. Its account's updated_at is deliberately left alone: whether PracticePanther bumps it is
        UNCONFIRMED, and a client must not depend on it."""
        with self._lock:
            record = self._firm(firm).contacts[contact_id]
            record.update(changes)
            record["updated_at"] = self._now()

    def add_matter(self, firm: str, *, account_id: str, name: str, status: str = "Open",
                   assigned_user_ids: Iterable[str] = (), id: str | None = None) -> str:
        with self._lock:
            the_firm = self._firm(firm)
            if account_id not in the_firm.accounts:
                raise ValueError(f"no account {account_id} in firm {firm!r}")
            matter_id = id or str(uuid.uuid4())
            number = next(self._numbers)
            the_firm.matters[matter_id] = self._stamp({
                "id": matter_id, "_account_id": account_id, "number": number,
                "display_name": f"{number:05d} - {name}", "name": name, "notes": None,
                "open_date": self._now().replace(hour=0, minute=0, second=0), "close_date": None,
                "statute_of_limitation_date": None, "tags": [], "status": _status(status),
                "_assigned": list(assigned_user_ids), "custom_field_values": [],
            })
            return matter_id

    def update_matter(self, firm: str, matter_id: str, **changes: Any) -> None:
        with self._lock:
            record = self._firm(firm).matters[matter_id]
            if "status" in changes:
                changes["status"] = _status(changes["status"])
            record.update(changes)
            record["updated_at"] = self._now()

    # -- OAuth ----------------------------------------------------------------------------------------------------

    def _check_user(self, firm: str, user_id: str) -> None:
        if user_id not in self._firm(firm).users:
            raise ValueError(f"no user {user_id} in firm {firm!r}")

    def _token_answer(self, firm: str, access: str, refresh: str, *, from_code: bool) -> dict[str, Any]:
        return {"access_token": access, "token_type": "bearer", "expires_in": ACCESS_TOKEN_SECONDS,
                "refresh_token": refresh}

    def _refusal(self, refused: OAuthRefused) -> _ApiError:
        return _ApiError(400, {"error": refused.error})

    # -- inspection -----------------------------------------------------------------------------------------------

    def entries(self, firm: str) -> list[dict[str, Any]]:
        """Every stored time entry: hours and rate as Decimal, references as plain ids."""
        with self._lock:
            return [
                {"id": e["id"], "date": e["date"].isoformat(), "hours": e["hours"], "rate": e["rate"],
                 "description": e["description"], "private_notes": e["private_notes"],
                 "is_billable": e["is_billable"], "account_id": e["_account_id"], "matter_id": e["_matter_id"],
                 "user_id": e["_user_id"]}
                for e in self._firm(firm).time_entries.values()
            ]

    # -- admission ------------------------------------------------------------------------------------------------

    def _admit(self, route: str, authorization: str | None) -> tuple[_Firm, str]:
        with self._lock:
            self._count_request(route)
            token, grant = self._oauth.bearer(authorization)
            if grant is None:
                self._stats["unauthorized"] += 1
                raise _ApiError(401, {"Message": "Authorization has been denied for this request."})
            if grant.expires_at <= self.clock():
                self._stats["unauthorized"] += 1
                raise _ApiError(*expired_token_answer(self.expired_token_style))
            if self._take_burst_429():
                raise _ApiError(429, {"Message": "Too many requests"}, {"Retry-After": "1"})
            self._take_rate_slot(token)
            if self._take_injected_5xx():
                raise _ApiError(503, {"Message": "Service unavailable"})
            return self._firms[grant.firm], grant.user

    def _take_rate_slot(self, token: str) -> None:
        wait = self._window.take(token, self.clock(), self.rate_limit, self.rate_window_seconds)
        if wait is not None:
            self._stats["rate_limited"] += 1
            raise _ApiError(429, {"Message": "Too many requests"}, {"Retry-After": retry_after(wait)})

    def _stamp(self, record: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        record.update(created_at=now, updated_at=now)
        return record


def _status(raw: str) -> str:
    wanted = raw.capitalize()
    if wanted not in ("Open", "Pending", "Closed", "Archived"):
        raise ValueError(f"matter status {raw!r}")
    return wanted  # v1's enum casing (UNCONFIRMED for v2)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _ref(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": record["id"], "display_name": record["display_name"]}


def _render_user(firm: _Firm, record: Mapping[str, Any]) -> dict[str, Any]:
    return dict(record)


def _render_contact(firm: _Firm, record: Mapping[str, Any]) -> dict[str, Any]:
    # The v2 Contact model has no created_at/updated_at; `updated_since` still filters on the stored value.
    return {"id": record["id"], "account_ref": _ref(firm.accounts[record["_account_id"]]),
            **{k: record[k] for k in ("is_primary_contact", "display_name", "first_name", "last_name",
                                      "phone_mobile", "phone_home", "phone_fax", "phone_work", "email", "notes")}}


def _render_account(firm: _Firm, record: Mapping[str, Any]) -> dict[str, Any]:
    people = [c for c in firm.contacts.values() if c["_account_id"] == record["id"]]
    primary = next((c for c in people if c["is_primary_contact"]), None)
    return {**{k: v for k, v in record.items()},
            "primary_contact": _render_contact(firm, primary) if primary else None,
            "other_contacts": [_render_contact(firm, c) for c in people if c is not primary]}


def _render_matter(firm: _Firm, record: Mapping[str, Any]) -> dict[str, Any]:
    users = [firm.users[u] for u in record["_assigned"] if u in firm.users]
    out = {"id": record["id"], "account_ref": _ref(firm.accounts[record["_account_id"]])}
    out.update({k: record[k] for k in ("number", "display_name", "name", "notes", "open_date", "close_date",
                                       "statute_of_limitation_date", "tags", "status")})
    out["assigned_to_users"] = [{"id": u["id"], "display_name": u["display_name"], "email_address": u["email"]}
                                for u in users]
    out.update({k: record[k] for k in ("custom_field_values", "created_at", "updated_at")})
    return out


def _render_time_entry(firm: _Firm, record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"], "is_billable": record["is_billable"], "is_billed": record["is_billed"],
        "date": record["date"], "hours": record["hours"], "rate": record["rate"],
        "description": record["description"], "private_notes": record["private_notes"],
        "account_ref": _ref(firm.accounts[record["_account_id"]]),
        "matter_ref": _ref(firm.matters[record["_matter_id"]]),
        "billed_by_user_ref": _ref(firm.users[record["_user_id"]]),
        "item_ref": None, "created_at": record["created_at"], "updated_at": record["updated_at"],
    }


# ---------------------------------------------------------------------------------------------------------------
# Lists


def _since(raw: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(name, f"{name} must be a date/time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _day(raw: str, name: str) -> date:
    return _since(raw, name).date()


_FILTERS: dict[str, dict[str, Callable[[Mapping[str, Any], str], bool]]] = {
    "users": {},
    "accounts": {"updated_since": lambda r, v: r["updated_at"] >= _since(v, "updated_since")},
    "contacts": {"updated_since": lambda r, v: r["updated_at"] >= _since(v, "updated_since"),
                 "account_id": lambda r, v: r["_account_id"] == v},
    "matters": {"updated_since": lambda r, v: r["updated_at"] >= _since(v, "updated_since"),
                "account_id": lambda r, v: r["_account_id"] == v,
                "status": lambda r, v: r["status"].lower() == v.lower()},
    "time_entries": {"updated_since": lambda r, v: r["updated_at"] >= _since(v, "updated_since"),
                     "matter_id": lambda r, v: r["_matter_id"] == v,
                     "user_id": lambda r, v: r["_user_id"] == v,
                     "account_id": lambda r, v: r["_account_id"] == v,
                     "date_from": lambda r, v: r["date"] >= _day(v, "date_from"),
                     "date_to": lambda r, v: r["date"] <= _day(v, "date_to")},
}
_RENDER = {"users": _render_user, "accounts": _render_account, "contacts": _render_contact,
           "matters": _render_matter, "time_entries": _render_time_entry}


def _int_param(params: Mapping[str, str], name: str, default: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name, f"{name} must be an integer") from None
    if not 0 <= value <= high:
        raise _invalid(name, f"{name} must be between 0 and {high}")
    return value


def _list(firm: _Firm, request: Request, table: str) -> Response:
    params = request.query_params
    filters = _FILTERS[table]
    unknown = set(params) - {"$top", "$skip", "$orderby"} - set(filters)
    if unknown:
        raise _invalid(sorted(unknown)[0], "The fake does not implement this parameter")
    top = _int_param(params, "$top", MAX_PAGE_SIZE, MAX_PAGE_SIZE)
    skip = _int_param(params, "$skip", 0, 10**9)
    order = params.get("$orderby", "id asc")
    if order not in ("id asc", "id"):
        raise _invalid("$orderby", "The fake supports only $orderby=id asc")
    rows = [r for _, r in sorted(getattr(firm, table).items())
            if all(check(r, params[name]) for name, check in filters.items() if name in params)]
    return _json_response(200, [_RENDER[table](firm, r) for r in rows[skip:skip + top]])


# ---------------------------------------------------------------------------------------------------------------
# Creating a time entry

_TIME_ENTRY_FIELDS = frozenset({"id", "is_billable", "is_billed", "date", "hours", "rate", "description",
                                "private_notes", "account_ref", "matter_ref", "billed_by_user_ref", "item_ref",
                                "created_at", "updated_at"})


def _ref_id(body: Mapping[str, Any], name: str, table: Mapping[str, Any], *, required: bool) -> str | None:
    ref = body.get(name)
    if ref is None:
        if required:
            raise _invalid(name, f"{name} is required")
        return None
    if not isinstance(ref, dict) or not isinstance(ref.get("id"), str) or ref["id"] not in table:
        raise _invalid(name, f"{name} does not reference an existing record")
    return ref["id"]


def _decimal(body: Mapping[str, Any], name: str, *, required: bool) -> Decimal | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _invalid(name, f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or not Decimal(value).is_finite():
        raise _invalid(name, f"{name} must be a number")
    return Decimal(value)


def _create_time_entry(state: FakePracticePantherState, firm: _Firm, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _ApiError(400, {"Message": "The request is invalid."})
    unknown = set(body) - _TIME_ENTRY_FIELDS
    if unknown:
        raise _invalid(sorted(unknown)[0], "not a TimeEntry field")
    try:
        entry_date = datetime.fromisoformat(str(body.get("date"))).date()
    except ValueError:
        raise _invalid("date", "date is required") from None
    hours = _decimal(body, "hours", required=True)
    if hours <= 0:
        raise _invalid("hours", "hours must be greater than 0")
    rate = _decimal(body, "rate", required=False)
    if rate is not None and rate < 0:
        raise _invalid("rate", "rate must not be negative")
    with state._lock:
        matter_id = _ref_id(body, "matter_ref", firm.matters, required=True)
        user_id = _ref_id(body, "billed_by_user_ref", firm.users, required=True)
        account_id = _ref_id(body, "account_ref", firm.accounts, required=False)
        matter = firm.matters[matter_id]
        if account_id is not None and account_id != matter["_account_id"]:
            raise _invalid("account_ref", "the matter does not belong to this account")
        if CLOSED_MATTER_REFUSES_TIME and matter["status"] in ("Closed", "Archived"):
            raise _invalid("matter_ref", "time cannot be added to a closed matter")
        record = state._stamp({
            "id": str(uuid.uuid4()), "is_billable": bool(body.get("is_billable", True)),
            "is_billed": bool(body.get("is_billed", False)), "date": entry_date, "hours": hours,
            # "If you leave this field blank, PracticePanther will automatically add the default hourly rate": the v2
            # user has no rate, so the fake's default is 0.
            "rate": rate if rate is not None else Decimal(0),
            "description": body.get("description"), "private_notes": body.get("private_notes"),
            "_account_id": matter["_account_id"], "_matter_id": matter_id, "_user_id": user_id,
        })
        firm.time_entries[record["id"]] = record
        return record


# ---------------------------------------------------------------------------------------------------------------
# ASGI app


def create_app(state: FakePracticePantherState) -> FastAPI:
    """PracticePanther routes under /api/v2, OAuth at /oauth/token."""
    app = FastAPI(title="fake PracticePanther API v2", docs_url=None, redoc_url=None, openapi_url=None)

    def lister(table: str) -> Callable[..., Any]:
        async def handler(firm: _Firm, user_id: str, request: Request) -> Response:
            with state._lock:
                return _list(firm, request, table)
        return handler

    def getter(table: str) -> Callable[..., Any]:
        async def handler(firm: _Firm, user_id: str, request: Request) -> Response:
            with state._lock:
                record = getattr(firm, table).get(request.path_params["id"])
                if record is None:
                    raise _ApiError(404, {"Message": "Not found"})
                return _json_response(200, _RENDER[table](firm, record))
        return handler

    async def me(firm: _Firm, user_id: str, request: Request) -> Response:
        with state._lock:
            return _json_response(200, _render_user(firm, firm.users[user_id]))

    async def create_time_entry(firm: _Firm, user_id: str, request: Request) -> Response:
        try:
            body = loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise _ApiError(400, {"Message": "The request is invalid."}) from None
        record = _create_time_entry(state, firm, body)
        if state._take_drop():
            return DroppedResponse(CREATED_STATUS, "fake PracticePanther dropped the connection after committing")
        with state._lock:
            return _json_response(CREATED_STATUS, _render_time_entry(firm, record))

    def admit(route: str, request: Request) -> tuple[_Firm, str]:
        return state._admit(route, request.headers.get("authorization"))

    add_api_routes(app, state, admit, [
        ("GET", "/api/v2/users/me", me),
        ("GET", "/api/v2/users", lister("users")),
        ("GET", "/api/v2/accounts", lister("accounts")),
        ("GET", "/api/v2/accounts/{id}", getter("accounts")),
        ("GET", "/api/v2/contacts", lister("contacts")),
        ("GET", "/api/v2/contacts/{id}", getter("contacts")),
        ("GET", "/api/v2/matters", lister("matters")),
        ("GET", "/api/v2/matters/{id}", getter("matters")),
        ("GET", "/api/v2/timeentries", lister("time_entries")),
        ("GET", "/api/v2/timeentries/{id}", getter("time_entries")),
        ("POST", "/api/v2/timeentries", create_time_entry),
    ])

    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        try:
            return _json_response(200, state._exchange(form), {"Cache-Control": "no-store"})
        except _ApiError as error:
            return error.response()

    app.add_api_route("/oauth/token", token, methods=["POST"])
    return app


class FakePracticePantherServer(FakeBillingServer):
    """The fake PracticePanther over HTTP."""

    app_factory = staticmethod(create_app)
    server_name = "fake-practicepanther"
    token_path = "/oauth/token"
