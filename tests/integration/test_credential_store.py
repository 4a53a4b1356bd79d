"""Sealed credentials on the real database, and OAuth refresh against the fake Clio's token
endpoint: ahead of expiry, after a 401, once for two worker processes at the same moment, and a
clear failure when the firm has revoked the grant."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
import uuid
from decimal import Decimal

import httpx
import pytest

from calltime import db, onboarding
from calltime.billing.auth import OAuthSession
from calltime.billing.clio import ClioClient
from calltime.billing.errors import AuthenticationError
from calltime.credentials import CredentialCorrupt, CredentialStore, MissingCredential, Sealer
from calltime.demo.stack import CREDENTIALS_KEY
from calltime.fakes.clio import FakeClioServer, FakeClioState

CLIENT_ID, CLIENT_SECRET = "calltime-app", "app-secret-9d1f"
LIFETIME = 2_592_000  # Clio's documented expires_in


@pytest.fixture(scope="module")
async def pool(stack):
    pool = await db.create_pool(stack.database_url)
    yield pool
    await pool.close()


@pytest.fixture
async def firm_id(pool) -> str:
    firm = f"firm-{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await onboarding.create_firm(conn, firm_id=firm, name="Sealed & Co", billing_system="clio",
                                     billing_base_url="http://127.0.0.1:9", billing_credential_ref="unused")
    return firm


def store_on(pool) -> CredentialStore:
    return CredentialStore(pool, Sealer(CREDENTIALS_KEY))


# ---------------------------------------------------------------------------------------------------------------
# The store


async def test_put_get_and_versions(pool, firm_id: str) -> None:
    store = store_on(pool)
    first = await store.put(firm_id, "billing", {"access_token": "at-one", "expires_at": 100.5})
    second = await store.put(firm_id, "billing", {"access_token": "at-two", "expires_at": 200.5})
    read = await store.get(firm_id, "billing")
    assert (first.version, second.version, read.version) == (1, 2, 2)
    assert read.value == {"access_token": "at-two", "expires_at": 200.5}
    # Another name of the same firm is its own row with its own versions.
    other = await store.put(firm_id, "clio.webhook", {"secret": "whsec"})
    assert other.version == 1 and (await store.get(firm_id, "billing")).version == 2
    with pytest.raises(MissingCredential):
        await store.get(firm_id, "smokeball")


async def test_the_sealed_column_never_holds_the_plaintext(pool, firm_id: str) -> None:
    secrets = {"access_token": "at-PLAIN-4c7e1b", "refresh_token": "rt-PLAIN-90aa2f"}
    await store_on(pool).put(firm_id, "billing", secrets)
    await store_on(pool).put(firm_id, "billing", secrets | {"access_token": "at-PLAIN-second"})
    row = await pool.fetchrow("SELECT sealed, t::text AS whole FROM core.credentials t"
                              " WHERE firm_id = $1 AND name = 'billing'", firm_id)
    for secret in ("at-PLAIN-4c7e1b", "rt-PLAIN-90aa2f", "at-PLAIN-second"):
        assert secret.encode() not in bytes(row["sealed"])
        assert secret not in row["whole"] and secret.encode().hex() not in row["whole"]
    assert b"access_token" not in bytes(row["sealed"])  # not even the field names


async def test_a_row_copied_to_another_firm_does_not_open_there(pool, firm_id: str) -> None:
    store = store_on(pool)
    await store.put(firm_id, "billing", {"access_token": "at-mine"})
    other = f"{firm_id}-other"
    async with pool.acquire() as conn:
        await onboarding.create_firm(conn, firm_id=other, name="Other LLP", billing_system="clio",
                                     billing_base_url="http://127.0.0.1:9", billing_credential_ref="unused")
        await conn.execute("INSERT INTO core.credentials (firm_id, name, sealed) SELECT $2, name, sealed"
                           " FROM core.credentials WHERE firm_id = $1 AND name = 'billing'", firm_id, other)
    with pytest.raises(CredentialCorrupt):
        await store.get(other, "billing")
    # And a store with another key reads nothing of anyone's.
    with pytest.raises(CredentialCorrupt):
        await CredentialStore(pool, Sealer(base64.b64encode(os.urandom(32)).decode())).get(firm_id, "billing")


# ---------------------------------------------------------------------------------------------------------------
# OAuth against the fake Clio


class FakeClio:
    def __init__(self, state: FakeClioState, server: FakeClioServer, user: int) -> None:
        self.state, self.server, self.user = state, server, user

    @property
    def token_url(self) -> str:
        return self.server.base_url + "/oauth/token"

    def token_requests(self) -> int:
        return self.state.stats()["by_route"].get("POST /oauth/token", 0)

    def api_requests(self) -> int:
        return self.state.stats()["requests"]


@pytest.fixture
def clio():
    state = FakeClioState(rate_limit=10_000)
    state.add_firm("acme", "Acme LLP")
    user = state.add_user("acme", name="Ada Counsel", rate=Decimal("300"))
    state.add_oauth_app(CLIENT_ID, CLIENT_SECRET)
    with FakeClioServer(state) as server:
        yield FakeClio(state, server, user)


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=15.0) as client:
        yield client


async def connect(pool, firm_id: str, clio: FakeClio, *, expires_in: float | None = None) -> dict:
    """Onboard the firm's grant as the OAuth callback would; `expires_in` overrides when the stored
    access token is considered to run out (the fake still honours its own lifetime)."""
    grant = clio.state.issue_tokens("acme", clio.user, CLIENT_ID)
    expires_at = time.time() + (grant["expires_in"] if expires_in is None else expires_in)
    async with pool.acquire() as conn:
        await onboarding.connect_billing_oauth(
            store_on(pool), conn, firm_id=firm_id, access_token=grant["access_token"],
            refresh_token=grant["refresh_token"], expires_at=expires_at, client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET, token_url=clio.token_url)
    return grant


async def test_a_token_about_to_expire_is_refreshed_before_it_is_used(pool, firm_id, clio, http) -> None:
    grant = await connect(pool, firm_id, clio, expires_in=120)  # inside the 300 s margin
    session = OAuthSession(store_on(pool), firm_id, "billing", clio.token_url, http=http)
    async with ClioClient(clio.server.base_url, session) as client:
        me = await client.who_am_i()
        again = await client.who_am_i()
    stored = await store_on(pool).get(firm_id, "billing")
    assert me.user_id == again.user_id == str(clio.user)
    assert clio.token_requests() == 1 and session.refreshes == 1
    assert clio.state.stats()["unauthorized"] == 0  # the old token was never sent
    assert stored.value["access_token"] != grant["access_token"]
    assert stored.value["refresh_token"] == grant["refresh_token"]  # Clio keeps the refresh token
    assert stored.value["expires_at"] == pytest.approx(time.time() + LIFETIME, abs=60)
    assert stored.version == 2


async def test_a_fresh_token_is_used_without_asking_for_another(pool, firm_id, clio, http) -> None:
    grant = await connect(pool, firm_id, clio)
    session = OAuthSession(store_on(pool), firm_id, "billing", clio.token_url, http=http)
    assert await session.bearer() == grant["access_token"]
    assert clio.token_requests() == 0 and session.refreshes == 0


async def test_a_401_refreshes_once_and_the_request_is_retried(pool, firm_id, clio, http, caplog) -> None:
    grant = await connect(pool, firm_id, clio)
    clio.state.expire_token(grant["access_token"])  # Clio ended it early; our expires_at still says fine
    session = OAuthSession(store_on(pool), firm_id, "billing", clio.token_url, http=http)
    with caplog.at_level(logging.DEBUG):
        async with ClioClient(clio.server.base_url, session) as client:
            me = await client.who_am_i()
    fresh = (await store_on(pool).get(firm_id, "billing")).value["access_token"]
    assert me.user_id == str(clio.user)
    assert clio.token_requests() == 1 and session.refreshes == 1
    assert clio.state.stats()["unauthorized"] == 1 and clio.api_requests() == 2
    assert fresh != grant["access_token"]
    for secret in (grant["access_token"], grant["refresh_token"], fresh, CLIENT_SECRET):
        assert secret not in caplog.text


async def test_two_workers_refreshing_at_once_make_one_refresh(pool, firm_id, clio, stack) -> None:
    """Two worker processes, each with its own pool, session and HTTP client, see the token expire
    at the same moment: one refreshes, the other waits on the credential row and uses the result."""
    grant = await connect(pool, firm_id, clio, expires_in=30)
    # Slow answers keep the first refresh in flight while the second worker arrives.
    clio.state.set_faults(slow_seconds=0.5)
    pools = [await db.create_pool(stack.database_url, max_size=3) for _ in range(2)]
    https = [httpx.AsyncClient(timeout=15.0) for _ in range(2)]
    try:
        sessions = [OAuthSession(store_on(p), firm_id, "billing", clio.token_url, http=h)
                    for p, h in zip(pools, https, strict=True)]
        tokens = await asyncio.wait_for(asyncio.gather(*(s.bearer() for s in sessions)), 60)
        stored = await store_on(pool).get(firm_id, "billing")
        assert clio.token_requests() == 1
        assert sorted(s.refreshes for s in sessions) == [0, 1]
        assert tokens[0] == tokens[1] == stored.value["access_token"] != grant["access_token"]
        assert stored.version == 2  # written once
        # The token they share works.
        clio.state.set_faults(slow_seconds=0)
        async with ClioClient(clio.server.base_url, sessions[1]) as client:
            assert (await client.who_am_i()).user_id == str(clio.user)
    finally:
        clio.state.set_faults(slow_seconds=0)
        for h in https:
            await h.aclose()
        for p in pools:
            await p.close()


async def test_two_workers_rejected_with_the_same_token_make_one_refresh(pool, firm_id, clio, stack) -> None:
    grant = await connect(pool, firm_id, clio)
    clio.state.expire_token(grant["access_token"])
    clio.state.set_faults(slow_seconds=0.3)
    pools = [await db.create_pool(stack.database_url, max_size=3) for _ in range(2)]
    https = [httpx.AsyncClient(timeout=15.0) for _ in range(2)]
    try:
        clients = [ClioClient(clio.server.base_url, OAuthSession(store_on(p), firm_id, "billing", clio.token_url,
                                                                 http=h), http=h)
                   for p, h in zip(pools, https, strict=True)]
        users = await asyncio.wait_for(asyncio.gather(*(c.who_am_i() for c in clients)), 60)
        stored = await store_on(pool).get(firm_id, "billing")
        assert [u.user_id for u in users] == [str(clio.user)] * 2
        assert clio.token_requests() == 1
        assert clio.state.stats()["unauthorized"] == 2  # each worker's first try; no second 401
        assert stored.version == 2 and stored.value["access_token"] != grant["access_token"]
    finally:
        clio.state.set_faults(slow_seconds=0)
        for h in https:
            await h.aclose()
        for p in pools:
            await p.close()


async def test_a_revoked_grant_fails_with_an_authentication_error(pool, firm_id, clio, http, caplog) -> None:
    grant = await connect(pool, firm_id, clio)
    clio.state.revoke_grant(grant["refresh_token"])  # the firm disconnected calltime in Clio
    session = OAuthSession(store_on(pool), firm_id, "billing", clio.token_url, http=http)
    with caplog.at_level(logging.DEBUG):
        async with ClioClient(clio.server.base_url, session) as client:
            with pytest.raises(AuthenticationError) as raised:
                await client.who_am_i()
    stored = await store_on(pool).get(firm_id, "billing")
    assert raised.value.status == 401
    assert "re-authorise" in str(raised.value)
    assert clio.token_requests() == 1 and clio.api_requests() == 1  # one refresh tried, no retry loop
    assert stored.version == 1 and stored.value["access_token"] == grant["access_token"]  # nothing overwritten
    for secret in (grant["access_token"], grant["refresh_token"], CLIENT_SECRET):
        assert secret not in str(raised.value) and secret not in caplog.text


async def test_an_expiring_token_with_a_revoked_grant_fails_before_any_api_call(pool, firm_id, clio, http) -> None:
    grant = await connect(pool, firm_id, clio, expires_in=10)
    clio.state.revoke_grant(grant["refresh_token"])
    session = OAuthSession(store_on(pool), firm_id, "billing", clio.token_url, http=http)
    with pytest.raises(AuthenticationError, match="re-authorise"):
        await session.bearer()
    assert clio.token_requests() == 1 and clio.api_requests() == 0


async def test_a_refresh_needs_only_one_pool_connection(firm_id, clio, http, stack, pool) -> None:
    await connect(pool, firm_id, clio, expires_in=10)
    single = await db.create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        session = OAuthSession(store_on(single), firm_id, "billing", clio.token_url, http=http)
        token = await asyncio.wait_for(session.bearer(), 20)
    finally:
        await single.close()
    assert token == (await store_on(pool).get(firm_id, "billing")).value["access_token"]
    assert clio.token_requests() == 1


async def test_missing_app_credentials_are_an_authentication_error_not_a_crash(pool, firm_id, clio, http) -> None:
    await connect(pool, firm_id, clio, expires_in=10)
    await pool.execute("DELETE FROM core.credentials WHERE firm_id = $1 AND name = 'billing.client'", firm_id)
    session = OAuthSession(store_on(pool), firm_id, "billing", clio.token_url, http=http)
    with pytest.raises(AuthenticationError, match="billing.client"):
        await session.bearer()
    assert clio.token_requests() == 0
