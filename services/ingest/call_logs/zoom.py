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
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from calltime.ingest.call_logs.http import ApiClient, BearerToken, Clock, HttpSource, Sleep
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


class ZoomCallLogSource(HttpSource):
    """The account's call history, page by page. `credentials`: {client_id, client_secret} and
    optionally account_id (else `account.account_id`)."""

    provider = PROVIDER

    def __init__(self, account: Account, base_url: str, credentials: Mapping[str, Any],
                 http: httpx.AsyncClient | None = None, *, oauth_url: str | None = None,
                 page_size: int = MAX_PAGE_SIZE, sleep: Sleep = asyncio.sleep, clock: Clock = time.time) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        self._clock = clock  # wall time: it also dates an HTTP-date Retry-After
        token = BearerToken(self._fetch_token, clock=clock, refresh_margin=TOKEN_REFRESH_MARGIN_SECONDS)
        api = ApiClient("Zoom", http, timeout=DEFAULT_TIMEOUT_SECONDS, token=token,
                        max_retry_after=MAX_RETRY_AFTER_SECONDS, sleep=sleep, now=self._now)
        super().__init__(account, base_url, api)
        self.oauth_url = (oauth_url or (OAUTH_URL if self.base_url == API_URL else self.base_url)).rstrip("/")
        self._client_id = str(credentials.get("client_id") or "")
        self._client_secret = str(credentials.get("client_secret") or "")
        self._account_id = str(credentials.get("account_id") or account.account_id)
        self.page_size = page_size

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
        body = await self._api.request_json("GET", f"{self.base_url}{CALL_HISTORY_PATH}", params=params)
        if not isinstance(body, dict):
            raise CallLogError("call history answered with a non-object body", transient=False)
        return body

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), tz=timezone.utc)

    async def _fetch_token(self) -> tuple[str, float]:
        if not (self._client_id and self._client_secret and self._account_id):
            raise CallLogError("Zoom credentials need client_id, client_secret and account_id",
                               transient=False)
        return await self._api.fetch_token(
            "POST", f"{self.oauth_url}/oauth/token",
            params={"grant_type": "account_credentials", "account_id": self._account_id},
            auth=(self._client_id, self._client_secret),
        )


# The port's entry point; `options` go to `ZoomCallLogSource` (oauth_url, page_size, ...).
source = ZoomCallLogSource
