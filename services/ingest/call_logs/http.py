"""The HTTP every call-log source speaks the same way: one API call under calltime's retry
policy, the OAuth access token it carries, and failures sorted into `CallLogError`s.

The policy, whatever the provider:

* a 401 gets one fresh token and one more try (the token was revoked or expired early); a
  second 401 stands;
* a 429 is waited out once, for as long as its `Retry-After` asks, unless that is longer than
  the source may hold up a sweep: then it gives up at once, transient, for the next sweep;
* timeouts, unreachable hosts, 5xx, 408 and 429 are transient (a later sweep may succeed);
  every other 3xx/4xx is not (credentials, permissions, a wrong URL: someone must act);
* a body that is not JSON is transient: gateways answer outages with HTML pages.

Each source keeps what is its own: how it gets a token, its URLs and paging, and how it reads
its records. Secrets travel in headers, forms and Basic auth only, never in a message.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from calltime.ingest.call_logs.port import CallLogError
from calltime.ingest.providers.model import Account

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_SECONDS = 1.0  # a 429 without a readable Retry-After
DEFAULT_TOKEN_LIFETIME_SECONDS = 3600.0  # a token answer without a usable expires_in
_MAX_REASON_CHARS = 200

Sleep = Callable[[float], Awaitable[Any]]
Clock = Callable[[], float]


def is_transient(status: int) -> bool:
    """Whether a later sweep may get another answer to the same request."""
    return status >= 500 or status in (408, 429)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds to wait from `now`: delta-seconds or an HTTP date (RFC 9110
    §10.2.3; an ISO 8601 time is read too). None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        when = _date(text)
        return None if when is None else max((when - now).total_seconds(), 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _date(text: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)  # HTTP dates are GMT


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _what(method: str, url: str) -> str:
    """`GET /v2/phone/call_history`: the request as messages name it, without host or query
    (paging tokens and ids travel there)."""
    try:
        return f"{method} {urlsplit(url).path}"
    except ValueError:  # a malformed link from a response body
        return method


def _lifetime(value: Any) -> float:
    """`expires_in` as seconds: a JSON number or a numeric string; anything else, the default."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return DEFAULT_TOKEN_LIFETIME_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_TOKEN_LIFETIME_SECONDS
    return seconds if math.isfinite(seconds) else DEFAULT_TOKEN_LIFETIME_SECONDS


class BearerToken:
    """An OAuth access token, fetched by `fetch` (-> token, lifetime in seconds) and reused until
    `refresh_margin` seconds before it expires on `clock`."""

    def __init__(self, fetch: Callable[[], Awaitable[tuple[str, float]]], *,
                 clock: Clock = time.monotonic, refresh_margin: float = 60.0) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = refresh_margin
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "BearerToken(...)"

    async def current(self, *, rejected: str | None = None) -> str:
        """A token valid now; a new one if `rejected` (refused by the API) is still the current
        one: a concurrent request may already have replaced it."""
        async with self._lock:
            if self._token is None or self._token == rejected or self._clock() >= self._expires_at:
                token, lifetime = await self._fetch()
                self._token, self._expires_at = token, self._clock() + lifetime - self._margin
            return self._token


class ApiClient:
    """One provider's API as a call-log source reads it (see the module docstring).

    `provider` names it in messages. `max_retry_after`: the longest Retry-After waited out;
    `default_retry_after`: the wait for a 429 that names none (None: give up at once). `now` is
    the wall clock an HTTP-date Retry-After is measured against. With `token`, every request
    carries it as a Bearer token and a 401 fetches a new one once.
    """

    def __init__(
        self,
        provider: str,
        http: httpx.AsyncClient | None,
        *,
        timeout: float,
        max_retry_after: float,
        default_retry_after: float | None = DEFAULT_RETRY_AFTER_SECONDS,
        token: BearerToken | None = None,
        sleep: Sleep = asyncio.sleep,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.provider = provider
        self.http = http or httpx.AsyncClient(timeout=timeout)
        self._owns_http = http is None
        self.token = token
        self._max_retry_after = max_retry_after
        self._default_retry_after = default_retry_after
        self._sleep = sleep
        self._now = now

    def __repr__(self) -> str:
        return f"ApiClient(provider={self.provider!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      **kwargs: Any) -> httpx.Response:
        """One API call under the policy; the answer, whose status is below 300."""
        what = _what(method, url)
        rejected: str | None = None
        refreshed = waited = False
        while True:
            sent = dict(headers or {})
            if self.token is not None:
                token = await self.token.current(rejected=rejected)
                sent["Authorization"] = f"Bearer {token}"
            response = await self.send(method, url, headers=sent, **kwargs)
            if response.status_code == 401 and self.token is not None and not refreshed:
                refreshed, rejected = True, token
                continue
            if response.status_code == 429 and not waited:
                waited = True
                await self._wait(response)
                continue
            return self.checked(response, what)

    async def request_json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self.request(method, url, **kwargs)
        return self.json(response, _what(method, url))

    async def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One HTTP exchange as is (no token, no retry); only a failure to get an answer raises."""
        what = _what(method, url)
        try:
            return await self.http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise CallLogError(f"{self.provider} timed out on {what}", transient=True) from None
        except httpx.HTTPError as error:
            raise CallLogError(f"{self.provider} unreachable on {what}: {type(error).__name__}",
                               transient=True) from None

    async def fetch_token(self, method: str, url: str, **kwargs: Any) -> tuple[str, float]:
        """(access token, lifetime in seconds) from an OAuth token endpoint. A refused
        credential (4xx) is permanent: the firm must issue a new one."""
        what = _what(method, url)
        body = self.json(self.checked(await self.send(method, url, **kwargs), what), what)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise CallLogError(f"{self.provider} answered {what} without an access_token", transient=True)
        return token, _lifetime(body.get("expires_in"))

    def checked(self, response: httpx.Response, what: str) -> httpx.Response:
        status = response.status_code
        if status < 300:
            return response
        raise CallLogError(f"{self.provider} answered {status} to {what}: {_reason(response)}",
                           transient=is_transient(status), status=status)

    def json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise CallLogError(f"{self.provider} answered {what} with a body that is not JSON",
                               transient=True, status=response.status_code) from None

    async def _wait(self, response: httpx.Response) -> None:
        wait = retry_after_seconds(response.headers.get("Retry-After"), self._now())
        if wait is None:
            wait = self._default_retry_after
        if wait is None:
            raise CallLogError(f"{self.provider} is rate-limiting without a Retry-After; left to the next sweep",
                               transient=True, status=429)
        if wait > self._max_retry_after:
            raise CallLogError(f"{self.provider} asks to wait {wait:.0f}s, longer than a sweep may wait",
                               transient=True, status=429)
        log.info("%s rate limit reached; waiting %.1fs as Retry-After asks", self.provider, wait)
        await self._sleep(wait)


def _reason(response: httpx.Response) -> str:
    """The provider's own short reason for a refusal, if its body gives one."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict):
        nested = body.get("error")
        candidates = [body.get(k) for k in ("message", "error_description", "reason", "error", "errorMessage")]
        candidates.append(nested.get("message") if isinstance(nested, dict) else None)
        for candidate in candidates:
            if isinstance(candidate, str) and candidate:
                return candidate[:_MAX_REASON_CHARS]
    return response.reason_phrase


class HttpSource:
    """What every call-log source has alike: the firm's account, the API's base URL and the
    `ApiClient` it closes. Its repr names the firm, never a credential."""

    provider: str

    def __init__(self, account: Account, base_url: str, api: ApiClient) -> None:
        self.account = account
        self.base_url = base_url.rstrip("/")
        self._api = api

    def __repr__(self) -> str:
        return f"{type(self).__name__}(firm_id={self.account.firm_id!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        await self._api.aclose()
