"""The Dialpad simulator speaks Dialpad: its signed events read back, through the real adapter,
as the call that was placed, and its call log — read by the real pull client over HTTP — gives
the same calls, ids and seconds as the webhooks."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from calltime.fakes.calls import SimulatedCall
from calltime.fakes.dialpad import DialpadApiState, DialpadSimulator, create_api_app, leg_ids
from calltime.fakes.server import BackgroundServer
from calltime.ingest.call_logs import dialpad as pull
from calltime.ingest.call_logs.port import CallLogError, CallLogPage
from calltime.ingest.providers.dialpad import ADAPTER
from calltime.ingest.providers.model import (Account, FinishedCall, InvalidNotification, Notice, Refused,
                                             WebhookRequest)

SECRET = "firm-webhook-secret"
API_KEY = "dialpad-api-key"
T0 = datetime(2024, 3, 5, 9, 0, tzinfo=timezone.utc)
ACCOUNT = Account("firm-1", "dialpad", "company-9", SECRET, "US",
                  {"u-101": "attorney-1", "u-102": "attorney-2"})
WEBHOOK_URL = "http://calltime.test/webhooks/dialpad/firm-1"


class Inbox:
    """What the ingest route would keep: notices by dedupe key, bodies per call."""

    def __init__(self) -> None:
        self.notices: dict[str, Notice] = {}

    def bodies(self, provider_call_id: str) -> list[bytes]:
        return [n.body for n in self.notices.values() if n.provider_call_id == provider_call_id]

    def finished(self, provider_call_id: str) -> FinishedCall | None:
        return ADAPTER.finished_call(self.bodies(provider_call_id), ACCOUNT)


def _ingest_app(inbox: Inbox, account: Account = ACCOUNT) -> FastAPI:
    app = FastAPI()

    @app.post("/webhooks/dialpad/firm-1")
    async def receive(request: Request) -> JSONResponse:
        webhook = WebhookRequest(headers={k.lower(): v for k, v in request.headers.items()},
                                 query=dict(request.query_params), body=await request.body(),
                                 received_at=datetime.now(timezone.utc))
        try:
            ADAPTER.authenticate(webhook, account)
            notices = ADAPTER.notices(webhook, account)
        except Refused as refusal:
            return JSONResponse({"detail": refusal.reason}, status_code=refusal.status)
        except InvalidNotification as error:
            return JSONResponse({"detail": str(error)}, status_code=400)
        for notice in notices:
            inbox.notices.setdefault(notice.dedupe_key, notice)
        return JSONResponse({"kept": len(notices)})

    return app


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
async def simulator(inbox: Inbox) -> AsyncIterator[DialpadSimulator]:
    transport = httpx.ASGITransport(app=_ingest_app(inbox))
    async with httpx.AsyncClient(transport=transport) as http:
        state = DialpadApiState(api_keys={API_KEY}, page_size=4)
        async with DialpadSimulator(WEBHOOK_URL, SECRET, account_id="company-9", http=http,
                                    state=state) as sim:
            yield sim


def _read_back(sim: DialpadSimulator, call: SimulatedCall, account: Account = ACCOUNT) -> FinishedCall | None:
    bodies: list[bytes] = []
    for headers, body in sim.webhook_requests(call):
        request = WebhookRequest({k.lower(): v for k, v in headers.items()}, {}, body,
                                 datetime.now(timezone.utc))
        ADAPTER.authenticate(request, account)
        bodies += [n.body for n in ADAPTER.notices(request, account)]
    return ADAPTER.finished_call(bodies, account)


CALLS = [
    SimulatedCall(call_key="in-answered", started_at=T0, ring_seconds=7, talk_seconds=95),
    SimulatedCall(call_key="in-hold", started_at=T0, talk_seconds=121, hold_seconds=40),
    SimulatedCall(call_key="out-answered", started_at=T0, direction="outbound", talk_seconds=3),
    SimulatedCall(call_key="in-missed", started_at=T0, outcome="missed"),
    SimulatedCall(call_key="out-missed", started_at=T0, direction="outbound", outcome="missed"),
    SimulatedCall(call_key="in-voicemail", started_at=T0, outcome="voicemail", talk_seconds=30),
    SimulatedCall(call_key="in-rejected", started_at=T0, outcome="rejected", ring_seconds=2),
]


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.call_key)
def test_simulated_call_reads_back_as_placed(simulator: DialpadSimulator, call: SimulatedCall) -> None:
    expected_result = "missed" if call.outcome == "rejected" else call.outcome
    assert _read_back(simulator, call) == FinishedCall(
        provider_call_id=simulator.provider_call_id(call),
        direction=call.direction,
        external_number_e164=call.external_number,
        external_number_raw=call.external_number,
        internal_number=call.user_number,
        provider_user_id=call.user_id,
        started_at=call.started_at,
        ended_at=call.ended_at,
        duration_seconds=call.connected_seconds,
        result=expected_result,
    )


def test_outbound_call_reaching_a_mailbox_is_a_connected_call(simulator: DialpadSimulator) -> None:
    call = SimulatedCall(started_at=T0, direction="outbound", outcome="voicemail", talk_seconds=25)
    read = _read_back(simulator, call)
    assert read is not None and (read.result, read.duration_seconds) == ("answered", 25)


def test_inbound_call_sends_the_office_leg_and_non_final_states_too(simulator: DialpadSimulator) -> None:
    call = CALLS[1]
    events = simulator.events(call)
    user_leg = simulator.provider_call_id(call)
    assert [e["state"] for e in events if e["call_id"] == user_leg] == [
        "ringing", "connected", "hold", "connected", "hangup"]
    office = [e for e in events if e["call_id"] != user_leg]
    assert {e["target"]["type"] for e in office} == {"office"}
    assert {e["master_call_id"] for e in events} == {office[0]["call_id"]}


def test_subscription_state_filter_limits_what_is_sent() -> None:
    sim = DialpadSimulator(WEBHOOK_URL, SECRET, account_id="company-9", call_states=["hangup"])
    assert [e["state"] for e in sim.events(CALLS[0])] == ["hangup", "hangup"]
    assert _read_back(sim, CALLS[0]) == _read_back(DialpadSimulator(WEBHOOK_URL, SECRET, account_id="c"), CALLS[0])


def test_tampered_delivery_is_refused(simulator: DialpadSimulator) -> None:
    _, body = simulator.webhook_requests(CALLS[0])[-1]
    head, payload, signature = body.decode().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["date_ended"] = str(int(claims["date_ended"]) + 3_600_000)  # bill an extra hour
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = f"{head}.{forged}.{signature}".encode()
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(WebhookRequest({}, {}, tampered, datetime.now(timezone.utc)), ACCOUNT)
    assert refused.value.status == 401


def test_deliveries_signed_with_another_secret_are_refused() -> None:
    other = DialpadSimulator(WEBHOOK_URL, "not-the-firms-secret", account_id="company-9")
    _, body = other.webhook_requests(CALLS[0])[-1]
    with pytest.raises(Refused):
        ADAPTER.authenticate(WebhookRequest({}, {}, body, datetime.now(timezone.utc)), ACCOUNT)


async def test_handshake_is_trivially_accepted(simulator: DialpadSimulator) -> None:
    assert await simulator.handshake() is True


async def test_placed_call_is_delivered_and_kept_once(simulator: DialpadSimulator, inbox: Inbox) -> None:
    call = CALLS[1]
    responses = await simulator.place_call(call, shuffle=True, duplicate_each=3, rng=random.Random(7))
    assert [r.status_code for r in responses] == [200] * len(responses) == [200] * 21
    assert len(inbox.notices) == 1
    read = inbox.finished(simulator.provider_call_id(call))
    assert read is not None and read.duration_seconds == 161


async def test_dropped_webhook_still_lands_in_the_call_log(simulator: DialpadSimulator, inbox: Inbox) -> None:
    assert await simulator.place_call(CALLS[0], deliver=False) == []
    assert inbox.notices == {}
    assert {r["call_id"] for r in simulator.state.records} == set(leg_ids(CALLS[0]))
    assert simulator.provider_call_id(CALLS[0]) == leg_ids(CALLS[0])[0]


async def test_time_claims_are_accepted_fresh_and_refused_when_replayed_late() -> None:
    sim = DialpadSimulator(WEBHOOK_URL, SECRET, account_id="company-9", time_claims=True,
                           clock=lambda: T0)
    _, body = sim.webhook_requests(CALLS[0])[-1]
    ADAPTER.authenticate(WebhookRequest({}, {}, body, T0 + timedelta(seconds=20)), ACCOUNT)
    with pytest.raises(Refused):
        ADAPTER.authenticate(WebhookRequest({}, {}, body, T0 + timedelta(minutes=10)), ACCOUNT)


# --- The pull API ------------------------------------------------------------------------------


def _day_of_calls() -> list[SimulatedCall]:
    calls = []
    for index in range(14):
        calls.append(SimulatedCall(
            call_key=f"call-{index}",
            user_id="u-101" if index % 3 else "u-102",
            direction="outbound" if index % 2 else "inbound",
            outcome=("answered", "answered", "missed", "voicemail")[index % 4],
            started_at=T0 + timedelta(minutes=17 * index, milliseconds=250 * index),
            talk_seconds=30 + 11 * index,
            hold_seconds=5 if index % 5 == 0 else 0,
        ))
    return calls


async def _all_pages(source: Any, since: datetime, until: datetime) -> list[CallLogPage]:
    return [page async for page in source.pages(since, until)]


@pytest.fixture
def api_state() -> DialpadApiState:
    return DialpadApiState(api_keys={API_KEY}, page_size=4)


@pytest.fixture
def api_server(api_state: DialpadApiState) -> Any:
    with BackgroundServer(create_api_app(api_state), name="fake-dialpad") as server:
        yield server


async def test_pull_returns_exactly_the_placed_calls_as_the_webhooks_do(
    api_state: DialpadApiState, api_server: BackgroundServer
) -> None:
    sim = DialpadSimulator(WEBHOOK_URL, SECRET, account_id="company-9", state=api_state)
    calls = _day_of_calls()
    stranger = SimulatedCall(call_key="not-an-attorney", user_id="u-999", started_at=T0 + timedelta(hours=1))
    for call in [*calls, stranger]:
        await sim.place_call(call, deliver=False)
    since, until = calls[2].started_at, calls[11].started_at  # [call 2, call 11)

    source = pull.source(ACCOUNT, api_server.base_url, {"api_key": API_KEY})
    try:
        pages = await _all_pages(source, since, until)
    finally:
        await source.aclose()

    pulled = [call for page in pages for call in page.calls]
    # the stranger is a Dialpad user with no attorney mapping: still the firm's call
    expected = sorted([_read_back(sim, call) for call in [*calls[2:11], stranger]], key=lambda c: c.started_at)
    assert len(pages) > 2
    assert sorted(pulled, key=lambda c: c.started_at) == expected
    inbound_legs = sum(1 for call in calls[2:11] if call.direction == "inbound")
    # the office legs of inbound calls, and both legs of the stranger's inbound call, are read too
    assert sum(page.records_read for page in pages) == 9 + inbound_legs + 2


@pytest.mark.parametrize("inclusive_bounds", [False, True])
async def test_pull_window_is_half_open_whichever_way_dialpad_reads_its_bounds(
    api_state: DialpadApiState, api_server: BackgroundServer, inclusive_bounds: bool
) -> None:
    api_state.inclusive_bounds = inclusive_bounds
    sim = DialpadSimulator(WEBHOOK_URL, SECRET, account_id="company-9", state=api_state)
    at_start = SimulatedCall(call_key="at-start", started_at=T0, direction="outbound")
    at_end = SimulatedCall(call_key="at-end", started_at=T0 + timedelta(hours=1), direction="outbound")
    just_before = SimulatedCall(call_key="before", started_at=T0 - timedelta(milliseconds=1),
                                direction="outbound")
    for call in (just_before, at_start, at_end):
        await sim.place_call(call, deliver=False)
    async with httpx.AsyncClient() as http:
        source = pull.source(ACCOUNT, api_server.base_url, {"api_key": API_KEY}, http)
        pages = await _all_pages(source, T0, T0 + timedelta(hours=1))
    assert [c.provider_call_id for p in pages for c in p.calls] == [sim.provider_call_id(at_start)]


async def test_bad_api_key_is_a_permanent_error(api_server: BackgroundServer) -> None:
    source = pull.source(ACCOUNT, api_server.base_url, {"api_key": "wrong"})
    with pytest.raises(CallLogError) as failed:
        await _all_pages(source, T0, T0 + timedelta(days=1))
    await source.aclose()
    assert (failed.value.transient, failed.value.status) == (False, 401)
    assert "wrong" not in str(failed.value) and "wrong" not in repr(source)


def test_missing_api_key_is_a_permanent_error() -> None:
    with pytest.raises(CallLogError) as failed:
        pull.source(ACCOUNT, "http://127.0.0.1:9", {})
    assert failed.value.transient is False


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep_and_advance(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def sleep_only(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_rate_limit_is_waited_out_once_as_retry_after_says(
    api_state: DialpadApiState, api_server: BackgroundServer
) -> None:
    clock = ManualClock()
    api_state.clock, api_state.rate_limit, api_state.rate_window_seconds = clock, 2, 10.0
    sim = DialpadSimulator(WEBHOOK_URL, SECRET, account_id="company-9", state=api_state)
    calls = _day_of_calls()[:12]
    for call in calls:
        await sim.place_call(call, deliver=False)
    source = pull.source(ACCOUNT, api_server.base_url, {"api_key": API_KEY}, sleep=clock.sleep_and_advance)
    pages = await _all_pages(source, T0, T0 + timedelta(days=1))
    await source.aclose()
    assert api_state.rate_limited >= 1 and clock.slept and all(s == 10.0 for s in clock.slept)
    assert len([c for p in pages for c in p.calls]) == len(calls)


async def test_rate_limit_that_persists_is_a_transient_error(
    api_state: DialpadApiState, api_server: BackgroundServer
) -> None:
    clock = ManualClock()
    api_state.clock, api_state.rate_limit = clock, 0
    source = pull.source(ACCOUNT, api_server.base_url, {"api_key": API_KEY}, sleep=clock.sleep_only)
    with pytest.raises(CallLogError) as failed:
        await _all_pages(source, T0, T0 + timedelta(days=1))
    await source.aclose()
    assert (failed.value.transient, failed.value.status, len(clock.slept)) == (True, 429, 1)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient(
    api_state: DialpadApiState, api_server: BackgroundServer, status: int
) -> None:
    api_state.fail_next(status)
    source = pull.source(ACCOUNT, api_server.base_url, {"api_key": API_KEY})
    with pytest.raises(CallLogError) as failed:
        await _all_pages(source, T0, T0 + timedelta(days=1))
    await source.aclose()
    assert (failed.value.transient, failed.value.status) == (True, status)


async def test_timeouts_are_transient() -> None:
    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(time_out)) as http:
        source = pull.source(ACCOUNT, "https://dialpad.test", {"api_key": API_KEY}, http)
        with pytest.raises(CallLogError) as failed:
            await _all_pages(source, T0, T0 + timedelta(days=1))
    assert failed.value.transient is True


async def test_pull_sends_the_documented_query_and_bearer_key() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        source = pull.source(ACCOUNT, "https://dialpad.test/", {"api_key": API_KEY}, http)
        pages = await _all_pages(source, T0, T0 + timedelta(seconds=1))
    assert pages == [CallLogPage(records_read=0, calls=())]
    assert seen[0].url.path == "/api/v2/call"
    assert dict(seen[0].url.params) == {"started_after": "1709629199999", "started_before": "1709629201000"}
    assert seen[0].headers["Authorization"] == f"Bearer {API_KEY}"


async def test_unreadable_items_are_skipped_not_fatal() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": ["junk", {"call_id": "x"}, {"call_id": "5", "state": "hangup"}]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        source = pull.source(ACCOUNT, "https://dialpad.test", {"api_key": API_KEY}, http)
        pages = await _all_pages(source, T0, T0 + timedelta(days=1))
    assert pages == [CallLogPage(records_read=3, calls=())]


async def test_subscriptions_never_need_renewal() -> None:
    source = pull.source(ACCOUNT, "https://dialpad.test", {"api_key": API_KEY})
    assert await source.renew_subscriptions(T0, renew_within_seconds=86400) == []
    await source.aclose()


async def test_fake_api_rejects_a_cursor_from_another_query(
    api_state: DialpadApiState, api_server: BackgroundServer
) -> None:
    sim = DialpadSimulator(WEBHOOK_URL, SECRET, account_id="company-9", state=api_state)
    for call in _day_of_calls()[:6]:
        await sim.place_call(call, deliver=False)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=api_server.base_url, headers=headers) as http:
        first = (await http.get("/api/v2/call", params={"started_after": "0"})).json()
        reused = await http.get("/api/v2/call", params={"started_after": "1", "cursor": first["cursor"]})
    assert len(first["items"]) == 4 and reused.status_code == 400
