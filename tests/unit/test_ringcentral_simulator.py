"""The RingCentral simulator speaks RingCentral: its calls read back, through the real adapter,
as exactly the call that was specified, its handshake is RingCentral's, and its REST API (JWT
OAuth, call log, subscriptions, rate limit) gives the pull client the same calls as the webhooks."""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from hypothesis import given, settings
from hypothesis import strategies as st

from calltime.fakes import ringcentral as simulator_module
from calltime.fakes.calls import SimulatedCall
from calltime.fakes.ringcentral import (
    CallSpec,
    RingCentralApiState,
    RingCentralSimulator,
    call_log_record,
    call_spec_for,
    create_api_app,
    notifications_for,
)
from calltime.fakes.server import BackgroundServer
from calltime.ingest.call_logs import ringcentral as call_log
from calltime.ingest.call_logs.port import CallLogError
from calltime.ingest.providers.model import Account, Refused, WebhookRequest
from calltime.ingest.providers.ringcentral import (
    ADAPTER,
    FinishedCall,
    SessionNotification,
    assemble_call,
    is_validation_request,
    parse_notification,
    presented_token,
    token_matches,
)

FULL_CALL_SAMPLE = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "ringcentral"
    / "ringcentral_telephony_sessions_full_call_sequence.json"
)
SUBSCRIPTION = "2461434a-276a-4073-bd26-34089effbad5"
STARTED = datetime(2024, 3, 5, 14, 30, 7, 123456, tzinfo=timezone.utc)
STARTED_MS = STARTED.replace(microsecond=123000)
TOKEN = "shared-verification-token"


def _spec(**changes: Any) -> CallSpec:
    return replace(CallSpec(started_at=STARTED), **changes)


def _read_back(envelopes: list[dict[str, Any]], extension_id: str) -> FinishedCall | None:
    notifications = [parse_notification(json.dumps(e).encode()) for e in envelopes]
    return assemble_call(notifications, {extension_id})


def _expected_seconds(spec: CallSpec) -> int:
    return spec.talk_seconds + spec.hold_seconds if spec.outcome == "answered" else 0


def _expected_end(spec: CallSpec) -> datetime:
    rung = STARTED_MS + timedelta(seconds=spec.ring_seconds)
    if spec.outcome in ("missed", "rejected"):
        return rung
    return rung + timedelta(seconds=spec.talk_seconds + spec.hold_seconds)


# --- Shapes ----------------------------------------------------------------------------------


def test_envelopes_have_the_keys_and_shapes_of_the_reference_sample() -> None:
    sample = json.loads(FULL_CALL_SAMPLE.read_text())
    user_leg = sample[0]
    envelopes = notifications_for(_spec(direction="outbound"), SUBSCRIPTION)

    for envelope in envelopes:
        assert envelope.keys() == user_leg.keys()
        assert envelope["body"].keys() == user_leg["body"].keys()
        party = envelope["body"]["parties"][0]
        assert party.keys() == user_leg["body"]["parties"][0].keys()
        assert party["status"].keys() == user_leg["body"]["parties"][0]["status"].keys()
        assert envelope["subscriptionId"] == SUBSCRIPTION


def test_envelopes_number_uniquely_and_time_like_ringcentral() -> None:
    spec = _spec(account_id="37439510", extension_id="2253168021", hold_seconds=30)
    envelopes = notifications_for(spec, SUBSCRIPTION)
    hex_id = spec.telephony_session_id.removeprefix("s-")
    rc_time = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

    assert re.fullmatch(r"s-[0-9a-f]{32}", spec.telephony_session_id)
    assert [e["body"]["sequence"] for e in envelopes] == list(range(1, len(envelopes) + 1))
    assert len({e["uuid"] for e in envelopes}) == len(envelopes)
    assert [e["body"]["parties"][0]["status"]["code"] for e in envelopes] == [
        "Setup", "Proceeding", "Answered", "Hold", "Answered", "Disconnected",
    ]
    for envelope in envelopes:
        body = envelope["body"]
        assert envelope["event"] == (
            "/restapi/v1.0/account/37439510/extension/2253168021/telephony/sessions"
        )
        assert re.fullmatch(rf"p-{hex_id}-[12]", body["parties"][0]["id"])
        assert rc_time.fullmatch(body["eventTime"]) and rc_time.fullmatch(envelope["timestamp"])
        assert envelope["timestamp"] > body["eventTime"]
        assert body["telephonySessionId"] == spec.telephony_session_id
    event_times = [e["body"]["eventTime"] for e in envelopes]
    assert event_times == sorted(event_times)


def test_the_firm_users_leg_is_caller_or_callee_as_ringcentral_numbers_them() -> None:
    inbound = notifications_for(_spec(direction="inbound"), SUBSCRIPTION)[0]["body"]["parties"][0]
    outbound = notifications_for(_spec(direction="outbound"), SUBSCRIPTION)[0]["body"]["parties"][0]

    assert (inbound["direction"], inbound["id"][-2:]) == ("Inbound", "-2")
    assert inbound["to"] == {"phoneNumber": "+14155550100", "extensionId": "400000101"}
    assert inbound["from"] == {"phoneNumber": "+12125550123"}
    assert (outbound["direction"], outbound["id"][-2:]) == ("Outbound", "-1")
    assert outbound["from"] == {"phoneNumber": "+14155550100", "extensionId": "400000101"}


def test_the_far_party_arrives_through_the_account_level_filter() -> None:
    spec = _spec(direction="outbound")
    envelopes = notifications_for(spec, SUBSCRIPTION, include_far_party=True)
    far = [e for e in envelopes if "extensionId" not in e["body"]["parties"][0]]

    assert [e["body"]["parties"][0]["status"]["code"] for e in far] == [
        "Proceeding", "Answered", "Disconnected",
    ]
    assert {e["event"] for e in far} == {"/restapi/v1.0/account/400000001/telephony/sessions"}
    assert {e["body"]["parties"][0]["direction"] for e in far} == {"Inbound"}


@pytest.mark.parametrize(
    "changes",
    [
        {"direction": "sideways"},
        {"outcome": "busy"},
        {"direction": "outbound", "outcome": "voicemail"},
        {"talk_seconds": -1},
        {"started_at": datetime(2024, 3, 5, 14, 30)},
    ],
)
def test_impossible_calls_cannot_be_specified(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _spec(**changes)


# --- Round trip through the adapter ----------------------------------------------------------

ROUND_TRIP_SPECS = {
    "inbound-answered": _spec(),
    "inbound-with-hold": _spec(talk_seconds=301, hold_seconds=45),
    "outbound-answered": _spec(direction="outbound", ring_seconds=11, talk_seconds=7),
    "outbound-with-hold": _spec(direction="outbound", talk_seconds=600, hold_seconds=120),
    "inbound-missed": _spec(outcome="missed", ring_seconds=25),
    "outbound-unanswered": _spec(direction="outbound", outcome="missed", ring_seconds=40),
    "inbound-voicemail": _spec(outcome="voicemail", ring_seconds=20, talk_seconds=33),
    "inbound-rejected": _spec(outcome="rejected", ring_seconds=4),
    "outbound-rejected": _spec(direction="outbound", outcome="rejected", ring_seconds=9),
    "answered-at-once": _spec(ring_seconds=0, talk_seconds=1),
    "london-client": _spec(external_number="+442079460958"),
}


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS.values(), ids=ROUND_TRIP_SPECS.keys())
@pytest.mark.parametrize("include_far_party", [False, True])
def test_a_simulated_call_reads_back_as_the_specified_call(
    spec: CallSpec, include_far_party: bool
) -> None:
    envelopes = notifications_for(spec, SUBSCRIPTION, include_far_party=include_far_party)

    call = _read_back(envelopes, spec.extension_id)

    assert call == FinishedCall(
        provider_call_id=spec.telephony_session_id,
        direction=spec.direction,
        external_number_e164=spec.external_number,
        external_number_raw=spec.external_number,
        internal_number=spec.firm_number,
        provider_user_id=spec.extension_id,
        started_at=STARTED_MS,
        ended_at=_expected_end(spec),
        duration_seconds=_expected_seconds(spec),
        result=spec.outcome,
        last_sequence=len(envelopes),
    )


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_a_simulated_extension_to_extension_call_reads_back_as_internal(direction: str) -> None:
    spec = _spec(direction=direction, external_number="205", other_extension_id="400000205")

    call = _read_back(notifications_for(spec, SUBSCRIPTION), spec.extension_id)

    assert call is not None
    assert (call.direction, call.external_number_e164, call.external_number_raw) == (
        "internal", None, "205",
    )
    assert call.internal_number == "101"


def test_a_simulated_call_is_unfinished_until_its_last_notification() -> None:
    envelopes = notifications_for(_spec(hold_seconds=10), SUBSCRIPTION)

    assert _read_back(envelopes[:-1], "400000101") is None


_SPECS = st.builds(
    CallSpec,
    direction=st.sampled_from(["inbound", "outbound"]),
    started_at=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2090, 1, 1),
        timezones=st.just(timezone.utc),
    ),
    ring_seconds=st.integers(0, 120),
    talk_seconds=st.integers(0, 4 * 3600),
    hold_seconds=st.integers(0, 3600),
    outcome=st.sampled_from(["answered", "missed"]),
)


@settings(max_examples=100)
@given(_SPECS, st.randoms(use_true_random=False), st.booleans())
def test_any_call_delivered_in_any_order_reads_back_with_its_seconds(
    spec: CallSpec, rng: random.Random, include_far_party: bool
) -> None:
    envelopes = notifications_for(spec, SUBSCRIPTION, include_far_party=include_far_party)
    delivered = envelopes + rng.sample(envelopes, k=len(envelopes) // 2)
    rng.shuffle(delivered)

    call = _read_back(delivered, spec.extension_id)

    assert call is not None
    assert call.duration_seconds == (
        spec.talk_seconds + spec.hold_seconds if spec.outcome == "answered" else 0
    )
    assert call.direction == spec.direction
    assert call.external_number_e164 == spec.external_number
    assert call.result == spec.outcome


# --- Delivery over HTTP, against a tiny in-process endpoint ------------------------------------


def _webhook_app(received: list[SessionNotification], *, token: str = TOKEN) -> FastAPI:
    """A minimal RingCentral webhook: echoes the handshake, checks the token, keeps the rest."""
    app = FastAPI()

    @app.post("/webhook")
    async def webhook(request: Request) -> Response:
        raw_body = await request.body()
        validation = is_validation_request(request.headers, raw_body)
        if validation is not None:
            return Response(headers={"Validation-Token": validation}, media_type="application/json")
        if not token_matches(presented_token(request.headers), token):
            return Response(status_code=401)
        assert request.headers["content-type"] == "application/json"
        received.append(parse_notification(raw_body))
        return Response()

    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")


async def test_the_handshake_succeeds_against_an_endpoint_that_echoes_the_token() -> None:
    async with _client(_webhook_app([])) as http:
        assert await RingCentralSimulator("/webhook", TOKEN, http=http).validate()


def _handshake_app(reply: Any) -> FastAPI:
    app = FastAPI()

    @app.post("/webhook")
    async def webhook(request: Request) -> Response:
        return await reply(request.headers.get("Validation-Token", ""))

    return app


async def _no_echo(token: str) -> Response:
    return Response()


async def _wrong_echo(token: str) -> Response:
    return Response(headers={"Validation-Token": token + "x"})


async def _created(token: str) -> Response:
    return Response(status_code=201, headers={"Validation-Token": token})


async def _too_big(token: str) -> Response:
    return Response(content=b"x" * 1024, headers={"Validation-Token": token})


async def _broken(token: str) -> Response:
    return Response(status_code=500, headers={"Validation-Token": token})


@pytest.mark.parametrize("reply", [_no_echo, _wrong_echo, _created, _too_big, _broken])
async def test_the_handshake_fails_unless_the_reply_is_a_small_200_echo(reply: Any) -> None:
    async with _client(_handshake_app(reply)) as http:
        assert not await RingCentralSimulator("/webhook", TOKEN, http=http).validate()


async def test_the_handshake_fails_when_the_endpoint_is_too_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def slow(token: str) -> Response:
        await asyncio.sleep(1)
        return Response(headers={"Validation-Token": token})

    monkeypatch.setattr(simulator_module, "VALIDATION_DEADLINE", timedelta(milliseconds=50))
    async with _client(_handshake_app(slow)) as http:
        assert not await RingCentralSimulator("/webhook", TOKEN, http=http).validate()


async def test_the_handshake_fails_when_the_endpoint_is_unreachable() -> None:
    async with RingCentralSimulator("http://127.0.0.1:9/webhook", TOKEN) as simulator:
        assert not await simulator.validate()


@pytest.mark.parametrize("header_name", ["Verification-Token", "Validation-Token"])
async def test_a_placed_call_is_delivered_with_the_token_and_reads_back(header_name: str) -> None:
    received: list[SessionNotification] = []
    spec = _spec(direction="outbound", hold_seconds=15)
    async with _client(_webhook_app(received)) as http:
        simulator = RingCentralSimulator("/webhook", TOKEN, http=http, header_name=header_name)
        responses = await simulator.place_call(spec)

    assert [r.status_code for r in responses] == [200] * 6
    call = assemble_call(received, {spec.extension_id})
    assert call is not None
    assert call.duration_seconds == 135
    assert {n.subscription_id for n in received} == {simulator.subscription_id}


async def test_shuffled_and_repeated_delivery_still_reads_back_as_one_call() -> None:
    received: list[SessionNotification] = []
    spec = _spec(talk_seconds=90, hold_seconds=30)
    async with _client(_webhook_app(received)) as http:
        simulator = RingCentralSimulator("/webhook", TOKEN, http=http)
        responses = await simulator.place_call(
            spec, shuffle=True, duplicate_each=3, rng=random.Random(7), include_far_party=True
        )

    assert len(responses) == 18
    assert [n.sequence for n in received] != sorted(n.sequence for n in received)
    assert len({n.uuid for n in received}) == 6
    assert assemble_call(received, {spec.extension_id}).duration_seconds == 120


async def test_a_wrong_token_is_refused_by_the_endpoint() -> None:
    received: list[SessionNotification] = []
    async with _client(_webhook_app(received)) as http:
        simulator = RingCentralSimulator("/webhook", "not-the-token", http=http)
        response = await simulator.send(notifications_for(_spec(), SUBSCRIPTION)[0])

    assert response.status_code == 401
    assert received == []


async def test_a_call_cannot_be_delivered_less_than_once() -> None:
    async with _client(_webhook_app([])) as http:
        with pytest.raises(ValueError):
            await RingCentralSimulator("/webhook", TOKEN, http=http).place_call(
                _spec(), duplicate_each=0
            )


# --- Provider-neutral calls, through the provider-neutral adapter ------------------------------

ACCOUNT_ID = "400100200"
USER = "62100101"
CALL_START = datetime(2026, 1, 5, 15, 0, 0, tzinfo=timezone.utc)
FIRM = Account(firm_id="firm-1", provider="ringcentral", account_id=ACCOUNT_ID,
               webhook_secret=TOKEN, phone_region="US", attorneys_by_user={USER: "attorney-1"})


def _call(minute: int = 0, **changes: Any) -> SimulatedCall:
    fields = dict(call_key=f"call-{minute}-{sorted(changes.items())}", user_id=USER,
                  started_at=CALL_START + timedelta(minutes=minute))
    return SimulatedCall(**(fields | changes))


def _simulator(http: httpx.AsyncClient | None = None, **options: Any) -> RingCentralSimulator:
    return RingCentralSimulator("/webhook", TOKEN, account_id=ACCOUNT_ID, http=http, **options)


def _request(headers: dict[str, str], body: bytes) -> WebhookRequest:
    return WebhookRequest(headers={k.lower(): v for k, v in headers.items()}, query={},
                          body=body, received_at=datetime.now(timezone.utc))


def _through_adapter(deliveries: list[tuple[dict[str, str], bytes]], account: Account = FIRM):
    """What ingest would conclude: every delivery authenticated, its notices kept by dedupe key
    (first arrival wins, as the inbox does), the call assembled from them."""
    kept: dict[str, bytes] = {}
    for headers, body in deliveries:
        request = _request(headers, body)
        assert ADAPTER.handshake(request, account) is None
        ADAPTER.authenticate(request, account)
        for notice in ADAPTER.notices(request, account):
            kept.setdefault(notice.dedupe_key, notice.body)
    return ADAPTER.finished_call(list(kept.values()), account)


SIMULATED_CALLS = {
    "inbound-answered": _call(),
    "inbound-with-hold": _call(talk_seconds=301, hold_seconds=45),
    "outbound-answered": _call(direction="outbound", ring_seconds=11, talk_seconds=7),
    "inbound-missed": _call(outcome="missed", ring_seconds=25),
    "outbound-missed": _call(direction="outbound", outcome="missed", ring_seconds=40),
    "inbound-voicemail": _call(outcome="voicemail", ring_seconds=20, talk_seconds=33),
    "inbound-rejected": _call(outcome="rejected", ring_seconds=3),
    "outbound-rejected": _call(direction="outbound", outcome="rejected", ring_seconds=5),
    "london": _call(external_number="+442079460958", talk_seconds=1),
}


@pytest.mark.parametrize("call", SIMULATED_CALLS.values(), ids=SIMULATED_CALLS.keys())
def test_a_simulated_call_reads_back_through_the_adapter_as_that_call(call: SimulatedCall) -> None:
    simulator = _simulator()

    finished = _through_adapter(simulator.webhook_requests(call))

    assert finished is not None
    assert finished.provider_call_id == simulator.provider_call_id(call)
    assert (finished.direction, finished.result) == (call.direction, call.outcome)
    assert finished.duration_seconds == call.connected_seconds
    assert (finished.started_at, finished.ended_at) == (call.started_at, call.ended_at)
    assert finished.external_number_e164 == finished.external_number_raw == call.external_number
    assert finished.internal_number == call.user_number
    assert finished.provider_user_id == call.user_id


def test_the_deliveries_of_a_call_are_the_same_each_time_and_unique_within_it() -> None:
    call = _call(hold_seconds=20)

    first = _simulator().webhook_requests(call)
    again = _simulator(subscription_id=None).webhook_requests(call)

    bodies = [json.loads(body) for _headers, body in first]
    assert [json.loads(b)["uuid"] for _h, b in again] == [b["uuid"] for b in bodies]
    assert len({b["uuid"] for b in bodies}) == len(bodies) == 6
    assert all(h == {"Content-Type": "application/json", "Verification-Token": TOKEN}
               for h, _b in first)
    assert {b["body"]["telephonySessionId"] for b in bodies} == {_simulator().provider_call_id(call)}


def test_deliveries_shuffled_and_repeated_read_back_as_one_call() -> None:
    call = _call(talk_seconds=90, hold_seconds=30)
    deliveries = _simulator().webhook_requests(call, include_far_party=True)
    scrambled = deliveries * 2
    random.Random(3).shuffle(scrambled)

    assert _through_adapter(scrambled) == _through_adapter(deliveries)
    assert _through_adapter(scrambled).duration_seconds == 120


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: ({**h, "Verification-Token": "forged"}, b),
        lambda h, b: ({"Content-Type": "application/json"}, b),
    ],
    ids=["forged-token", "token-stripped"],
)
def test_a_delivery_with_a_tampered_token_is_refused_with_401(tamper: Any) -> None:
    headers, body = _simulator().webhook_requests(_call())[0]

    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request(*tamper(headers, body)), FIRM)
    assert refused.value.status == 401


def test_a_delivery_rewritten_for_another_account_is_refused_with_403() -> None:
    # RingCentral signs no body (providers.md §1.3): what a tampered body can still betray is
    # the account it names.
    headers, body = _simulator().webhook_requests(_call())[0]
    tampered = body.replace(f"/account/{ACCOUNT_ID}/".encode(), b"/account/999999/")

    assert tampered != body
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request(headers, tampered), FIRM)
    assert refused.value.status == 403


def test_an_outbound_call_that_reached_voicemail_has_no_ringcentral_form() -> None:
    with pytest.raises(ValueError, match="voicemail"):
        _simulator().webhook_requests(_call(direction="outbound", outcome="voicemail"))


def test_a_simulated_call_maps_onto_the_account_and_extension() -> None:
    spec = call_spec_for(_call(), ACCOUNT_ID)

    assert (spec.account_id, spec.extension_id, spec.extension_number) == (ACCOUNT_ID, USER, "101")
    assert re.fullmatch(r"s-[0-9a-f]{32}", spec.telephony_session_id)
    assert call_spec_for(_call()).telephony_session_id == spec.telephony_session_id


async def test_the_uniform_handshake_is_ringcentrals_validation() -> None:
    async with _client(_webhook_app([])) as http:
        assert await _simulator(http).handshake()
    async with _client(_handshake_app(_no_echo)) as http:
        assert not await _simulator(http).handshake()


async def test_a_dropped_webhook_leaves_the_call_only_in_the_call_log() -> None:
    received: list[SessionNotification] = []
    async with _client(_webhook_app(received)) as http:
        simulator = _simulator(http)
        responses = await simulator.place_call(_call(), deliver=False)
        delivered = await simulator.place_call(_call(minute=5), duplicate_each=2)

    assert responses == []
    assert [r.status_code for r in delivered] == [200] * 8  # Setup, Proceeding, Answered, Disconnected
    assert len(received) == 8
    assert {r["telephonySessionId"] for r in simulator.api.records()} == {
        simulator.provider_call_id(_call()), simulator.provider_call_id(_call(minute=5))}


# --- Webhooks and the call log tell the same call ----------------------------------------------


def _without_sequence(call: FinishedCall) -> FinishedCall:
    # The webhook path alone knows RingCentral's `sequence`; nothing else may differ.
    return replace(call, last_sequence=None)


_SIMULATED = st.builds(
    SimulatedCall,
    user_id=st.just(USER),
    direction=st.sampled_from(["inbound", "outbound"]),
    started_at=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1),
                            timezones=st.just(timezone.utc)).map(lambda t: t.replace(microsecond=0)),
    ring_seconds=st.integers(0, 120),
    talk_seconds=st.integers(0, 4 * 3600),
    hold_seconds=st.integers(0, 3600),
    outcome=st.sampled_from(["answered", "missed", "voicemail", "rejected"]),
)


@settings(max_examples=150)
@given(_SIMULATED)
def test_any_calls_log_record_reads_as_its_webhooks_read(call: SimulatedCall) -> None:
    if call.direction == "outbound" and call.outcome == "voicemail":
        return
    simulator = _simulator()
    record = call_log_record(simulator.spec_for(call))

    from_log = call_log.call_from_record(record, "US")

    assert from_log == _without_sequence(_through_adapter(simulator.webhook_requests(call)))
    assert from_log.duration_seconds == call.connected_seconds


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_an_internal_calls_log_record_reads_as_its_webhooks_read(direction: str) -> None:
    spec = _spec(account_id=ACCOUNT_ID, extension_id=USER, direction=direction,
                 external_number="205", other_extension_id="62100205")
    deliveries = _simulator().webhook_requests(spec)

    from_log = call_log.call_from_record(call_log_record(spec), "US")

    assert from_log == _without_sequence(_through_adapter(deliveries))
    assert (from_log.direction, from_log.external_number_raw, from_log.internal_number) == (
        "internal", "205", "101")


class Clock:
    """Epoch seconds that move only when told to (shared by the fake server and the client)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Served:
    def __init__(self, **state_options: Any) -> None:
        self.clock = Clock(CALL_START.timestamp() + 86400)
        self.state = RingCentralApiState(ACCOUNT_ID, clock=self.clock, **state_options)
        self.credentials = self.state.add_app("app-id", "app-secret")
        self.server = BackgroundServer(create_api_app(self.state), name="fake-ringcentral")

    def __enter__(self) -> _Served:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def source(self, credentials: dict[str, str] | None = None, **options: Any):
        options = {"sleep": self.clock.sleep, "clock": self.clock} | options
        return call_log.source(FIRM, self.server.base_url, credentials or self.credentials,
                               **options)


async def _read(log, since: datetime, until: datetime) -> list:
    try:
        return [page async for page in log.pages(since, until)]
    finally:
        await log.aclose()


PLACED = [*SIMULATED_CALLS.values(), _call(minute=30, hold_seconds=600)]


async def test_the_call_log_returns_exactly_the_placed_calls_over_several_pages() -> None:
    with _Served() as served:
        simulator = _simulator(api=served.state)
        for call in PLACED:
            await simulator.place_call(call, deliver=False)
        await simulator.place_call(_call(minute=-1), deliver=False)  # before the window
        await simulator.place_call(_call(minute=60), deliver=False)  # at its end, excluded

        pages = await _read(served.source(per_page=3), CALL_START, CALL_START + timedelta(hours=1))

    assert len(pages) == 4
    assert sum(p.records_read for p in pages) == len(PLACED) + 1
    from_log = {c.provider_call_id: c for p in pages for c in p.calls}
    from_webhooks = {
        simulator.provider_call_id(call): _without_sequence(
            _through_adapter(simulator.webhook_requests(call)))
        for call in PLACED
    }
    assert from_log == from_webhooks
    assert served.state.stats["tokens_issued"] == 1


@pytest.mark.parametrize(
    "credentials",
    [
        {"client_id": "app-id", "client_secret": "wrong", "jwt": "x"},
        {"client_id": "nobody", "client_secret": "app-secret", "jwt": "x"},
        "wrong-jwt",
    ],
)
async def test_bad_credentials_are_a_permanent_error(credentials: Any) -> None:
    with _Served() as served:
        if credentials == "wrong-jwt":
            credentials = {**served.credentials, "jwt": served.credentials["jwt"] + "x"}
        with pytest.raises(CallLogError) as raised:
            await _read(served.source(credentials), CALL_START, CALL_START + timedelta(hours=1))

    assert raised.value.transient is False
    assert raised.value.status in (400, 401)


async def test_over_the_rate_the_client_waits_as_told_and_reads_everything() -> None:
    with _Served(rate_limit=2, rate_window_seconds=60) as served:
        simulator = _simulator(api=served.state)
        for call in PLACED:
            await simulator.place_call(call, deliver=False)
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            await served.clock.sleep(seconds)

        pages = await _read(served.source(per_page=2, sleep=sleep),
                            CALL_START, CALL_START + timedelta(hours=1))

    assert sum(len(p.calls) for p in pages) == len(PLACED)
    assert waits and all(w == 60 for w in waits)
    assert served.state.stats["rate_limited"] == len(waits)


async def test_a_429_that_persists_after_the_wait_is_transient() -> None:
    with _Served(rate_limit=1, rate_window_seconds=60) as served:
        simulator = _simulator(api=served.state)
        for call in PLACED:
            await simulator.place_call(call, deliver=False)

        async def impatient(seconds: float) -> None:  # time does not pass
            pass

        with pytest.raises(CallLogError) as raised:
            await _read(served.source(per_page=2, sleep=impatient),
                        CALL_START, CALL_START + timedelta(hours=1))

    assert (raised.value.transient, raised.value.status) == (True, 429)


async def test_an_access_token_that_expired_early_is_replaced() -> None:
    with _Served(token_ttl_seconds=3600) as served:
        await _simulator(api=served.state).place_call(_call(), deliver=False)
        log = served.source(clock=lambda: 0.0)  # the client believes its token is fresh
        first = [p async for p in log.pages(CALL_START, CALL_START + timedelta(hours=1))]
        served.clock.now += 7200
        second = [p async for p in log.pages(CALL_START, CALL_START + timedelta(hours=1))]
        await log.aclose()

    assert len(first[0].calls) == len(second[0].calls) == 1
    assert served.state.stats["tokens_issued"] == 2
    assert served.state.stats["unauthorized"] == 1


async def test_renewal_extends_the_subscriptions_about_to_expire() -> None:
    with _Served() as served:
        simulator = _simulator(api=served.state)  # subscribes for a week
        short = served.state.add_subscription("https://firm/webhook", expires_in=1800)
        blacklisted = served.state.add_subscription("https://old/webhook", expires_in=2400,
                                                    status="Blacklisted")
        lapsed = served.state.add_subscription("https://gone/webhook", expires_in=600)
        served.clock.now += 1200  # the short one has 10 minutes left
        now = datetime.fromtimestamp(served.clock(), timezone.utc)
        log = served.source()
        renewed = await log.renew_subscriptions(now, renew_within_seconds=3600)
        await log.aclose()

    by_id = {s.subscription_id: s.expires_at for s in renewed}
    assert by_id[short["id"]] == now + timedelta(seconds=1800)  # renewed for its own term
    assert short["expirationTime"] < served.state.subscription(short["id"])["expirationTime"]
    assert by_id[simulator.subscription_id] == now + timedelta(days=7, seconds=-1200)
    assert by_id[blacklisted["id"]] == now + timedelta(seconds=1200)  # reported, not renewed
    assert lapsed["id"] not in by_id  # lapsed 10 minutes ago: RingCentral dropped it
    assert served.state.stats["renewals"] == 1


# --- The fake API's own contract -------------------------------------------------------------


async def test_the_fake_api_refuses_missing_tokens_bad_paging_and_other_accounts() -> None:
    with _Served() as served:
        async with httpx.AsyncClient(base_url=served.server.base_url) as http:
            anonymous = await http.get("/restapi/v1.0/account/~/call-log")
            token = (await http.post(
                "/restapi/oauth/token", auth=("app-id", "app-secret"),
                data={"grant_type": call_log.JWT_BEARER_GRANT,
                      "assertion": served.credentials["jwt"]})).json()["access_token"]
            bearer = {"Authorization": f"Bearer {token}"}
            too_big = await http.get("/restapi/v1.0/account/~/call-log",
                                     params={"perPage": 1001}, headers=bearer)
            other = await http.get("/restapi/v1.0/account/123/call-log", headers=bearer)
            password = await http.post("/restapi/oauth/token", auth=("app-id", "app-secret"),
                                       data={"grant_type": "password"})
            unknown = await http.post("/restapi/v1.0/subscription/nope/renew", headers=bearer)

    assert anonymous.status_code == 401 and anonymous.json()["errorCode"] == "TokenInvalid"
    assert too_big.status_code == 400
    assert other.status_code == 404
    assert password.status_code == 400 and password.json()["error"] == "unsupported_grant_type"
    assert unknown.status_code == 404


async def test_the_simple_view_has_no_legs_and_the_detailed_view_does() -> None:
    with _Served() as served:
        await _simulator(api=served.state).place_call(_call(), deliver=False)
        async with httpx.AsyncClient(base_url=served.server.base_url) as http:
            token = (await http.post(
                "/restapi/oauth/token", auth=("app-id", "app-secret"),
                data={"grant_type": call_log.JWT_BEARER_GRANT,
                      "assertion": served.credentials["jwt"]})).json()["access_token"]
            window = {"dateFrom": "2026-01-05T00:00:00.000Z", "dateTo": "2026-01-06T00:00:00.000Z"}
            pages = {view: (await http.get(
                "/restapi/v1.0/account/~/call-log", params={**window, "view": view},
                headers={"Authorization": f"Bearer {token}"})).json()
                for view in ("Simple", "Detailed")}

    simple, detailed = pages["Simple"]["records"][0], pages["Detailed"]["records"][0]
    assert "legs" not in simple and len(detailed["legs"]) == 1
    assert simple["uri"].endswith("?view=Simple")
    assert pages["Simple"]["paging"]["totalElements"] == 1
    assert "nextPage" not in pages["Simple"]["navigation"]
