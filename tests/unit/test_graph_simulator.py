"""The Graph simulator speaks Graph: its notifications pass the real adapter, its records read
back (webhook + fetch, or reconciliation) as exactly the placed call, and its API behaves like
Graph's (client credentials, paging, retention, throttling, subscription renewal)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from calltime.fakes.calls import SimulatedCall
from calltime.fakes.graph import GraphApiState, GraphSimulator, create_api_app, graph_time
from calltime.fakes.server import BackgroundServer
from calltime.ingest.call_logs import graph as graph_logs
from calltime.ingest.call_logs.port import CallLogError
from calltime.ingest.providers.graph import ADAPTER, lifecycle_events, record_notice
from calltime.ingest.providers.model import (Account, FinishedCall, InvalidNotification, Notice, Refused,
                                             WebhookRequest)

TENANT = "11111111-2222-3333-4444-555555555555"
SECRET = "client-state-secret"
USER = "aaaaaaaa-0000-0000-0000-000000000101"
WEBHOOK = "http://calltime.test/webhooks/graph/firm-1"
STARTED = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
ACCOUNT = Account(firm_id="firm-1", provider="graph", account_id=TENANT, webhook_secret=SECRET,
                  phone_region="US", attorneys_by_user={USER: "atty-1"})


def _call(**changes: Any) -> SimulatedCall:
    return replace(SimulatedCall(user_id=USER, started_at=STARTED), **changes)


def _request(headers: dict[str, str], body: bytes) -> WebhookRequest:
    return WebhookRequest(headers={k.lower(): v for k, v in headers.items()}, query={}, body=body,
                          received_at=datetime.now(timezone.utc))


@dataclass
class Inbox:
    """What the ingest endpoint keeps: notices by dedupe key, in arrival order."""

    notices: dict[str, Notice] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)

    def bodies(self, provider_call_id: str) -> list[bytes]:
        return [n.body for n in self.notices.values() if n.provider_call_id == provider_call_id]

    def to_fetch(self) -> list[str]:
        return list(dict.fromkeys(n.provider_call_id for n in self.notices.values() if n.fetch_record))


def _webhook_app(inbox: Inbox, account: Account = ACCOUNT) -> FastAPI:
    """A stand-in for ingest's route: the adapter's four answers and nothing else."""
    app = FastAPI()

    @app.post("/webhooks/graph/firm-1")
    async def webhook(request: Request) -> Response:
        webhook_request = WebhookRequest(
            headers={k.lower(): v for k, v in request.headers.items()}, query=dict(request.query_params),
            body=await request.body(), received_at=datetime.now(timezone.utc))
        reply = ADAPTER.handshake(webhook_request, account)
        if reply is not None:
            return Response(reply.body, reply.status, dict(reply.headers), media_type=reply.media_type)
        try:
            ADAPTER.authenticate(webhook_request, account)
            notices = ADAPTER.notices(webhook_request, account)
        except Refused as refused:
            return JSONResponse({"detail": refused.reason}, refused.status)
        except InvalidNotification as invalid:
            return JSONResponse({"detail": str(invalid)}, 400)
        for notice in notices:
            inbox.notices.setdefault(notice.dedupe_key, notice)
        return Response(status_code=202)

    return app


@pytest.fixture
def state() -> GraphApiState:
    return GraphApiState(tenant_id=TENANT, page_size=2)


@pytest.fixture
def api(state: GraphApiState) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_api_app(state), name="fake-graph") as server:
        yield server


@pytest.fixture
async def inbox_and_simulator(state: GraphApiState) -> AsyncIterator[tuple[Inbox, GraphSimulator]]:
    inbox = Inbox()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=_webhook_app(inbox)))
    async with http, GraphSimulator(WEBHOOK, SECRET, account_id=TENANT, http=http, state=state) as simulator:
        yield inbox, simulator


def _credentials(state: GraphApiState, **changes: str) -> dict[str, str]:
    return {"client_id": state.client_id, "client_secret": state.client_secret} | changes


@pytest.fixture
async def source(api: BackgroundServer, state: GraphApiState) -> AsyncIterator[graph_logs.GraphCallLogSource]:
    log_source = graph_logs.source(ACCOUNT, api.base_url, _credentials(state))
    yield log_source
    await log_source.aclose()


async def _fetch_worker(inbox: Inbox, source: graph_logs.GraphCallLogSource) -> None:
    """What the integrator's fetch worker does with every id-only notice."""
    for record_id in inbox.to_fetch():
        notice = record_notice(await source.fetch_record(record_id), ACCOUNT)
        inbox.notices.setdefault(notice.dedupe_key, notice)


def _expected(simulator: GraphSimulator, call: SimulatedCall) -> FinishedCall:
    result, seconds = simulator.expected_outcome(call)
    return FinishedCall(
        provider_call_id=simulator.provider_call_id(call),
        direction=call.direction,
        external_number_e164=call.external_number,
        external_number_raw=call.external_number,
        internal_number=None,
        provider_user_id=call.user_id,
        started_at=call.started_at,
        ended_at=call.ended_at,
        duration_seconds=seconds,
        result=result,
    )


CALLS = [
    _call(direction="inbound", outcome="answered", talk_seconds=95, hold_seconds=30),
    _call(direction="outbound", outcome="answered", talk_seconds=61, external_number="+442079460000"),
    _call(direction="inbound", outcome="missed"),
    _call(direction="inbound", outcome="voicemail", talk_seconds=40),
    _call(direction="outbound", outcome="voicemail", talk_seconds=25),
    _call(direction="outbound", outcome="rejected"),
]


# --- Handshake -------------------------------------------------------------------------------


async def test_the_handshake_succeeds_against_the_adapters_answer(inbox_and_simulator) -> None:
    _, simulator = inbox_and_simulator
    assert await simulator.handshake() is True


@pytest.mark.parametrize("answer", ["encoded", "json", "status"])
async def test_the_handshake_fails_against_a_wrong_answer(answer: str) -> None:
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        token = request.query_params["validationToken"]
        if answer == "encoded":
            return Response(httpx.QueryParams({"t": token}).get("t").replace(" ", "+"), media_type="text/plain")
        if answer == "json":
            return JSONResponse(token)
        return Response(token, status_code=202, media_type="text/plain")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        simulator = GraphSimulator("http://x.test/hook", SECRET, account_id=TENANT, http=http)
        assert await simulator.handshake() is False


async def _token(api: BackgroundServer, state: GraphApiState) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{api.base_url}/{TENANT}/oauth2/v2.0/token", data={
            "client_id": state.client_id, "client_secret": state.client_secret,
            "scope": "https://graph.microsoft.com/.default", "grant_type": "client_credentials"})
    return answer.json()["access_token"]


async def test_creating_a_subscription_through_the_api_validates_the_notification_url(
        api: BackgroundServer, state: GraphApiState) -> None:
    with BackgroundServer(_webhook_app(Inbox()), name="webhook") as webhook:
        good = f"{webhook.base_url}/webhooks/graph/firm-1"
        token = await _token(api, state)
        async with httpx.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {token}"}) as http:
            wanted = {"changeType": "created,updated", "resource": "/communications/callRecords",
                      "expirationDateTime": graph_time(datetime.now(timezone.utc) + timedelta(hours=1)),
                      "clientState": SECRET}
            created = await http.post("/v1.0/subscriptions", json=wanted | {"notificationUrl": good})
            refused = await http.post("/v1.0/subscriptions", json=wanted | {"notificationUrl": f"{webhook.base_url}/nowhere"})
    assert created.status_code == 201 and created.json()["id"] in state.subscriptions
    assert refused.status_code == 400


# --- Webhook deliveries ----------------------------------------------------------------------


async def test_every_delivery_is_accepted_by_the_adapter_and_a_tampered_copy_is_not(inbox_and_simulator) -> None:
    _, simulator = inbox_and_simulator
    for call in CALLS:
        for headers, body in simulator.webhook_requests(call):
            request = _request(headers, body)
            ADAPTER.authenticate(request, ACCOUNT)
            [notice] = ADAPTER.notices(request, ACCOUNT)
            assert notice.fetch_record and notice.provider_call_id == simulator.provider_call_id(call)

            forged = json.loads(body)
            forged["value"][0]["clientState"] = "guess"
            with pytest.raises(Refused) as refused:
                ADAPTER.authenticate(_request(headers, json.dumps(forged).encode()), ACCOUNT)
            assert refused.value.status == 401
            elsewhere = json.loads(body)
            elsewhere["value"][0]["tenantId"] = "99999999-2222-3333-4444-555555555555"
            with pytest.raises(Refused) as refused:
                ADAPTER.authenticate(_request(headers, json.dumps(elsewhere).encode()), ACCOUNT)
            assert refused.value.status == 403


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.direction}-{c.outcome}")
async def test_a_notified_and_fetched_call_reads_back_as_the_placed_call(
        inbox_and_simulator, source: graph_logs.GraphCallLogSource, call: SimulatedCall) -> None:
    inbox, simulator = inbox_and_simulator

    responses = await simulator.place_call(call, duplicate_each=2, shuffle=True, rng=random.Random(7))

    assert [r.status_code for r in responses] == [202, 202]
    call_id = simulator.provider_call_id(call)
    assert ADAPTER.finished_call(inbox.bodies(call_id), ACCOUNT) is None  # id only, so far
    await _fetch_worker(inbox, source)
    assert len(inbox.bodies(call_id)) == 2  # one notice (the duplicate deduped) + one record
    assert ADAPTER.finished_call(inbox.bodies(call_id), ACCOUNT) == _expected(simulator, call)


async def test_a_corrected_record_is_notified_as_updated_and_its_version_wins(
        inbox_and_simulator, source: graph_logs.GraphCallLogSource) -> None:
    inbox, simulator = inbox_and_simulator
    call = _call(talk_seconds=60)
    await simulator.place_call(call)
    await _fetch_worker(inbox, source)

    corrected = replace(call, talk_seconds=75)
    await simulator.update_call(corrected)
    await _fetch_worker(inbox, source)

    call_id = simulator.provider_call_id(call)
    assert len(inbox.bodies(call_id)) == 4  # created, v1, updated, v2
    finished = ADAPTER.finished_call(inbox.bodies(call_id), ACCOUNT)
    assert finished == _expected(simulator, corrected) and finished.duration_seconds == 75


async def test_lifecycle_notifications_pass_authentication_and_are_recognised(inbox_and_simulator) -> None:
    inbox, simulator = inbox_and_simulator
    headers, body = simulator.lifecycle_request()
    request = _request(headers, body)

    ADAPTER.authenticate(request, ACCOUNT)
    assert ADAPTER.notices(request, ACCOUNT) == []
    assert lifecycle_events(request) == ["reauthorizationRequired"]
    assert (await simulator.send(headers, body)).status_code == 202 and inbox.notices == {}


async def test_a_dropped_webhook_or_a_lapsed_subscription_delivers_nothing(
        inbox_and_simulator, state: GraphApiState) -> None:
    inbox, simulator = inbox_and_simulator
    assert await simulator.place_call(_call(), deliver=False) == []
    state.subscriptions[simulator.subscription_id]["expirationDateTime"] = graph_time(
        datetime.now(timezone.utc) - timedelta(minutes=1))
    assert await simulator.place_call(_call()) == []
    assert inbox.notices == {} and len(state.records) == 2


# --- Reconciliation --------------------------------------------------------------------------


async def test_pages_return_exactly_the_placed_calls_like_the_webhook_path(
        inbox_and_simulator, source: graph_logs.GraphCallLogSource, state: GraphApiState) -> None:
    inbox, simulator = inbox_and_simulator
    calls = [replace(call, started_at=STARTED + timedelta(minutes=10 * i)) for i, call in enumerate(CALLS)]
    for call in calls:
        await simulator.place_call(call)
    outside = replace(CALLS[0], call_key="outside", started_at=STARTED + timedelta(hours=5))
    await simulator.place_call(outside, deliver=False)
    await _fetch_worker(inbox, source)

    pages = [page async for page in source.pages(STARTED, STARTED + timedelta(hours=1))]

    assert len(pages) == 3 and sum(p.records_read for p in pages) == len(calls)  # page_size 2
    pulled = {c.provider_call_id: c for page in pages for c in page.calls}
    assert set(pulled) == {simulator.provider_call_id(c) for c in calls}
    for call in calls:
        call_id = simulator.provider_call_id(call)
        assert pulled[call_id] == ADAPTER.finished_call(inbox.bodies(call_id), ACCOUNT)
        assert pulled[call_id] == _expected(simulator, call)


async def test_sessions_are_read_across_their_pages(
        inbox_and_simulator, source: graph_logs.GraphCallLogSource, state: GraphApiState) -> None:
    _, simulator = inbox_and_simulator
    state.sessions_page_size = 1
    voicemail = _call(outcome="voicemail", talk_seconds=30)  # two sessions
    await simulator.place_call(voicemail, deliver=False)

    record = json.loads(await source.fetch_record(simulator.provider_call_id(voicemail)))

    assert len(record["sessions"]) == 2 and "sessions@odata.nextLink" not in record
    assert ADAPTER.finished_call([json.dumps(record).encode()], ACCOUNT).result == "voicemail"


async def test_records_past_the_30_day_retention_are_gone(
        inbox_and_simulator, source: graph_logs.GraphCallLogSource) -> None:
    _, simulator = inbox_and_simulator
    old = _call(started_at=datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=31))
    await simulator.place_call(old, deliver=False)

    with pytest.raises(CallLogError) as gone:
        await source.fetch_record(simulator.provider_call_id(old))
    pages = [p async for p in source.pages(old.started_at - timedelta(hours=1), old.started_at + timedelta(hours=1))]

    assert (gone.value.status, gone.value.transient) == (404, False)
    assert sum(p.records_read for p in pages) == 0


async def test_bad_credentials_are_a_permanent_error(api: BackgroundServer, state: GraphApiState) -> None:
    log_source = graph_logs.source(ACCOUNT, api.base_url, _credentials(state, client_secret="wrong"))
    with pytest.raises(CallLogError) as refused:
        [p async for p in log_source.pages(STARTED, STARTED + timedelta(hours=1))]
    await log_source.aclose()
    assert (refused.value.transient, refused.value.status) == (False, 401)


async def test_an_explicit_token_url_is_used(api: BackgroundServer, state: GraphApiState) -> None:
    elsewhere = graph_logs.source(ACCOUNT, api.base_url,
                                  _credentials(state, token_url=f"{api.base_url}/other-tenant/oauth2/v2.0/token"))
    with pytest.raises(CallLogError) as refused:
        await elsewhere.fetch_record("anything")
    await elsewhere.aclose()
    assert refused.value.status == 400 and state.tokens_issued == 0


async def test_a_revoked_token_is_replaced_once(
        inbox_and_simulator, source: graph_logs.GraphCallLogSource, state: GraphApiState) -> None:
    _, simulator = inbox_and_simulator
    call = _call()
    await simulator.place_call(call, deliver=False)
    await source.fetch_record(simulator.provider_call_id(call))
    state.tokens.clear()

    await source.fetch_record(simulator.provider_call_id(call))

    assert state.tokens_issued == 2


async def test_throttling_is_waited_out(
        inbox_and_simulator, source: graph_logs.GraphCallLogSource, state: GraphApiState) -> None:
    _, simulator = inbox_and_simulator
    calls = [_call(started_at=STARTED + timedelta(minutes=i)) for i in range(2)]
    for call in calls:
        await simulator.place_call(call, deliver=False)
    state.rate_limit = 2  # per second: the list and the first record, then 429 Retry-After: 1

    pages = [p async for p in source.pages(STARTED, STARTED + timedelta(hours=1))]

    assert state.throttled >= 1
    assert {c.provider_call_id for p in pages for c in p.calls} == {simulator.provider_call_id(c) for c in calls}


@pytest.mark.parametrize(
    ("status", "times", "transient"),
    [(429, 2, True), (503, 1, True), (500, 1, True), (403, 1, False)],
)
async def test_api_failures_are_classified(
        source: graph_logs.GraphCallLogSource, state: GraphApiState, status: int, times: int, transient: bool) -> None:
    state.inject(status, retry_after="0", times=times)
    with pytest.raises(CallLogError) as failed:
        [p async for p in source.pages(STARTED, STARTED + timedelta(hours=1))]
    assert (failed.value.status, failed.value.transient) == (status, transient)


async def test_one_429_is_retried_after_its_retry_after(
        source: graph_logs.GraphCallLogSource, state: GraphApiState) -> None:
    state.inject(429, retry_after="0")
    pages = [p async for p in source.pages(STARTED, STARTED + timedelta(hours=1))]
    assert pages[0].records_read == 0 and state.injected == []


async def test_an_unreachable_graph_is_transient(state: GraphApiState) -> None:
    log_source = graph_logs.source(ACCOUNT, "http://127.0.0.1:9", _credentials(state))
    with pytest.raises(CallLogError) as failed:
        await log_source.fetch_record("rec-1")
    await log_source.aclose()
    assert failed.value.transient is True


# --- Subscriptions ---------------------------------------------------------------------------


async def test_renewal_extends_only_the_subscriptions_about_to_lapse(
        inbox_and_simulator, source: graph_logs.GraphCallLogSource, state: GraphApiState) -> None:
    _, simulator = inbox_and_simulator
    now = datetime.now(timezone.utc)
    soon = state.subscriptions[simulator.subscription_id]
    soon["expirationDateTime"] = graph_time(now + timedelta(hours=1))
    later = await simulator.create_subscription(minutes=3 * 24 * 60)
    unrelated = {"id": "mail-sub", "resource": "/users/u/messages", "expirationDateTime": graph_time(now + timedelta(minutes=5))}
    state.add_subscription(unrelated)

    renewed = {s.subscription_id: s for s in await source.renew_subscriptions(now, renew_within_seconds=86400)}

    assert set(renewed) == {soon["id"], later["id"]}  # not the mail subscription
    new_expiry = renewed[soon["id"]].expires_at
    assert timedelta(minutes=4220) <= new_expiry - now <= timedelta(minutes=4230)
    assert state.subscriptions[soon["id"]]["expirationDateTime"] == graph_time(new_expiry)
    assert renewed[later["id"]].expires_at - now < timedelta(minutes=3 * 24 * 60 + 1)
    assert state.subscriptions["mail-sub"]["expirationDateTime"] == unrelated["expirationDateTime"]


async def test_graph_refuses_a_subscription_longer_than_4230_minutes(
        api: BackgroundServer, state: GraphApiState, inbox_and_simulator) -> None:
    _, simulator = inbox_and_simulator
    token = await _token(api, state)
    too_long = graph_time(datetime.now(timezone.utc) + timedelta(minutes=4231))
    async with httpx.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        answer = await http.patch(f"/v1.0/subscriptions/{simulator.subscription_id}",
                                  json={"expirationDateTime": too_long})
    assert answer.status_code == 400


async def test_credentials_without_a_secret_are_a_permanent_error(state: GraphApiState) -> None:
    with pytest.raises(CallLogError) as refused:
        graph_logs.source(ACCOUNT, "http://127.0.0.1:9", {"client_id": state.client_id})
    assert refused.value.transient is False
    configured = graph_logs.source(ACCOUNT, "http://127.0.0.1:9", _credentials(state))
    assert state.client_secret not in repr(configured)
    await configured.aclose()
