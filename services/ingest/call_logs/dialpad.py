"""Dialpad's call log for reconciliation: `GET /api/v2/call` (providers.md §4.5).

The list holds only concluded calls, newest first, one item per leg (a `CallProto`, the same
shape as the webhook event), paged by an opaque `cursor`, filtered by `started_after` /
`started_before` in UTC ms since the epoch. Auth is the company-admin API key as a Bearer token
(credentials `{"api_key": ...}`), 1200 requests per minute. Each item goes through the webhook
adapter's own conversion, so both paths give the same `provider_call_id` (the firm user's leg
`call_id`), seconds and numbers. Dialpad subscriptions do not expire: nothing to renew.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from calltime.ingest.call_logs.http import ApiClient, HttpSource, Sleep
from calltime.ingest.call_logs.port import CallLogError, CallLogPage, Subscription
from calltime.ingest.providers import dialpad as adapter
from calltime.ingest.providers.model import Account, FinishedCall, InvalidNotification

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://dialpad.com"
CALLS_PATH = "/api/v2/call"
REQUEST_TIMEOUT_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 60.0  # longer than this: give up now, the next sweep retries

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def window_params(since: datetime, until: datetime) -> dict[str, str]:
    """The query for calls started in [since, until).

    UNCONFIRMED (providers.md §4.5): whether `started_after` / `started_before` are inclusive.
    The window asked for is one ms wider than needed on the left and ends at `until`, which
    covers [since, until) either way; `pages` then keeps only calls starting inside it.
    """
    return {"started_after": str(_epoch_ms(since) - 1), "started_before": str(_epoch_ms(until))}


def _epoch_ms(moment: datetime) -> int:
    return (moment.astimezone(timezone.utc) - _EPOCH) // timedelta(milliseconds=1)


class DialpadCallLog(HttpSource):
    provider = "dialpad"

    def __init__(self, account: Account, base_url: str, api_key: str, *,
                 http: httpx.AsyncClient | None = None, sleep: Sleep = asyncio.sleep) -> None:
        # The API key is the bearer token itself: nothing to refresh, so a 401 stands at once.
        api = ApiClient("Dialpad", http, timeout=REQUEST_TIMEOUT_SECONDS, max_retry_after=MAX_RETRY_AFTER_SECONDS,
                        sleep=sleep)
        super().__init__(account, base_url, api)
        self._api_key = api_key

    async def pages(self, since: datetime, until: datetime) -> AsyncIterator[CallLogPage]:
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError("since and until must be timezone-aware")
        query = window_params(since, until)
        seen_cursors: set[str] = set()
        while True:
            body = await self._get(CALLS_PATH, query)
            items = body["items"]
            calls = (self._finished(item, since, until) for item in items)
            yield CallLogPage(records_read=len(items), calls=tuple(c for c in calls if c is not None))
            cursor = body.get("cursor")
            if not cursor or not items:
                return
            if cursor in seen_cursors:
                raise CallLogError("Dialpad repeated a page cursor", transient=True)
            seen_cursors.add(cursor)
            query = {**query, "cursor": cursor}

    def _finished(self, item: Any, since: datetime, until: datetime) -> FinishedCall | None:
        if not isinstance(item, dict):
            log.warning("dialpad call-log item is not an object; skipped")
            return None
        try:
            leg = adapter.parse_leg(item)
            if not adapter.is_concluded(leg):
                return None
            call = adapter.to_finished_call(leg, self.account)
        except InvalidNotification as error:
            # One unreadable record must not stop the sweep over all the others.
            log.warning("dialpad call-log item skipped: %s", error)
            return None
        if call is None or not since <= call.started_at < until:
            return None
        return call

    async def _get(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        response = await self._api.request("GET", self.base_url + path, params=dict(params), headers=headers)
        return _page_body(self._api.json(response, f"GET {path}"), response.status_code)

    async def renew_subscriptions(
        self, now: datetime, *, renew_within_seconds: float
    ) -> list[Subscription]:
        # Dialpad webhooks and call subscriptions have no documented expiry (providers.md §4.4).
        return []


def _page_body(body: Any, status: int) -> dict[str, Any]:
    if (not isinstance(body, dict) or not isinstance(body.get("items") or [], list)
            or not isinstance(body.get("cursor") or "", str)):
        raise CallLogError("Dialpad call log answered an unexpected shape", transient=False,
                           status=status)
    return {"items": body.get("items") or [], "cursor": body.get("cursor")}


def source(account: Account, base_url: str, credentials: Mapping[str, Any],
           http: httpx.AsyncClient | None = None, *, sleep: Sleep = asyncio.sleep) -> DialpadCallLog:
    api_key = credentials.get("api_key")
    if not isinstance(api_key, str) or not api_key:
        raise CallLogError("the dialpad.api credential has no api_key", transient=False)
    return DialpadCallLog(account, base_url or DEFAULT_BASE_URL, api_key, http=http, sleep=sleep)
