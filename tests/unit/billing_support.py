"""Set-up the billing adapters' unit tests share: one fake clock, one draft to write, and a maker of clients that
closes every client it made."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import httpx

from calltime.billing.errors import AuthenticationError
from calltime.billing.model import TimeEntryRequest

# 2026-01-01T00:00:00Z: a multiple of 60, so the fakes' fixed rate windows start exactly at the fake clock's origin.
T0 = 1_767_225_600.0


class FakeClock:
    """One clock for the client, its tokens and the fake: the client's sleeps move time forward instantly."""

    def __init__(self, start: float = T0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], Any] | None = None  # called after each sleep, e.g. to lift a fault

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep()
        await asyncio.sleep(0)


def entry_request(matter_id: str, user_id: str, /, **overrides: Any) -> TimeEntryRequest:
    """A 12-minute call billed at 350.25 an hour, on that matter by that user unless `overrides` say otherwise."""
    request = TimeEntryRequest(
        draft_id="draft-0001", call_id="call-0001", matter_id=matter_id, user_id=user_id,
        entry_date=date(2026, 3, 2), billed_seconds=720, rate=Decimal("350.25"),
        narrative="Telephone call with client re: settlement offer.",
        call_started_at=datetime(2026, 3, 2, 15, 4, 11, tzinfo=timezone.utc), external_number="+16175550142",
    )
    return replace(request, **overrides)


class RefreshingTokens:
    """AccessTokens over a fake's real token endpoint (the client id and secret read from its state), counting
    refreshes: no credential store needed."""

    basic_auth = False  # send the client id and secret as HTTP Basic rather than in the form

    def __init__(self, token_url: str, state: Any, access: str, refresh: str | None) -> None:
        self.token_url, self.state = token_url, state
        self.access, self.refresh = access, refresh
        self.refreshes = 0

    async def bearer(self) -> str:
        return self.access

    async def after_rejection(self, rejected: str) -> str:
        if rejected != self.access:
            return self.access
        client = (self.state.client_id, self.state.client_secret)
        form = {"grant_type": "refresh_token", "refresh_token": self.refresh or ""}
        if not self.basic_auth:
            form |= {"client_id": client[0], "client_secret": client[1]}
        async with httpx.AsyncClient() as http:
            response = await http.post(self.token_url, data=form, auth=client if self.basic_auth else None)
        if response.status_code != 200:
            raise AuthenticationError("refresh refused: the firm must re-authorise", status=response.status_code)
        self.refreshes += 1
        body = response.json()
        self.access = body["access_token"]
        self.refresh = body.get("refresh_token") or self.refresh  # a system may keep the refresh token
        return self.access


class ClientMaker:
    """`make(tokens=None, **options)` builds an adapter on the fake clock against the fake; `async with` closes all."""

    def __init__(self, build: Callable[..., Any], base_url: str, tokens: Any, clock: FakeClock,
                 **defaults: Any) -> None:
        self._build, self._base_url, self._tokens = build, base_url, tokens
        self._defaults = {"clock": clock.time, "sleep": clock.sleep, **defaults}
        self._made: list[Any] = []

    def __call__(self, tokens: Any = None, **options: Any) -> Any:
        tokens = self._tokens if tokens is None else tokens
        client = self._build(self._base_url, tokens, **(self._defaults | options))
        self._made.append(client)
        return client

    async def __aenter__(self) -> ClientMaker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._made:
            await client.aclose()
