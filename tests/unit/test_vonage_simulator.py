"""The Vonage simulator speaks VBC: its signed VIS deliveries pass the real adapter and read back
as the call that was placed, and its Reports API, read by the real pull client, gives the very
same finished calls; its webhooks expire, fail and renew as VIS's do."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from calltime.fakes.calls import OUTCOMES, SimulatedCall
from calltime.fakes.server import BackgroundServer
from calltime.fakes.vonage import WEBHOOK_TTL, VonageApiState, VonageSimulator, create_api_app
from calltime.ingest.call_logs.port import CallLogError
from calltime.ingest.call_logs.vonage import source
from calltime.ingest.providers.model import (
    Account,
    FinishedCall,
    InvalidNotification,
    Refused,
    WebhookRequest,
)
from calltime.ingest.providers.vonage import ADAPTER

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vonage"
ACCOUNT_ID = "257073"
SECRET = "firm-signing-key"
HOOK = "http://ingest.test/webhooks/vonage/firm-1"
T0 = datetime(2024, 3, 5, 14, 30, 7, tzinfo=timezone.utc)
RESULTS = {"answered": "answered", "missed": "missed", "voicemail": "missed", "rejected": "rejected"}


def _account(**changes: Any) -> Account:
    values = dict(firm_id="firm-1", provider="vonage", account_id=ACCOUNT_ID, webhook_secret=SECRET,
                  phone_region="US", attorneys_by_user={"u-101": "attorney-1", "u-102": "attorney-2"})
    values.update(changes)
    return Account(**values)


def _call(**changes: Any) -> SimulatedCall:
    return replace(SimulatedCall(started_at=T0), **changes)


def _expected(call: SimulatedCall, simulator: VonageSimulator) -> FinishedCall:
    internal = call.external_number.isdigit() and len(call.external_number) <= 6
    return FinishedCall(
        provider_call_id=simulator.provider_call_id(call),
        direction="internal" if internal else call.direction,
        external_number_e164=None if internal else call.external_number,
        external_number_raw=call.external_number.removeprefix("+"),
        internal_number=call.extension_number,
        provider_user_id=call.user_id,
        started_at=call.started_at,
        ended_at=call.ended_at,
        duration_seconds=call.connected_seconds,
        result=RESULTS[call.outcome],
    )


def _request(delivery: tuple[dict[str, str], bytes]) -> WebhookRequest:
    headers, body = delivery
    return WebhookRequest(headers={k.lower(): v for k, v in headers.items()}, query={}, body=body,
                          received_at=datetime.now(timezone.utc))


def _through_adapter(deliveries, account: Account | None = None) -> FinishedCall | None:
    account = account or _account()
    bodies = []
    for delivery in deliveries:
        request = _request(delivery)
        ADAPTER.authenticate(request, account)
        bodies += [notice.body for notice in ADAPTER.notices(request, account)]
    return ADAPTER.finished_call(bodies, account)


def _simulator(**options: Any) -> VonageSimulator:
    return VonageSimulator(HOOK, SECRET, account_id=ACCOUNT_ID, **options)


class _Ingest:
    """A stand-in for calltime's webhook route: the real adapter and an in-memory inbox."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.inbox: dict[str, dict[str, bytes]] = {}  # provider call id -> dedupe key -> body
        self.app = FastAPI()
        self.app.post("/webhooks/vonage/firm-1")(self.receive)

    async def receive(self, request: Request) -> JSONResponse:
        incoming = WebhookRequest(headers={k.lower(): v for k, v in request.headers.items()},
                                  query=dict(request.query_params), body=await request.body(),
                                  received_at=datetime.now(timezone.utc))
        try:
            ADAPTER.authenticate(incoming, self.account)
            notices = ADAPTER.notices(incoming, self.account)
        except Refused as refused:
            return JSONResponse({"detail": refused.reason}, status_code=refused.status)
        except InvalidNotification as invalid:
            return JSONResponse({"detail": str(invalid)}, status_code=400)
        for notice in notices:
            self.inbox.setdefault(notice.provider_call_id, {}).setdefault(notice.dedupe_key, notice.body)
        return JSONResponse({"stored": len(notices)})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app))

    def finished(self, provider_call_id: str) -> FinishedCall | None:
        return ADAPTER.finished_call(list(self.inbox.get(provider_call_id, {}).values()), self.account)


# --- Webhooks --------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("policy", ["BODY", "HEADER"])
def test_every_kind_of_call_reads_back_through_the_adapter(direction: str, outcome: str, policy: str) -> None:
    simulator = _simulator(metadata_policy=policy)
    call = _call(direction=direction, outcome=outcome, talk_seconds=95, hold_seconds=30)

    assert _through_adapter(simulator.webhook_requests(call)) == _expected(call, simulator)


def test_internal_call_reads_back_as_internal() -> None:
    simulator = _simulator()
    call = _call(external_number="102")

    found = _through_adapter(simulator.webhook_requests(call))

    assert found == _expected(call, simulator)
    assert found is not None and found.direction == "internal"


def test_events_follow_the_vis_state_machine_and_only_the_final_one_is_kept() -> None:
    simulator = _simulator()
    held = _call(hold_seconds=20)
    cancelled = _call(direction="outbound", outcome="missed")

    for call, states in ((held, ["RINGING", "ACTIVE", "HELD", "ACTIVE", "ANSWERED"]),
                         (cancelled, ["RINGING", "CANCELLED"])):
        deliveries = simulator.webhook_requests(call)
        assert [json.loads(body)["event"]["state"] for _, body in deliveries] == states
        kept = [n for d in deliveries for n in ADAPTER.notices(_request(d), _account())]
        assert len(kept) == 1


def test_deliveries_have_the_documented_shape() -> None:
    sample = json.loads((FIXTURES / "vonage_vbc_vis_call_event_webhook_ringing.json").read_text())

    for _, body in _simulator().webhook_requests(_call()):
        envelope = json.loads(body)
        assert envelope.keys() == sample.keys()
        assert set(sample["event"]) <= set(envelope["event"])
        assert envelope["metadata"].keys() == sample["metadata"].keys()
        assert envelope["event"]["accountId"] == ACCOUNT_ID


def test_header_policy_moves_metadata_into_x_von_headers() -> None:
    headers, body = _simulator(metadata_policy="HEADER").webhook_requests(_call())[0]

    assert "metadata" not in json.loads(body)
    assert {"X-VON-Signature", "X-VON-Webhook-Id", "X-VON-Delivery-Id", "X-VON-Attempt"} <= headers.keys()


@pytest.mark.parametrize("policy", ["BODY", "HEADER"])
def test_tampered_copy_is_refused(policy: str) -> None:
    headers, body = _simulator(metadata_policy=policy).webhook_requests(_call())[-1]
    envelope = json.loads(body)
    envelope["event"]["duration"] += 3_600_000

    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request((headers, json.dumps(envelope).encode())), _account())

    assert refused.value.status == 401


def test_deliveries_signed_for_another_firm_are_refused() -> None:
    other = VonageSimulator(HOOK, "another-firms-key", account_id="999")
    delivery = other.webhook_requests(_call())[-1]

    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request(delivery), _account())
    assert refused.value.status == 401
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request(delivery), _account(webhook_secret="another-firms-key"))
    assert refused.value.status == 403


@pytest.mark.parametrize("policy", ["BODY", "HEADER"])
def test_redelivery_is_the_same_event_with_the_next_attempt(policy: str) -> None:
    simulator = _simulator(metadata_policy=policy)
    first = simulator.webhook_requests(_call())[-1]
    again = simulator.retry_of(simulator.retry_of(first))

    def metadata(delivery):
        headers, body = delivery
        if policy == "HEADER":
            return headers["X-VON-Attempt"], headers["X-VON-Delivery-Id"], headers["X-VON-Signature"]
        found = json.loads(body)["metadata"]
        return str(found["attempt"]), found["deliveryId"], found["signature"]

    assert metadata(again)[0] == "3"
    assert metadata(again)[1:] == metadata(first)[1:]
    assert json.loads(again[1])["event"] == json.loads(first[1])["event"]
    assert ADAPTER.notices(_request(again), _account()) == ADAPTER.notices(_request(first), _account())


async def test_duplicated_and_shuffled_deliveries_are_stored_once() -> None:
    ingest = _Ingest(_account())
    async with ingest.client() as http, _simulator(http=http) as simulator:
        call = _call(hold_seconds=12)
        responses = await simulator.place_call(call, shuffle=True, duplicate_each=3, rng=random.Random(7))

    assert [r.status_code for r in responses] == [200] * 15
    assert len(ingest.inbox[simulator.provider_call_id(call)]) == 1
    assert ingest.finished(simulator.provider_call_id(call)) == _expected(call, simulator)


async def test_dropped_webhook_still_lands_in_the_call_log() -> None:
    ingest = _Ingest(_account())
    async with ingest.client() as http, _simulator(http=http) as simulator:
        call = _call()
        assert await simulator.place_call(call, deliver=False) == []

    assert ingest.inbox == {}
    assert [r["id"] for r in simulator.state.call_logs] == [simulator.provider_call_id(call)]


async def test_unanswered_webhook_is_retried_then_failed_until_renewed() -> None:
    refusing = _Ingest(_account(webhook_secret="not-the-registered-key"))
    async with refusing.client() as http, _simulator(http=http) as simulator:
        responses = await simulator.place_call(_call(outcome="missed"))
        after_failure = await simulator.place_call(_call(outcome="missed"))
        simulator.state.renew_webhook(simulator.webhook_id)
        after_renewal = await simulator.place_call(_call(outcome="missed"))

    assert [r.status_code for r in responses] == [401] * 6  # the first event, attempts 1..6
    assert after_failure == []
    assert len(after_renewal) == 6
    statistics = simulator.state.webhooks[simulator.webhook_id]["statistics"]
    assert statistics["failed"] is True and statistics["totalFailures"] == 12


async def test_expired_webhook_gets_nothing() -> None:
    clock = [T0]
    state = VonageApiState(account_id=ACCOUNT_ID, now=lambda: clock[0])
    ingest = _Ingest(_account())
    async with ingest.client() as http, _simulator(http=http, state=state) as simulator:
        clock[0] = T0 + WEBHOOK_TTL + timedelta(seconds=1)
        assert await simulator.place_call(_call()) == []


async def test_there_is_no_url_validation_to_pass() -> None:
    async with _simulator() as simulator:
        assert await simulator.handshake() is True


# --- Pull: Reports call log ------------------------------------------------------------------


async def _pull(state: VonageApiState, since: datetime, until: datetime, *, account: Account | None = None,
                credentials: dict[str, str] | None = None, **options: Any) -> list:
    with BackgroundServer(create_api_app(state), name="vonage") as server:
        logs = source(account or _account(), server.base_url, credentials or state.credentials(), **options)
        try:
            return [page async for page in logs.pages(since, until)]
        finally:
            await logs.aclose()


async def test_pull_returns_exactly_the_placed_calls_as_the_webhooks_do() -> None:
    simulator = _simulator()
    rng = random.Random(3)
    inside = [
        _call(started_at=T0 + timedelta(minutes=7 * i), user_id=rng.choice(["u-101", "u-102"]),
              direction=rng.choice(["inbound", "outbound"]), outcome=rng.choice(OUTCOMES),
              talk_seconds=rng.randrange(0, 900), hold_seconds=rng.choice([0, 45]),
              external_number=rng.choice(["+12125550123", "+442071838750", "105"]))
        for i in range(23)
    ]
    stranger = _call(started_at=T0 + timedelta(minutes=1), user_id="u-999")
    outside = [_call(started_at=T0 - timedelta(seconds=1)), _call(started_at=T0 + timedelta(hours=3))]
    for call in [*inside, stranger, *outside]:
        await simulator.place_call(call, deliver=False)

    pages = await _pull(simulator.state, T0, T0 + timedelta(hours=3), page_size=10)

    assert [page.records_read for page in pages] == [10, 10, 4]
    pulled = {call.provider_call_id: call for page in pages for call in page.calls}
    assert len(pulled) == 23
    for call in inside:
        from_webhooks = _through_adapter(simulator.webhook_requests(call))
        assert pulled[simulator.provider_call_id(call)] == from_webhooks == _expected(call, simulator)


async def test_window_is_half_open_in_whole_seconds() -> None:
    simulator = _simulator()
    at_since, at_until = _call(started_at=T0), _call(started_at=T0 + timedelta(minutes=5))
    for call in (at_since, at_until):
        await simulator.place_call(call, deliver=False)

    pages = await _pull(simulator.state, T0, T0 + timedelta(minutes=5))

    assert [c.provider_call_id for p in pages for c in p.calls] == [simulator.provider_call_id(at_since)]
    query = next(q for method, path, q in simulator.state.requests if path.endswith("/call-logs"))
    assert (query["start:gte"], query["start:lte"]) == ("2024-03-05 14:30:07", "2024-03-05 14:35:06")
    assert f"/t/vbc.prod/reports/v1/accounts/{ACCOUNT_ID}/call-logs" in [p for _, p, _ in simulator.state.requests]


async def test_fractional_since_rounds_up_to_the_next_second() -> None:
    simulator = _simulator()
    await simulator.place_call(_call(started_at=T0), deliver=False)

    pages = await _pull(simulator.state, T0 + timedelta(milliseconds=1), T0 + timedelta(minutes=1))

    assert [c for p in pages for c in p.calls] == []
    query = next(q for method, path, q in simulator.state.requests if path.endswith("/call-logs"))
    assert query["start:gte"] == "2024-03-05 14:30:08"


async def test_bad_credentials_are_not_transient() -> None:
    state = VonageApiState(account_id=ACCOUNT_ID)

    with pytest.raises(CallLogError) as error:
        await _pull(state, T0, T0 + timedelta(hours=1), credentials=state.credentials() | {"password": "wrong"})

    assert error.value.transient is False and error.value.status == 401


async def test_another_accounts_call_log_is_forbidden() -> None:
    state = VonageApiState(account_id=ACCOUNT_ID)

    with pytest.raises(CallLogError) as error:
        await _pull(state, T0, T0 + timedelta(hours=1), account=_account(account_id="31337"))

    assert error.value.transient is False and error.value.status == 403


def test_incomplete_credentials_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="password"):
        source(_account(), "http://unused", {"client_id": "a", "client_secret": "b", "username": "c"})


async def test_rate_limit_is_waited_out_once_as_retry_after_asks() -> None:
    simulator = _simulator()
    for i in range(5):
        await simulator.place_call(_call(started_at=T0 + timedelta(minutes=i)), deliver=False)
    simulator.state.rate_limit, simulator.state.rate_window_seconds = 2, 0.3
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0.35)  # the fake's window is shorter than the Retry-After it asks for

    pages = await _pull(simulator.state, T0, T0 + timedelta(hours=1), page_size=1, sleep=sleep)

    assert sum(len(p.calls) for p in pages) == 5
    assert waits and set(waits) == {1.0}


async def test_rate_limit_that_persists_is_a_transient_error() -> None:
    state = VonageApiState(account_id=ACCOUNT_ID, rate_limit=1, rate_window_seconds=60)
    simulator = _simulator(state=state)
    for i in range(3):
        await simulator.place_call(_call(started_at=T0 + timedelta(minutes=i)), deliver=False)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    with pytest.raises(CallLogError) as error:
        await _pull(state, T0, T0 + timedelta(hours=1), page_size=1, sleep=sleep)

    assert error.value.transient is True and error.value.status == 429
    assert waits == [1.0]


async def test_revoked_token_is_replaced_once() -> None:
    simulator = _simulator()
    for i in range(3):
        await simulator.place_call(_call(started_at=T0 + timedelta(minutes=i)), deliver=False)
    with BackgroundServer(create_api_app(simulator.state)) as server:
        logs = source(_account(), server.base_url, simulator.state.credentials(), page_size=1)
        calls = []
        async for page in logs.pages(T0, T0 + timedelta(hours=1)):
            calls += page.calls
            simulator.state.tokens.clear()
        await logs.aclose()

    assert len(calls) == 3
    assert [p for _, p, _ in simulator.state.requests].count("/token") == 3


def _time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectTimeout("too slow", request=request)


@pytest.mark.parametrize(("answer", "transient"), [
    (lambda request: httpx.Response(503), True),
    (lambda request: httpx.Response(500, text="oops"), True),
    (lambda request: httpx.Response(400, json={"status": 400}), False),
    (lambda request: httpx.Response(403), False),
    (lambda request: httpx.Response(200, text="<html>"), True),
    (_time_out, True),
], ids=["503", "500", "400", "403", "not-json", "timeout"])
async def test_api_failures_are_classified(answer, transient: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return answer(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        logs = source(_account(), "https://api.vonage.test", VonageApiState(ACCOUNT_ID).credentials(), http)
        with pytest.raises(CallLogError) as error:
            [page async for page in logs.pages(T0, T0 + timedelta(hours=1))]

    assert error.value.transient is transient


async def test_documented_call_log_record_is_read() -> None:
    sample = json.loads((FIXTURES / "vonage_vbc_reports_call_logs_response.ASSEMBLED.json").read_text())
    pages_asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        pages_asked.append(request.url.params["page"])
        return httpx.Response(200, json=sample)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        logs = source(_account(attorneys_by_user={"JSmith": "attorney-9"}), "https://api.vonage.test",
                      VonageApiState(ACCOUNT_ID).credentials(), http)
        pages = [page async for page in logs.pages(datetime(2019, 1, 1, tzinfo=timezone.utc),
                                                   datetime(2019, 1, 2, tzinfo=timezone.utc))]

    assert pages_asked == [str(n) for n in range(1, 11)]  # total_pages: 10
    assert pages[0].calls == (FinishedCall(
        provider_call_id="f27b937d-6dde-441a-9595-006e7302eac1",
        direction="internal",  # the example names a user at both ends
        external_number_e164="+17325550100",
        external_number_raw="17325550100",
        internal_number="1000",
        provider_user_id="JSmith",
        started_at=datetime(2019, 1, 1, tzinfo=timezone.utc),
        ended_at=datetime(2019, 1, 1, tzinfo=timezone.utc),
        duration_seconds=60,
        result="answered",
    ),)


async def test_unreadable_record_is_skipped_not_fatal() -> None:
    simulator = _simulator()
    call = _call()
    await simulator.place_call(call, deliver=False)
    simulator.state.call_logs.append(dict(simulator.state.call_logs[0], id="broken", length="a minute"))

    pages = await _pull(simulator.state, T0, T0 + timedelta(hours=1))

    assert pages[0].records_read == 2
    assert [c.provider_call_id for c in pages[0].calls] == [simulator.provider_call_id(call)]


# --- Subscriptions ---------------------------------------------------------------------------


async def test_renewal_extends_only_webhooks_expiring_within_the_margin_and_failed_ones() -> None:
    clock = [T0]
    state = VonageApiState(account_id=ACCOUNT_ID, now=lambda: clock[0])
    soon = state.register_webhook(HOOK, SECRET)["id"]
    clock[0] = T0 + timedelta(days=5)
    later = state.register_webhook(HOOK, SECRET)["id"]
    failed = state.register_webhook(HOOK, SECRET)["id"]
    state.count_delivery(failed, False, gave_up=True)
    clock[0] = T0 + timedelta(days=9, hours=12)  # `soon` lapses in 12 h, the others in 5.5 days

    with BackgroundServer(create_api_app(state)) as server:
        logs = source(_account(), server.base_url, state.credentials())
        subscriptions = await logs.renew_subscriptions(clock[0], renew_within_seconds=86_400)
        await logs.aclose()

    expiry = {s.subscription_id: s.expires_at for s in subscriptions}
    assert expiry[soon] == clock[0] + WEBHOOK_TTL
    assert expiry[failed] == clock[0] + WEBHOOK_TTL
    assert expiry[later] == T0 + timedelta(days=5) + WEBHOOK_TTL
    renewed = [path.split("/")[-2] for method, path, _ in state.requests if method == "PUT"]
    assert sorted(renewed) == sorted([soon, failed])
    assert state.webhooks[failed]["statistics"]["failed"] is False


async def test_documented_failed_webhook_is_renewed_although_far_from_expiry() -> None:
    listed = json.loads((FIXTURES / "vonage_vbc_vis_webhook_list_failed.json").read_text())
    renewed = dict(listed[0], expireAt="2030-07-01T11:06:21.038Z",
                   statistics=dict(listed[0]["statistics"], failed=False))
    calls: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path))
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(200, json=renewed if request.method == "PUT" else listed)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        logs = source(_account(), "https://api.vonage.test", VonageApiState(ACCOUNT_ID).credentials(), http)
        subscriptions = await logs.renew_subscriptions(T0, renew_within_seconds=86_400)

    assert ("PUT", "/t/vbc.prod/vis/v1/self/webhooks/{}/renew") in calls
    assert [(s.subscription_id, s.expires_at) for s in subscriptions] == [
        ("{}", datetime(2030, 7, 1, 11, 6, 21, 38000, tzinfo=timezone.utc))]
