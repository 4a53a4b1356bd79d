"""Zoom Phone's call history, read for reconciliation (providers.md §3.5).

Auth is Server-to-Server OAuth: `POST {oauth}/oauth/token?grant_type=account_credentials&
account_id=...` with HTTP Basic `client_id:client_secret` gives a bearer token (about an hour).
The log is `GET /v2/phone/call_history` with `from`/`to` (GMT, at most a month per request),
`page_size` (max 300) and `next_page_token`. Each item becomes the `FinishedCall` the webhooks
give for that call (`calltime.ingest.providers.zoom.history_call`). Zoom's webhook subscriptions
do not expire (the endpoint is re-validated every 72 h instead), so there is nothing to renew.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from calltime.ingest.call_logs.port import CallLogError, CallLogPage, Subscription
from calltime.ingest.providers.model import Account, FinishedCall, InvalidNotification
from calltime.ingest.providers.zoom import history_call

PROVIDER = "zoom"
API_URL = "https://api.zoom.us"
OAUTH_URL = "https://zoom.us"  # production issues tokens on another host than the API
CALL_HISTORY_PATH = "/v2/phone/call_history"
MAX_PAGE_SIZE = 300
# "A month" per request; 28 days stays inside every calendar month.
MAX_WINDOW = timedelta(days=28)
TOKEN_REFRESH_MARGIN_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 60.0  # a longer wait (Zoom's daily cap) is left to the next sweep
DEFAULT_TIMEOUT_SECONDS = 15.0


def _zoom_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _windows(since: datetime, until: datetime) -> Iterator[tuple[datetime, datetime]]:
    start = since
    while start < until:
        end = min(start + MAX_WINDOW, until)
        yield start, end
        start = end


def _ceil_second(moment: datetime) -> datetime:
    floor = moment.replace(microsecond=0)
    return floor if floor == moment else floor + timedelta(seconds=1)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds to wait: delta-seconds or an HTTP date (Zoom's daily limit)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - now).total_seconds(), 0.0)


class ZoomCallLogSource:
    """The account's call history, page by page. `credentials`: {client_id, client_secret} and
    optionally account_id (else `account.account_id`)."""

    provider = PROVIDER

    def __init__(
        self,
        account: Account,
        base_url: str,
        credentials: Mapping[str, Any],
        http: httpx.AsyncClient | None = None,
        *,
        oauth_url: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        self.account = account
        self.base_url = base_url.rstrip("/")
        self.oauth_url = (oauth_url or (OAUTH_URL if self.base_url == API_URL else self.base_url)).rstrip("/")
        self._client_id = str(credentials.get("client_id") or "")
        self._client_secret = str(credentials.get("client_secret") or "")
        self._account_id = str(credentials.get("account_id") or account.account_id)
        self.page_size = page_size
        self._sleep = sleep
        self._clock = clock
        self._http = http or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT_SECONDS)
        self._owns_http = http is None
        self._token: str | None = None
        self._token_expires_at = 0.0

    def __repr__(self) -> str:
        return f"ZoomCallLogSource(firm_id={self.account.firm_id!r}, base_url={self.base_url!r})"

    async def pages(self, since: datetime, until: datetime) -> AsyncIterator[CallLogPage]:
        for start, end in _windows(since, until):
            page_token: str | None = None
            while True:
                body = await self._call_history(start, end, page_token)
                items = body.get("call_history")
                if items is None:
                    items = []
                if not isinstance(items, list):
                    raise CallLogError("call_history is not an array", transient=False)
                calls = tuple(c for c in map(self._finished, items) if c and start <= c.started_at < end)
                yield CallLogPage(records_read=len(items), calls=calls)
                page_token = body.get("next_page_token") or None
                if not isinstance(page_token, (str, type(None))):
                    raise CallLogError("next_page_token is not a string", transient=False)
                if page_token is None:
                    break

    async def renew_subscriptions(self, now: datetime, *, renew_within_seconds: float) -> list[Subscription]:
        """Zoom's event subscriptions belong to the app and never expire: nothing to renew."""
        return []

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _finished(self, item: Any) -> FinishedCall | None:
        try:
            return history_call(item, self.account)
        except InvalidNotification as error:
            raise CallLogError(f"malformed call-history record: {error}", transient=False) from None

    async def _call_history(self, start: datetime, end: datetime, page_token: str | None) -> dict[str, Any]:
        params = {
            "from": _zoom_time(start.replace(microsecond=0)),
            "to": _zoom_time(_ceil_second(end)),
            "page_size": str(self.page_size),
            "time_type": "start_time",
        }
        if page_token:
            params["next_page_token"] = page_token
        response = await self._authorised_get(CALL_HISTORY_PATH, params)
        try:
            body = response.json()
        except ValueError:
            raise CallLogError("call history answered with a non-JSON body", transient=True) from None
        if not isinstance(body, dict):
            raise CallLogError("call history answered with a non-object body", transient=False)
        return body

    async def _authorised_get(self, path: str, params: Mapping[str, str]) -> httpx.Response:
        """One GET: a fresh token once after a 401, the server's `Retry-After` once after a 429."""
        refreshed = waited = False
        while True:
            token = await self._bearer(force=refreshed)
            response = await self._send("GET", f"{self.base_url}{path}", params=params,
                                        headers={"Authorization": f"Bearer {token}"})
            if response.status_code == 401 and not refreshed:
                refreshed = True
                continue
            if response.status_code == 429 and not waited:
                waited = True
                await self._wait_retry_after(response)
                continue
            _raise_for_status(response, "call history")
            return response

    async def _wait_retry_after(self, response: httpx.Response) -> None:
        now = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        wait = retry_after_seconds(response.headers.get("Retry-After"), now)
        if wait is None:
            wait = 1.0
        if wait > MAX_RETRY_AFTER_SECONDS:
            raise CallLogError(f"rate limited for {wait:.0f} s", transient=True, status=429)
        await self._sleep(wait)

    async def _bearer(self, *, force: bool = False) -> str:
        if not force and self._token and self._clock() < self._token_expires_at - TOKEN_REFRESH_MARGIN_SECONDS:
            return self._token
        if not (self._client_id and self._client_secret and self._account_id):
            raise CallLogError("Zoom credentials need client_id, client_secret and account_id",
                               transient=False)
        response = await self._send(
            "POST", f"{self.oauth_url}/oauth/token",
            params={"grant_type": "account_credentials", "account_id": self._account_id},
            auth=(self._client_id, self._client_secret),
        )
        _raise_for_status(response, "token request")
        try:
            body = response.json()
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise CallLogError("token response without access_token", transient=True) from None
        if not isinstance(token, str) or not token:
            raise CallLogError("token response without access_token", transient=True)
        self._token = token
        self._token_expires_at = self._clock() + expires_in
        return token

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise CallLogError(f"{method} {url} timed out", transient=True) from None
        except httpx.HTTPError as error:
            raise CallLogError(f"{method} {url} failed: {type(error).__name__}", transient=True) from None


def _raise_for_status(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status < 400:
        return
    transient = status >= 500 or status in (408, 429)
    raise CallLogError(f"{what} answered {status}: {_reason(response)}", transient=transient, status=status)


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or body.get("error") or response.reason_phrase)
    return response.reason_phrase


def source(account: Account, base_url: str, credentials: Mapping[str, Any],
           http: httpx.AsyncClient | None = None, **options: Any) -> ZoomCallLogSource:
    """The port's entry point; `options` go to `ZoomCallLogSource` (oauth_url, page_size, ...)."""
    return ZoomCallLogSource(account, base_url, credentials, http, **options)
