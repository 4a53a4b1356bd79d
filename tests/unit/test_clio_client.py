"""The Clio adapter against the fake Clio served over real HTTP on an ephemeral 127.0.0.1 port."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import billing_support
import httpx
import pytest
from billing_support import T0, ClientMaker, FakeClock

from calltime.billing.clio import ClioClient, clio_base_url, clio_token_url
from calltime.billing.errors import (
    AmbiguousWriteError,
    ApiVersionMismatch,
    AuthenticationError,
    PermanentBillingError,
    TransientBillingError,
)
from calltime.billing.model import TimeEntryRequest, WrittenEntry
from calltime.billing.port import BillingSystem
from calltime.fakes.clio import FakeClioServer, FakeClioState, load_seed

ACME_TOKEN = "acme-token-0001"
BETA_TOKEN = "beta-token-0002"


@dataclass
class Env:
    state: FakeClioState
    server: FakeClioServer
    clock: FakeClock
    acme_user: int
    acme_client: int
    acme_matter: int
    beta_matter: int

    def raw(self, token: str | None = ACME_TOKEN, version: str | None = None) -> httpx.Client:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if version is not None:
            headers["X-API-VERSION"] = version
        return httpx.Client(base_url=self.server.base_url, headers=headers)


@pytest.fixture
def env() -> Env:
    clock = FakeClock()
    state = FakeClioState(clock=clock.time)
    state.add_firm("acme", "Acme Law LLP")
    acme_user = state.add_user(
        "acme", name="Alex Attorney", rate="350.00", time_zone="America/New_York",
        phone_number="(617) 555-0100", tokens=[ACME_TOKEN],
    )
    acme_client = state.add_contact("acme", name="Jane Client", is_client=True, phone_numbers=["(617) 555-0142"])
    acme_matter = state.add_matter("acme", display_number="00001-Client", description="Client v. Jones",
                                   client_id=acme_client)
    state.add_firm("beta", "Beta Legal")
    state.add_user("beta", name="Bea Barrister", rate="275", tokens=[BETA_TOKEN])
    beta_client = state.add_contact("beta", name="Bob Other", is_client=True, phone_numbers=["555-0100"])
    beta_matter = state.add_matter("beta", display_number="B-1", client_id=beta_client)
    server = FakeClioServer(state).start()
    try:
        yield Env(state, server, clock, acme_user, acme_client, acme_matter, beta_matter)
    finally:
        server.stop()


@pytest.fixture
async def make_client(env: Env):
    async with ClientMaker(ClioClient, env.server.base_url, ACME_TOKEN, env.clock) as make:
        yield make


def entry_request(env: Env, **overrides) -> TimeEntryRequest:
    return billing_support.entry_request(str(env.acme_matter), str(env.acme_user), **overrides)


# ---------------------------------------------------------------------------------------------------------------
# Directory reads


async def test_client_satisfies_the_port(make_client) -> None:
    assert isinstance(make_client(), BillingSystem)


async def test_iter_contacts_pages_through_450_contacts_with_their_phone_numbers(env: Env, make_client) -> None:
    for n in range(450):
        env.state.add_contact("acme", name=f"Caller {n:03d}", phone_numbers=[f"617-555-{n:04d}", f"+1 212 555 {n:04d}"])
    env.state.reset_stats()

    contacts = [c async for c in make_client().iter_contacts()]

    assert len(contacts) == 451
    ids = [int(c.contact_id) for c in contacts]
    assert ids == sorted(ids)
    by_name = {c.name: c for c in contacts}
    assert by_name["Caller 449"].phone_numbers == ("617-555-0449", "+1 212 555 0449")
    assert by_name["Jane Client"].is_client is True
    assert by_name["Caller 000"].is_client is False
    assert by_name["Caller 000"].updated_at == datetime.fromtimestamp(T0, tz=timezone.utc)
    assert env.state.stats()["by_route"] == {"GET /api/v4/contacts.json": 3}  # 200 + 200 + 51, no empty page


async def test_updated_since_returns_only_later_changes(env: Env, make_client) -> None:
    env.clock.now += 3600
    env.state.update_contact("acme", env.acme_client, name="Jane Q. Client")
    env.state.update_matter("acme", env.acme_matter, status="pending")
    since = datetime.fromtimestamp(T0 + 1800, tz=timezone.utc)
    client = make_client()

    contacts = [c async for c in client.iter_contacts(updated_since=since)]
    matters = [m async for m in client.iter_matters(updated_since=since)]

    assert [c.name for c in contacts] == ["Jane Q. Client"]
    assert [(m.matter_id, m.status) for m in matters] == [(str(env.acme_matter), "pending")]


async def test_iter_matters_maps_client_and_lowercase_status(env: Env, make_client) -> None:
    closed = env.state.add_matter("acme", display_number="00002-Old", status="Closed", client_id=env.acme_client)

    matters = {m.matter_id: m async for m in make_client().iter_matters()}

    assert matters[str(env.acme_matter)].client_id == str(env.acme_client)
    assert matters[str(env.acme_matter)].display_number == "00001-Client"
    assert matters[str(env.acme_matter)].description == "Client v. Jones"
    assert matters[str(env.acme_matter)].status == "open"
    assert matters[str(closed)].status == "closed"


async def test_list_users_keeps_rate_exact_and_time_zone(env: Env, make_client) -> None:
    env.state.add_user("acme", name="Pat Paralegal", rate="125.35", enabled=False, subscription_type="NonAttorney")

    users = {u.name: u for u in await make_client().list_users()}

    assert set(users) == {"Alex Attorney", "Pat Paralegal"}  # beta's user is invisible
    assert users["Alex Attorney"].rate == Decimal("350.00")
    assert users["Pat Paralegal"].rate == Decimal("125.35")
    assert users["Alex Attorney"].time_zone == "America/New_York"
    assert users["Alex Attorney"].phone_number == "(617) 555-0100"
    assert users["Pat Paralegal"].enabled is False


async def test_one_firms_token_cannot_see_or_write_to_another_firms_matters(env: Env, make_client) -> None:
    beta = make_client(BETA_TOKEN)

    matter_ids = {m.matter_id async for m in beta.iter_matters()}

    assert matter_ids == {str(env.beta_matter)}
    with pytest.raises(PermanentBillingError) as raised:
        await beta.write_entry(entry_request(env))  # acme's matter id, beta's token
    assert raised.value.status == 422
    assert env.state.communications("acme") == [] and env.state.communications("beta") == []


# ---------------------------------------------------------------------------------------------------------------
# API version


async def test_client_sends_its_version_and_accepts_the_echo(env: Env, make_client) -> None:
    await make_client(api_version="4.0.13").list_users()
    await make_client().list_users()

    assert env.state.stats()["by_api_version"] == {"4.0.13": 1, "4.0.9": 1}


@pytest.mark.parametrize("echo", ["4.0.3", ""])
async def test_wrong_or_missing_echo_is_a_version_mismatch(env: Env, make_client, echo: str) -> None:
    env.state.set_faults(echo_api_version=echo)

    with pytest.raises(ApiVersionMismatch) as raised:
        await make_client().list_users()

    assert raised.value.sent == "4.0.9"
    assert raised.value.received == (echo or None)


async def test_version_mismatch_on_a_write_names_the_record_that_was_created(env: Env, make_client) -> None:
    client = make_client()
    communication_id = await client.ensure_communication(entry_request(env), look_up_first=False)
    env.state.set_faults(echo_api_version="4.0.3")

    with pytest.raises(ApiVersionMismatch) as raised:
        await client.ensure_time_entry(entry_request(env), communication_id, look_up_first=False)

    stored = env.state.activities("acme")
    assert [str(a["id"]) for a in stored] == [raised.value.resource_id]


async def test_retired_version_is_410_and_a_permanent_error(env: Env, make_client) -> None:
    with pytest.raises(ApiVersionMismatch) as raised:
        await make_client(api_version="9.9.9").list_users()
    assert raised.value.status == 410
    assert isinstance(raised.value, PermanentBillingError)
    with env.raw(version="3.0.0") as raw:
        assert raw.get("/api/v4/users.json").status_code == 410


def test_client_refuses_versions_that_count_hours_and_empty_tokens(env: Env) -> None:
    with pytest.raises(ValueError):
        ClioClient(env.server.base_url, ACME_TOKEN, api_version="4.0.3")
    with pytest.raises(ValueError):
        ClioClient(env.server.base_url, "")


def test_fake_echoes_default_version_when_none_is_sent(env: Env) -> None:
    with env.raw() as raw:
        response = raw.get("/api/v4/users/who_am_i.json", params={"fields": "id,name"})
    assert response.headers["X-API-VERSION"] == "4.0.9"
    assert response.json()["data"]["name"] == "Alex Attorney"


def test_fake_quantity_is_hours_up_to_4_0_3_and_seconds_after(env: Env) -> None:
    def post(version: str, quantity: float) -> int:
        body = {"data": {"type": "TimeEntry", "date": "2026-03-02", "quantity": quantity, "price": 350.0,
                         "matter": {"id": env.acme_matter}}}
        with env.raw(version=version) as raw:
            response = raw.post("/api/v4/activities.json", content=json.dumps(body))
        assert response.status_code == 201, response.text
        return response.json()["data"]["id"]

    def quantity(version: str, activity_id: int) -> Decimal:
        with env.raw(version=version) as raw:
            response = raw.get("/api/v4/activities.json", params={"fields": "id,quantity"})
        data = json.loads(response.content, parse_float=Decimal)["data"]
        return next(a["quantity"] for a in data if a["id"] == activity_id)

    in_hours = post("4.0.3", 0.2)
    in_seconds = post("4.0.9", 720)

    stored = {a["id"]: a["quantity"] for a in env.state.activities("acme")}
    assert stored == {in_hours: Decimal("720"), in_seconds: Decimal("720")}
    assert quantity("4.0.3", in_seconds) == Decimal("0.2")
    assert quantity("4.0.4", in_hours) == Decimal("720")


# ---------------------------------------------------------------------------------------------------------------
# Authentication


async def test_both_401_shapes_raise_authentication_error_without_leaking_the_token(
    env: Env, make_client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-live-very-secret-token"

    with pytest.raises(AuthenticationError) as invalid:
        await make_client(secret).list_users()
    with pytest.raises(AuthenticationError) as missing:
        await make_client("not a token!").list_users()  # not RFC 6750 token syntax: a malformed header

    assert invalid.value.error_type == "invalid_token"
    assert missing.value.error_type == "UnauthorizedError"
    for error in (invalid.value, missing.value):
        assert secret not in str(error) and error.status == 401
    assert secret not in caplog.text
    assert secret not in repr(make_client(secret))


def test_fake_401_shapes_and_headers(env: Env) -> None:
    with env.raw(token="revoked") as raw:
        invalid = raw.get("/api/v4/matters.json")
    with env.raw(token=None) as raw:
        missing = raw.get("/api/v4/matters.json")

    assert invalid.json() == {
        "error": "invalid_token",
        "error_description": "The access token provided is expired, revoked, malformed or invalid for other reasons.",
    }
    assert invalid.headers["WWW-Authenticate"].startswith("Bearer")
    assert missing.json()["error"]["type"] == "UnauthorizedError"
    for response in (invalid, missing):
        assert response.status_code == 401
        assert not any(h.lower().startswith("x-ratelimit") for h in response.headers)


# ---------------------------------------------------------------------------------------------------------------
# Rate limits


async def test_pacing_keeps_twelve_requests_under_five_per_minute(env: Env, make_client) -> None:
    env.state.rate_limit = 5
    client = make_client()

    for _ in range(12):
        await client.list_users()

    stats = env.state.stats()
    assert stats["rate_limited"] == 0
    assert stats["requests"] == 12
    assert len(env.clock.sleeps) == 2  # after request 5 and after request 10
    assert env.clock.now >= T0 + 120


async def test_429_waits_retry_after_then_succeeds(env: Env, make_client) -> None:
    env.state.rate_limit = 2
    with env.raw() as raw:  # another worker spends the window
        assert [raw.get("/api/v4/users.json").status_code for _ in range(3)] == [200, 200, 429]

    users = await make_client().list_users()

    assert [u.name for u in users] == ["Alex Attorney"]
    assert env.state.stats()["rate_limited"] == 2  # the raw one above, and the client's one
    assert env.clock.sleeps == [60.0]  # Retry-After, counted from T0 to the window's end


async def test_429_on_a_post_is_retried_without_duplicating(env: Env, make_client) -> None:
    env.state.rate_limit = 1
    with env.raw() as raw:
        raw.get("/api/v4/users.json")

    written = await make_client().write_entry(entry_request(env))

    assert [a["id"] for a in env.state.activities("acme")] == [int(written.entry_id)]
    assert len(env.state.communications("acme")) == 1
    assert env.state.stats()["rate_limited"] == 1


async def test_429_retries_are_bounded(env: Env, make_client) -> None:
    env.state.rate_limit = 1
    with env.raw() as raw:
        raw.get("/api/v4/users.json")

    async def sleep_without_time_passing(seconds: float) -> None:
        await asyncio.sleep(0)

    client = make_client(sleep=sleep_without_time_passing, max_rate_limit_retries=2)
    with pytest.raises(TransientBillingError) as raised:
        await client.list_users()

    assert not isinstance(raised.value, AmbiguousWriteError)
    assert raised.value.status == 429
    assert env.state.stats()["rate_limited"] == 3  # first try + 2 retries


# ---------------------------------------------------------------------------------------------------------------
# Writing once


async def test_write_entry_stores_seconds_exact_price_and_draft_properties(env: Env, make_client) -> None:
    request = entry_request(env)

    written = await make_client().write_entry(request)

    [activity] = env.state.activities("acme")
    [communication] = env.state.communications("acme")
    assert written == WrittenEntry(entry_id=str(activity["id"]), communication_id=str(communication["id"]))
    assert activity["quantity"] == Decimal("720")
    assert activity["price"] == Decimal("350.25")
    assert activity["date"] == "2026-03-02"
    assert activity["note"] == request.narrative
    assert (activity["matter_id"], activity["user_id"]) == (env.acme_matter, env.acme_user)
    assert activity["communication_id"] == communication["id"]
    assert communication["type"] == "PhoneCommunication"
    assert communication["matter_id"] == env.acme_matter
    assert communication["external_properties"] == [
        {"name": "calltime_draft_id", "value": "draft-0001"},
        {"name": "calltime_call_id", "value": "call-0001"},
    ]
    assert communication["received_at"] == "2026-03-02T15:04:11+00:00"


async def test_find_entry_needs_both_the_communication_and_its_time_entry(env: Env, make_client) -> None:
    client = make_client()
    assert await client.find_entry("draft-0001") is None

    communication_id = await client.ensure_communication(entry_request(env), look_up_first=False)

    assert await client.find_entry("draft-0001") is None
    assert await client.find_communication("draft-0001") == communication_id
    assert await client.find_communication("draft-other") is None
    assert await client.ensure_communication(entry_request(env), look_up_first=True) == communication_id
    assert len(env.state.communications("acme")) == 1


async def test_dropped_connection_after_commit_is_ambiguous_and_the_look_up_prevents_a_duplicate(
    env: Env, make_client
) -> None:
    env.state.set_faults(drop_after_commit_n=1)
    client = make_client()
    request = entry_request(env)

    with pytest.raises(AmbiguousWriteError):
        await client.write_entry(request)

    [committed] = env.state.activities("acme")
    found = await client.find_entry(request.draft_id)
    assert found is not None and found.entry_id == str(committed["id"])
    # What a ledger-driven retry does: look up first, so nothing is POSTed twice.
    retried = found or await client.write_entry(request)
    assert retried.entry_id == str(committed["id"])
    assert await client.ensure_time_entry(request, found.communication_id, look_up_first=True) == found.entry_id
    assert len(env.state.activities("acme")) == 1
    assert len(env.state.communications("acme")) == 1


async def test_read_timeout_after_commit_is_ambiguous(env: Env, make_client) -> None:
    env.state.set_faults(delay_after_commit_seconds=0.6)
    client = make_client(timeout=0.2)

    with pytest.raises(AmbiguousWriteError):
        await client.write_entry(entry_request(env))

    env.state.set_faults(delay_after_commit_seconds=0)
    [committed] = env.state.activities("acme")
    assert (await client.find_entry("draft-0001")).entry_id == str(committed["id"])


async def test_5xx_on_a_post_is_ambiguous_and_never_re_posted(env: Env, make_client) -> None:
    env.state.set_faults(fail_next_n_with_5xx=1)
    client = make_client()

    with pytest.raises(AmbiguousWriteError) as raised:
        await client.write_entry(entry_request(env))

    assert raised.value.status == 500
    assert env.state.stats()["by_route"] == {"POST /api/v4/communications.json": 1}
    assert await client.find_entry("draft-0001") is None  # this 5xx happened to commit nothing
    written = await client.write_entry(entry_request(env))
    assert [str(a["id"]) for a in env.state.activities("acme")] == [written.entry_id]


async def test_5xx_on_a_get_is_retried_with_backoff(env: Env, make_client) -> None:
    env.state.set_faults(fail_next_n_with_5xx=2)

    users = await make_client(rng=lambda: 1.0).list_users()

    assert [u.name for u in users] == ["Alex Attorney"]
    assert env.clock.sleeps == [0.5, 1.0]  # base 0.5 s doubling; rng=1.0 takes the top of each jitter range


async def test_5xx_on_a_get_gives_up_as_transient(env: Env, make_client) -> None:
    env.state.set_faults(fail_next_n_with_5xx=10)

    with pytest.raises(TransientBillingError) as raised:
        await make_client(max_read_retries=2).list_users()

    assert not isinstance(raised.value, AmbiguousWriteError)
    assert env.state.stats()["server_errors_injected"] == 3


async def test_connection_refused_is_transient_not_ambiguous(env: Env, make_client) -> None:
    port = env.server.port
    env.server.stop()
    client = ClioClient(f"http://127.0.0.1:{port}", ACME_TOKEN, sleep=env.clock.sleep, max_read_retries=1)
    try:
        with pytest.raises(TransientBillingError) as raised:
            await client.write_entry(entry_request(env))
    finally:
        await client.aclose()
    assert not isinstance(raised.value, AmbiguousWriteError)


async def test_validation_errors_are_permanent(env: Env, make_client) -> None:
    client = make_client()

    with pytest.raises(PermanentBillingError) as unknown_matter:
        await client.write_entry(entry_request(env, matter_id="999999"))
    communication_id = await client.ensure_communication(entry_request(env), look_up_first=False)
    with pytest.raises(PermanentBillingError) as zero_time:
        await client.ensure_time_entry(entry_request(env, billed_seconds=0), communication_id, look_up_first=False)

    for raised in (unknown_matter, zero_time):
        assert raised.value.status == 422
        assert not isinstance(raised.value, TransientBillingError)
    assert env.state.activities("acme") == []


# ---------------------------------------------------------------------------------------------------------------
# The fake's fields and paging rules


def test_fake_fields_default_nesting_and_unknown(env: Env) -> None:
    with env.raw() as raw:
        default = raw.get("/api/v4/matters.json").json()["data"][0]
        nested = raw.get("/api/v4/matters.json", params={"fields": "id,client{id,name},responsible_attorney"})
        too_deep = raw.get("/api/v4/matters.json", params={"fields": "id,client{phone_numbers{number}}"})
        unknown = raw.get("/api/v4/matters.json", params={"fields": "id,colour"})
        too_many = raw.get("/api/v4/matters.json", params={"limit": "201"})
        users_limit = raw.get("/api/v4/users.json", params={"limit": "2000"})

    assert set(default) == {"id", "etag"}
    assert nested.json()["data"][0] == {
        "id": env.acme_matter, "client": {"id": env.acme_client, "name": "Jane Client"}, "responsible_attorney": None,
    }
    assert (too_deep.status_code, unknown.status_code, too_many.status_code) == (400, 400, 400)
    assert unknown.json()["error"]["type"] == "BadRequestError"
    assert users_limit.status_code == 200


def test_fake_matter_status_filter_and_next_link(env: Env) -> None:
    env.state.add_matter("acme", display_number="00002", status="Pending")
    env.state.add_matter("acme", display_number="00003", status="Closed")
    with env.raw() as raw:
        first = raw.get("/api/v4/matters.json", params={
            "status": "open,pending", "fields": "id,status", "limit": "1", "order": "id(asc)",
        }).json()
        second = raw.get(first["meta"]["paging"]["next"]).json()

    assert [m["status"] for m in first["data"] + second["data"]] == ["Open", "Pending"]
    assert "page_token=" in first["meta"]["paging"]["next"]
    assert "next" not in second["meta"]["paging"]


def test_fake_admin_api_sets_faults_and_reports_stats(env: Env) -> None:
    with env.raw(token=None) as admin:
        assert admin.post("/_fake/faults", json={"fail_next_n_with_5xx": 1}).status_code == 200
        assert admin.get("/_fake/faults").json()["fail_next_n_with_5xx"] == 1
        with env.raw() as raw:
            assert raw.get("/api/v4/users.json").status_code == 500
            assert raw.get("/api/v4/users.json").status_code == 200
        stats = admin.get("/_fake/stats").json()
        assert admin.get("/_fake/firms/acme/activities").json() == {"data": []}
        assert admin.get("/_fake/firms/nobody/activities").status_code == 404
    assert stats["requests"] == 2 and stats["by_status"] == {"500": 1, "200": 1}


def test_fake_updated_since_is_relative_to_the_fake_clock(env: Env) -> None:
    env.clock.now += timedelta(hours=2).total_seconds()
    env.state.add_contact("acme", name="Late Caller")
    since = datetime.fromtimestamp(T0 + 3600, tz=timezone.utc).isoformat()
    with env.raw() as raw:
        data = raw.get("/api/v4/contacts.json", params={"updated_since": since, "fields": "id,name"}).json()["data"]
    assert [c["name"] for c in data] == ["Late Caller"]


def test_fake_seed_file_loads_firms_tokens_and_numbers(tmp_path) -> None:
    seed = {
        "rate_limit": {"limit": 7},
        "firms": [{
            "key": "acme", "name": "Acme Law LLP",
            "users": [{"id": 101, "name": "Alex Attorney", "rate": 350.10, "tokens": ["seed-token"]}],
            "contacts": [{"id": 201, "name": "Jane Client", "is_client": True,
                          "phone_numbers": ["(617) 555-0142", {"name": "Mobile", "number": "617.555.0199"}]}],
            "matters": [{"id": 301, "display_number": "00001", "status": "Pending", "client_id": 201}],
        }],
    }
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed))

    state = load_seed(path)

    assert state.rate_limit == 7
    with FakeClioServer(state) as server, httpx.Client(base_url=server.base_url) as raw:
        headers = {"Authorization": "Bearer seed-token"}
        me = raw.get("/api/v4/users/who_am_i.json", headers=headers, params={"fields": "id,rate"})
        contact = raw.get("/api/v4/contacts.json", headers=headers,
                          params={"fields": "id,primary_phone_number,phone_numbers{name,number,primary}"})
    assert json.loads(me.content, parse_float=Decimal)["data"] == {"id": 101, "rate": Decimal("350.1")}
    assert me.headers["X-RateLimit-Limit"] == "7"
    assert contact.json()["data"][0] == {
        "id": 201, "primary_phone_number": "(617) 555-0142",
        "phone_numbers": [
            {"name": "Work", "number": "(617) 555-0142", "primary": True},
            {"name": "Mobile", "number": "617.555.0199", "primary": False},
        ],
    }


# ---------------------------------------------------------------------------------------------------------------
# Issue 4: OAuth tokens, regions, effective rates, fake faults

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "clio"


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text(), parse_float=Decimal)


class CountingTokens:
    """An AccessTokens that refreshes against the fake's /oauth/token and counts how often it had to."""

    def __init__(self, base_url: str, grant: dict, client_id: str = "calltime", client_secret: str = "s3cret") -> None:
        self.base_url = base_url
        self.access = grant["access_token"]
        self.refresh = grant["refresh_token"]
        self.client = (client_id, client_secret)
        self.refreshes = 0
        self.rejected: list[str] = []

    async def bearer(self) -> str:
        return self.access

    async def after_rejection(self, rejected: str) -> str:
        self.rejected.append(rejected)
        self.refreshes += 1
        form = {"grant_type": "refresh_token", "refresh_token": self.refresh,
                "client_id": self.client[0], "client_secret": self.client[1]}
        async with httpx.AsyncClient(base_url=self.base_url) as http:
            response = await http.post("/oauth/token", data=form)
        if response.status_code != 200:
            raise AuthenticationError(f"refresh refused ({response.status_code})", status=response.status_code)
        self.access = response.json()["access_token"]
        return self.access


@pytest.fixture
def oauth_grant(env: Env) -> dict:
    env.state.add_oauth_app("calltime", "s3cret", redirect_uri="https://calltime.example/oauth/clio")
    env.state.access_token_lifetime_seconds = 3600
    return env.state.issue_tokens("acme", env.acme_user, "calltime")


def test_oauth_code_and_refresh_grants_answer_like_the_reference(env: Env) -> None:
    env.state.add_oauth_app("calltime", "s3cret", redirect_uri="https://calltime.example/oauth/clio")
    code = env.state.authorize("acme", env.acme_user, "calltime", redirect_uri="https://calltime.example/oauth/clio")
    form = {"client_id": "calltime", "client_secret": "s3cret", "grant_type": "authorization_code", "code": code,
            "redirect_uri": "https://calltime.example/oauth/clio"}
    with httpx.Client(base_url=env.server.base_url) as http:
        issued = http.post("/oauth/token", data=form)
        reused_code = http.post("/oauth/token", data=form)
        refresh_form = {"client_id": "calltime", "client_secret": "s3cret", "grant_type": "refresh_token",
                        "refresh_token": issued.json()["refresh_token"]}
        refreshed = [http.post("/oauth/token", data=refresh_form) for _ in range(2)]
        wrong_secret = http.post("/oauth/token", data=refresh_form | {"client_secret": "guess"})
        as_json = http.post("/oauth/token", json=refresh_form)
        me = http.get("/api/v4/users/who_am_i.json", params={"fields": "id"},
                      headers={"Authorization": f"Bearer {refreshed[1].json()['access_token']}"})

    sample = fixture("clio_oauth_token_response.json")
    assert issued.status_code == 200 and set(issued.json()) == set(sample)
    assert issued.json()["token_type"] == "bearer" and issued.json()["expires_in"] == 2_592_000
    assert issued.headers["Cache-Control"] == "no-store"
    # Clio keeps the refresh token: a refresh answers without one, and the same one works again.
    assert [r.status_code for r in refreshed] == [200, 200]
    assert set(refreshed[0].json()) == set(sample) - {"refresh_token"}
    assert me.json()["data"]["id"] == env.acme_user
    assert (reused_code.status_code, reused_code.json()["error"]) == (400, "invalid_grant")
    assert (wrong_secret.status_code, wrong_secret.json()["error"]) == (401, "invalid_client")
    assert as_json.status_code == 400


def test_fake_expired_and_missing_tokens_answer_the_two_reference_401_shapes(env: Env, oauth_grant: dict) -> None:
    headers = {"Authorization": f"Bearer {oauth_grant['access_token']}"}
    with httpx.Client(base_url=env.server.base_url) as http:
        fresh = http.get("/api/v4/users.json", headers=headers)
        env.clock.now += 3600
        expired = http.get("/api/v4/users.json", headers=headers)
        missing = http.get("/api/v4/users.json")

    assert fresh.status_code == 200
    assert (expired.status_code, expired.json()) == (401, fixture("clio_error_401_invalid_token.json"))
    assert (missing.status_code, missing.json()) == (401, fixture("clio_error_401_unauthorized.json"))


async def test_expired_token_is_refreshed_once_and_the_read_succeeds(env: Env, oauth_grant: dict, make_client) -> None:
    tokens = CountingTokens(env.server.base_url, oauth_grant)
    client = make_client(tokens)
    await client.list_users()
    env.clock.now += 3600  # the access token's expires_in runs out

    users = await client.list_users()

    assert [u.name for u in users] == ["Alex Attorney"]
    assert tokens.refreshes == 1 and tokens.rejected == [oauth_grant["access_token"]]
    assert env.state.stats()["by_status"]["401"] == 1


async def test_a_401_on_a_write_is_retried_after_refresh_and_writes_once(
    env: Env, oauth_grant: dict, make_client
) -> None:
    tokens = CountingTokens(env.server.base_url, oauth_grant)
    env.state.expire_token(oauth_grant["access_token"])

    written = await make_client(tokens).write_entry(entry_request(env))

    assert tokens.refreshes == 1
    assert [str(a["id"]) for a in env.state.activities("acme")] == [written.entry_id]
    assert len(env.state.communications("acme")) == 1


async def test_revoked_grant_is_an_authentication_error_after_one_refresh_attempt(
    env: Env, oauth_grant: dict, make_client
) -> None:
    tokens = CountingTokens(env.server.base_url, oauth_grant)
    env.state.revoke_grant(oauth_grant["refresh_token"])

    with pytest.raises(AuthenticationError) as raised:
        await make_client(tokens).list_users()

    assert tokens.refreshes == 1
    assert raised.value.error_type == "invalid_token" and raised.value.status == 401
    assert oauth_grant["access_token"] not in str(raised.value)


async def test_a_token_rejected_again_after_refresh_is_not_refreshed_twice(env: Env, make_client) -> None:
    class StillWrong:
        calls = 0

        async def bearer(self) -> str:
            return "stale-token"

        async def after_rejection(self, rejected: str) -> str:
            StillWrong.calls += 1
            return "also-stale-token"

    with pytest.raises(AuthenticationError):
        await make_client(StillWrong()).write_entry(entry_request(env))

    assert StillWrong.calls == 1
    assert env.state.stats()["unauthorized"] == 2
    assert env.state.communications("acme") == []


def test_client_refuses_a_token_that_is_neither_str_nor_access_tokens(env: Env) -> None:
    with pytest.raises(TypeError):
        ClioClient(env.server.base_url, 12345)


@pytest.mark.parametrize("region, host", [
    ("US", "https://app.clio.com"), ("eu", "https://eu.app.clio.com"),
    ("CA", "https://ca.app.clio.com"), (" au ", "https://au.app.clio.com"),
])
def test_regional_hosts_for_api_and_token_endpoint(region: str, host: str) -> None:
    assert clio_base_url(region) == host
    assert clio_token_url(region) == host + "/oauth/token"


def test_unknown_region_is_refused() -> None:
    with pytest.raises(ValueError, match="region"):
        clio_base_url("UK")


# -- effective rates and activity descriptions ------------------------------------------------------------------


async def test_effective_rate_follows_clios_rate_hierarchy(env: Env, make_client) -> None:
    s = env.state
    plain = s.add_activity_description("acme", "Telephone call", default=True)
    custom = s.add_activity_description("acme", "Research", rate="300.00")
    flat = s.add_activity_description("acme", "Will drafting", rate="1500.00", flat_rate=True)
    client = make_client()
    matter, user = str(env.acme_matter), str(env.acme_user)

    before = [await client.effective_rate(matter, user, d) for d in (plain, custom, flat)]
    s.set_client_rate("acme", env.acme_client, "320.00", user_id=env.acme_user)
    with_client = await client.effective_rate(matter, user, custom)
    s.set_matter_rate("acme", env.acme_matter, "375.50", user_id=env.acme_user)
    with_matter = await client.effective_rate(matter, user, custom)

    assert before == [Decimal("350.00"), Decimal("300.00"), None]  # user default, activity rate, flat is not hourly
    assert with_client == Decimal("320.00")
    assert with_matter == Decimal("375.50")
    assert await client.effective_rate(matter, user) == Decimal("375.50")  # the `default` description
    assert await client.effective_rate(matter, user, 999999) is None


def test_fake_rate_for_rows_have_the_reference_shape(env: Env) -> None:
    env.state.add_activity_description("acme", "Telephone call", default=True)
    env.state.set_matter_rate("acme", env.acme_matter, "375.00")
    sample = fixture("clio_activity_descriptions_rate_for_response.json")
    fields = "id,etag,name,type,default,category_type,rate"
    with env.raw() as raw:
        answer = raw.get("/api/v4/activity_descriptions.json", params={
            "rate_for[matter_id]": env.acme_matter, "rate_for[user_id]": env.acme_user, "fields": fields,
        })
        unknown_matter = raw.get("/api/v4/activity_descriptions.json", params={"rate_for[matter_id]": 1})
    [row] = json.loads(answer.content, parse_float=Decimal)["data"]

    assert set(row) == set(sample["data"][0])
    assert row["rate"] == sample["data"][0]["rate"]  # amount 375.0, Custom, Matter
    assert unknown_matter.status_code == 404


async def test_configured_activity_description_prices_from_clio_and_links_the_category(env: Env, make_client) -> None:
    description = env.state.add_activity_description("acme", "Telephone call")
    env.state.set_matter_rate("acme", env.acme_matter, "375.00")
    client = make_client(activity_description="telephone call")

    await client.write_entry(entry_request(env))
    await client.write_entry(entry_request(env, draft_id="draft-0002"))

    activities = env.state.activities("acme")
    assert [a["price"] for a in activities] == [Decimal("375.00"), Decimal("375.00")]
    assert {a["activity_description_id"] for a in activities} == {description}
    assert [a["quantity"] for a in activities] == [Decimal("720"), Decimal("720")]  # still seconds
    assert env.state.stats()["by_route"]["GET /api/v4/activity_descriptions.json"] == 2  # one rate look-up a write


async def test_configured_description_falls_back_to_the_draft_rate_when_clio_has_none(env: Env, make_client) -> None:
    nobody = env.state.add_user("acme", name="Rate-less Clerk", rate=None)
    env.state.add_activity_description("acme", "Telephone call")

    await make_client(activity_description="Telephone call").write_entry(
        entry_request(env, user_id=str(nobody), rate=Decimal("95.50"))
    )

    [activity] = env.state.activities("acme")
    assert activity["price"] == Decimal("95.50")


@pytest.mark.parametrize("setup, name", [
    (lambda s: None, "Telephone call"),  # no such description
    (lambda s: s.add_activity_description("acme", "Flat call", rate="50", flat_rate=True), "Flat call"),
])
async def test_unusable_activity_description_fails_before_anything_is_written(
    env: Env, make_client, setup, name: str
) -> None:
    setup(env.state)

    with pytest.raises(PermanentBillingError) as raised:
        await make_client(activity_description=name).write_entry(entry_request(env))

    assert not isinstance(raised.value, TransientBillingError)
    assert env.state.communications("acme") == [] and env.state.activities("acme") == []


async def test_utbms_codes_are_sent_as_code_ids_and_priced_from_clio(env: Env, make_client) -> None:
    s = env.state
    s.set_billing_settings("acme", use_utbms_codes=True)
    a106 = s.add_utbms_code("acme", "UtbmsActivity", "A106", "Communicate (with client)")
    l120 = s.add_utbms_code("acme", "UtbmsTask", "L120", "Analysis/Strategy")
    coded = s.add_activity_description("acme", "A106 Communicate (with client)", rate="410.00",
                                       utbms_activity_id=a106, utbms_task_id=l120)

    await make_client(utbms_codes=("a106", "L120")).write_entry(entry_request(env))

    [activity] = s.activities("acme")
    assert activity["activity_description_id"] == coded
    assert activity["price"] == Decimal("410.00")


async def test_utbms_codes_on_an_account_without_utbms_are_refused(env: Env, make_client) -> None:
    env.state.add_utbms_code("acme", "UtbmsActivity", "A106", "Communicate (with client)")
    env.state.add_utbms_code("acme", "UtbmsTask", "L120", "Analysis/Strategy")

    with pytest.raises(PermanentBillingError) as raised:
        await make_client(utbms_codes=("A106", "L120")).write_entry(entry_request(env))

    assert raised.value.status == 422 and env.state.activities("acme") == []


def test_category_options_are_checked_at_construction(env: Env) -> None:
    with pytest.raises(ValueError):
        ClioClient(env.server.base_url, ACME_TOKEN, utbms_codes=("L120", "A106"))  # swapped
    with pytest.raises(ValueError):
        ClioClient(env.server.base_url, ACME_TOKEN, activity_description="Call", utbms_codes=("A106", "L120"))
    with pytest.raises(ValueError):
        ClioClient(env.server.base_url, ACME_TOKEN, activity_description="  ")


# -- the shared fault switches ----------------------------------------------------------------------------------


async def test_burst_429_waits_retry_after_and_succeeds(env: Env, make_client) -> None:
    env.state.set_faults(burst_429=2)

    users = await make_client().list_users()

    assert [u.name for u in users] == ["Alex Attorney"]
    assert env.clock.sleeps == [1.0, 1.0]
    assert env.state.stats()["rate_limited"] == 2


def test_fake_429_is_the_manage_api_error_shape_not_the_platform_one(env: Env) -> None:
    env.state.set_faults(burst_429=1)
    with env.raw() as raw:
        limited = raw.get("/api/v4/users.json")

    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.json()["error"]["type"] == "RateLimited"
    assert set(limited.json()) != set(fixture("clio_platform_api_429.json"))


async def test_fail_fraction_5xx_on_reads_is_retried_and_is_reproducible_by_seed(env: Env, make_client) -> None:
    def statuses(seed: int) -> list[int]:
        env.state.set_faults(fail_fraction_5xx=0.5, seed=seed)
        with env.raw() as raw:
            return [raw.get("/api/v4/users.json").status_code for _ in range(20)]

    first, again = statuses(7), statuses(7)
    assert first == again and set(first) == {200, 503}

    env.state.set_faults(fail_fraction_5xx=0.5, seed=7)
    users = await make_client(max_read_retries=20).list_users()
    assert [u.name for u in users] == ["Alex Attorney"]


async def test_fail_fraction_5xx_on_a_write_is_ambiguous(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=1.0)

    with pytest.raises(AmbiguousWriteError) as raised:
        await make_client().write_entry(entry_request(env))

    assert raised.value.status == 503


async def test_slow_answers_time_out_as_transient_on_reads(env: Env, make_client) -> None:
    env.state.set_faults(slow_seconds=0.5)

    with pytest.raises(TransientBillingError) as raised:
        await make_client(timeout=0.1, max_read_retries=0).list_users()

    assert not isinstance(raised.value, AmbiguousWriteError)


async def test_drop_after_commit_fraction_then_resume_writes_no_second_entry(env: Env, make_client) -> None:
    env.state.set_faults(drop_after_commit_fraction=1.0)
    client = make_client()

    with pytest.raises(AmbiguousWriteError):
        await client.write_entry(entry_request(env))
    env.state.set_faults(drop_after_commit_fraction=0.0)
    resumed = await client.write_entry(entry_request(env), resume=True)

    [activity] = env.state.activities("acme")
    assert resumed.entry_id == str(activity["id"])
    assert len(env.state.communications("acme")) == 1


def test_fault_values_are_validated(env: Env) -> None:
    with pytest.raises(ValueError):
        env.state.set_faults(fail_fraction_5xx=1.5)
    with pytest.raises(ValueError):
        env.state.set_faults(burst_429=-1)
    with pytest.raises(ValueError):
        env.state.set_faults(no_such_fault=1)
