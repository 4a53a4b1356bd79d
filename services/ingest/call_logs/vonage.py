"""Vonage Business Communications pull side: the Reports API call log for reconciliation, and the
VIS webhook registrations, renewed before they lapse (providers.md §5.A).

* Auth: OAuth 2.0 password grant at `POST {base}/token` with the firm's integration user
  (credentials `{client_id, client_secret, username, password}`; the username as the
  tutorial writes it, `first.last@vbc.prod`). The token is cached until shortly before
  `expires_in`; a 401 fetches a new one once.
* Call log: `GET {base}/t/vbc.prod/reports/v1/accounts/{account_id}/call-logs` with
  `start:gte` / `start:lte` (`yyyy-MM-dd HH:mm:ss`, UTC, both inclusive) and `page` /
  `page_size`; HAL answer with `_embedded.call_logs[]` and `total_pages`. `length` is seconds.
* Webhooks: `GET {base}/t/vbc.prod/vis/v1/self/webhooks`, `PUT .../self/webhooks/{id}/renew`.
  Registrations expire (`expireAt`, about 10 days); a webhook that failed (5 retries unanswered)
  gets no more events until renewed, so a failed one is renewed whatever its expiry.

Each record becomes the same `FinishedCall` the webhook path (`providers.vonage`) builds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from calltime.ingest.call_logs.http import ApiClient, BearerToken, Clock, HttpSource, Sleep
from calltime.ingest.call_logs.port import CallLogError, CallLogPage, Subscription
from calltime.ingest.providers.model import Account, FinishedCall
from calltime.ingest.providers.vonage import number_e164

log = logging.getLogger(__name__)

PROVIDER = "vonage"
TOKEN_PATH = "/token"
CALL_LOGS_PATH = "/t/vbc.prod/reports/v1/accounts/{account_id}/call-logs"
WEBHOOKS_PATH = "/t/vbc.prod/vis/v1/self/webhooks"
REPORTS_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PAGE_SIZE = 100  # the documented default is 10; no maximum is documented
TOKEN_REFRESH_MARGIN_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 60.0  # a longer wait is left to the next sweep
REQUEST_TIMEOUT_SECONDS = 15.0
_CREDENTIAL_KEYS = ("client_id", "client_secret", "username", "password")


# --- The UNCONFIRMED link between a Reports record and a VIS event -----------------------------


def reports_call(record: Mapping[str, Any], account: Account) -> FinishedCall | None:
    """The `FinishedCall` of one Reports call-log record, or None when no firm user is on it.

    UNCONFIRMED (providers.md §5.A): nothing documents which Reports fields match which VIS
    fields. Assumed here, and nowhere else:
    * the record's `id` is the call id VIS puts before the last `_` of `externalId` (both look
      like UUIDs), so webhook and pull name a call alike;
    * `source_user` / `destination_user` carry the user id VIS calls `userId` (the examples,
      `JSmith` vs `1234`, are illustrations; if they are login names a directory is needed);
    * the firm user is the destination of an `Inbound` record and the source of an `Outbound`
      one; the call is internal when both ends are users of the account;
    * `result` `Answered` / `Rejected` mean what VIS `ANSWERED` / `REJECTED` mean; any other
      value (missed, cancelled, voicemail, ...) is a missed call, as VIS reports voicemail as
      `MISSED`, so both paths agree.
    Raises KeyError/TypeError/ValueError on a record that cannot be read.
    """
    inbound = str(record["direction"]).lower() == "inbound"
    firm, other = ("destination", "source") if inbound else ("source", "destination")
    user = _text(record.get(f"{firm}_user"))
    if user is None or user not in account.attorneys_by_user:
        return None
    internal = _text(record.get(f"{other}_user")) is not None
    other_number = _text(record.get("from" if inbound else "to"))
    seconds = int(record.get("length") or 0)
    if seconds < 0:
        raise ValueError(f"negative length {seconds}")
    return FinishedCall(
        provider_call_id=str(record["id"]),
        direction="internal" if internal else ("inbound" if inbound else "outbound"),
        external_number_e164=number_e164(other_number, account.phone_region),
        external_number_raw=other_number,
        internal_number=_text(record.get(f"{firm}_extension")),
        provider_user_id=user,
        started_at=parse_reports_time(record["start"]),
        ended_at=parse_reports_time(record["end"]),
        duration_seconds=seconds,
        result=_RESULTS.get(str(record.get("result", "")).lower(), "missed"),
    )


_RESULTS = {"answered": "answered", "rejected": "rejected"}


def _text(value: Any) -> str | None:
    """Reports types numbers and extensions as strings but its examples send JSON numbers."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def parse_reports_time(text: str) -> datetime:
    """`2019-01-01 00:00:00`, UTC per the query-parameter docs."""
    return datetime.strptime(text, REPORTS_TIME_FORMAT).replace(tzinfo=timezone.utc)


def reports_window(since: datetime, until: datetime) -> tuple[str, str]:
    """`start:gte` / `start:lte` for [since, until): both bounds are inclusive and in whole
    seconds, so the lower one rounds up and the upper one is the last second before `until`."""
    since = since.astimezone(timezone.utc)
    first = since.replace(microsecond=0)
    if first < since:
        first += timedelta(seconds=1)
    last = (until.astimezone(timezone.utc) - timedelta(microseconds=1)).replace(microsecond=0)
    return first.strftime(REPORTS_TIME_FORMAT), last.strftime(REPORTS_TIME_FORMAT)


# --- The client ------------------------------------------------------------------------------


class VonageCallLogs(HttpSource):
    """`CallLogSource` for one firm's VBC account."""

    provider = PROVIDER

    def __init__(self, account: Account, base_url: str, credentials: Mapping[str, Any],
                 http: httpx.AsyncClient | None = None, *, sleep: Sleep = asyncio.sleep,
                 clock: Clock = time.monotonic, page_size: int = PAGE_SIZE) -> None:
        missing = [key for key in _CREDENTIAL_KEYS if not credentials.get(key)]
        if missing:
            raise ValueError(f"vonage.api credentials lack {', '.join(missing)}")
        token = BearerToken(self._fetch_token, clock=clock, refresh_margin=TOKEN_REFRESH_MARGIN_SECONDS)
        # A 429 that names no wait is not guessed at: the next sweep comes soon enough.
        api = ApiClient("Vonage", http, timeout=REQUEST_TIMEOUT_SECONDS, token=token,
                        max_retry_after=MAX_RETRY_AFTER_SECONDS, default_retry_after=None, sleep=sleep)
        super().__init__(account, base_url, api)
        self._credentials = {key: str(credentials[key]) for key in _CREDENTIAL_KEYS}
        self.page_size = page_size

    async def pages(self, since: datetime, until: datetime) -> AsyncIterator[CallLogPage]:
        first, last = reports_window(since, until)
        url = self.base_url + CALL_LOGS_PATH.format(account_id=self.account.account_id)
        page = 1
        while True:
            params = {"start:gte": first, "start:lte": last, "page": page, "page_size": self.page_size}
            body = await self._json("GET", url, params=params)
            records = _call_logs(body)
            yield CallLogPage(records_read=len(records), calls=self._calls(records, since, until))
            if not records or page >= _total_pages(body, len(records), self.page_size, page):
                return
            page += 1

    def _calls(self, records: list[Any], since: datetime, until: datetime) -> tuple[FinishedCall, ...]:
        calls = []
        for record in records:
            try:
                call = reports_call(record, self.account)
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                log.warning("unreadable Vonage call-log record skipped",
                            extra={"error": f"{type(error).__name__}: {error}"})
                continue
            if call is not None and since <= call.started_at < until:
                calls.append(call)
        return tuple(calls)

    async def renew_subscriptions(self, now: datetime, *, renew_within_seconds: float) -> list[Subscription]:
        url = self.base_url + WEBHOOKS_PATH
        listed = await self._json("GET", url)
        if not isinstance(listed, list):
            raise CallLogError("webhook list is not a JSON array", transient=True)
        margin = timedelta(seconds=renew_within_seconds)
        subscriptions = []
        for webhook in listed:
            if not isinstance(webhook, dict) or webhook.get("id") is None:
                continue
            if _needs_renewal(webhook, now, margin):
                webhook = await self._json("PUT", f"{url}/{webhook['id']}/renew")
            subscriptions.append(Subscription(str(webhook["id"]), _expire_at(webhook)))
        return subscriptions

    # -- HTTP --

    async def _json(self, method: str, url: str, *, params: Mapping[str, Any] | None = None) -> Any:
        return await self._api.request_json(method, url, params=params)

    async def _fetch_token(self) -> tuple[str, float]:
        # A refused password grant (400/401/403) is permanent: check the vonage.api credential.
        form = {"grant_type": "password", **self._credentials}
        return await self._api.fetch_token("POST", self.base_url + TOKEN_PATH, data=form)


# The port's entry point; `options` (sleep, clock, page_size) are for tests.
source = VonageCallLogs


def _call_logs(body: Any) -> list[Any]:
    if not isinstance(body, dict):
        raise CallLogError("call-log answer is not a JSON object", transient=True)
    embedded = body.get("_embedded") or {}
    records = embedded.get("call_logs") if isinstance(embedded, dict) else None
    return records if isinstance(records, list) else []


def _total_pages(body: Mapping[str, Any], read: int, page_size: int, page: int) -> int:
    # The official tutorial reads `total_page`; the schema says `total_pages`.
    total = body.get("total_pages", body.get("total_page"))
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        return int(total)
    return page + 1 if read >= page_size else page


def _needs_renewal(webhook: Mapping[str, Any], now: datetime, margin: timedelta) -> bool:
    statistics = webhook.get("statistics")
    if isinstance(statistics, dict) and statistics.get("failed") is True:
        return True
    expires_at = _expire_at(webhook)
    return expires_at is not None and expires_at - now <= margin


def _expire_at(webhook: Mapping[str, Any]) -> datetime | None:
    text = webhook.get("expireAt")
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=moment.tzinfo or timezone.utc).astimezone(timezone.utc)
