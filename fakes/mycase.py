"""A fake MyCase Open API (several firms, in memory) served over real HTTP for tests and local runs.

Follows billing-apis.md §2 (S-MYC): `/v1/...` JSON without a wrapper, `Link: rel="next"` cursor paging whose
page tokens expire after 3 days, `Item-Count`, inclusive `filter[updated_after]`, time entries in decimal hours with
`rate` answered as a string, errors as `{"errors": [{"description", "source": {...}}]}`, an OAuth token endpoint
(`POST /tokens`, served here on the same host as the API) issuing 24-hour access tokens and 2-week rotating
refresh tokens, and 25 requests per second per token.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import time
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
    Grant,
    JsonStyle,
    add_api_routes,
    OAuthGrants,
    OAuthRefused,
    RotatingOAuth,
    bind,
    loads,
)

ACCESS_TOKEN_SECONDS = 86_400  # "Access tokens are valid for 24 hours by default"
REFRESH_TOKEN_SECONDS = 14 * 86_400  # "Refresh tokens are valid for 2 weeks"
RATE_LIMIT = 25  # "25 requests per second per client"
RATE_WINDOW_SECONDS = 1.0
PAGE_TOKEN_SECONDS = 3 * 86_400  # the next-page link "will expire after 3 days"
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 1000
CASE_STATUSES = ("open", "closed")
_TOO_MANY = "The partner has made too many requests of the endpoint."

TOKEN_REQUEST_FORMATS = ("application/json", "application/x-www-form-urlencoded")
"""UNCONFIRMED (billing-apis.md §2): MyCase documents a JSON body for `POST /tokens`; whether it also accepts the
form encoding that OAuth 2.0 clients (and `OAuthSession`) send is not documented. The fake accepts both."""

CLOSED_CASE_REFUSES_TIME = True
"""UNCONFIRMED (billing-apis.md §2): whether MyCase refuses a time entry on a closed case. The fake refuses (422)."""


def render_rate(value: Decimal) -> str:
    """UNCONFIRMED (mycase_time_entry_response.src.txt): `rate` is typed string in the response; its exact
    formatting is not documented. The sample shows "350.0"."""
    text = format(value, "f")
    return text if "." in text else text + ".0"


def oauth_error(error: str, description: str) -> dict[str, str]:
    """UNCONFIRMED (billing-apis.md §2): the token endpoint's error body is not documented; RFC 6749 §5.2 shape."""
    return {"error": error, "error_description": description}


# ---------------------------------------------------------------------------------------------------------------
# JSON: Decimal in, Decimal out.

_JSON = JsonStyle(moment=lambda m: m.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), day=date.isoformat)
_json_response = _JSON.response
_loads = loads


class _ApiError(ApiError):
    """An answer in MyCase's documented error shape (or the given body)."""

    style = _JSON

    def __init__(self, status: int, description: str, *, pointer: str | None = None,
                 parameter: str | None = None, headers: Mapping[str, str] | None = None,
                 body: Any = None) -> None:
        source = {"pointer": pointer} if pointer else {"parameter": parameter} if parameter else {}
        body = body if body is not None else {"errors": [{"description": description, "source": source}]}
        super().__init__(status, body, headers, message=description)


def _unprocessable(description: str, pointer: str) -> _ApiError:
    return _ApiError(422, description, pointer=pointer)


# ---------------------------------------------------------------------------------------------------------------
# State


@dataclass
class _Firm:
    key: str
    uuid: str
    name: str
    staff: dict[int, dict[str, Any]] = field(default_factory=dict)
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)
    companies: dict[int, dict[str, Any]] = field(default_factory=dict)
    cases: dict[int, dict[str, Any]] = field(default_factory=dict)
    time_entries: dict[int, dict[str, Any]] = field(default_factory=dict)


class FakeMyCaseState(RotatingOAuth, FakeBillingState[Faults]):
    """Every firm's data, OAuth grants, rate windows, faults and statistics, guarded by one lock."""

    def __init__(self, *, rate_limit: int = RATE_LIMIT, rate_window_seconds: float = RATE_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(Faults(), clock)
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self._firms: dict[str, _Firm] = {}
        self._oauth = OAuthGrants(access_seconds=ACCESS_TOKEN_SECONDS, refresh_seconds=REFRESH_TOKEN_SECONDS)
        self._window = SlidingWindow()
        self._ids = itertools.count(1001)
        self._used_ids: set[int] = set()

    # -- seeding --------------------------------------------------------------------------------------------------

    def add_firm(self, key: str, name: str) -> str:
        return self._add_firm(key, lambda: _Firm(key=key, uuid=secrets.token_hex(16), name=name)).uuid

    def add_user(self, firm: str, *, first_name: str, last_name: str, default_hourly_rate: Decimal | str | int = 0,
                 active: bool = True, email: str | None = None, work_phone_number: str = "",
                 id: int | None = None) -> int:
        with self._lock:
            staff_id = self._claim_id(id)
            self._firm(firm).staff[staff_id] = self._stamp({
                "id": staff_id, "email": email or f"{first_name.lower()}@firm.example", "first_name": first_name,
                "middle_initial": "", "last_name": last_name, "address": _blank_address(),
                "cell_phone_number": "", "work_phone_number": work_phone_number, "home_phone_number": "",
                "type": "Attorney", "title": "", "active": active,
                "default_hourly_rate": Decimal(str(default_hourly_rate)),
            })
            return staff_id

    def add_contact(self, firm: str, *, first_name: str, last_name: str, cell_phone_number: str = "",
                    work_phone_number: str = "", home_phone_number: str = "", fax_phone_number: str = "",
                    email: str = "", id: int | None = None) -> int:
        """A person (MyCase "client")."""
        with self._lock:
            client_id = self._claim_id(id)
            self._firm(firm).clients[client_id] = self._stamp({
                "id": client_id, "email": email, "first_name": first_name, "middle_name": "",
                "last_name": last_name, "address": _blank_address(), "cell_phone_number": cell_phone_number,
                "work_phone_number": work_phone_number, "home_phone_number": home_phone_number,
                "fax_phone_number": fax_phone_number, "people_group": {"id": 1}, "notes": "", "birthdate": None,
                "archived": False, "_cases": [], "custom_field_values": [],
            })
            return client_id

    def add_company(self, firm: str, *, name: str, main_phone_number: str = "", id: int | None = None) -> int:
        with self._lock:
            company_id = self._claim_id(id)
            self._firm(firm).companies[company_id] = self._stamp({
                "id": company_id, "name": name, "email": "", "website": "", "main_phone_number": main_phone_number,
                "fax_phone_number": "", "address": _blank_address(), "notes": "", "_cases": [], "clients": [],
                "custom_field_values": [], "archived": False,
            })
            return company_id

    def update_contact(self, firm: str, contact_id: int, **changes: Any) -> None:
        """Edit a person (or company) as if in MyCase: bumps updated_at."""
        with self._lock:
            the_firm = self._firm(firm)
            record = the_firm.clients.get(contact_id) or the_firm.companies[contact_id]
            record.update(changes)
            record["updated_at"] = self._now()

    def add_matter(self, firm: str, *, name: str, case_number: str | None = None, status: str = "open",
                   client_ids: Iterable[int] = (), company_ids: Iterable[int] = (),
                   billing_contact_id: int | None = None, staff_ids: Iterable[int] = (), id: int | None = None) -> int:
        """A case, linked both ways to its clients and companies."""
        with self._lock:
            the_firm = self._firm(firm)
            if status not in CASE_STATUSES:
                raise ValueError(f"case status must be one of {CASE_STATUSES}")
            people, companies = list(client_ids), list(company_ids)
            missing = [p for p in people if p not in the_firm.clients]
            missing += [c for c in companies if c not in the_firm.companies]
            if missing:
                raise ValueError(f"no client or company {missing} in firm {firm!r}")
            case_id = self._claim_id(id)
            for person in people:
                the_firm.clients[person]["_cases"].append(case_id)
            for company in companies:
                the_firm.companies[company]["_cases"].append(case_id)
            the_firm.cases[case_id] = self._stamp({
                "id": case_id, "name": name, "case_number": case_number, "description": "",
                "opened_date": self._now().date(), "closed_date": None, "sol_date": None, "practice_area": None,
                "case_stage": None, "status": status, "outstanding_balance": Decimal(0),
                "billing_contact": {"id": billing_contact_id} if billing_contact_id is not None else None,
                "billing_type": "hourly", "_clients": people, "_companies": companies,
                "_staff": list(staff_ids), "custom_field_values": [], "office": {"id": 1, "name": "Main"},
            })
            return case_id

    def update_matter(self, firm: str, matter_id: int, **changes: Any) -> None:
        with self._lock:
            record = self._firm(firm).cases[matter_id]
            if changes.get("status", record["status"]) not in CASE_STATUSES:
                raise ValueError(f"case status must be one of {CASE_STATUSES}")
            record.update(changes)
            record["updated_at"] = self._now()

    # -- OAuth ----------------------------------------------------------------------------------------------------

    def _check_user(self, firm: str, staff_id: int) -> None:
        if staff_id not in self._firm(firm).staff:
            raise ValueError(f"staff {staff_id} is not in firm {firm!r}")

    def _token_answer(self, firm: str, access: str, refresh: str, *, from_code: bool) -> dict[str, Any]:
        body = {"access_token": access, "token_type": "Bearer", "scope": "api", "refresh_token": refresh,
                "expires_in": ACCESS_TOKEN_SECONDS}
        if from_code:  # the authorization-code answer names the firm; a refresh answer does not
            body["firm_uuid"] = self._firms[firm].uuid
        return body

    def _refusal(self, refused: OAuthRefused) -> _ApiError:
        status = 401 if refused.error == "invalid_client" else 400
        return _ApiError(status, "", body=oauth_error(refused.error, refused.description))

    # -- inspection -----------------------------------------------------------------------------------------------

    def entries(self, firm: str) -> list[dict[str, Any]]:
        """Every stored time entry: hours and rate as Decimal, case and staff as plain ids."""
        with self._lock:
            return [
                {"id": e["id"], "activity_name": e["activity_name"], "description": e["description"],
                 "billable": e["billable"], "entry_date": e["entry_date"].isoformat(), "rate": e["rate"],
                 "hours": e["hours"], "flat_fee": e["flat_fee"], "case_id": e["_case_id"],
                 "staff_id": e["_staff_id"]}
                for e in self._firm(firm).time_entries.values()
            ]

    # -- admission: auth, bursts, rate limit, injected 5xx ---------------------------------------------------------

    def _admit(self, route: str, authorization: str | None) -> tuple[_Firm, int]:
        with self._lock:
            self._count_request(route)
            token, grant = self._authenticate(authorization)
            if self._take_burst_429():
                raise _ApiError(429, _TOO_MANY, headers={"Retry-After": "1"})
            self._take_rate_slot(token)
            if self._take_injected_5xx():
                raise _ApiError(503, "MyCase is down for scheduled maintenance.")
            return self._firms[grant.firm], grant.user

    def _authenticate(self, authorization: str | None) -> tuple[str, Grant]:
        token, grant = self._oauth.bearer(authorization)
        if grant is None or grant.expires_at <= self.clock():
            self._stats["unauthorized"] += 1
            raise _ApiError(401, "The access token is missing, expired or revoked. Please refresh the token.")
        return token, grant

    def _take_rate_slot(self, token: str) -> None:
        wait = self._window.take(token, self.clock(), self.rate_limit, self.rate_window_seconds)
        if wait is not None:
            self._stats["rate_limited"] += 1
            raise _ApiError(429, _TOO_MANY, headers={"Retry-After": retry_after(wait)})

    # -- helpers --------------------------------------------------------------------------------------------------

    def _claim_id(self, wanted: int | None) -> int:
        if wanted is None:
            candidate = next(self._ids)
            while candidate in self._used_ids:
                candidate = next(self._ids)
            self._used_ids.add(candidate)
            return candidate
        if wanted in self._used_ids:
            raise ValueError(f"id {wanted} is already taken")
        self._used_ids.add(wanted)
        return wanted

    def _stamp(self, record: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        record.update(created_at=now, updated_at=now)
        return record


def _blank_address() -> dict[str, str]:
    return {"address1": "", "address2": "", "city": "", "state": "", "zip_code": "", "country": ""}


# ---------------------------------------------------------------------------------------------------------------
# Rendering (public fields only, in the order of the schemas)


def _render_staff(record: Mapping[str, Any]) -> dict[str, Any]:
    return _public(record)


def _render_client(record: Mapping[str, Any]) -> dict[str, Any]:
    out = _public(record)
    out["cases"] = [{"id": c} for c in record["_cases"]]
    return _ordered(out, ("id", "email", "first_name", "middle_name", "last_name", "address", "cell_phone_number",
                          "work_phone_number", "home_phone_number", "fax_phone_number", "people_group", "notes",
                          "birthdate", "archived", "cases", "custom_field_values", "updated_at", "created_at"))


def _render_company(record: Mapping[str, Any]) -> dict[str, Any]:
    out = _public(record)
    out["cases"] = [{"id": c} for c in record["_cases"]]
    return out


def _render_case(record: Mapping[str, Any]) -> dict[str, Any]:
    out = _public(record)
    out["clients"] = [{"id": c} for c in record["_clients"]]
    out["companies"] = [{"id": c} for c in record["_companies"]]
    out["staff"] = [{"id": s, "lead_lawyer": i == 0, "originating_lawyer": False, "case_rate": None}
                    for i, s in enumerate(record["_staff"])]
    return _ordered(out, ("id", "name", "case_number", "description", "opened_date", "closed_date", "sol_date",
                          "practice_area", "case_stage", "status", "outstanding_balance", "billing_contact",
                          "billing_type", "clients", "companies", "staff", "custom_field_values", "office",
                          "updated_at", "created_at"))


def _render_time_entry(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"], "activity_name": record["activity_name"], "description": record["description"],
        "billable": record["billable"], "entry_date": record["entry_date"], "rate": render_rate(record["rate"]),
        "hours": record["hours"], "flat_fee": record["flat_fee"], "case": {"id": record["_case_id"]},
        "staff": {"id": record["_staff_id"]}, "invoices": [], "custom_field_values": [],
        "created_at": record["created_at"], "updated_at": record["updated_at"],
    }


def _public(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _ordered(record: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    return {k: record[k] for k in order}


# ---------------------------------------------------------------------------------------------------------------
# Lists and paging


@dataclass(frozen=True)
class _ListSpec:
    table: str
    render: Callable[[Mapping[str, Any]], dict[str, Any]]
    filters: Mapping[str, Callable[[Mapping[str, Any], str], bool]]


def _phone_filter(name: str) -> Callable[[Mapping[str, Any], str], bool]:
    # Exact match: whether MyCase normalises phone formats in filters is UNCONFIRMED (billing-apis.md §2).
    return lambda record, value: record.get(name) == value


_LISTS = {
    "staff": _ListSpec("staff", _render_staff, {
        "filter[status]": lambda r, v: r["active"] == (v == "active"),
    }),
    "clients": _ListSpec("clients", _render_client, {
        "filter[cell_phone_number]": _phone_filter("cell_phone_number"),
        "filter[work_phone_number]": _phone_filter("work_phone_number"),
        "filter[home_phone_number]": _phone_filter("home_phone_number"),
        "filter[email]": lambda r, v: r["email"] == v,
    }),
    "companies": _ListSpec("companies", _render_company, {
        "filter[main_phone_number]": _phone_filter("main_phone_number"),
        "filter[name]": lambda r, v: r["name"] == v,
    }),
    "cases": _ListSpec("cases", _render_case, {
        "filter[status]": lambda r, v: r["status"] == v,
    }),
    "time_entries": _ListSpec("time_entries", _render_time_entry, {}),
}


def _list_page(state: FakeMyCaseState, firm: _Firm, request: Request, resource: str) -> Response:
    spec = _LISTS[resource]
    params = request.query_params
    unknown = set(params) - {"page_size", "page_token", "filter[updated_after]"} - set(spec.filters)
    if unknown:
        # The fake refuses a parameter it does not implement rather than silently ignoring it.
        name = sorted(unknown)[0]
        raise _ApiError(400, f"Unsupported query parameter {name}", parameter=name)
    size = _page_size(params.get("page_size"))
    after = _page_token(state, params.get("page_token"))
    checks = [lambda r, f=f, v=params[name]: f(r, v) for name, f in spec.filters.items() if name in params]
    if "filter[updated_after]" in params:
        since = _since(params["filter[updated_after]"])
        checks.append(lambda r: r["updated_at"] >= since)  # "Results are inclusive of the date/time entered"
    with state._lock:
        rows = [r for _, r in sorted(getattr(firm, spec.table).items()) if all(c(r) for c in checks)]
        page = [r for r in rows if r["id"] > after][:size]
        body = [spec.render(r) for r in page]
        headers = {"Item-Count": str(len(rows))}
        if page and page[-1]["id"] < rows[-1]["id"]:
            token = _encode_page_token(page[-1]["id"], state.clock() + PAGE_TOKEN_SECONDS)
            headers["Link"] = f'<{request.url.include_query_params(page_token=token)}>; rel="next"'
    return _json_response(200, body, headers)


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise _ApiError(400, "page_size must be a number", parameter="page_size") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise _ApiError(400, f"page_size must be between 1 and {MAX_PAGE_SIZE}", parameter="page_size")
    return size


def _encode_page_token(after: int, expires_at: float) -> str:
    raw = json.dumps({"after": after, "exp": expires_at}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _page_token(state: FakeMyCaseState, raw: str | None) -> int:
    if not raw:
        return 0
    try:
        decoded = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        after, expires_at = int(decoded["after"]), float(decoded["exp"])
    except (ValueError, KeyError, TypeError):
        raise _ApiError(400, "Invalid page_token", parameter="page_token") from None
    if expires_at <= state.clock():
        raise _ApiError(400, "The page_token has expired", parameter="page_token")
    return after


def _since(raw: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(raw), datetime.min.time())  # "does not need" a time
        except ValueError:
            raise _ApiError(400, "filter[updated_after] must be ISO 8601", parameter="filter[updated_after]") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------------------------
# Creating a time entry

_TIME_ENTRY_FIELDS = frozenset({"activity_name", "description", "billable", "entry_date", "rate", "hours",
                                "flat_fee", "case", "staff"})


def _number(body: Mapping[str, Any], name: str) -> Decimal:
    value = body.get(name)
    if value is None:
        raise _unprocessable(f"{name} is required", f"/{name}")
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _unprocessable(f"{name} must be a number", f"/{name}")
    number = Decimal(value)
    if not number.is_finite():
        raise _unprocessable(f"{name} must be a number", f"/{name}")
    return number


def _reference(body: Mapping[str, Any], name: str, table: Mapping[int, Any]) -> dict[str, Any]:
    ref = body.get(name)
    if not isinstance(ref, dict) or "id" not in ref:
        raise _unprocessable(f"{name} is required", f"/{name}")
    ref_id = ref["id"]
    if isinstance(ref_id, bool) or not isinstance(ref_id, int):
        raise _unprocessable(f"{name} id must be an integer", f"/{name}/id")
    if ref_id not in table:
        raise _unprocessable(f"{name} {ref_id} was not found", f"/{name}/id")
    return table[ref_id]


def _create_time_entry(state: FakeMyCaseState, firm: _Firm, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _ApiError(400, "The body format entered is not correct, check documentation.")
    unknown = set(body) - _TIME_ENTRY_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise _unprocessable(f"{name} is not an attribute of a time entry", f"/{name}")
    activity = body.get("activity_name")
    if not isinstance(activity, str) or not activity.strip():
        raise _unprocessable("activity_name is required", "/activity_name")
    try:
        entry_date = date.fromisoformat(body.get("entry_date"))
    except (TypeError, ValueError):
        raise _unprocessable("entry_date must be an ISO 8601 date", "/entry_date") from None
    hours, rate = _number(body, "hours"), _number(body, "rate")
    if hours <= 0:
        raise _unprocessable("hours must be greater than 0", "/hours")
    if rate < 0:
        raise _unprocessable("rate must not be negative", "/rate")
    for flag in ("billable", "flat_fee"):
        if not isinstance(body.get(flag, False), bool):
            raise _unprocessable(f"{flag} must be true or false", f"/{flag}")
    if not isinstance(body.get("description", ""), str):
        raise _unprocessable("description must be a string", "/description")
    with state._lock:
        case = _reference(body, "case", firm.cases)
        staff = _reference(body, "staff", firm.staff)
        if CLOSED_CASE_REFUSES_TIME and case["status"] == "closed":
            raise _unprocessable("Time cannot be entered on a closed case", "/case/id")
        if not staff["active"]:
            raise _unprocessable("The staff member is inactive", "/staff/id")
        record = state._stamp({
            "id": state._claim_id(None), "activity_name": activity, "description": body.get("description", ""),
            "billable": body.get("billable", True), "entry_date": entry_date, "rate": rate, "hours": hours,
            "flat_fee": body.get("flat_fee", False), "_case_id": case["id"], "_staff_id": staff["id"],
        })
        firm.time_entries[record["id"]] = record
        return record


# ---------------------------------------------------------------------------------------------------------------
# ASGI app


async def _read_json(request: Request) -> Any:
    try:
        return _loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise _ApiError(400, "The body format entered is not correct, check documentation.") from None


def create_app(state: FakeMyCaseState) -> FastAPI:
    """MyCase routes under /v1, the token endpoint at /tokens."""
    app = FastAPI(title="fake MyCase Open API", docs_url=None, redoc_url=None, openapi_url=None)

    def lister(resource: str) -> Callable[..., Any]:
        async def handler(firm: _Firm, staff_id: int, request: Request) -> Response:
            return _list_page(state, firm, request, resource)
        return handler

    def getter(table: str, render: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Callable[..., Any]:
        async def handler(firm: _Firm, staff_id: int, request: Request) -> Response:
            try:
                record_id = int(request.path_params["id"])
            except ValueError:
                raise _ApiError(404, "Not Found") from None
            with state._lock:
                record = getattr(firm, table).get(record_id)
                if record is None:
                    raise _ApiError(404, "Not Found")
                return _json_response(200, render(record))
        return handler

    async def me(firm: _Firm, staff_id: int, request: Request) -> Response:
        with state._lock:
            return _json_response(200, _render_staff(firm.staff[staff_id]))

    async def create_time_entry(firm: _Firm, staff_id: int, request: Request) -> Response:
        record = _create_time_entry(state, firm, await _read_json(request))
        if state._take_drop():
            return DroppedResponse(201, "fake MyCase dropped the connection after committing")
        with state._lock:
            return _json_response(201, _render_time_entry(record))

    def admit(route: str, request: Request) -> tuple[_Firm, int]:
        return state._admit(route, request.headers.get("authorization"))

    serve = add_api_routes(app, state, admit, [
        ("GET", "/v1/me", me),
        ("GET", "/v1/staff", lister("staff")),
        ("GET", "/v1/staff/{id}", getter("staff", _render_staff)),
        ("GET", "/v1/clients", lister("clients")),
        ("GET", "/v1/clients/{id}", getter("clients", _render_client)),
        ("GET", "/v1/companies", lister("companies")),
        ("GET", "/v1/cases", lister("cases")),
        ("GET", "/v1/cases/{id}", getter("cases", _render_case)),
        ("GET", "/v1/time_entries", lister("time_entries")),
        ("GET", "/v1/time_entries/{id}", getter("time_entries", _render_time_entry)),
        ("POST", "/v1/time_entries", create_time_entry),
    ])

    async def not_found(firm: _Firm, staff_id: int, request: Request) -> Response:
        raise _ApiError(404, "Path was entered incorrectly.")

    app.add_api_route("/v1/{rest:path}", bind(serve, "unknown", not_found),
                      methods=["GET", "POST", "PUT", "DELETE", "PATCH"])

    async def tokens(request: Request) -> Response:
        try:
            form = await _token_form(request)
            return _json_response(200, state._exchange(form), {"Cache-Control": "no-store"})
        except _ApiError as error:
            return error.response()

    app.add_api_route("/tokens", tokens, methods=["POST"])
    return app


async def _token_form(request: Request) -> Mapping[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in TOKEN_REQUEST_FORMATS:
        raise _ApiError(400, "", body=oauth_error("invalid_request", f"unsupported content type {media!r}"))
    raw = await request.body()
    if media == "application/json":
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _ApiError(400, "", body=oauth_error("invalid_request", "the body must be a JSON object"))
        return body
    return dict(parse_qsl(raw.decode()))


class FakeMyCaseServer(FakeBillingServer):
    """The fake MyCase over HTTP; its token endpoint is on the API's host, as `/tokens`."""

    app_factory = staticmethod(create_app)
    server_name = "fake-mycase"
    token_path = "/tokens"
