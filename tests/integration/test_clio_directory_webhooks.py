"""Clio's webhooks keep the matcher's directory fresh: the fake Clio (over real HTTP) creates,
handshakes, signs and delivers; the receiver and the subscription manager run against the real
database. The receiver is served by its own router in a bare FastAPI app (the matcher's lifespan
needs Kafka); the last test runs the real matcher process and lets the fake deliver to it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from calltime import db, onboarding
from calltime.billing.clio import ClioClient
from calltime.billing.connect import BillingClients
from calltime.billing.model import DirectoryContact
from calltime.demo.stack import stack_credentials
from calltime.fakes.clio import FakeClioServer, FakeClioState
from calltime.matcher import directory
from calltime.matcher.app import sync_all_periodically
from calltime.matcher.clio_hooks import CREDENTIAL, ClioHooks, webhook_router
from calltime.matcher.domain import MatchOutcome, decide
from calltime.secrets import EnvironmentSecrets

PUBLIC_URL = "https://matcher.calltime.test"
OLD_NUMBER, NEW_NUMBER = "+16175550142", "+16175550199"
_firm_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def clio():
    state = FakeClioState(rate_limit=10_000)
    with FakeClioServer(state) as server:
        yield SimpleNamespace(state=state, base_url=server.base_url)


@pytest.fixture(scope="module")
async def pool(stack):
    pool = await db.create_pool(stack.database_url)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
def secrets():
    return {}


class Firm(SimpleNamespace):
    async def outcome(self, number: str) -> MatchOutcome:
        async with self.pool.acquire() as conn:
            return decide(await directory.lookup(conn, self.id, number), direction="inbound").outcome

    async def deliver(self) -> list:
        return await self.clio.deliver_webhooks(self.http)

    def hook(self, model: str) -> dict:
        [found] = [w for w in self.clio.webhooks(self.id) if w["model"] == model]
        return found

    async def post(self, body: bytes, headers: dict, firm_id: str | None = None) -> httpx.Response:
        return await self.http.post(f"{PUBLIC_URL}/billing-webhooks/clio/{firm_id or self.id}",
                                    content=body, headers=headers)


async def add_firm(clio, pool, secrets, *, public_url: str | None = PUBLIC_URL) -> Firm:
    firm_id = f"firm-hooks-{next(_firm_numbers)}"
    token = f"token-{firm_id}"
    state = clio.state
    state.add_firm(firm_id, "Hooks & Co")
    state.add_user(firm_id, name="Ada Counsel", rate=Decimal("300"), tokens=[token])
    contact = state.add_contact(firm_id, name="Jane Client", is_client=True, phone_numbers=["(617) 555-0142"])
    matter = state.add_matter(firm_id, display_number="00001", description="Client lease", client_id=contact)
    async with pool.acquire() as conn:
        await onboarding.create_firm(conn, firm_id=firm_id, name="Hooks & Co", billing_system="clio",
                                     billing_base_url=clio.base_url, billing_credential_ref=f"clio-{firm_id}")
    secrets["CALLTIME_SECRET_CLIO_" + firm_id.upper().replace("-", "_")] = token
    credentials = stack_credentials(pool)
    hooks = ClioHooks(pool, credentials, BillingClients(credentials, EnvironmentSecrets(secrets)),
                      public_url=public_url, debounce=0.05)
    app = FastAPI()
    app.state.clio_hooks = hooks
    app.include_router(webhook_router())
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return Firm(id=firm_id, token=token, clio=state, base_url=clio.base_url, pool=pool, hooks=hooks,
                http=http, contact=contact, matter=matter, credentials=credentials)


@pytest.fixture
async def firm(clio, pool, secrets):
    firm = await add_firm(clio, pool, secrets)
    yield firm
    await firm.hooks.aclose()
    await firm.http.aclose()
    await firm.hooks.clients.aclose()


@pytest.fixture
async def subscribed(firm):
    """Synced once, with both webhooks created and enabled by their handshakes."""
    await firm.hooks.sync_directory(firm.id)
    await firm.hooks.ensure_subscriptions(firm.id)
    assert {d.status_code for d in await firm.deliver()} == {200}
    assert {w["status"] for w in firm.clio.webhooks(firm.id)} == {"enabled"}
    return firm


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_body(record_id: int, event: str, webhook_id: int) -> bytes:
    return json.dumps({"data": {"id": record_id, "etag": '"1"'},
                       "meta": {"event": event, "webhook_id": webhook_id}}).encode()


async def test_missing_webhooks_are_created_sealed_and_enabled_by_their_handshake(firm, pool, caplog):
    caplog.set_level(logging.INFO, logger="calltime.matcher")
    before = datetime.now(timezone.utc)

    report = await firm.hooks.ensure_subscriptions(firm.id)

    listed = firm.clio.webhooks(firm.id)
    assert sorted(w["model"] for w in listed) == ["contact", "matter"] and len(report.created) == 2
    assert {w["url"] for w in listed} == {f"{PUBLIC_URL}/billing-webhooks/clio/{firm.id}"}
    for webhook in listed:
        expires_at = datetime.fromisoformat(webhook["expires_at"])
        assert before + timedelta(days=29) < expires_at <= before + timedelta(days=31)
    assert {w["status"] for w in listed} == {"pending"}
    # Sealed: the store opens to Clio's secrets, the row holds none of them in the clear.
    stored = await firm.hooks.stored(firm.id)
    assert {i: (h.model, h.secret) for i, h in stored.items()} == {
        w["id"]: (w["model"], w["shared_secret"]) for w in listed}
    sealed = bytes(await pool.fetchval("SELECT sealed FROM core.credentials WHERE firm_id = $1 AND name = $2",
                                       firm.id, CREDENTIAL))
    assert all(w["shared_secret"].encode() not in sealed for w in listed)
    assert "secret" not in repr(stored) and listed[0]["shared_secret"] not in repr(stored)

    handshakes = await firm.deliver()

    assert [(d.kind, d.status_code) for d in handshakes] == [("handshake", 200)] * 2
    assert {w["status"] for w in firm.clio.webhooks(firm.id)} == {"enabled"}
    again = await firm.hooks.ensure_subscriptions(firm.id)
    assert (again.created, again.renewed, again.activated) == ((), (), ())
    logged = [vars(r) for r in caplog.records]
    assert [r["msg"] for r in logged].count("clio webhook handshake answered") == 2
    assert all(w["shared_secret"] not in str(r) for w in listed for r in logged)


async def test_a_handshake_we_hold_no_secret_for_is_confirmed_with_clio_and_a_forged_one_refused(firm):
    async with ClioClient(firm.base_url, firm.token) as client:
        made = await client.create_webhook(firm.hooks.url(firm.id), "contact", ["updated"], "id,etag")
    assert await firm.hooks.stored(firm.id) == {}

    [handshake] = await firm.deliver()
    forged = await firm.post(b'{"data":{"id":1}}', {"X-Hook-Secret": "planted-by-someone-else"})
    elsewhere = await firm.post(b'{"data":{"id":1}}', {"X-Hook-Secret": made.shared_secret}, "no-such-firm")

    assert handshake.status_code == 200 and firm.hook("contact")["status"] == "enabled"
    assert {i: h.secret for i, h in (await firm.hooks.stored(firm.id)).items()} == {made.id: made.shared_secret}
    assert forged.status_code == 401 and "x-hook-secret" not in forged.headers
    assert elsewhere.status_code == 404
    assert {i: h.secret for i, h in (await firm.hooks.stored(firm.id)).items()} == {made.id: made.shared_secret}


async def test_a_signed_phone_change_reaches_the_directory_without_the_periodic_sync(subscribed):
    firm = subscribed
    assert await firm.outcome(OLD_NUMBER) is MatchOutcome.SINGLE_MATTER

    firm.clio.update_contact(firm.id, firm.contact, phone_numbers=["617-555-0199"])
    [delivery] = await firm.deliver()
    await firm.hooks.refresher.idle()

    assert (delivery.kind, delivery.status_code) == ("updated", 200)
    assert firm.hooks.refresher.completed == 1  # the only sync after the first one: the webhook's
    assert await firm.outcome(NEW_NUMBER) is MatchOutcome.SINGLE_MATTER
    assert await firm.outcome(OLD_NUMBER) is MatchOutcome.UNKNOWN_NUMBER


async def test_forged_or_malformed_deliveries_are_refused_and_change_nothing(subscribed, pool):
    firm = subscribed
    contact_hook, matter_hook = firm.hook("contact"), firm.hook("matter")
    deletion = event_body(firm.contact, "deleted", contact_hook["id"])
    other = event_body(firm.contact, "updated", contact_hook["id"])
    assert other != deletion

    answers = {
        "unsigned": await firm.post(deletion, {}),
        "wrong key": await firm.post(deletion, {"X-Hook-Signature": sign("guessed", deletion)}),
        "other body": await firm.post(deletion, {"X-Hook-Signature": sign(contact_hook["shared_secret"], other)}),
        "other hook's key": await firm.post(
            deletion, {"X-Hook-Signature": sign(matter_hook["shared_secret"], deletion)}),
        "unknown firm": await firm.post(
            deletion, {"X-Hook-Signature": sign(contact_hook["shared_secret"], deletion)}, "no-such-firm"),
        "not json": await firm.post(b"{not json", {"X-Hook-Signature": sign(contact_hook["shared_secret"],
                                                                             b"{not json")}),
    }
    await firm.hooks.refresher.idle()

    assert {name: r.status_code for name, r in answers.items()} == {
        "unsigned": 401, "wrong key": 401, "other body": 401, "other hook's key": 401,
        "unknown firm": 404, "not json": 400}
    assert await firm.outcome(OLD_NUMBER) is MatchOutcome.SINGLE_MATTER
    assert await pool.fetchval("SELECT count(*) FROM directory.deletions WHERE firm_id = $1", firm.id) == 0
    assert firm.hooks.refresher.completed == 0


async def test_a_deleted_contact_or_matter_disappears_and_a_stale_sync_does_not_bring_it_back(subscribed, pool):
    firm = subscribed
    firm.clio.delete_contact(firm.id, firm.contact)
    [delivery] = await firm.deliver()

    # Applied before the answer, with no sync needed (an incremental sync cannot see deletions).
    assert (delivery.kind, delivery.status_code) == ("deleted", 200)
    assert await firm.outcome(OLD_NUMBER) is MatchOutcome.UNKNOWN_NUMBER
    async with pool.acquire() as conn:
        # A sync that read the contact just before it was deleted writes it back...
        stale = DirectoryContact(str(firm.contact), "Jane Client", True, ("(617) 555-0142",), None)
        async with conn.transaction():
            await directory.save_contact(conn, firm.id, stale, "US")
        assert await firm.outcome(OLD_NUMBER) is MatchOutcome.UNKNOWN_NUMBER  # ...and is ignored;
        # one whose write raced the deletion is removed at the end of the next sync.
        await conn.execute("INSERT INTO directory.contacts VALUES ($1, $2, 'Jane Client', true)",
                           firm.id, str(firm.contact))
        await conn.execute("INSERT INTO directory.contact_numbers VALUES ($1, $2, $3, '(617) 555-0142')",
                           firm.id, OLD_NUMBER, str(firm.contact))
        assert await firm.outcome(OLD_NUMBER) is MatchOutcome.SINGLE_MATTER  # the raced write, visible
    report = await firm.hooks.sync_directory(firm.id)
    assert report.incremental and await firm.outcome(OLD_NUMBER) is MatchOutcome.UNKNOWN_NUMBER

    # The fake cannot delete matters: Clio's delivery is signed here with the matter webhook's secret.
    other = firm.clio.add_contact(firm.id, name="Kim Client", is_client=True, phone_numbers=["(617) 555-0177"])
    second = firm.clio.add_matter(firm.id, display_number="00002", client_id=other)
    await firm.deliver()
    await firm.hooks.refresher.idle()
    assert await firm.outcome("+16175550177") is MatchOutcome.SINGLE_MATTER
    matter_hook = firm.hook("matter")
    body = event_body(second, "deleted", matter_hook["id"])
    answer = await firm.post(body, {"X-Hook-Signature": sign(matter_hook["shared_secret"], body)})
    assert answer.status_code == 200
    assert await firm.outcome("+16175550177") is MatchOutcome.CLIENT_NO_MATTER


async def test_a_webhook_near_expiry_is_renewed_and_a_missing_one_is_created(subscribed):
    firm = subscribed
    contact_hook, matter_hook = firm.hook("contact"), firm.hook("matter")
    now = datetime.now(timezone.utc)
    async with ClioClient(firm.base_url, firm.token) as client:
        await client.renew_webhook(contact_hook["id"], now + timedelta(days=1))
    async with httpx.AsyncClient(base_url=firm.base_url, headers={"Authorization": f"Bearer {firm.token}"}) as raw:
        assert (await raw.delete(f"/api/v4/webhooks/{matter_hook['id']}.json")).status_code == 204

    report = await firm.hooks.ensure_subscriptions(firm.id)

    assert report.renewed == (contact_hook["id"],) and report.activated == ()
    renewed = datetime.fromisoformat(firm.hook("contact")["expires_at"])
    assert now + timedelta(days=29) < renewed <= now + timedelta(days=31)
    [created] = report.created
    new_matter_hook = firm.hook("matter")
    assert new_matter_hook["id"] == created != matter_hook["id"] and new_matter_hook["status"] == "pending"
    assert [(d.kind, d.status_code) for d in await firm.deliver()] == [("handshake", 200)]
    assert firm.hook("matter")["status"] == "enabled"
    assert set(await firm.hooks.stored(firm.id)) == {contact_hook["id"], created}  # the gone one is forgotten


async def test_replicas_upkeeping_at_once_create_each_webhook_once(firm, clio, pool, secrets):
    replica = ClioHooks(pool, firm.credentials, BillingClients(firm.credentials, EnvironmentSecrets(secrets)),
                        public_url=PUBLIC_URL)
    try:
        await asyncio.gather(firm.hooks.ensure_subscriptions(firm.id), replica.ensure_subscriptions(firm.id))
    finally:
        await replica.clients.aclose()

    assert await _models(firm) == ["contact", "matter"]


async def test_a_missed_handshake_is_completed_by_activation(firm):
    await firm.hooks.ensure_subscriptions(firm.id)
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(503))) as down:
        await firm.clio.deliver_webhooks(down)  # our endpoint was down when Clio shook hands
    assert {w["status"] for w in firm.clio.webhooks(firm.id)} == {"pending"}

    report = await firm.hooks.ensure_subscriptions(firm.id)

    assert sorted(report.activated) == sorted(w["id"] for w in firm.clio.webhooks(firm.id))
    assert {w["status"] for w in firm.clio.webhooks(firm.id)} == {"enabled"} and report.created == ()


async def test_a_failed_webhook_sync_loses_nothing_the_periodic_sync_catches_it(subscribed):
    firm = subscribed
    firm.clio.set_faults(fail_fraction_5xx=1.0)
    try:
        firm.clio.update_contact(firm.id, firm.contact, phone_numbers=["617-555-0199"])
        [delivery] = await firm.deliver()
        await firm.hooks.refresher.idle()
    finally:
        firm.clio.set_faults(fail_fraction_5xx=0.0)
    assert delivery.status_code == 200 and firm.hooks.refresher.failed == 1
    assert await firm.outcome(NEW_NUMBER) is MatchOutcome.UNKNOWN_NUMBER

    periodic = asyncio.create_task(sync_all_periodically(
        SimpleNamespace(pool=firm.pool), firm.hooks.clients, 3600, firm.hooks))
    try:
        await wait_for(lambda: firm.outcome(NEW_NUMBER), MatchOutcome.SINGLE_MATTER)
    finally:
        periodic.cancel()
        await asyncio.gather(periodic, return_exceptions=True)


async def wait_for(probe, expected, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while (value := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {value!r} after {timeout:.0f} s"
        await asyncio.sleep(0.1)
    return value


class ToProcess(httpx.AsyncBaseTransport):
    """Sends what the fake addresses to the public https URL to the matcher process's local port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_matcher_process_subscribes_and_follows_a_webhook(stack, clio, pool, secrets):
    firm = await add_firm(clio, pool, secrets)
    await firm.http.aclose()
    stack.extra_env.update(secrets)
    stack.extra_env.update({"CALLTIME_MATCHER_PUBLIC_URL": PUBLIC_URL,
                            "CALLTIME_DIRECTORY_SYNC_SECONDS": "3600"})
    try:
        await stack.start_services(("matcher",))
        # Its first round syncs the directory and subscribes.
        await wait_for(lambda: firm.outcome(OLD_NUMBER), MatchOutcome.SINGLE_MATTER)
        await wait_for(lambda: _models(firm), ["contact", "matter"])
        async with httpx.AsyncClient(transport=ToProcess(stack.services["matcher"].port)) as to_matcher:
            await wait_for(lambda: _statuses(firm, to_matcher), {"enabled"})
            firm.clio.update_contact(firm.id, firm.contact, phone_numbers=["617-555-0199"])
            assert [d.status_code for d in await firm.clio.deliver_webhooks(to_matcher)] == [200]
        await wait_for(lambda: firm.outcome(NEW_NUMBER), MatchOutcome.SINGLE_MATTER)
    finally:
        stack.stop_services()
    log_text = stack.services["matcher"].log_path.read_text()
    assert "clio webhook accepted" in log_text
    assert not [line for line in log_text.splitlines() if firm.id in line and '"WARNING"' in line]
    assert all(w["shared_secret"] not in log_text for w in firm.clio.webhooks(firm.id))


async def _statuses(firm, http) -> set[str]:
    await firm.clio.deliver_webhooks(http)
    return {w["status"] for w in firm.clio.webhooks(firm.id)}


async def _models(firm) -> list[str]:
    return sorted(w["model"] for w in firm.clio.webhooks(firm.id))
