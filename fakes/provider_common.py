"""What the five phone-provider fakes do alike: deliver webhooks as a simulator, and serve an API
with OAuth-style access tokens, a per-token (or per-key) rate limit and JSON error answers.

Only mechanics live here. What each provider sends, signs and answers is written out in its own
fake, independently of the adapter that reads it, so that one cannot hide the other's bug.
"""

from __future__ import annotations

from calltime.fakes.rate_limits import SlidingWindow, retry_after  # noqa: F401 - re-exported for the phone fakes

import base64
import random
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def utc_text(moment: datetime, *, digits: int = 3, zone: str = "Z") -> str:
    """`2020-06-23T01:19:45.018Z`: `moment` in UTC with `digits` fractional digits (3, as most
    providers write; Graph writes 7), then `zone` as the provider spells UTC."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}".ljust(digits, "0")[:digits] + zone


# --- The simulator side ----------------------------------------------------------------------


class WebhookSimulator:
    """Posts one firm's webhooks to `webhook_url`. Pass `http` (e.g. an `httpx.AsyncClient` on
    an `ASGITransport`) to skip the network; otherwise a client of its own is opened on the first
    post (a simulator used only to write deliveries holds no connections) and closed by `aclose`."""

    def __init__(self, webhook_url: str, account_id: str, http: httpx.AsyncClient | None = None,
                 *, timeout: float = 5.0) -> None:
        self.webhook_url = webhook_url
        self.account_id = account_id
        self._http = http
        self._owns_http = http is None
        self._timeout = timeout

    def __repr__(self) -> str:  # the webhook secret stays out
        return f"{type(self).__name__}(webhook_url={self.webhook_url!r}, account_id={self.account_id!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout)
        return self._http

    async def _post(self, headers: Mapping[str, str], body: bytes) -> httpx.Response:
        return await self._client().post(self.webhook_url, content=body, headers=dict(headers))


def require_copies(duplicate_each: int) -> None:
    if duplicate_each < 1:
        raise ValueError("duplicate_each must be at least 1")


def arrange(deliveries: Sequence[T], duplicate_each: int = 1, shuffle: bool = False,
            rng: random.Random | None = None) -> list[T]:
    """Each delivery `duplicate_each` times in a row (a provider re-sending it), all scrambled
    when `shuffle`: no provider promises an order."""
    arranged = [delivery for delivery in deliveries for _ in range(duplicate_each)]
    if shuffle:
        (rng or random.Random()).shuffle(arranged)
    return arranged


# --- The API side ----------------------------------------------------------------------------


class TokenStore(dict[str, Any]):
    """Access tokens issued -> when each expires, on whatever clock the fake keeps (epoch or
    monotonic seconds, or aware datetimes). A dict, so tests can clear or inspect it."""

    def issue(self, expires_at: Any, *, nbytes: int = 24) -> str:
        token = secrets.token_urlsafe(nbytes)
        self[token] = expires_at
        return token

    def live(self, token: str, now: Any) -> bool:
        expires_at = self.get(token)
        return expires_at is not None and expires_at > now

    def expire_all(self, expired: Any) -> None:
        """Every token expires (`expired`: a moment already past on the fake's clock)."""
        for token in self:
            self[token] = expired


def error_answer(status: int, body: Mapping[str, Any], *, wait: float | None = None,
                 headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A JSON error in the provider's own `body` shape; `wait` adds a `Retry-After`."""
    sent = dict(headers or {})
    if wait is not None:
        sent["Retry-After"] = retry_after(wait)
    return JSONResponse(dict(body), status_code=status, headers=sent or None)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer …` header; "" when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(client id, secret) of an `Authorization: Basic …` header, or None."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, _, secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return client_id, secret


async def form_fields(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body, first value of each field."""
    return {key: values[0] for key, values in parse_qs((await request.body()).decode(errors="replace")).items()}
