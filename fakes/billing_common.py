"""What the fake billing systems share: one lock over a fake's state, the fault switches and their RNG, request
statistics, rate windows, OAuth grants with rotating refresh tokens, exact JSON answers, the dropped-connection
answer and the server that runs a fake.

Shared among the fakes only. The adapters have their own JSON code (calltime/billing/wire.py), so that a bug in one
cannot hide the same bug in the other.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, ClassVar, Generic, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import Response

from calltime.fakes.server import BackgroundServer, DeliberateDrop

# ---------------------------------------------------------------------------------------------------------------
# JSON: Decimal in, Decimal out, so money and quantities are never rounded through float.


def plain_decimal(value: Decimal) -> str:
    return format(value, "f")


@dataclass(frozen=True)
class JsonStyle:
    """How one fake writes JSON: Decimals exactly, and dates and times (refused when it has no format for them)."""

    decimal: Callable[[Decimal], str] = plain_decimal
    moment: Callable[[datetime], str] | None = None
    day: Callable[[date], str] | None = None
    floats: bool = False  # written as json.dumps does; otherwise refused like any type the fake never sends

    def dumps(self, value: Any) -> str:
        if value is None or isinstance(value, (bool, int, str)) or (self.floats and isinstance(value, float)):
            return json.dumps(value)
        if isinstance(value, Decimal):
            return self.decimal(value)
        if isinstance(value, datetime) and self.moment is not None:  # before date: a datetime is a date too
            return json.dumps(self.moment(value))
        if isinstance(value, date) and not isinstance(value, datetime) and self.day is not None:
            return json.dumps(self.day(value))
        if isinstance(value, Mapping):
            return "{" + ",".join(f"{json.dumps(str(k))}:{self.dumps(v)}" for k, v in value.items()) + "}"
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(self.dumps(v) for v in value) + "]"
        raise TypeError(f"cannot encode {type(value).__name__}")

    def response(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
        return Response(self.dumps(payload), status_code=status, media_type="application/json",
                        headers=dict(headers or {}))


def loads(raw: bytes) -> Any:
    return json.loads(raw, parse_float=Decimal)


class ApiError(Exception):
    """An error answer: raised anywhere in a request, rendered once in the fake's JSON style."""

    style: ClassVar[JsonStyle] = JsonStyle()

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None, *,
                 message: str | None = None) -> None:
        super().__init__(str(body) if message is None else message)
        self.status, self.body, self.headers = status, body, dict(headers or {})

    def response(self) -> Response:
        return self.style.response(self.status, self.body, self.headers)


class DroppedResponse(Response):
    """Starts an answer that promises a body, then aborts: the client sees a broken connection, not an answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status_code=status)
        self._message = message

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
        # Once the response has started, Starlette re-raises and uvicorn closes the socket without finishing.
        raise DeliberateDrop(self._message)


def bind(serve: Callable[..., Any], route: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """An endpoint that hands its request to `serve` under the route name the statistics count it by."""
    async def endpoint(request: Request) -> Response:
        return await serve(request, route, handler)
    return endpoint


def add_api_routes(app: FastAPI, state: FakeBillingState[Any], admit: Callable[[str, Request], tuple[Any, ...]],
                   routes: Iterable[tuple[str, str, Callable[..., Any]]]) -> Callable[..., Any]:
    """Serve each (method, path, handler): `admit(route, request)` lets the request in (authentication, faults,
    rate limit), the handler gets what it returned and the request, and an ApiError raised by either is the answer.
    Returns the serving function, for routes added by hand."""
    async def serve(request: Request, route: str, handler: Callable[..., Any]) -> Response:
        try:
            response = await handler(*admit(route, request), request)
        except ApiError as error:
            response = error.response()
        return await state._finish(response)

    for method, path, handler in routes:
        app.add_api_route(path, bind(serve, f"{method} {path}", handler), methods=[method])
    return serve


# ---------------------------------------------------------------------------------------------------------------
# Rate windows (not locked: callers hold their state's lock)


@dataclass(frozen=True)
class WindowSlot:
    admitted: bool
    used: int  # requests counted in the window, this one included when admitted
    ends_at: float


def fixed_window_slot(windows: dict[str, tuple[float, int]], key: str, now: float, limit: int,
                      window_seconds: float) -> WindowSlot:
    """Admit one request of `key` into the current fixed window (windows start at multiples of its length since the
    epoch); a refused request is not counted."""
    start = math.floor(now / window_seconds) * window_seconds
    started, used = windows.get(key, (start, 0))
    if started != start:
        used = 0
    if used >= limit:
        return WindowSlot(False, used, start + window_seconds)
    windows[key] = (start, used + 1)
    return WindowSlot(True, used + 1, start + window_seconds)


# ---------------------------------------------------------------------------------------------------------------
# OAuth 2.0 with rotating refresh tokens (not locked: callers hold their state's lock)


@dataclass
class Grant:
    firm: str
    user: Any  # the user the firm authorised as
    expires_at: float


class OAuthRefused(Exception):
    """An RFC 6749 §5.2 refusal; each fake answers it in its own shape."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


class OAuthGrants:
    """The authorization codes, access tokens and refresh tokens of a fake's OAuth apps. A refresh token is spent
    when used (it rotates); revoking one ends the access tokens of the same firm and user."""

    def __init__(self, *, access_seconds: float, refresh_seconds: float, code_seconds: float = 600) -> None:
        self.access_seconds, self.refresh_seconds, self.code_seconds = access_seconds, refresh_seconds, code_seconds
        self.apps: dict[str, tuple[str, str]] = {}  # client_id -> (client_secret, redirect_uri)
        self.access: dict[str, Grant] = {}
        self.refresh: dict[str, Grant] = {}
        self.codes: dict[str, Grant] = {}

    def code(self, firm: str, user: Any, now: float) -> str:
        code = secrets.token_urlsafe(16)
        self.codes[code] = Grant(firm, user, now + self.code_seconds)
        return code

    def mint(self, firm: str, user: Any, now: float) -> tuple[str, str]:
        """A fresh (access token, refresh token) pair."""
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access[access] = Grant(firm, user, now + self.access_seconds)
        self.refresh[refresh] = Grant(firm, user, now + self.refresh_seconds)
        return access, refresh

    def revoke(self, token: str) -> None:
        self.access.pop(token, None)
        grant = self.refresh.pop(token, None)
        if grant is not None:
            for access, other in list(self.access.items()):
                if (other.firm, other.user) == (grant.firm, grant.user):
                    del self.access[access]

    def bearer(self, authorization: str | None) -> tuple[str, Grant | None]:
        """The token of a `Bearer` Authorization header and its grant (None: unknown or another scheme), expired
        or not."""
        scheme, _, token = (authorization or "").partition(" ")
        return token, self.access.get(token) if scheme.lower() == "bearer" else None

    def exchange(self, form: Mapping[str, Any], now: float) -> tuple[str, Grant, str, str]:
        """(grant_type, the grant exchanged, access token, refresh token) for a token request; OAuthRefused if not."""
        client = self.apps.get(str(form.get("client_id", "")))
        if client is None or client[0] != form.get("client_secret"):
            raise OAuthRefused("invalid_client", "Client authentication failed.")
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            grant = self.codes.pop(str(form.get("code", "")), None)
            if grant is None or grant.expires_at <= now or form.get("redirect_uri") != client[1]:
                raise OAuthRefused("invalid_grant", "The authorization code is invalid.")
        elif grant_type == "refresh_token":
            grant = self.refresh.pop(str(form.get("refresh_token", "")), None)
            if grant is None or grant.expires_at <= now:
                raise OAuthRefused("invalid_grant", "The refresh token is invalid.")
        else:
            raise OAuthRefused("unsupported_grant_type", f"grant_type {grant_type!r}")
        return grant_type, grant, *self.mint(grant.firm, grant.user, now)


class RotatingOAuth:
    """The OAuth side of a fake state whose grants are `OAuthGrants`: its apps, codes, tokens and token endpoint.

    The fake says who may be authorised (`_check_user`), how a token answer looks (`_token_answer`) and how a
    refusal is answered (`_refusal`)."""

    _oauth: OAuthGrants
    _lock: threading.RLock
    clock: Callable[[], float]

    def add_oauth_client(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        with self._lock:
            self._oauth.apps[client_id] = (client_secret, redirect_uri)

    def authorization_code(self, firm: str, user: Any) -> str:
        """What the redirect after the firm's consent would carry."""
        with self._lock:
            self._check_user(firm, user)
            return self._oauth.code(firm, user, self.clock())

    def issue_tokens(self, firm: str, user: Any) -> dict[str, Any]:
        """A fresh grant, as the authorization-code exchange answers it."""
        with self._lock:
            self._check_user(firm, user)
            return self._token_answer(firm, *self._oauth.mint(firm, user, self.clock()), from_code=True)

    def revoke(self, token: str) -> None:
        """Revoke an access or refresh token; revoking a refresh token also ends the access tokens of its grant."""
        with self._lock:
            self._oauth.revoke(token)

    def _exchange(self, form: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                grant_type, grant, access, refresh = self._oauth.exchange(form, self.clock())
            except OAuthRefused as refused:
                raise self._refusal(refused) from None
            return self._token_answer(grant.firm, access, refresh, from_code=grant_type == "authorization_code")

    def _check_user(self, firm: str, user: Any) -> None:
        raise NotImplementedError

    def _token_answer(self, firm: str, access: str, refresh: str, *, from_code: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _refusal(self, refused: OAuthRefused) -> Exception:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# State


@dataclass
class Faults:
    """Switchable misbehaviour every billing fake has, set with `state.set_faults(**kw)`."""

    fail_fraction_5xx: float = 0.0  # that share of API requests answer 503
    burst_429: int = 0  # the next N API requests answer 429 with Retry-After
    slow_seconds: float = 0.0  # every API answer is delayed this long
    drop_after_commit_fraction: float = 0.0  # that share of created entries is committed, then the socket drops
    seed: int = 0  # seeds the RNG behind the fractions; setting it restarts the sequence


F = TypeVar("F", bound=Faults)


class FakeBillingState(Generic[F]):
    """One lock over a fake's firms, its faults and their RNG, and its request statistics."""

    STATS: ClassVar[tuple[str, ...]] = (
        "requests", "rate_limited", "unauthorized", "server_errors_injected", "dropped_after_commit",
    )

    def __init__(self, faults: F, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._lock = threading.RLock()
        self._firms: dict[str, Any] = {}
        self._stats: Counter[str] = Counter()
        self._by_route: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()

    def set_faults(self, **changes: Any) -> F:
        with self._lock:
            for name, value in changes.items():
                if not hasattr(self.faults, name):
                    raise ValueError(f"unknown fault {name!r}")
                value = self._checked_fault(name, value)
                setattr(self.faults, name, value)
                if name == "seed":
                    self._rng = random.Random(value)
            return replace(self.faults)

    def _checked_fault(self, name: str, value: Any) -> Any:
        """The value to set, or ValueError; a fake with rules for its faults overrides this."""
        return value

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**{name: self._stats[name] for name in self.STATS},
                    "by_route": dict(self._by_route), "by_status": dict(self._by_status)}

    def reset_stats(self) -> None:
        with self._lock:
            for counter in self._counters():
                counter.clear()

    def _counters(self) -> list[Counter[str]]:
        return [self._stats, self._by_route, self._by_status]

    # -- counting and fault draws (callers of the underscored ones hold the lock) ------------------------------------

    def _count_request(self, route: str) -> None:
        self._stats["requests"] += 1
        self._by_route[route] += 1

    def _count_status(self, status: int) -> None:
        with self._lock:
            self._by_status[str(status)] += 1

    def _chance(self, fraction: float) -> bool:
        return bool(fraction) and self._rng.random() < fraction

    def _take_burst_429(self) -> bool:
        """Whether this request is one of the `burst_429` the faults still owe."""
        if self.faults.burst_429 <= 0:
            return False
        self.faults.burst_429 -= 1
        self._stats["rate_limited"] += 1
        return True

    def _take_injected_5xx(self) -> bool:
        if not self._chance(self.faults.fail_fraction_5xx):
            return False
        self._stats["server_errors_injected"] += 1
        return True

    def _take_drop(self) -> bool:
        """Whether the write just committed is answered by a dropped connection."""
        with self._lock:
            drop = self._chance(self.faults.drop_after_commit_fraction)
            if drop:
                self._stats["dropped_after_commit"] += 1
            return drop

    async def _finish(self, response: Response) -> Response:
        """Count the answer's status, then hold it back by the `slow_seconds` fault."""
        self._count_status(response.status_code)
        with self._lock:
            delay = float(self.faults.slow_seconds)
        if delay > 0:
            await asyncio.sleep(delay)
        return response

    # -- helpers -------------------------------------------------------------------------------------------------

    def _add_firm(self, key: str, make: Callable[[], Any]) -> Any:
        """The firm `make` builds, kept under `key`; ValueError when the key is taken."""
        with self._lock:
            if key in self._firms:
                raise ValueError(f"firm {key!r} already exists")
            firm = self._firms[key] = make()
            return firm

    def _firm(self, key: str) -> Any:
        try:
            return self._firms[key]
        except KeyError:
            raise KeyError(f"no firm {key!r}") from None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=timezone.utc).replace(microsecond=0)


class FakeBillingServer(BackgroundServer):
    """Runs a fake billing system under uvicorn in a background thread on 127.0.0.1; `base_url` is set once started,
    and `token_url` is its OAuth token endpoint."""

    app_factory: ClassVar[Callable[[Any], FastAPI]]
    server_name: ClassVar[str]
    token_path: ClassVar[str]

    def __init__(self, state: Any, port: int = 0, *, startup_timeout: float = 10.0) -> None:
        super().__init__(type(self).app_factory(state), port, name=self.server_name, startup_timeout=startup_timeout)
        self.state = state

    @property
    def token_url(self) -> str:
        return f"{self.base_url}{self.token_path}"
