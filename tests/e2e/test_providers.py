"""Every phone provider end to end on the real broker and database: the provider's simulator
performs its handshake and delivers signed events (shuffled and duplicated) to the running
ingest service; exactly one `call.ended` comes out per call, with the provider's units turned
into seconds, UTC and E.164. Forged deliveries are refused and store nothing. With 10% of the
webhooks dropped, a reconciliation sweep (the CLI, against the simulator's call-log API)
publishes exactly the missing calls and nothing else."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

import asyncpg
import httpx
import pytest

from calltime import topics
from calltime.demo.phones import PHONE_SYSTEMS, connect_phone_systems, start_phone_fakes
from calltime.demo.stack import FirmSetup, LocalStack, register_firm, stack_credentials
from calltime.demo.watch import eventually, read_topic
from calltime.fakes import zoom
from calltime.fakes.calls import SimulatedCall
from calltime.ingest.domain import call_id_for
from calltime.ingest.reconcile import open_source, renew

FIRM = "firm-phones"
ATTORNEY = "clio-user-77"
USER = "700001"  # the firm user's id at every provider


PROVIDERS = PHONE_SYSTEMS


@pytest.fixture(scope="module")
async def phones(infrastructure, tmp_path_factory):
    stack = LocalStack(infrastructure["database"], infrastructure["kafka"], tmp_path_factory.mktemp("phones"),
                       extra_env={"CALLTIME_RECONCILE_EVERY_SECONDS": "3600"})
    await stack.create_database()
    fakes = start_phone_fakes(stack, FIRM)
    firm = FirmSetup(firm_id=FIRM, name="Phones LLP", clio_base_url="http://127.0.0.1:9", clio_token="unused",
                     ringcentral_account_id=PROVIDERS["ringcentral"].account_id,
                     ringcentral_verification_token=PROVIDERS["ringcentral"].secret, api_key="phones-key",
                     extensions={USER: ATTORNEY})
    await register_firm(stack, firm)
    await connect_phone_systems(fakes, {name: {USER: ATTORNEY} for name in PROVIDERS})
    try:
        await stack.start_services(("ingest",))
        yield fakes
    finally:
        stack.stop_services()
        fakes.stop()
        await stack.drop_database()


def a_call(n: int, **changes) -> SimulatedCall:
    started = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=90) + timedelta(seconds=n * 30)
    values = dict(user_id=USER, external_number=f"+1212555{n:04d}", direction="inbound", started_at=started,
                  ring_seconds=7, talk_seconds=400 + n, hold_seconds=20, outcome="answered")
    return SimulatedCall(**(values | changes))


async def announced(stack: LocalStack, call_ids: list[str]) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM ingest.calls WHERE firm_id = $1 AND call_id = ANY($2)",
                                   FIRM, call_ids)
    finally:
        await conn.close()


async def call_ended_events(stack: LocalStack, call_ids: list[str]) -> list:
    events = await read_topic(stack.kafka_bootstrap, stack.topic_prefix + topics.CALL_ENDED)
    wanted = set(call_ids)
    return [e for e in events if e.call_id in wanted]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_provider_handshake_succeeds(phones, provider):
    async with phones.simulator(provider) as simulator:
        assert await simulator.handshake() is True


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_signed_ended_call_delivered_shuffled_and_twice_is_one_call_ended(phones, provider):
    call = a_call(1, call_key=f"one-{provider}")
    async with phones.simulator(provider) as simulator:
        responses = await simulator.place_call(call, shuffle=True, duplicate_each=2, rng=random.Random(7))
        call_id = call_id_for(provider, simulator.provider_call_id(call))
    assert {r.status_code for r in responses} <= {200, 202, 204}
    await eventually(lambda: announced(phones.stack, [call_id]), timeout=30, what=f"{provider} call announced")

    events = await call_ended_events(phones.stack, [call_id])
    assert len(events) == 1, [e.revision for e in events]
    event = events[0]
    result, seconds = PROVIDERS[provider].expected(call)
    assert (event.provider, event.result, event.duration_seconds) == (provider, result, seconds)
    assert (event.direction, event.external_number_e164) == ("inbound", call.external_number)
    assert event.attorney_user_id == ATTORNEY and event.provider_user_id == USER
    assert event.started_at.utcoffset() == timedelta(0) and event.ended_at.utcoffset() == timedelta(0)
    assert abs(event.ended_at - call.ended_at) <= timedelta(seconds=1)
    assert call.started_at - timedelta(seconds=1) <= event.started_at <= call.answered_at + timedelta(seconds=1)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_forged_deliveries_are_refused_and_store_nothing(phones, provider):
    call = a_call(2, call_key=f"forged-{provider}")
    async with phones.simulator(provider, secret="not-the-firm-secret") as forger:
        deliveries = forger.webhook_requests(call)
        provider_call_id = forger.provider_call_id(call)
    async with httpx.AsyncClient(timeout=10) as http:
        responses = [await http.post(phones.webhook_url(provider), content=body, headers=headers)
                     for headers, body in deliveries]
    assert responses and {r.status_code for r in responses} == {401}
    conn = await asyncpg.connect(phones.stack.database_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM ingest.notices WHERE firm_id = $1 AND provider = $2"
                                     " AND provider_call_id = $3", FIRM, provider, provider_call_id)
    finally:
        await conn.close()
    assert stored == 0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_sweep_publishes_exactly_the_calls_the_webhooks_missed(phones, provider):
    calls = [a_call(10 + n, call_key=f"sweep-{provider}-{n}") for n in range(20)]
    dropped = {3, 14}  # 10% of the webhooks never arrive
    async with phones.simulator(provider) as simulator:
        for n, call in enumerate(calls):
            await simulator.place_call(call, deliver=n not in dropped)
        call_ids = [call_id_for(provider, simulator.provider_call_id(c)) for c in calls]
    delivered = [cid for n, cid in enumerate(call_ids) if n not in dropped]
    await eventually(lambda: _count_is(phones.stack, delivered, len(delivered)), timeout=30,
                     what="delivered calls announced")
    assert await announced(phones.stack, call_ids) == 18

    since = (min(c.started_at for c in calls) - timedelta(minutes=5)).isoformat()
    until = (max(c.started_at for c in calls) + timedelta(minutes=30)).isoformat()
    first = await run_sweep(phones.stack, provider, since, until)
    second = await run_sweep(phones.stack, provider, since, until)

    assert first.returncode == 0, first.stderr
    assert "2 published" in first.stdout and "page 1" in first.stderr  # the progress display
    assert second.returncode == 0 and "0 published" in second.stdout
    events = await call_ended_events(phones.stack, call_ids)
    assert Counter(e.call_id for e in events) == Counter(call_ids)  # each call once, none missing


async def _count_is(stack: LocalStack, call_ids: list[str], expected: int) -> bool:
    return await announced(stack, call_ids) == expected


async def run_sweep(stack: LocalStack, provider: str, since: str, until: str) -> subprocess.CompletedProcess:
    env = {**stack.service_env("reconcile", 0), "CALLTIME_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "calltime.ingest.reconcile", "--firm", FIRM, "--provider", provider,
               "--since", since, "--until", until]
    return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("provider", ["graph", "zoom"])
async def test_a_corrected_record_updates_the_one_call_as_its_next_revision(phones, provider):
    call = a_call(40, call_key=f"corrected-{provider}", talk_seconds=300)
    corrected = dataclasses.replace(call, talk_seconds=420)  # the final duration arrives later
    async with phones.simulator(provider) as simulator:
        await simulator.place_call(call)
        call_id = call_id_for(provider, simulator.provider_call_id(call))
        await eventually(lambda: announced(phones.stack, [call_id]), timeout=30, what="first revision")
        await simulator.update_call(corrected)
    await eventually(lambda: _revision_is(phones.stack, call_id, 2), timeout=30, what="second revision")

    events = await call_ended_events(phones.stack, [call_id])
    assert [(e.revision, e.duration_seconds) for e in events] == [(1, call.connected_seconds),
                                                                  (2, corrected.connected_seconds)]


async def test_zoom_events_of_all_three_generations_make_one_call(phones):
    call = a_call(50, call_key="zoom-generations")
    state = phones.states["zoom"]
    async with zoom.ZoomSimulator(phones.webhook_url("zoom"), PROVIDERS["zoom"].secret,
                                  account_id=PROVIDERS["zoom"].account_id, state=state,
                                  generations=("log", "history", "element"), realtime=True) as simulator:
        responses = await simulator.place_call(call)
        call_id = call_id_for("zoom", simulator.provider_call_id(call))
    assert {r.status_code for r in responses} == {200}
    await eventually(lambda: announced(phones.stack, [call_id]), timeout=30, what="zoom call announced")
    await asyncio.sleep(1.0)  # any later generation had its chance to revise it
    events = await call_ended_events(phones.stack, [call_id])
    assert len({e.call_id for e in events}) == 1
    assert events[-1].duration_seconds == call.connected_seconds


async def _revision_is(stack: LocalStack, call_id: str, revision: int) -> bool:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchval("SELECT revision FROM ingest.calls WHERE firm_id = $1 AND call_id = $2",
                                   FIRM, call_id) == revision
    finally:
        await conn.close()


async def test_subscriptions_near_expiry_are_renewed_and_a_graph_lifecycle_notice_renews_at_once(phones):
    soon = datetime.now(timezone.utc) + timedelta(hours=12)
    rc_state, vonage_state, graph_state = (phones.states[p] for p in ("ringcentral", "vonage", "graph"))
    rc_sub = rc_state.add_subscription(phones.webhook_url("ringcentral"), expires_in=12 * 3600)["id"]
    hook = vonage_state.register_webhook(phones.webhook_url("vonage"), PROVIDERS["vonage"].secret)
    hook["expireAt"] = soon.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    async with phones.simulator("graph") as simulator:
        graph_sub = (await simulator.create_subscription(minutes=12 * 60))["id"]
        before = graph_state.subscriptions[graph_sub]["expirationDateTime"]
        lifecycle = simulator.lifecycle_request()
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(phones.webhook_url("graph"), headers=lifecycle[0], content=lifecycle[1])
    assert answer.status_code == 200
    await eventually(lambda: _changed(graph_state.subscriptions[graph_sub]["expirationDateTime"], before),
                     timeout=30, what="graph subscription renewed on the lifecycle notice")

    rc_renewals = rc_state.stats["renewals"]
    pool = await asyncpg.create_pool(phones.stack.database_url, min_size=1, max_size=2)
    try:
        credentials = stack_credentials(pool)
        for provider in ("ringcentral", "vonage"):
            record, source = await open_source(credentials, FIRM, provider)
            try:
                await renew(pool, record, source, datetime.now(timezone.utc), timedelta(days=1))
            finally:
                await source.aclose()
        rows = await pool.fetch("SELECT provider, subscription_id, expires_at FROM ingest.subscriptions"
                                " WHERE firm_id = $1", FIRM)
    finally:
        await pool.close()
    expiries = {(r["provider"], r["subscription_id"]): r["expires_at"] for r in rows}
    # RingCentral renews for the term first requested, counted from the renewal.
    assert rc_state.stats["renewals"] == rc_renewals + 1 and expiries[("ringcentral", rc_sub)] > soon
    assert expiries[("vonage", hook["id"])] > soon + timedelta(days=5)
    assert expiries[("graph", graph_sub)] > soon + timedelta(hours=24)


async def _changed(value: str, before: str) -> bool:
    return value != before
