"""Access tokens for the billing systems: one port, a static token for tests and the demo, and
OAuth 2.0 refresh for production.

`OAuthSession` refreshes ahead of expiry and after a 401. Refresh is shared safely by concurrent
workers: within a process an asyncio lock lets one coroutine refresh; across processes the
credential row is locked (`CredentialStore.exclusive`) and re-read, so a worker that waited
uses the token the first one obtained instead of refreshing again (some systems rotate the
refresh token, and a second refresh with the old one would fail).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from calltime.billing.errors import AuthenticationError, TransientBillingError
from calltime.credentials import CredentialStore, MissingCredential


class AccessTokens(Protocol):
    async def bearer(self) -> str:
        """A token valid now."""
        ...

    async def after_rejection(self, rejected: str) -> str:
        """A 401 answered `rejected`: a fresh token (unless another worker already got one), or
        AuthenticationError when none can be had (revoked grant: a human must re-authorise)."""
        ...


class StaticToken:
    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"

    async def bearer(self) -> str:
        return self._token

    async def after_rejection(self, rejected: str) -> str:
        raise AuthenticationError("the access token was rejected and cannot be refreshed", status=401)


class OAuthSession:
    """Tokens kept in the credential store as {access_token, refresh_token, expires_at}; the
    client id and secret as {client_id, client_secret} under `<name>.client`."""

    def __init__(self, store: CredentialStore, firm_id: str, name: str, token_url: str, *,
                 http: httpx.AsyncClient | None = None, refresh_margin_seconds: float = 300.0,
                 client_auth: str = "body", clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.firm_id = firm_id
        self.name = name
        self.token_url = token_url
        self.refresh_margin = refresh_margin_seconds
        self.client_auth = client_auth  # 'body' (Clio, MyCase) or 'basic' (Smokeball)
        self.clock = clock
        self._http = http or httpx.AsyncClient(timeout=15.0)
        self._lock = asyncio.Lock()
        self._cached: dict[str, Any] | None = None
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"OAuthSession(firm_id={self.firm_id!r}, name={self.name!r})"

    async def bearer(self) -> str:
        tokens = self._cached or (await self.store.get(self.firm_id, self.name)).value
        self._cached = dict(tokens)
        if self._expiring(tokens):
            return await self._refresh(stale=tokens["access_token"])
        return tokens["access_token"]

    async def after_rejection(self, rejected: str) -> str:
        return await self._refresh(stale=rejected)

    def _expiring(self, tokens: dict[str, Any]) -> bool:
        expires_at = tokens.get("expires_at")
        return expires_at is not None and float(expires_at) - self.refresh_margin <= self.clock()

    async def _refresh(self, stale: str) -> str:
        async with self._lock:
            # Read before the row lock is taken, so a refresh never holds two pool connections at once
            # (with a pool of one, or one exhausted by writers, the second would never come).
            client = await self._client()
            async with self.store.exclusive(self.firm_id, self.name) as (conn, current):
                tokens = dict(current.value)
                if tokens["access_token"] != stale and not self._expiring(tokens):
                    self._cached = tokens  # someone else refreshed while we waited
                    return tokens["access_token"]
                fresh = await self._exchange(tokens, client)
                await self.store.put(self.firm_id, self.name, fresh, conn=conn)
            self._cached = fresh
            self.refreshes += 1
            return fresh["access_token"]

    async def _client(self) -> dict[str, Any]:
        try:
            return dict((await self.store.get(self.firm_id, f"{self.name}.client")).value)
        except MissingCredential:
            # Without the app's id and secret no refresh is possible; retrying will not change that.
            raise AuthenticationError(f"no OAuth client credentials ({self.name}.client): the firm must"
                                      " re-authorise", status=401) from None

    async def _exchange(self, tokens: dict[str, Any], client: dict[str, Any]) -> dict[str, Any]:
        refresh_token = tokens.get("refresh_token")
        if not refresh_token:
            raise AuthenticationError("no refresh token: the firm must re-authorise", status=401)
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        auth = None
        if self.client_auth == "basic":
            auth = (client["client_id"], client["client_secret"])
        else:
            form |= {"client_id": client["client_id"], "client_secret": client["client_secret"]}
        try:
            response = await self._http.post(self.token_url, data=form, auth=auth)
        except httpx.HTTPError as exc:
            raise TransientBillingError(f"token refresh failed: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientBillingError(f"token refresh answered {response.status_code}",
                                        status=response.status_code)
        if response.status_code != 200:
            raise AuthenticationError(f"token refresh refused ({response.status_code}): the firm must"
                                      " re-authorise", status=response.status_code)
        body = response.json()
        return {
            "access_token": body["access_token"],
            # Clio keeps the refresh token; MyCase and Smokeball may rotate it.
            "refresh_token": body.get("refresh_token") or refresh_token,
            "expires_at": self.clock() + float(body.get("expires_in", 3600)),
        }
