"""Clio webhooks: the pure helpers, and the client registering against the fake, which delivers signed POSTs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from calltime.billing.clio import ClioClient
from calltime.billing.clio_webhooks import (
    ClioWebhook,
    WebhookPayloadError,
    check_expiry,
    check_subscription,
    handshake_secret,
    parse_event,
    renewal_due,
    verify_signature,
)
from calltime.fakes.clio import FakeClioServer, FakeClioState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "clio"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NOW = datetime.fromtimestamp(T0, tz=timezone.utc)
TOKEN = "acme-token-0001"
HOOK_URL = "https://calltime.example/hooks/clio"


def raw_fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers


def test_signature_is_hmac_sha256_of_the_raw_body_in_hex_or_base64() -> None:
    body = raw_fixture("clio_webhook_payload_created.json")
    digest = hmac.new(b"shared", body, hashlib.sha256).digest()

    assert verify_signature("shared", body, digest.hex())
    assert verify_signature("shared", body, digest.hex().upper())
    assert verify_signature("shared", body, base64.b64encode(digest).decode())
    assert not verify_signature("other", body, digest.hex())
    assert not verify_signature("shared", body + b" ", digest.hex())  # re-serialised bodies do not verify
    assert not verify_signature("shared", body, "")
    assert not verify_signature("", body, digest.hex())
    assert not verify_signature("shared", body, "não-ascii")


@pytest.mark.parametrize("name, event", [
    ("clio_webhook_payload_created.json", "created"),
    ("clio_webhook_payload_updated.json", "updated"),
    ("clio_webhook_payload_deleted.json", "deleted"),
])
def test_parse_event_reads_the_reference_payloads(name: str, event: str) -> None:
    parsed = parse_event(raw_fixture(name), models={1234: "contact"})

    assert (parsed.webhook_id, parsed.event, parsed.id, parsed.model) == (1234, event, 152, "contact")
    assert parsed.etag.startswith('"') and parsed.occurred_at is None  # Clio sends no timestamp


def test_parse_event_takes_occurred_at_from_updated_at_and_leaves_model_unknown_without_a_map() -> None:
    body = b'{"data":{"id":7,"etag":"\\"e\\"","updated_at":"2026-03-02T10:00:00-05:00"},' \
           b'"meta":{"event":"updated","webhook_id":9}}'

    parsed = parse_event(body)

    assert parsed.occurred_at == datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)
    assert parsed.model is None
    assert parsed.data["updated_at"] == "2026-03-02T10:00:00-05:00"


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"data":{"id":1}}', b'{"data":{"id":"1"},"meta":{"event":"created","webhook_id":1}}',
    b'{"data":{"id":1},"meta":{"webhook_id":1}}',
])
def test_malformed_payloads_raise_a_payload_error(body: bytes) -> None:
    with pytest.raises(WebhookPayloadError):
        parse_event(body)


def test_handshake_secret_is_found_case_insensitively() -> None:
    assert handshake_secret({"x-hook-secret": "abc"}) == "abc"
    assert handshake_secret({"Content-Type": "application/json"}) is None


def test_expiry_and_subscription_checks() -> None:
    assert check_expiry(NOW + timedelta(days=31), NOW) == NOW + timedelta(days=31)
    for bad in (NOW + timedelta(days=31, seconds=1), NOW, NOW.replace(tzinfo=None) + timedelta(days=1)):
        with pytest.raises(ValueError):
            check_expiry(bad, NOW)
    check_subscription("matter", ["matter_closed", "updated"], "id,etag")
    with pytest.raises(ValueError):
        check_subscription("contact", ["matter_closed"], "id")
    with pytest.raises(ValueError):
        check_subscription("user", ["created"], "id")
    with pytest.raises(ValueError):
        check_subscription("contact", ["created"], "x" * 1001)


def test_renewal_is_due_within_the_margin() -> None:
    def hook(expires_at):
        return ClioWebhook(1, HOOK_URL, "contact", ("updated",), "id", "enabled", expires_at, "s")

    assert renewal_due(hook(NOW + timedelta(days=1)), NOW)
    assert not renewal_due(hook(NOW + timedelta(days=10)), NOW)
    assert renewal_due(hook(None), NOW)
    assert "shared_secret" not in repr(hook(None)) and "'s'" not in repr(hook(None))


# ---------------------------------------------------------------------------------------------------------------
# Against the fake


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class Receiver:
    """A subscriber endpoint: records what arrives, echoes the handshake secret unless told not to."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.echo_handshake = True
        self.status = 200

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        secret = handshake_secret(request.headers)
        if secret is not None:
            return httpx.Response(200, headers={"X-Hook-Secret": secret} if self.echo_handshake else {})
        return httpx.Response(self.status)


@pytest.fixture
def hooks():
    clock = Clock()
    state = FakeClioState(clock=clock.time)
    state.add_firm("acme", "Acme Law LLP")
    state.add_user("acme", name="Alex Attorney", rate="350", tokens=[TOKEN])
    contact = state.add_contact("acme", name="Jane Client", is_client=True, phone_numbers=["(617) 555-0142"])
    matter = state.add_matter("acme", display_number="00001", client_id=contact)
    receiver = Receiver()
    with FakeClioServer(state) as server:
        yield state, server, clock, receiver, contact, matter


@pytest.fixture
async def clio(hooks):
    state, server, clock, *_ = hooks
    client = ClioClient(server.base_url, TOKEN, clock=clock.time, sleep=clock.sleep)
    yield client
    await client.aclose()


async def deliver(state: FakeClioState, receiver: Receiver):
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle)) as http:
        return await state.deliver_webhooks(http)


async def test_create_handshake_then_signed_contact_updates(hooks, clio: ClioClient) -> None:
    state, _, clock, receiver, contact, _ = hooks
    webhook = await clio.create_webhook(HOOK_URL, "contact", ["created", "updated"], "id,etag,name,updated_at",
                                        expires_at=NOW + timedelta(days=31))
    assert webhook.status == "pending" and webhook.shared_secret
    assert webhook.expires_at == NOW + timedelta(days=31)
    state.update_contact("acme", contact, name="Before Enabled")  # not sent: the webhook is still pending

    [handshake] = await deliver(state, receiver)
    clock.now += 60
    state.update_contact("acme", contact, name="Jane Q. Client")
    [delivery] = await deliver(state, receiver)

    assert handshake.kind == "handshake" and receiver.requests[0].headers["X-Hook-Secret"] == webhook.shared_secret
    assert [w.status for w in await clio.list_webhooks()] == ["enabled"]
    request = receiver.requests[1]
    assert str(request.url) == HOOK_URL
    assert verify_signature(webhook.shared_secret, request.content, request.headers["X-Hook-Signature"])
    event = parse_event(request.content, models={webhook.id: webhook.model})
    assert (event.event, event.id, event.model) == ("updated", contact, "contact")
    assert event.data["name"] == "Jane Q. Client"
    assert event.occurred_at == NOW + timedelta(seconds=60)
    assert delivery.status_code == 200 and state.pending_webhook_deliveries() == []


async def test_payload_shape_matches_the_reference_sample(hooks, clio: ClioClient) -> None:
    state, _, _, receiver, _, _ = hooks
    await clio.create_webhook(HOOK_URL, "contact", ["created"], "id,etag")
    await deliver(state, receiver)

    state.add_contact("acme", name="New Caller")
    await deliver(state, receiver)

    sent = json.loads(receiver.requests[-1].content)
    sample = json.loads(raw_fixture("clio_webhook_payload_created.json"))
    assert set(sent) == set(sample) and set(sent["data"]) == set(sample["data"])
    assert set(sent["meta"]) == set(sample["meta"]) and sent["meta"]["event"] == "created"


async def test_updates_outside_the_watched_fields_are_not_sent_after_the_first(hooks, clio: ClioClient) -> None:
    state, _, _, receiver, contact, _ = hooks
    await clio.create_webhook(HOOK_URL, "contact", ["updated"], "id,etag,name")
    await deliver(state, receiver)

    state.update_contact("acme", contact, is_client=False)  # first update of this object: sent regardless
    state.update_contact("acme", contact, is_client=True)  # not a watched field
    state.update_contact("acme", contact, name="Renamed")
    sent = await deliver(state, receiver)

    assert [json.loads(d.body)["data"].get("name") for d in sent] == ["Jane Client", "Renamed"]


async def test_matter_close_sends_updated_and_matter_closed(hooks, clio: ClioClient) -> None:
    state, _, _, receiver, _, matter = hooks
    await clio.create_webhook(HOOK_URL, "matter", ["updated", "matter_closed"], "id,etag,status")
    await deliver(state, receiver)

    state.update_matter("acme", matter, status="closed")
    sent = await deliver(state, receiver)

    assert [d.kind for d in sent] == ["updated", "matter_closed"]
    assert {json.loads(d.body)["data"]["status"] for d in sent} == {"Closed"}


async def test_unechoed_handshake_stays_pending_until_activated(hooks, clio: ClioClient) -> None:
    state, _, _, receiver, contact, _ = hooks
    receiver.echo_handshake = False
    webhook = await clio.create_webhook(HOOK_URL, "contact", ["updated"], "id,etag")
    await deliver(state, receiver)
    assert [w.status for w in await clio.list_webhooks()] == ["pending"]

    await clio.activate_webhook(webhook.id, webhook.shared_secret)
    state.update_contact("acme", contact, name="Now Sent")

    assert [w.status for w in await clio.list_webhooks()] == ["enabled"]
    assert [d.kind for d in state.pending_webhook_deliveries()] == ["updated"]


async def test_failed_deliveries_retry_with_doubling_backoff_then_suspend(hooks, clio: ClioClient) -> None:
    state, _, clock, receiver, contact, _ = hooks
    await clio.create_webhook(HOOK_URL, "contact", ["updated"], "id,etag")
    await deliver(state, receiver)
    receiver.status = 500
    state.update_contact("acme", contact, name="Retry Me")

    waits = []
    for _ in range(6):
        [attempt] = await deliver(state, receiver)
        if state.pending_webhook_deliveries():
            waits.append(state.pending_webhook_deliveries()[0].next_attempt_at - clock.now)
            assert await deliver(state, receiver) == []  # not due yet
            clock.now += waits[-1]

    assert waits == [120, 240, 480, 960, 1920]
    assert [w.status for w in await clio.list_webhooks()] == ["suspended"]


async def test_410_answer_suspends_the_webhook(hooks, clio: ClioClient) -> None:
    state, _, _, receiver, contact, _ = hooks
    await clio.create_webhook(HOOK_URL, "contact", ["updated"], "id,etag")
    await deliver(state, receiver)
    receiver.status = 410
    state.update_contact("acme", contact, name="Gone")

    await deliver(state, receiver)

    assert [w.status for w in await clio.list_webhooks()] == ["suspended"]
    assert state.pending_webhook_deliveries() == []


async def test_renew_moves_expiry_and_expired_webhooks_send_nothing(hooks, clio: ClioClient) -> None:
    state, _, clock, receiver, contact, _ = hooks
    webhook = await clio.create_webhook(HOOK_URL, "contact", ["updated"], "id,etag")
    await deliver(state, receiver)
    assert webhook.expires_at == NOW + timedelta(days=3)  # Clio's default lifetime

    renewed = await clio.renew_webhook(webhook.id, NOW + timedelta(days=30))
    clock.now += timedelta(days=31).total_seconds()
    state.update_contact("acme", contact, name="After Expiry")

    assert renewed.expires_at == NOW + timedelta(days=30)
    assert state.pending_webhook_deliveries() == []


async def test_more_than_31_days_is_refused_by_client_and_fake(hooks, clio: ClioClient) -> None:
    state, server, _, _, _, _ = hooks
    too_late = NOW + timedelta(days=32)
    with pytest.raises(ValueError):
        await clio.create_webhook(HOOK_URL, "contact", ["updated"], "id", expires_at=too_late)
    with pytest.raises(ValueError):
        await clio.renew_webhook(1, too_late)
    with pytest.raises(ValueError):
        await clio.create_webhook("http://calltime.example/hooks", "contact", ["updated"], "id")

    request = json.loads(raw_fixture("clio_webhook_create_request.json"))
    request["data"] |= {"model": "contact", "url": HOOK_URL, "expires_at": too_late.isoformat()}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as raw:
        refused = raw.post("/api/v4/webhooks.json", json=request)
        request["data"].pop("expires_at")
        created = raw.post("/api/v4/webhooks.json", json=request, params={"fields": "id,status"})
        patched = raw.patch(f"/api/v4/webhooks/{created.json()['data']['id']}.json",
                            json={"data": {"expires_at": too_late.isoformat()}})

    assert refused.status_code == 422 and refused.json()["error"]["type"] == "UnprocessableEntityError"
    assert created.status_code == 201 and created.json()["data"]["status"] == "pending"
    assert patched.status_code == 422
    assert json.loads(created.content, parse_float=Decimal)["data"]["id"] > 0
