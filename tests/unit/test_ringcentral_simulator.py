"""The RingCentral simulator speaks RingCentral: its calls read back, through the real adapter,
as exactly the call that was specified, and its handshake is RingCentral's."""

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
from calltime.fakes.ringcentral import CallSpec, RingCentralSimulator, notifications_for
from calltime.ingest.providers.ringcentral import (
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
    if spec.outcome == "missed":
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
