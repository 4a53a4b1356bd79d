"""Microsoft Graph call records, read for reconciliation, and the callRecord subscriptions
renewed before they lapse (providers.md §2.4, §2.5).

Auth is the client-credentials grant of the firm's Entra app (`CallRecords.Read.All`,
application permission): `POST {token_url}` with client_id, client_secret,
scope=https://graph.microsoft.com/.default. `credentials` holds `client_id`, `client_secret`,
and optionally `tenant_id` (default: the account id) and `token_url` (default:
`{base_url}/{tenant}/oauth2/v2.0/token`, the fake's layout; production passes
`https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`).

Every record is read through the same pure function the webhook path uses
(`calltime.ingest.providers.graph.call_from_record`), from the same expanded GET
(`fetch_record`), so both paths report a call identically.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from calltime.ingest.call_logs.http import ApiClient, BearerToken, Clock, HttpSource, Sleep
from calltime.ingest.call_logs.port import CallLogError, CallLogPage, Subscription
from calltime.ingest.providers import graph as adapter
from calltime.ingest.providers.model import Account, FinishedCall, InvalidNotification

PROVIDER = "graph"
SCOPE = "https://graph.microsoft.com/.default"
CALL_RECORDS = "/v1.0/communications/callRecords"
SUBSCRIPTIONS = "/v1.0/subscriptions"
RECORD_EXPAND = "sessions($expand=segments)"
# callRecord subscriptions live at most 4230 minutes (providers.md §2.4). Ask for a little less:
# our clock may run ahead of Graph's, and an expiry past the maximum is refused.
MAX_SUBSCRIPTION_LIFETIME = timedelta(minutes=4230)
RENEWAL_CLOCK_MARGIN = timedelta(minutes=5)
TOKEN_REFRESH_MARGIN_SECONDS = 300.0
MAX_RETRY_AFTER_SECONDS = 60.0  # a longer wait is the next sweep's job
REQUEST_TIMEOUT_SECONDS = 30.0


class GraphCallLogSource(HttpSource):
    provider = PROVIDER

    def __init__(self, account: Account, base_url: str, credentials: Mapping[str, Any],
                 http: httpx.AsyncClient | None = None, *, page_size: int | None = None,
                 sleep: Sleep = asyncio.sleep, clock: Clock = time.monotonic) -> None:
        client_id, client_secret = credentials.get("client_id"), credentials.get("client_secret")
        if not (isinstance(client_id, str) and client_id and isinstance(client_secret, str) and client_secret):
            raise CallLogError("graph credentials need a client_id and a client_secret", transient=False)
        token = BearerToken(self._fetch_token, clock=clock, refresh_margin=TOKEN_REFRESH_MARGIN_SECONDS)
        api = ApiClient("Graph", http, timeout=REQUEST_TIMEOUT_SECONDS, token=token,
                        max_retry_after=MAX_RETRY_AFTER_SECONDS, sleep=sleep)
        super().__init__(account, base_url, api)
        tenant = credentials.get("tenant_id") or account.account_id
        self.token_url = credentials.get("token_url") or f"{self.base_url}/{quote(tenant, safe='')}/oauth2/v2.0/token"
        self._client_id = client_id
        self._client_secret = client_secret
        self._page_size = page_size

    # --- Reading call records ---------------------------------------------------------------

    async def pages(self, since: datetime, until: datetime) -> AsyncIterator[CallLogPage]:
        """Records that started in [since, until), as Graph pages the list (`@odata.nextLink`);
        each record is then fetched expanded, since the list omits sessions."""
        since, until = _utc(since), _utc(until)
        url: str | None = self.base_url + CALL_RECORDS
        params: dict[str, str] | None = {
            "$filter": f"startDateTime ge {graph_time(since)} and startDateTime lt {graph_time(until)}"
        }
        while url is not None:
            page = await self._call("GET", url, params=params, headers=self._page_headers())
            items = _list(page, "value")
            calls = [c for item in items if (c := await self._listed_call(item, since, until))]
            yield CallLogPage(records_read=len(items), calls=tuple(calls))
            url, params = _next_link(page, "@odata.nextLink"), None

    async def _listed_call(self, item: Any, since: datetime, until: datetime) -> FinishedCall | None:
        record_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(record_id, str):
            raise CallLogError("a listed callRecord has no id", transient=False)
        try:
            record = await self.fetch_record(record_id)
        except CallLogError as error:
            if error.status == 404:
                return None  # fell out of the 30-day retention between list and get
            raise
        try:
            call = adapter.call_from_record(record, self.account)
        except InvalidNotification as error:
            raise CallLogError(f"callRecord {record_id} is malformed: {error}", transient=False) from None
        if call is None or not since <= call.started_at < until:
            return None
        return call

    async def fetch_record(self, record_id: str) -> bytes:
        """The JSON of `GET /communications/callRecords/{id}?$expand=sessions($expand=segments)`
        with every page of sessions merged in (Graph pages them by 60). 404 (unknown, or past
        the 30-day retention) raises CallLogError(transient=False, status=404)."""
        url = f"{self.base_url}{CALL_RECORDS}/{quote(record_id, safe='')}"
        record = await self._call("GET", url, params={"$expand": RECORD_EXPAND})
        sessions = list(_list(record, "sessions")) if record.get("sessions") is not None else []
        link = _next_link(record, "sessions@odata.nextLink")
        while link is not None:
            page = await self._call("GET", link)
            sessions.extend(_list(page, "value"))
            link = _next_link(page, "@odata.nextLink")
        record.pop("sessions@odata.nextLink", None)
        if "sessions" in record or sessions:
            record["sessions"] = sessions
        return json.dumps(record).encode()

    def _page_headers(self) -> dict[str, str]:
        return {"Prefer": f"odata.maxpagesize={self._page_size}"} if self._page_size else {}

    # --- Subscriptions ----------------------------------------------------------------------

    async def renew_subscriptions(self, now: datetime, *, renew_within_seconds: float) -> list[Subscription]:
        """PATCH every callRecords subscription expiring within the margin to the longest
        lifetime Graph allows. A subscription Graph no longer knows (404: it lapsed and was
        deleted) is left out of the answer: it must be created again, with a handshake."""
        now = _utc(now)
        margin = timedelta(seconds=renew_within_seconds)
        renewed: list[Subscription] = []
        for raw in await self._subscriptions():
            subscription = _subscription(raw)
            if subscription.expires_at is not None and subscription.expires_at - now > margin:
                renewed.append(subscription)
                continue
            fresh = await self._renew(subscription.subscription_id, now)
            if fresh is not None:
                renewed.append(fresh)
        return renewed

    async def _subscriptions(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        url: str | None = self.base_url + SUBSCRIPTIONS
        while url is not None:
            page = await self._call("GET", url)
            found.extend(s for s in _list(page, "value") if _is_call_records(s))
            url = _next_link(page, "@odata.nextLink")
        return found

    async def _renew(self, subscription_id: str, now: datetime) -> Subscription | None:
        expires = now + MAX_SUBSCRIPTION_LIFETIME - RENEWAL_CLOCK_MARGIN
        url = f"{self.base_url}{SUBSCRIPTIONS}/{quote(subscription_id, safe='')}"
        try:
            answer = await self._call("PATCH", url, json_body={"expirationDateTime": graph_time(expires)})
        except CallLogError as error:
            if error.status == 404:
                return None
            raise
        answered = _subscription({"id": subscription_id, **answer}) if answer.get("expirationDateTime") else None
        return answered or Subscription(subscription_id, expires)

    # --- HTTP -------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self._require_own_host(url)
        body = await self._api.request_json(method, url, params=params, json=json_body,
                                            headers={"Accept": "application/json", **(headers or {})})
        if not isinstance(body, dict):
            raise CallLogError("Graph answered JSON that is not an object", transient=True)
        return body

    def _require_own_host(self, url: str) -> None:
        """Paging links come from response bodies; the bearer token goes only to our Graph host."""
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
            raise CallLogError(f"refusing to send the token to {theirs.netloc!r}", transient=False)

    async def _fetch_token(self) -> tuple[str, float]:
        form = {
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "scope": SCOPE,
            "grant_type": "client_credentials",
        }
        return await self._api.fetch_token("POST", self.token_url, data=form, headers={"Accept": "application/json"})


# The port's entry point: source(account, base_url, credentials, http=None, **options).
source = GraphCallLogSource


# --- Pure helpers ----------------------------------------------------------------------------


def graph_time(moment: datetime) -> str:
    """`2024-03-05T14:30:07.1234560Z`: UTC with Graph's seven fractional digits."""
    moment = _utc(moment)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond * 10:07d}Z"


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(timezone.utc)


def _list(container: Mapping[str, Any], key: str) -> list[Any]:
    value = container.get(key)
    if not isinstance(value, list):
        raise CallLogError(f"Graph answered without a {key} array", transient=False)
    return value


def _next_link(container: Mapping[str, Any], key: str) -> str | None:
    link = container.get(key)
    return link if isinstance(link, str) and link else None


def _is_call_records(subscription: Any) -> bool:
    if not isinstance(subscription, dict):
        return False
    resource = subscription.get("resource")
    return isinstance(resource, str) and resource.strip("/").lower().startswith("communications/callrecords")


def _subscription(raw: Mapping[str, Any]) -> Subscription:
    subscription_id, expires = raw.get("id"), raw.get("expirationDateTime")
    if not isinstance(subscription_id, str) or not subscription_id:
        raise CallLogError("a subscription has no id", transient=False)
    if expires is None:
        return Subscription(subscription_id, None)
    try:
        ticks = adapter.parse_graph_time(str(expires))
    except ValueError:
        raise CallLogError(f"subscription {subscription_id} has an unreadable expiry", transient=False) from None
    return Subscription(subscription_id, adapter.ticks_to_datetime(ticks))
