"""What every billing adapter does the same way on the wire: exact JSON, readers for the values answers carry,
and one request loop (pacing, one token refresh, retries, and what each failure means for the caller).

An adapter keeps what is its system's own (paths, units, markers, error shapes, UNCONFIRMED assumptions) and hands
`BillingHttp` the few decisions that differ: which answers reject the token, how long a 429 waits without a
Retry-After, and what a refused request is called.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, Self, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from calltime import units
from calltime.billing.auth import AccessTokens
from calltime.billing.errors import (
    AmbiguousWriteError,
    AuthenticationError,
    BillingError,
    PermanentBillingError,
    TransientBillingError,
)
from calltime.billing.model import TimeEntryRequest
from calltime.billing.pacing import RateGate

# Exceptions raised before any byte of the request left this process: always safe to retry.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


# ---------------------------------------------------------------------------------------------------------------
# JSON with exact numbers


def encode_json(value: Any, system: str) -> str:
    """JSON text in which a Decimal is written as the exact number it holds (json.dumps cannot do that)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("money and quantities must be finite")
        return format(value, "f")
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{encode_json(v, system)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode_json(v, system) for v in value) + "]"
    if isinstance(value, float):
        raise TypeError(f"floats are not sent to {system}; use Decimal")
    return json.dumps(value)


def decode_json(content: bytes) -> Any:
    return json.loads(content, parse_float=Decimal)


def decode_or_none(content: bytes) -> Any:
    """The decoded body, or None when it is not JSON (an error page, an empty answer)."""
    try:
        return decode_json(content)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Values in answers


def to_decimal(value: Any, *, blank_is_zero: bool = True, invalid_is_zero: bool = False) -> Decimal:
    """A number from an answer. None (and "" unless `blank_is_zero` is off) is 0: an unset rate keeps the type and
    makes the gap visible. Text that is no number raises, or is 0 with `invalid_is_zero`."""
    if value is None or (blank_is_zero and value == ""):
        return Decimal("0")
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        if invalid_is_zero:
            return Decimal("0")
        raise


def parse_datetime(raw: Any) -> datetime | None:
    """An ISO 8601 stamp ("Z" allowed), one without an offset read as UTC; None when absent or unreadable."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """The same instant in UTC; a naive time is taken to be UTC already."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc)


def exact_hours(billed_seconds: int, system: str) -> Decimal:
    """`units.seconds_to_hours` for a system that takes decimal hours; what it refuses is a permanent error."""
    try:
        return units.seconds_to_hours(billed_seconds)
    except units.InexactDuration as exc:
        raise PermanentBillingError(f"{exc}; round the draft to a multiple of 36 s (0.01 h) before writing to {system}",
                                    error_type="InvalidDuration") from None
    except ValueError as exc:
        raise PermanentBillingError(str(exc), error_type="InvalidDuration") from None


def check_hours_echo(created: Mapping[str, Any], sent: Mapping[str, Any], system: str) -> None:
    """The created entry must say what was sent (`hours` and `rate`): a unit or rounding change is a billing error a
    human must see."""
    hours, rate = to_decimal(created.get("hours")), to_decimal(created.get("rate"))
    if hours != sent["hours"] or rate != sent["rate"]:
        raise PermanentBillingError(
            f"{system} stored time entry {created.get('id')} as {hours} h at {rate} (sent {sent['hours']} h at"
            f" {sent['rate']}); the entry exists and needs a human look", error_type="EchoMismatch")


class RecentWrites:
    """The newest writes whose answer may have been lost, by draft id, so that a bare find_entry(draft_id) can still
    narrow its search to where the entry would be."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._by_draft: OrderedDict[str, TimeEntryRequest] = OrderedDict()

    def remember(self, req: TimeEntryRequest) -> None:
        self._by_draft[req.draft_id] = req
        self._by_draft.move_to_end(req.draft_id)
        while len(self._by_draft) > self._limit:
            self._by_draft.popitem(last=False)

    def get(self, draft_id: str) -> TimeEntryRequest | None:
        return self._by_draft.get(draft_id)

    def forget(self, draft_id: str) -> None:
        self._by_draft.pop(draft_id, None)


def iana_zone(raw: str | None, aliases: Mapping[str, str]) -> str | None:
    """An IANA zone name for a system's zone value (an IANA name or one of `aliases`), None when it cannot be mapped."""
    if not raw:
        return None
    if raw in aliases:
        return aliases[raw]
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return raw


def int_id(value: str, what: str, system: str, *, error_type: str | None = None) -> int:
    """A system's integer id from the port's string id, or a permanent error naming what it was meant to be."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PermanentBillingError(f"{what} {value!r} is not a {system} id", error_type=error_type) from None


def retry_after_header(headers: httpx.Headers, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None when absent or unreadable."""
    raw = headers.get("Retry-After")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(raw).timestamp() - now)
        except (TypeError, ValueError):
            pass
    return None


def same_origin(raw: str, base: httpx.URL, system: str) -> httpx.URL:
    """A next-page URL the server gave, refused unless it is on the firm's own host: the token goes nowhere else."""
    url = httpx.URL(raw)
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        raise PermanentBillingError(f"{system} paging pointed to another host ({url.host})")
    return url


def bearer_headers(token: str, *, has_body: bool) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if has_body:
        headers["Content-Type"] = "application/json"
    return headers


# ---------------------------------------------------------------------------------------------------------------
# Answers: bodies and errors


def unreadable(response: httpx.Response, what: str, *, is_write: bool) -> TransientBillingError:
    """A success whose body cannot be read: after a write the record may exist, so look before writing again."""
    error = AmbiguousWriteError if is_write else TransientBillingError
    return error(f"{what}: HTTP {response.status_code} with an unreadable body", status=response.status_code)


def json_body(response: httpx.Response, what: str, *, is_write: bool = False) -> Any:
    try:
        return decode_json(response.content)
    except ValueError:
        raise unreadable(response, what, is_write=is_write) from None


def json_object(response: httpx.Response, what: str, *, is_write: bool = False) -> dict[str, Any]:
    body = decode_or_none(response.content)
    if not isinstance(body, dict):
        raise unreadable(response, what, is_write=is_write)
    return body


def client_error(
    response: httpx.Response, what: str, detail: str, *, rejected: bool | None = None,
    auth_error_type: str | None = None, error_type: str | None = None,
) -> PermanentBillingError:
    """A refused request: AuthenticationError when the token was rejected (by default: a 401), else permanent."""
    status = response.status_code
    text = f"{what}: HTTP {status}: {detail}"
    if status == 401 if rejected is None else rejected:
        return AuthenticationError(text, status=status, error_type=auth_error_type)
    return PermanentBillingError(text, status=status, error_type=error_type)


# ---------------------------------------------------------------------------------------------------------------
# The request loop


def _is_401(response: httpx.Response) -> bool:
    return response.status_code == 401


def _no_error_type(response: httpx.Response) -> str | None:
    return None


def _retry_after_or_one_second(headers: httpx.Headers, now: float, attempt: int) -> float:
    delay = retry_after_header(headers, now)
    return 1.0 if delay is None else delay


class HttpOptions(TypedDict, total=False):
    """The options every adapter takes for its HTTP side, passed on to `BillingHttp` (defaults there)."""

    http: httpx.AsyncClient | None  # None: the adapter makes its own client and closes it in aclose()
    rate_gate: RateGate | None  # share one between every client of one token; None: paced at the system's allowance
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[Any]]
    timeout: float
    max_rate_limit_retries: int
    max_read_retries: int
    backoff_base: float
    backoff_cap: float
    rng: Callable[[], float]  # draws the backoff jitter


class BillingHttp:
    """One billing system's side of every request through one token: paced, retried, and classified.

    Reads are retried after connection errors, 408 and 5xx (with jittered backoff) and after 429 (as long as the
    system asks). A write is sent once: when its answer may have been lost it raises AmbiguousWriteError, and the
    caller looks the record up before any retry. A rejected token is refreshed once, and even a write is sent again
    then, because the system refused it unread. Requests are paced by `rate_gate`, or else by a gate of its own
    allowing `limit` requests per `window_seconds` (None: only what the system's rate-limit headers say).
    """

    def __init__(
        self,
        system: str,
        tokens: AccessTokens,
        *,
        log: logging.Logger,
        client_error: Callable[[httpx.Response, str], BillingError],
        limit: int | None = None,
        window_seconds: float = 60.0,
        retry_after: Callable[[httpx.Headers, float, int], float] = _retry_after_or_one_second,
        is_rejection: Callable[[httpx.Response], bool] = _is_401,
        refresh_failed: Callable[[httpx.Response, str, AuthenticationError], BillingError] | None = None,
        server_error_type: Callable[[httpx.Response], str | None] = _no_error_type,
        observe_answers: bool = True,
        http: httpx.AsyncClient | None = None,
        rate_gate: RateGate | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        timeout: float = 10.0,
        max_rate_limit_retries: int = 3,
        max_read_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.system = system
        self.clock = clock
        self.sleep = sleep
        self._tokens = tokens
        self._gate = rate_gate or RateGate(clock, sleep, limit=limit, window_seconds=window_seconds)
        self._log = log
        self._client_error = client_error
        self._retry_after = retry_after
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient()
        self._timeout = httpx.Timeout(timeout)
        self._max_429 = max_rate_limit_retries
        self._max_read_retries = max_read_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._rng = rng
        self._is_rejection = is_rejection
        self._refresh_failed = refresh_failed
        self._server_error_type = server_error_type
        # Whether answers are reported to the gate (its sliding window then counts from each answer).
        self._observe = observe_answers

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def send(
        self, method: str, url: httpx.URL | str, *, params: Any = None, body: Any = None,
        headers: Mapping[str, str] | None = None, what: str | None = None, is_write: bool | None = None,
        accept: Collection[int] = (),
    ) -> httpx.Response:
        """The answer to one request: a 2xx, or a status in `accept`; anything else raises a BillingError.

        `what` names the request in errors and logs (default: method and path); `is_write` (default: not a GET)
        decides whether a lost answer may be retried."""
        what = what or f"{method} {httpx.URL(url).path}"
        is_write = method != "GET" if is_write is None else is_write
        content = encode_json(body, self.system).encode() if body is not None else None
        token = await self._tokens.bearer()
        refreshed = False
        rate_limited = retried = 0
        while True:
            await self._gate.before_request()
            try:
                response = await self._http.request(
                    method, url, params=params, content=content, timeout=self._timeout,
                    headers=bearer_headers(token, has_body=content is not None) | dict(headers or {}),
                )
            except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
                # Our own request was unsendable (bad URL or header). Not chained: h11's message can quote a
                # header, and the headers carry the token and any API key.
                raise PermanentBillingError(f"{what}: request could not be sent ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                if is_write and not isinstance(exc, NOT_SENT):
                    raise AmbiguousWriteError(
                        f"{what}: no answer after sending ({type(exc).__name__}); look up before retrying"
                    ) from exc
                if retried < self._max_read_retries:
                    retried += 1
                    await self._backoff(retried, what, type(exc).__name__)
                    continue
                raise TransientBillingError(f"{what}: {type(exc).__name__} after {retried} retries") from exc
            if self._observe:
                self._gate.observe(response.headers)
            status = response.status_code
            if not refreshed and self._is_rejection(response):
                # A rejected request was not processed, so even a write may be sent again with a fresh token.
                refreshed = True
                token = await self._refresh(token, response, what)
                continue
            if status == 429:
                if rate_limited >= self._max_429:
                    raise TransientBillingError(f"{what}: still rate limited after {rate_limited} retries", status=429)
                rate_limited += 1
                delay = self._retry_after(response.headers, self.clock(), rate_limited)
                self._log.warning("%s rate limited by %s; retrying in %.2fs", what, self.system, delay)
                await self.sleep(delay)
                # The system said when to come back; do not also wait on the 429's own Remaining: 0.
                self._gate.forget()
                continue
            if status >= 500 or status == 408:
                if is_write:
                    raise AmbiguousWriteError(
                        f"{what}: HTTP {status} after sending; look up before retrying", status=status,
                        error_type=self._server_error_type(response),
                    )
                if retried < self._max_read_retries:
                    retried += 1
                    await self._backoff(retried, what, f"HTTP {status}")
                    continue
                raise TransientBillingError(f"{what}: HTTP {status} after {retried} retries", status=status)
            if status in accept:
                return response
            if status >= 400:
                raise self._client_error(response, what)
            return response

    async def _refresh(self, token: str, response: httpx.Response, what: str) -> str:
        try:
            fresh = await self._tokens.after_rejection(token)
        except AuthenticationError as exc:
            if self._refresh_failed is None:
                raise
            raise self._refresh_failed(response, what, exc) from None
        self._log.info("%s: access token rejected; retrying once with a fresh one", what)
        return fresh

    async def _backoff(self, attempt: int, what: str, reason: str) -> None:
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
        delay = ceiling / 2 + self._rng() * ceiling / 2  # jitter keeps many workers from retrying in step
        self._log.warning("%s failed (%s); retry %d in %.2fs", what, reason, attempt, delay)
        await self.sleep(delay)


class WireClient:
    """`aclose` and `async with` for an adapter whose requests go through `self._wire`."""

    _wire: BillingHttp

    async def aclose(self) -> None:
        await self._wire.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
