"""A fake TimeSolv REST API (several firms, in memory) served over real HTTP for tests and local runs.

What billing-apis.md §4 shows is modelled as shown: the token endpoint (form-encoded,
authorization-code grant whose code "will not expire"), and `<entity>Search` POSTs with
{OrderBy, SortOrderAscending, PageSize, PageNumber, Criteria:[{FieldName, Operator, Value}]}.
The rest — the create endpoint, record fields, the hours unit, refresh, error bodies and a rate
limit — follows `calltime.billing.timesolv.ASSUMED`, the one block where the adapter keeps its
UNCONFIRMED assumptions, so the adapter and this fake can only disagree with TimeSolv together.
"""

from __future__ import annotations

import itertools
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import Response

from calltime.billing.timesolv import (
    API_PREFIX,
    ASSUMED,
    CLIENT_SEARCH,
    CLIENTS_KEY,
    FIRM_USER_SEARCH,
    FIRM_USERS_KEY,
    TIMECARD_DATE_FIELD,
    TIMECARD_SEARCH,
    TIMECARD_USER_FIELD,
    TIMECARDS_KEY,
    TOKEN_PATH,
)
from calltime.fakes.billing_common import (
    ApiError,
    DroppedResponse,
    FakeBillingServer,
    FakeBillingState,
    Faults,
    JsonStyle,
    fixed_window_slot,
    loads,
)

A = ASSUMED
DEFAULT_TOKEN_LIFETIME = 3600  # UNCONFIRMED (billing-apis.md §4): TimeSolv's token lifetime is not published
UNAUTHORIZED_MESSAGE = "Authorization has been denied for this request."  # ASP.NET Web API's default 401 text
_DROPPED = "fake TimeSolv dropped the connection after committing"
_BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
_OPERATORS = frozenset({"=", "!=", ">", ">=", "<", "<=", A.contains_operator})
_CLOSED_PROJECT_STATUSES = frozenset(s for s, mapped in A.project_statuses.items() if mapped == "closed")


# ---------------------------------------------------------------------------------------------------------------
# JSON with exact numbers

_json = JsonStyle().response


class _ApiError(ApiError):
    def __init__(self, status: int, message: str, *, body: Any = None, headers: Mapping[str, str] | None = None):
        # UNCONFIRMED (billing-apis.md §4): ASP.NET Web API's {"Message": ...} error body.
        super().__init__(status, body if body is not None else {"Message": message}, headers, message=message)


def _bad(message: str) -> _ApiError:
    return _ApiError(400, message)


# ---------------------------------------------------------------------------------------------------------------
# State


@dataclass
class _Firm:
    key: str
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)
    projects: dict[int, dict[str, Any]] = field(default_factory=dict)
    timecards: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Token:
    firm: str
    user_id: int
    expires_at: float | None
    refresh_token: str | None


@dataclass(frozen=True)
class _Search:
    table: str
    key: str
    fields: frozenset[str]


_SEARCHES = {
    FIRM_USER_SEARCH.lower(): _Search("users", FIRM_USERS_KEY, frozenset({
        A.id_field, A.user_first_name_field, A.user_last_name_field, A.user_status_field, A.user_rate_field,
        "Email",
    } | ({A.updated_field} if A.updated_field else set()))),
    CLIENT_SEARCH.lower(): _Search("clients", CLIENTS_KEY, frozenset({
        A.id_field, A.client_name_field, "ClientStatus", *A.client_phone_fields,
    } | ({A.updated_field} if A.updated_field else set()))),
    A.project_search_path.lower(): _Search("projects", A.projects_key, frozenset({
        A.id_field, A.project_client_field, A.project_code_field, A.project_name_field, A.project_status_field,
    } | ({A.updated_field} if A.updated_field else set()))),
    TIMECARD_SEARCH.lower(): _Search("timecards", TIMECARDS_KEY, frozenset({
        A.id_field, TIMECARD_USER_FIELD, A.timecard_project_field, TIMECARD_DATE_FIELD,
        A.timecard_description_field,
    })),
}
_TIMECARD_FIELDS = frozenset({
    TIMECARD_USER_FIELD, A.timecard_project_field, TIMECARD_DATE_FIELD, A.timecard_hours_field,
    A.timecard_rate_field, A.timecard_description_field,
})


class FakeTimeSolvState(FakeBillingState[Faults]):
    """Every firm's data, grants, rate windows, faults and statistics, guarded by one lock."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, rate_limit: int = A.rate_limit,
        rate_window_seconds: float = A.rate_window_seconds, token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
        client_id: str = "calltime-app", client_secret: str = "calltime-secret",
        redirect_uri: str = "https://calltime.example/oauth/timesolv",
    ) -> None:
        super().__init__(Faults(), clock)
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.token_lifetime = token_lifetime
        self.client_id, self.client_secret, self.redirect_uri = client_id, client_secret, redirect_uri
        self._firms: dict[str, _Firm] = {}
        self._tokens: dict[str, _Token] = {}
        self._refresh: dict[str, tuple[str, int]] = {}
        self._codes: dict[str, tuple[str, int]] = {}
        self._windows: dict[str, tuple[float, int]] = {}
        self._ids = itertools.count(5001)

    # -- seeding ---------------------------------------------------------------------------------------------------

    def add_firm(self, key: str) -> None:
        self._add_firm(key, lambda: _Firm(key))

    def add_user(
        self, firm: str, *, first_name: str, last_name: str = "", rate: Decimal | str | int = "0",
        time_zone: str | None = None, phone: str | None = None, active: bool = True, email: str | None = None,
        tokens: Iterable[str] = (),
    ) -> int:
        with self._lock:
            user_id = next(self._ids)
            self._firm(firm).users[user_id] = self._stamp({
                A.id_field: user_id, A.user_first_name_field: first_name, A.user_last_name_field: last_name,
                "Email": email, A.user_rate_field: Decimal(str(rate)), A.user_time_zone_field: time_zone,
                A.user_phone_field: phone, A.user_status_field: A.user_active_value if active else "Inactive",
            })
            for token in tokens:
                self.add_token(firm, token, user_id)
            return user_id

    def add_token(self, firm: str, token: str, user_id: int, *, expires_in: float | None = None,
                  refresh_token: str | None = None) -> None:
        with self._lock:
            if user_id not in self._firm(firm).users:
                raise ValueError(f"user {user_id} is not in firm {firm!r}")
            expires_at = None if expires_in is None else self.clock() + expires_in
            self._tokens[token] = _Token(firm, user_id, expires_at, refresh_token)
            if refresh_token is not None:
                self._refresh[refresh_token] = (firm, user_id)

    def issue_code(self, firm: str, user_id: int) -> str:
        """An authorization code as the consent page hands it out; TimeSolv says it never expires."""
        with self._lock:
            code = secrets.token_urlsafe(12)
            self._codes[code] = (firm, user_id)
            return code

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def revoke_grant(self, firm: str) -> None:
        """The firm disconnected the app: every access token, refresh token and code stops working."""
        with self._lock:
            for table in (self._refresh, self._codes):
                for key in [k for k, (f, _) in table.items() if f == firm]:
                    del table[key]
            for key in [k for k, t in self._tokens.items() if t.firm == firm]:
                del self._tokens[key]

    def add_contact(self, firm: str, *, name: str, phones: Iterable[str] = (), active: bool = True) -> int:
        with self._lock:
            client_id = next(self._ids)
            record = {A.id_field: client_id, A.client_name_field: name,
                      "ClientStatus": "Active" if active else "Inactive"}
            for phone_field, number in itertools.zip_longest(A.client_phone_fields, list(phones)):
                if phone_field is None:
                    raise ValueError(f"a client has at most {len(A.client_phone_fields)} phone numbers")
                record[phone_field] = number
            self._firm(firm).clients[client_id] = self._stamp(record)
            return client_id

    def update_contact(self, firm: str, client_id: int, **changes: Any) -> None:
        with self._lock:
            record = self._firm(firm).clients[client_id]
            if "name" in changes:
                record[A.client_name_field] = changes.pop("name")
            for phone_field, number in itertools.zip_longest(A.client_phone_fields, changes.pop("phones", ())):
                if phone_field is not None:
                    record[phone_field] = number
            record.update(changes)
            self._stamp(record)

    def add_matter(self, firm: str, *, code: str, name: str = "", client_id: int | None = None,
                   status: str = "Active") -> int:
        with self._lock:
            the_firm = self._firm(firm)
            if client_id is not None and client_id not in the_firm.clients:
                raise ValueError(f"client {client_id} is not in firm {firm!r}")
            project_id = next(self._ids)
            the_firm.projects[project_id] = self._stamp({
                A.id_field: project_id, A.project_client_field: client_id, A.project_code_field: code,
                A.project_name_field: name, A.project_status_field: status,
            })
            return project_id

    def update_matter(self, firm: str, project_id: int, **changes: Any) -> None:
        with self._lock:
            record = self._firm(firm).projects[project_id]
            renames = {"status": A.project_status_field, "name": A.project_name_field, "code": A.project_code_field}
            for name, value in changes.items():
                record[renames.get(name, name)] = value
            self._stamp(record)

    # -- inspection ------------------------------------------------------------------------------------------------

    def entries(self, firm: str) -> list[dict[str, Any]]:
        """Every time card written for the firm, as stored (Hours a Decimal number of hours)."""
        with self._lock:
            return [dict(card) for card in self._firm(firm).timecards.values()]

    # -- OAuth -----------------------------------------------------------------------------------------------------

    def exchange(self, form: Mapping[str, str]) -> dict[str, Any]:
        with self._lock:
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
                raise _ApiError(401, "invalid_client", body={"error": "invalid_client"})
            grant = form.get("grant_type")
            if grant == "authorization_code":
                owner = self._codes.get(form.get("code", ""))
                if owner is None or form.get("redirect_uri") != self.redirect_uri:
                    raise _ApiError(400, "invalid_grant", body={"error": "invalid_grant"})
                refresh_token = secrets.token_urlsafe(24)
                self._refresh[refresh_token] = owner
            elif grant == "refresh_token":  # UNCONFIRMED (billing-apis.md §4): TimeSolv's refresh is not documented
                refresh_token = form.get("refresh_token", "")
                owner = self._refresh.get(refresh_token)
                if owner is None:
                    raise _ApiError(400, "invalid_grant", body={"error": "invalid_grant"})
            else:
                raise _ApiError(400, "unsupported_grant_type", body={"error": "unsupported_grant_type"})
            access_token = secrets.token_urlsafe(24)
            self._tokens[access_token] = _Token(owner[0], owner[1], self.clock() + self.token_lifetime,
                                                refresh_token)
            return {"access_token": access_token, "token_type": "bearer", "expires_in": self.token_lifetime,
                    "refresh_token": refresh_token}

    # -- admission -------------------------------------------------------------------------------------------------

    def admit(self, route: str, authorization: str | None) -> _Token:
        with self._lock:
            self._count_request(route)
            token, grant = self._authenticate(authorization)
            if self._take_burst_429():
                raise _ApiError(429, "Too many requests", headers={"Retry-After": "1"})
            self._take_rate_slot(token)
            if self._take_injected_5xx():
                raise _ApiError(503, "Service Unavailable")
            return grant

    def _authenticate(self, authorization: str | None) -> tuple[str, _Token]:
        match = _BEARER.fullmatch(authorization or "")
        grant = self._tokens.get(match.group(1)) if match else None
        if grant is not None and grant.expires_at is not None and grant.expires_at <= self.clock():
            grant = None
        if grant is None:
            self._stats["unauthorized"] += 1
            raise _ApiError(401, UNAUTHORIZED_MESSAGE, headers={"WWW-Authenticate": "Bearer"})
        return match.group(1), grant

    def _take_rate_slot(self, token: str) -> None:
        now = self.clock()
        slot = fixed_window_slot(self._windows, token, now, self.rate_limit, self.rate_window_seconds)
        if not slot.admitted:
            self._stats["rate_limited"] += 1
            retry_after = max(1, math.ceil(slot.ends_at - now))
            raise _ApiError(429, "Rate limit exceeded", headers={"Retry-After": str(retry_after)})

    # -- resources -------------------------------------------------------------------------------------------------

    def search(self, grant: _Token, endpoint: str, body: Any) -> dict[str, Any]:
        spec = _SEARCHES[endpoint]
        page_size, page_number, order_by, ascending, criteria = _search_request(body, spec)
        with self._lock:
            rows = list(getattr(self._firm(grant.firm), spec.table).values())
            rows = [r for r in rows if all(_matches(r, c) for c in criteria)]
            rows.sort(key=lambda r: _sort_key(r.get(order_by)), reverse=not ascending)
            start = (page_number - 1) * page_size
            return {spec.key: [dict(r) for r in rows[start:start + page_size]]}

    def create_timecard(self, grant: _Token, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _bad("The request body must be a time card object")
        unknown = set(body) - _TIMECARD_FIELDS
        if unknown:
            raise _bad(f"Unknown field(s): {', '.join(sorted(unknown))}")
        entry_date = _date_field(body, TIMECARD_DATE_FIELD)
        hours = _number_field(body, A.timecard_hours_field, required=True)
        if not Decimal(0) < hours <= Decimal(24):
            raise _bad(f"{A.timecard_hours_field} must be more than 0 and at most 24 hours")
        rate = _number_field(body, A.timecard_rate_field, required=False)
        if rate is not None and rate < 0:
            raise _bad(f"{A.timecard_rate_field} must not be negative")
        description = body.get(A.timecard_description_field, "")
        if not isinstance(description, str):
            raise _bad(f"{A.timecard_description_field} must be text")
        with self._lock:
            firm = self._firm(grant.firm)
            user_id = _id_field(body, TIMECARD_USER_FIELD, firm.users, "firm user")
            project_id = _id_field(body, A.timecard_project_field, firm.projects, "project")
            if firm.projects[project_id][A.project_status_field] in _CLOSED_PROJECT_STATUSES:
                raise _bad(f"Project {project_id} is closed; time cannot be entered")
            card_id = next(self._ids)
            card = self._stamp({
                A.id_field: card_id, TIMECARD_USER_FIELD: user_id, A.timecard_project_field: project_id,
                TIMECARD_DATE_FIELD: entry_date.isoformat(), A.timecard_hours_field: hours,
                A.timecard_rate_field: rate if rate is not None else firm.users[user_id][A.user_rate_field],
                A.timecard_description_field: description,
            })
            firm.timecards[card_id] = card
            return dict(card)

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _stamp(self, record: dict[str, Any]) -> dict[str, Any]:
        if A.updated_field:
            now = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
            record[A.updated_field] = now.strftime("%Y-%m-%dT%H:%M:%S")
        return record


def _search_request(body: Any, spec: _Search) -> tuple[int, int, str, bool, list[dict[str, Any]]]:
    if not isinstance(body, dict):
        raise _bad("The search body must be an object")
    page_size, page_number = body.get("PageSize"), body.get("PageNumber")
    if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= A.max_page_size:
        raise _bad(f"PageSize must be between 1 and {A.max_page_size}")
    if not isinstance(page_number, int) or isinstance(page_number, bool) or page_number < 1:
        raise _bad("PageNumber must be 1 or more")
    order_by = body.get("OrderBy", A.id_field)
    if order_by not in spec.fields:
        raise _bad(f"OrderBy {order_by!r} is not a field of this search")
    ascending = body.get("SortOrderAscending", True)
    if ascending not in (True, False, 0, 1):
        raise _bad("SortOrderAscending must be true or false")
    criteria = body.get("Criteria", [])
    if not isinstance(criteria, list):
        raise _bad("Criteria must be a list")
    for criterion in criteria:
        if not isinstance(criterion, dict) or criterion.get("FieldName") not in spec.fields:
            raise _bad(f"Invalid criterion {criterion!r}")
        if criterion.get("Operator") not in _OPERATORS:
            raise _bad(f"Invalid operator {criterion.get('Operator')!r}")
    return page_size, page_number, order_by, bool(ascending), criteria


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return (1, value)
    return (2, str(value))


def _matches(record: Mapping[str, Any], criterion: Mapping[str, Any]) -> bool:
    have, want, op = record.get(criterion["FieldName"]), criterion.get("Value"), criterion["Operator"]
    if op == A.contains_operator:
        return have is not None and str(want).lower() in str(have).lower()
    if have is None:
        return op == "!=" and want is not None
    if isinstance(have, (int, Decimal)) and not isinstance(have, bool):
        try:
            want = Decimal(str(want))
        except InvalidOperation:
            raise _bad(f"{criterion['FieldName']} needs a number") from None
    else:
        have, want = str(have), str(want)  # ISO dates and stamps compare as text
    return {"=": have == want, "!=": have != want, ">": have > want, ">=": have >= want,
            "<": have < want, "<=": have <= want}[op]


def _date_field(body: Mapping[str, Any], name: str) -> date:
    try:
        return date.fromisoformat(body[name])
    except (KeyError, TypeError, ValueError):
        raise _bad(f"{name} is required as yyyy-mm-dd") from None


def _number_field(body: Mapping[str, Any], name: str, *, required: bool) -> Decimal | None:
    raw = body.get(name)
    if raw is None:
        if required:
            raise _bad(f"{name} is required")
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)):
        raise _bad(f"{name} must be a number")
    return Decimal(raw)


def _id_field(body: Mapping[str, Any], name: str, table: Mapping[int, Any], what: str) -> int:
    raw = body.get(name)
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise _bad(f"{name} is required as a number")
    if raw not in table:
        raise _bad(f"{what} {raw} does not exist")
    return raw


# ---------------------------------------------------------------------------------------------------------------
# ASGI app


class _CaseInsensitivePaths:
    """IIS matches paths without regard to case (TimeSolv's own samples spell oAuth2V1 and oauth2v1)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = dict(scope, path=scope["path"].lower())
        await self.app(scope, receive, send)


def create_app(state: FakeTimeSolvState) -> FastAPI:
    """The fake's FastAPI app: the token endpoint and the REST API, paths matched without case."""
    app = FastAPI(title="fake TimeSolv", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_CaseInsensitivePaths)

    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        try:
            return _json(200, state.exchange(form))
        except _ApiError as error:
            return error.response()

    async def api(endpoint: str, request: Request) -> Response:
        route = f"POST {API_PREFIX}/{endpoint}".lower()
        try:
            grant = state.admit(route, request.headers.get("authorization"))
            try:
                body = loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                raise _bad("The request body is not valid JSON") from None
            if endpoint in _SEARCHES:
                response = _json(200, state.search(grant, endpoint, body))
            elif endpoint == A.timecard_create_path.lower():
                created = state.create_timecard(grant, body)
                dropped = state._take_drop()
                response = DroppedResponse(200, _DROPPED) if dropped else _json(200, created)
            else:
                raise _ApiError(404, f"No HTTP resource was found that matches {endpoint!r}")
        except _ApiError as error:
            response = error.response()
        return await state._finish(response)

    app.add_api_route(TOKEN_PATH.lower(), token, methods=["POST"])
    app.add_api_route(f"{API_PREFIX.lower()}/{{endpoint}}", api, methods=["POST"])
    return app


class FakeTimeSolvServer(FakeBillingServer):
    """The fake TimeSolv over HTTP."""

    app_factory = staticmethod(create_app)
    server_name = "fake-timesolv"
    token_path = TOKEN_PATH
