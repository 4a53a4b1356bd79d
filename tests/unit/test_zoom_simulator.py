"""The Zoom simulator speaks Zoom: what it signs the adapter accepts (and a tampered copy it
refuses), its calls read back through the adapter as exactly the call placed, its URL
validation is Zoom's, and its call-history API, read by the real pull client, gives the same
calls — same ids, same seconds — as the webhooks."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from hypothesis import given, settings
from hypothesis import strategies as st

from calltime.fakes.calls import SimulatedCall
from calltime.fakes.server import BackgroundServer
from calltime.fakes.zoom import ZoomApiState, ZoomSimulator, create_api_app
from calltime.ingest.call_logs.port import CallLogError
from calltime.ingest.call_logs.zoom import ZoomCallLogSource, source
from calltime.ingest.providers import zoom
from calltime.ingest.providers.model import (
    Account,
    FinishedCall,
    InvalidNotification,
    Refused,
    WebhookRequest,
)

SECRET = "zoom-webhook-secret"
ACCOUNT_ID = "zoom-acct-42"
STARTED = datetime(2026, 11, 2, 9, 30, 0, tzinfo=timezone.utc)
URL = "http://calltime.test/webhooks/zoom/firm-1"


def _account(**changes: Any) -> Account:
    values: dict[str, Any] = dict(firm_id="firm-1", provider="zoom", account_id=ACCOUNT_ID, webhook_secret=SECRET,
                                  phone_region="US", attorneys_by_user={"u-101": "attorney-1"})
    return Account(**(values | changes))


def _call(**changes: Any) -> SimulatedCall:
    return replace(SimulatedCall(started_at=STARTED), **changes)


def _expected(call: SimulatedCall, simulator: ZoomSimulator) -> FinishedCall:
    internal = len(call.external_number) <= 6
    return FinishedCall(
        provider_call_id=simulator.provider_call_id(call),
        direction="internal" if internal else call.direction,
        external_number_e164=None if internal else call.external_number,
        external_number_raw=call.external_number,
        internal_number=call.user_number,
        provider_user_id=call.user_id,
        started_at=call.started_at,
        ended_at=call.ended_at,
        duration_seconds=call.connected_seconds,
        result=call.outcome,
    )


class Endpoint:
    """Calltime's webhook route in miniature: handshake, authenticate, notices into an inbox
    deduplicated on `dedupe_key`, then the call as its stored notices tell it."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.inbox: dict[str, tuple[str, bytes]] = {}
        self.statuses: list[int] = []
        self.app = FastAPI()
        self.app.post("/webhooks/zoom/firm-1")(self.receive)

    async def receive(self, request: Request) -> Response:
        incoming = WebhookRequest(headers={k.lower(): v for k, v in request.headers.items()},
                                  query=dict(request.query_params), body=await request.body(),
                                  received_at=datetime.now(timezone.utc))
        try:
            reply = zoom.ADAPTER.handshake(incoming, self.account)
            if reply is not None:
                return Response(reply.body, status_code=reply.status, media_type=reply.media_type)
            zoom.ADAPTER.authenticate(incoming, self.account)
            notices = zoom.ADAPTER.notices(incoming, self.account)
        except Refused as refused:
            self.statuses.append(refused.status)
            return JSONResponse({"detail": refused.reason}, status_code=refused.status)
        except InvalidNotification as invalid:
            return JSONResponse({"detail": str(invalid)}, status_code=400)
        for notice in notices:
            self.inbox.setdefault(notice.dedupe_key, (notice.provider_call_id, notice.body))
        return JSONResponse({"stored": len(notices)})

    def call(self, provider_call_id: str) -> FinishedCall | None:
        bodies = [body for call_id, body in self.inbox.values() if call_id == provider_call_id]
        return zoom.ADAPTER.finished_call(bodies, self.account)


def _client(endpoint: Endpoint) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=endpoint.app), base_url="http://calltime.test")


def _simulator(endpoint: Endpoint, **options: Any) -> ZoomSimulator:
    return ZoomSimulator(URL, SECRET, account_id=ACCOUNT_ID, http=_client(endpoint), **options)


def _request(headers: dict[str, str], body: bytes) -> WebhookRequest:
    return WebhookRequest(headers, {}, body, datetime.now(timezone.utc))


# --- Deliveries pass the adapter -------------------------------------------------------------------


CASES = [
    dict(direction="inbound", outcome="answered", hold_seconds=30),
    dict(direction="outbound", outcome="answered", external_number="+442071838750"),
    dict(direction="inbound", outcome="missed"),
    dict(direction="inbound", outcome="voicemail", talk_seconds=40),
    dict(direction="inbound", outcome="rejected"),
    dict(direction="outbound", outcome="missed"),
    dict(direction="outbound", outcome="voicemail"),
    dict(direction="outbound", outcome="answered", external_number="102"),  # a colleague's extension
]


@pytest.mark.parametrize("changes", CASES, ids=[f"{c['direction']}-{c['outcome']}" for c in CASES])
@pytest.mark.parametrize("generation", ["log", "history", "element"])
def test_every_record_generation_reads_back_as_the_placed_call(changes: dict[str, Any], generation: str) -> None:
    simulator = ZoomSimulator(URL, SECRET, account_id=ACCOUNT_ID, generations=(generation,))
    call = _call(**changes)
    stored = []
    for headers, body in simulator.webhook_requests(call):
        request = _request(headers, body)
        zoom.ADAPTER.authenticate(request, _account())
        stored += [n.body for n in zoom.ADAPTER.notices(request, _account())]
    assert zoom.ADAPTER.finished_call(stored, _account()) == _expected(call, simulator)


def test_the_real_time_ended_event_alone_already_gives_the_answered_call() -> None:
    simulator = ZoomSimulator(URL, SECRET, account_id=ACCOUNT_ID, generations=())
    call = _call(hold_seconds=15)
    stored = []
    for headers, body in simulator.webhook_requests(call):
        stored += [n.body for n in zoom.ADAPTER.notices(_request(headers, body), _account())]
    assert len(stored) == 1  # ringing, answered, hold, unhold are acknowledged and ignored
    assert zoom.ADAPTER.finished_call(stored, _account()) == _expected(call, simulator)


def test_a_tampered_delivery_is_refused() -> None:
    simulator = ZoomSimulator(URL, SECRET, account_id=ACCOUNT_ID)
    headers, body = simulator.webhook_requests(_call())[-1]
    tampered = body.replace(b'"talk_time":120', b'"talk_time":1200')
    assert tampered != body
    with pytest.raises(Refused) as refused:
        zoom.ADAPTER.authenticate(_request(headers, tampered), _account())
    assert refused.value.status == 401


def test_deliveries_for_another_zoom_account_are_refused_403() -> None:
    simulator = ZoomSimulator(URL, SECRET, account_id="someone-elses-account")
    headers, body = simulator.webhook_requests(_call())[-1]
    with pytest.raises(Refused) as refused:
        zoom.ADAPTER.authenticate(_request(headers, body), _account())
    assert refused.value.status == 403


async def test_shuffled_duplicated_deliveries_read_back_as_the_call_once() -> None:
    endpoint = Endpoint(_account())
    async with _simulator(endpoint, generations=("log", "history", "element")) as simulator:
        call = _call(hold_seconds=20)
        responses = await simulator.place_call(call, shuffle=True, duplicate_each=3, rng=random.Random(7))
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert len(responses) == 3 * 8  # ringing, answered, hold, unhold, ended and three records, thrice
    assert len(endpoint.inbox) == 4  # ended + one record per generation, each stored once
    assert endpoint.call(simulator.provider_call_id(call)) == _expected(call, simulator)


@settings(max_examples=40, deadline=None)
@given(direction=st.sampled_from(["inbound", "outbound"]),
       outcome=st.sampled_from(["answered", "missed", "voicemail", "rejected"]),
       ring=st.integers(0, 60), talk=st.integers(0, 7200), hold=st.integers(0, 600),
       generations=st.lists(st.sampled_from(["log", "history", "element"]), min_size=1, unique=True))
def test_any_call_reads_back_exactly(direction: str, outcome: str, ring: int, talk: int, hold: int,
                                     generations: list[str]) -> None:
    simulator = ZoomSimulator(URL, SECRET, account_id=ACCOUNT_ID, generations=generations)
    call = _call(direction=direction, outcome=outcome, ring_seconds=ring, talk_seconds=talk, hold_seconds=hold)
    stored = []
    for headers, body in reversed(simulator.webhook_requests(call)):  # any arrival order
        request = _request(headers, body)
        zoom.ADAPTER.authenticate(request, _account())
        stored += [n.body for n in zoom.ADAPTER.notices(request, _account())]
    assert zoom.ADAPTER.finished_call(stored, _account()) == _expected(call, simulator)


async def test_a_corrected_record_replaces_the_first() -> None:
    endpoint = Endpoint(_account())
    async with _simulator(endpoint) as simulator:
        call = _call(talk_seconds=300)
        await simulator.place_call(call)
        corrected = replace(call, talk_seconds=240)
        await simulator.update_call(corrected)
    assert endpoint.call(simulator.provider_call_id(call)).duration_seconds == 240
    assert [item["duration"] for item in simulator.state.records.values()] == [240]


# --- URL validation ---------------------------------------------------------------------------------


async def test_the_handshake_and_the_72_hourly_revalidation_pass_against_the_adapter() -> None:
    endpoint = Endpoint(_account())
    async with _simulator(endpoint) as simulator:
        assert await simulator.handshake() is True
        assert not simulator.revalidation_due()
        simulator.clock = lambda: datetime.now(timezone.utc) + timedelta(hours=72)
        assert simulator.revalidation_due()
        simulator.clock = lambda: datetime.now(timezone.utc)
        assert await simulator.revalidate() is True
    assert endpoint.inbox == {}


async def test_an_endpoint_with_the_wrong_secret_fails_validation_and_gets_no_more_events() -> None:
    endpoint = Endpoint(_account(webhook_secret="a-different-secret"))
    async with _simulator(endpoint) as simulator:
        assert await simulator.revalidate() is False
        assert await simulator.place_call(_call()) == []
    assert endpoint.statuses == [401]  # the adapter refused Zoom's signed validation request


async def test_an_endpoint_that_answers_the_wrong_token_fails_validation() -> None:
    app = FastAPI()

    @app.post("/webhooks/zoom/firm-1")
    async def wrong(request: Request) -> JSONResponse:
        token = json.loads(await request.body())["payload"]["plainToken"]
        return JSONResponse({"plainToken": token, "encryptedToken": "0" * 64})

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    async with ZoomSimulator(URL, SECRET, account_id=ACCOUNT_ID, http=http) as simulator:
        assert await simulator.handshake() is False


# --- The pull API: the call history through the real client ----------------------------------------


def _placed_calls(count: int) -> list[SimulatedCall]:
    shapes = [dict(direction="inbound"), dict(direction="outbound", hold_seconds=25),
              dict(direction="inbound", outcome="missed"), dict(direction="outbound", external_number="103")]
    return [_call(started_at=STARTED + timedelta(minutes=7 * i), talk_seconds=60 + i, **shapes[i % len(shapes)])
            for i in range(count)]


@pytest.fixture
def api():
    state = ZoomApiState(account_id=ACCOUNT_ID)
    with BackgroundServer(create_api_app(state), name="zoom-api") as server:
        yield state, server.base_url


def _source(base_url: str, state: ZoomApiState, **options: Any) -> ZoomCallLogSource:
    credentials = {"client_id": state.client_id, "client_secret": state.client_secret}
    return source(_account(), base_url, credentials, **options)


async def _all_pages(log: ZoomCallLogSource, since: datetime, until: datetime) -> list[Any]:
    try:
        return [page async for page in log.pages(since, until)]
    finally:
        await log.aclose()


async def test_the_pull_client_returns_exactly_the_placed_calls_over_several_pages(api) -> None:
    state, base_url = api
    endpoint = Endpoint(_account())
    async with _simulator(endpoint, state=state) as simulator:
        calls = _placed_calls(7)
        for index, call in enumerate(calls):
            await simulator.place_call(call, deliver=index != 3)  # one webhook lost: only the log has it
        outside = _call(started_at=STARTED + timedelta(hours=5))
        await simulator.place_call(outside, deliver=False)

    pages = await _all_pages(_source(base_url, state, page_size=3), STARTED, STARTED + timedelta(hours=1))
    assert [page.records_read for page in pages] == [3, 3, 1]
    pulled = {c.provider_call_id: c for page in pages for c in page.calls}
    assert pulled == {simulator.provider_call_id(c): _expected(c, simulator) for c in calls}
    for index, call in enumerate(calls):
        webhook = endpoint.call(simulator.provider_call_id(call))
        assert webhook == (None if index == 3 else pulled[simulator.provider_call_id(call)])
    sent = state.requests[0][1]
    assert (sent["page_size"], sent["time_type"], sent["from"]) == ("3", "start_time", "2026-11-02T09:30:00Z")


async def test_the_window_is_half_open_and_split_into_months(api) -> None:
    state, base_url = api
    simulator = ZoomSimulator(URL, SECRET, account_id=ACCOUNT_ID, state=state)
    early, late = _call(started_at=STARTED - timedelta(days=40)), _call(started_at=STARTED)
    for call in (early, late):
        await simulator.place_call(call, deliver=False)
    pages = await _all_pages(_source(base_url, state), STARTED - timedelta(days=40), STARTED)
    assert [c.provider_call_id for p in pages for c in p.calls] == [simulator.provider_call_id(early)]
    assert len(state.requests) == 2  # 40 days is two requests of at most a month each
    await simulator.aclose()


async def test_bad_credentials_are_a_permanent_error(api) -> None:
    state, base_url = api
    log = source(_account(), base_url, {"client_id": state.client_id, "client_secret": "wrong"})
    with pytest.raises(CallLogError) as error:
        await _all_pages(log, STARTED, STARTED + timedelta(hours=1))
    assert (error.value.transient, error.value.status) == (False, 401)


async def test_missing_credentials_are_a_permanent_error() -> None:
    with pytest.raises(CallLogError) as error:
        await _all_pages(source(_account(), "http://127.0.0.1:9", {}), STARTED, STARTED + timedelta(hours=1))
    assert error.value.transient is False


async def test_an_expired_token_is_replaced_once(api) -> None:
    state, base_url = api
    ZoomSimulator(URL, SECRET, account_id=ACCOUNT_ID, state=state).state.record(_call())
    log = _source(base_url, state, page_size=1)
    first = [page async for page in log.pages(STARTED, STARTED + timedelta(hours=1))]
    state.expire_tokens()
    second = await _all_pages(log, STARTED, STARTED + timedelta(hours=1))
    assert first == second and len(second[0].calls) == 1
    assert state.tokens_issued == 2


async def test_a_429_is_retried_once_after_retry_after(api) -> None:
    state, base_url = api
    state.retry_after_seconds = 2
    state.record(_call())
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    state.throttle_next_n = 1
    pages = await _all_pages(_source(base_url, state, sleep=sleep), STARTED, STARTED + timedelta(hours=1))
    assert (waits, len(pages[0].calls)) == ([2.0], 1)

    state.throttle_next_n = 2
    with pytest.raises(CallLogError) as error:
        await _all_pages(_source(base_url, state, sleep=sleep), STARTED, STARTED + timedelta(hours=1))
    assert (error.value.transient, error.value.status) == (True, 429)


async def test_the_per_token_rate_is_enforced_and_honoured(api) -> None:
    state, base_url = api
    now = [1_800_000_000.0]
    state.clock = lambda: now[0]
    state.rate_limit, state.rate_window_seconds, state.retry_after_seconds = 1, 1.0, 1
    for call in _placed_calls(3):
        state.record(call)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    log = _source(base_url, state, page_size=1, sleep=sleep, clock=lambda: now[0])
    pages = await _all_pages(log, STARTED, STARTED + timedelta(hours=1))
    assert [p.records_read for p in pages] == [1, 1, 1]
    assert waits == [1.0, 1.0]  # each page after the first hit the one-per-second limit once


async def test_server_errors_and_timeouts_are_transient(api) -> None:
    state, base_url = api
    state.fail_next_n_with_5xx = 1
    with pytest.raises(CallLogError) as error:
        await _all_pages(_source(base_url, state), STARTED, STARTED + timedelta(hours=1))
    assert (error.value.transient, error.value.status) == (True, 503)

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    slow = httpx.AsyncClient(transport=httpx.MockTransport(timeout))
    log = source(_account(), base_url, {"client_id": "a", "client_secret": "b"}, slow)
    with pytest.raises(CallLogError) as timed_out:
        await _all_pages(log, STARTED, STARTED + timedelta(hours=1))
    assert timed_out.value.transient is True
    await slow.aclose()


async def test_a_forbidden_api_is_a_permanent_error() -> None:
    def forbidden(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(403, json={"code": 200, "message": "No permission."})

    http = httpx.AsyncClient(transport=httpx.MockTransport(forbidden))
    log = source(_account(), "http://zoom.test", {"client_id": "a", "client_secret": "b"}, http)
    with pytest.raises(CallLogError) as error:
        await _all_pages(log, STARTED, STARTED + timedelta(hours=1))
    assert (error.value.transient, error.value.status) == (False, 403)
    await http.aclose()


async def test_the_token_request_is_zoom_server_to_server_oauth() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "tok", "token_type": "bearer", "expires_in": 3599})
        return httpx.Response(200, json={"call_history": [], "next_page_token": ""})

    http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    log = source(_account(), "https://api.zoom.us", {"client_id": "cid", "client_secret": "csecret"}, http)
    await _all_pages(log, STARTED, STARTED + timedelta(hours=1))
    token, history = seen
    assert (token.method, token.url.host, token.url.path) == ("POST", "zoom.us", "/oauth/token")
    assert dict(token.url.params) == {"grant_type": "account_credentials", "account_id": ACCOUNT_ID}
    assert token.headers["authorization"] == "Basic " + base64.b64encode(b"cid:csecret").decode()
    assert (history.url.host, history.url.path) == ("api.zoom.us", "/v2/phone/call_history")
    assert history.headers["authorization"] == "Bearer tok"
    await http.aclose()


async def test_zoom_has_no_subscriptions_to_renew(api) -> None:
    state, base_url = api
    log = _source(base_url, state)
    assert await log.renew_subscriptions(STARTED, renew_within_seconds=86_400) == []
    await log.aclose()


async def test_secrets_stay_out_of_reprs() -> None:
    log = source(_account(), "https://api.zoom.us", {"client_id": "cid", "client_secret": "csecret"})
    simulator = ZoomSimulator(URL, SECRET, account_id=ACCOUNT_ID)
    assert "csecret" not in repr(log)
    assert SECRET not in repr(simulator)
    assert "zoom-client-secret" not in repr(simulator.state)
    await log.aclose()
