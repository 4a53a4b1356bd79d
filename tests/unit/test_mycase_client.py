"""The MyCase adapter against the fake MyCase served over real HTTP on an ephemeral 127.0.0.1 port."""

from __future__ import annotations

import contextlib
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

from calltime.billing.auth import OAuthSession
from calltime.billing.errors import (
    AmbiguousWriteError,
    AuthenticationError,
    PermanentBillingError,
    TransientBillingError,
)
from calltime.billing.model import TimeEntryRequest, WrittenEntry
from calltime.billing.mycase import MyCaseClient, entry_marker
from calltime.billing.port import BillingSystem
from calltime.credentials import Credential
from calltime.fakes.mycase import ACCESS_TOKEN_SECONDS, FakeMyCaseServer, FakeMyCaseState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mycase"
# The ids of the reference samples, so the samples' own request can be posted to the fake.
STAFF_ID, CLIENT_ID, CASE_ID = 7890, 42424, 123456


def sample(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(), parse_float=Decimal)


class CountingTokens:
    """AccessTokens that gets a fresh grant from the fake on every rejection and counts how often."""

    def __init__(self, state: FakeMyCaseState, firm: str = "acme", staff_id: int = STAFF_ID) -> None:
        self.state, self.firm, self.staff_id = state, firm, staff_id
        self.token = state.issue_tokens(firm, staff_id)["access_token"]
        self.refreshes = 0
        self.next_token: str | None = None  # forced answer for the next refresh

    async def bearer(self) -> str:
        return self.token

    async def after_rejection(self, rejected: str) -> str:
        self.refreshes += 1
        self.token = self.next_token or self.state.issue_tokens(self.firm, self.staff_id)["access_token"]
        return self.token


class MemoryCredentials:
    """The CredentialStore surface OAuthSession uses, in memory."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], dict] = {}

    async def get(self, firm_id: str, name: str) -> Credential:
        return Credential(firm_id, name, dict(self.values[(firm_id, name)]), 1)

    async def put(self, firm_id: str, name: str, value, conn=None) -> Credential:
        self.values[(firm_id, name)] = dict(value)
        return Credential(firm_id, name, dict(value), 1)

    @contextlib.asynccontextmanager
    async def exclusive(self, firm_id: str, name: str):
        yield None, await self.get(firm_id, name)


@dataclass
class Env:
    state: FakeMyCaseState
    server: FakeMyCaseServer
    clock: FakeClock
    tokens: CountingTokens

    def raw(self, token: str | None = None) -> httpx.Client:
        token = token or self.tokens.token
        return httpx.Client(base_url=self.server.base_url, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def env():
    clock = FakeClock()
    state = FakeMyCaseState(clock=clock.time)
    state.add_firm("acme", "Acme Law LLP")
    state.add_user("acme", first_name="Alex", last_name="Attorney", default_hourly_rate="350.00",
                   work_phone_number="(617) 555-0100", id=STAFF_ID)
    state.add_contact("acme", first_name="Jane", last_name="Client", cell_phone_number="(617) 555-0142",
                      id=CLIENT_ID)
    state.add_matter("acme", name="Client v. Acme Corp", case_number="2025-0123", client_ids=[CLIENT_ID],
                     billing_contact_id=CLIENT_ID, staff_ids=[STAFF_ID], id=CASE_ID)
    server = FakeMyCaseServer(state).start()
    try:
        yield Env(state, server, clock, CountingTokens(state))
    finally:
        server.stop()


@pytest.fixture
async def make_client(env: Env):
    async with ClientMaker(MyCaseClient, env.server.base_url, env.tokens, env.clock) as make:
        yield make


def entry_request(**overrides) -> TimeEntryRequest:
    # Ten minutes before the fake clock's start: the write follows the call.
    called = datetime.fromtimestamp(T0 - 600, tz=timezone.utc)
    return billing_support.entry_request(str(CASE_ID), str(STAFF_ID), **{"call_started_at": called, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Writing


async def test_client_satisfies_the_port(make_client) -> None:
    assert isinstance(make_client(), BillingSystem)


async def test_approved_draft_becomes_exactly_one_entry_in_hours(env: Env, make_client) -> None:
    written = await make_client().write_entry(entry_request())

    [entry] = env.state.entries("acme")
    assert written == WrittenEntry(entry_id=str(entry["id"]), communication_id=None)
    assert entry["hours"] == Decimal("0.2")  # 720 s; not 720 (seconds) nor 12 (minutes)
    assert entry["rate"] == Decimal("350.25")
    assert (entry["case_id"], entry["staff_id"], entry["entry_date"]) == (CASE_ID, STAFF_ID, "2026-03-02")
    assert entry["description"] == "Telephone call with client re: settlement offer. [calltime:draft-0001]"
    assert entry["activity_name"] == "Telephone Call" and entry["billable"] is True


@pytest.mark.parametrize(("seconds", "hours"), [
    (3600, Decimal("1")), (5400, Decimal("1.5")), (900, Decimal("0.25")), (360, Decimal("0.1")),
    (9, Decimal("0.0025")), (36_000, Decimal("10")),
])
async def test_seconds_convert_to_exact_decimal_hours(env: Env, make_client, seconds: int, hours: Decimal) -> None:
    await make_client().write_entry(entry_request(billed_seconds=seconds))

    assert [e["hours"] for e in env.state.entries("acme")] == [hours]


@pytest.mark.parametrize("seconds", [60, 100, 0, -360])
async def test_durations_without_exact_hours_are_refused_before_sending(env: Env, make_client, seconds) -> None:
    with pytest.raises(PermanentBillingError) as raised:
        await make_client().write_entry(entry_request(billed_seconds=seconds))

    assert raised.value.error_type == "InvalidDuration"
    assert env.state.stats()["requests"] == 0


async def test_validation_errors_are_permanent_and_name_the_field(env: Env, make_client) -> None:
    closed = env.state.add_matter("acme", name="Old matter", status="closed", client_ids=[CLIENT_ID])
    client = make_client()

    with pytest.raises(PermanentBillingError) as unknown_case:
        await client.write_entry(entry_request(matter_id="999999"))
    with pytest.raises(PermanentBillingError) as closed_case:
        await client.write_entry(entry_request(matter_id=str(closed), draft_id="draft-0002"))

    for raised in (unknown_case, closed_case):
        assert raised.value.status == 422
        assert "/case/id" in str(raised.value)
        assert not isinstance(raised.value, TransientBillingError)
    assert env.state.entries("acme") == []


async def test_committed_then_dropped_is_ambiguous_and_resume_writes_no_second_entry(env: Env, make_client) -> None:
    env.state.set_faults(drop_after_commit_fraction=1.0)
    client = make_client()

    with pytest.raises(AmbiguousWriteError):
        await client.write_entry(entry_request())

    env.state.set_faults(drop_after_commit_fraction=0.0)
    [committed] = env.state.entries("acme")
    resumed = await make_client().write_entry(entry_request(), resume=True)  # a new worker: no memory of it
    assert resumed.entry_id == str(committed["id"])
    assert (await client.find_entry("draft-0001")).entry_id == str(committed["id"])  # remembered hint
    assert len(env.state.entries("acme")) == 1


async def test_find_entry_without_hint_reads_every_page(env: Env, make_client) -> None:
    client = make_client(page_size=2)
    for n in range(5):
        await client.write_entry(entry_request(draft_id=f"other-{n}"))
    await client.write_entry(entry_request(draft_id="draft-0001"))

    found = await make_client(page_size=2).find_entry("draft-0001")

    assert found is not None
    assert env.state.stats()["by_route"]["GET /v1/time_entries"] == 3
    assert await make_client().find_entry("draft-missing") is None


async def test_resume_writes_when_nothing_landed(env: Env, make_client) -> None:
    written = await make_client().write_entry(entry_request(), resume=True)

    assert [str(e["id"]) for e in env.state.entries("acme")] == [written.entry_id]
    assert entry_marker("draft-0001") in env.state.entries("acme")[0]["description"]


async def test_5xx_on_a_write_is_ambiguous_and_not_re_posted(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=1.0)

    with pytest.raises(AmbiguousWriteError) as raised:
        await make_client().write_entry(entry_request())

    assert raised.value.status == 503
    assert env.state.stats()["by_route"] == {"POST /v1/time_entries": 1}


async def test_slow_answer_to_a_write_is_ambiguous(env: Env, make_client) -> None:
    env.state.set_faults(slow_seconds=0.5)

    with pytest.raises(AmbiguousWriteError):
        await make_client(timeout=0.1).write_entry(entry_request())

    env.state.set_faults(slow_seconds=0)
    assert len(env.state.entries("acme")) == 1  # it did land


# ---------------------------------------------------------------------------------------------------------------
# Directory reads


async def test_contacts_page_through_link_headers_with_phones_and_client_flag(env: Env, make_client) -> None:
    for n in range(60):
        env.state.add_contact("acme", first_name="Caller", last_name=f"{n:03d}", work_phone_number=f"617-555-{n:04d}",
                              fax_phone_number="617-555-9999")
    company = env.state.add_company("acme", name="Acme Corp", main_phone_number="+1 212 555 0100")
    env.state.reset_stats()

    contacts = [c async for c in make_client(page_size=25).iter_contacts()]

    assert len(contacts) == 62
    by_name = {c.name: c for c in contacts}
    assert by_name["Jane Client"].is_client is True and by_name["Jane Client"].contact_id == str(CLIENT_ID)
    assert by_name["Caller 059"].phone_numbers == ("617-555-0059",)  # fax left out
    assert by_name["Caller 059"].is_client is False
    assert by_name["Acme Corp"].contact_id == f"company-{company}"
    assert by_name["Acme Corp"].phone_numbers == ("+1 212 555 0100",)
    assert by_name["Jane Client"].updated_at == datetime.fromtimestamp(T0, tz=timezone.utc)
    assert env.state.stats()["by_route"] == {"GET /v1/clients": 3, "GET /v1/companies": 1}


async def test_updated_since_returns_only_later_changes(env: Env, make_client) -> None:
    other = env.state.add_contact("acme", first_name="Sam", last_name="Still")
    env.clock.now += 3600
    env.state.update_contact("acme", CLIENT_ID, last_name="Client-Smith")
    env.state.update_matter("acme", CASE_ID, status="closed")
    since = datetime.fromtimestamp(T0 + 1800, tz=timezone.utc)
    client = make_client()

    contacts = [c async for c in client.iter_contacts(updated_since=since)]
    matters = [m async for m in client.iter_matters(updated_since=since)]

    assert [c.name for c in contacts] == ["Jane Client-Smith"]
    assert str(other) not in {c.contact_id for c in contacts}
    assert [(m.matter_id, m.status) for m in matters] == [(str(CASE_ID), "closed")]


async def test_matters_map_client_number_and_status(env: Env, make_client) -> None:
    company = env.state.add_company("acme", name="Beta Inc")
    company_case = env.state.add_matter("acme", name="Beta v. Gamma", company_ids=[company])
    loose = env.state.add_matter("acme", name="No client yet", status="closed")

    matters = {m.matter_id: m async for m in make_client().iter_matters()}

    main = matters[str(CASE_ID)]
    assert (main.client_id, main.display_number, main.description, main.status) == (
        str(CLIENT_ID), "2025-0123", "Client v. Acme Corp", "open")
    assert matters[str(company_case)].client_id == f"company-{company}"
    assert matters[str(company_case)].display_number == "Beta v. Gamma"  # no case number: the name
    assert (matters[str(loose)].client_id, matters[str(loose)].status) == (None, "closed")


async def test_list_users_keeps_rate_exact(env: Env, make_client) -> None:
    env.state.add_user("acme", first_name="Pat", last_name="Paralegal", default_hourly_rate="125.35", active=False)

    users = {u.name: u for u in await make_client().list_users()}

    assert users["Alex Attorney"].rate == Decimal("350.00")
    assert users["Pat Paralegal"].rate == Decimal("125.35")
    assert users["Pat Paralegal"].enabled is False
    assert users["Alex Attorney"].phone_number == "(617) 555-0100"
    assert users["Alex Attorney"].time_zone is None  # MyCase has no time zone on staff


# ---------------------------------------------------------------------------------------------------------------
# Tokens


async def test_expired_token_is_refreshed_once_and_the_request_succeeds(env: Env, make_client) -> None:
    client = make_client()
    await client.list_users()
    env.clock.now += ACCESS_TOKEN_SECONDS  # the fake ends the token exactly at expires_in

    users = await client.list_users()

    assert [u.name for u in users] == ["Alex Attorney"]
    assert env.tokens.refreshes == 1
    assert env.state.stats()["unauthorized"] == 1


async def test_a_second_401_is_an_authentication_error(env: Env, make_client) -> None:
    env.state.revoke(env.tokens.token)
    env.tokens.next_token = "still-not-valid"

    with pytest.raises(AuthenticationError) as raised:
        await make_client().write_entry(entry_request())

    assert raised.value.status == 401
    assert env.tokens.refreshes == 1
    assert env.state.entries("acme") == []


async def _oauth_session(env: Env, store: MemoryCredentials, http: httpx.AsyncClient) -> tuple[OAuthSession, dict]:
    env.state.add_oauth_client("calltime", "s3cret", "https://calltime.example/oauth/mycase")
    code = env.state.authorization_code("acme", STAFF_ID)
    granted = (await http.post(env.server.token_url, json={
        "client_id": "calltime", "client_secret": "s3cret", "code": code, "grant_type": "authorization_code",
        "redirect_uri": "https://calltime.example/oauth/mycase",
    })).json()
    await store.put("firm-1", "mycase", {"access_token": granted["access_token"],
                                         "refresh_token": granted["refresh_token"],
                                         "expires_at": env.clock.time() + granted["expires_in"]})
    await store.put("firm-1", "mycase.client", {"client_id": "calltime", "client_secret": "s3cret"})
    session = OAuthSession(store, "firm-1", "mycase", env.server.token_url, http=http, clock=env.clock.time)
    return session, granted


async def test_oauth_session_refreshes_ahead_of_the_24_hour_expiry(env: Env, make_client) -> None:
    store = MemoryCredentials()
    async with httpx.AsyncClient() as http:
        session, granted = await _oauth_session(env, store, http)
        client = make_client(tokens=session)
        await client.list_users()
        env.clock.now += ACCESS_TOKEN_SECONDS - 60  # inside the session's refresh margin

        await client.list_users()

        assert session.refreshes == 1
        assert env.state.stats()["unauthorized"] == 0
        stored = store.values[("firm-1", "mycase")]
        assert stored["refresh_token"] != granted["refresh_token"]  # MyCase rotates refresh tokens
        spent = await http.post(env.server.token_url, json={
            "client_id": "calltime", "client_secret": "s3cret", "grant_type": "refresh_token",
            "refresh_token": granted["refresh_token"]})
        assert (spent.status_code, spent.json()["error"]) == (400, "invalid_grant")


async def test_revoked_grant_is_an_authentication_error(env: Env, make_client) -> None:
    store = MemoryCredentials()
    async with httpx.AsyncClient() as http:
        session, granted = await _oauth_session(env, store, http)
        env.state.revoke(granted["refresh_token"])  # ends the grant and its access tokens

        with pytest.raises(AuthenticationError):
            await make_client(tokens=session).list_users()


async def test_tokens_never_reach_repr_errors_or_logs(env: Env, make_client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    env.state.revoke(env.tokens.token)
    env.tokens.next_token = "sk-very-secret-token"
    client = make_client()

    with pytest.raises(AuthenticationError) as raised:
        await client.list_users()

    assert "sk-very-secret-token" not in str(raised.value) + repr(client) + caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Faults and pacing


async def test_5xx_on_a_read_is_retried_with_backoff(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=1.0)
    env.clock.on_sleep = lambda: env.state.set_faults(fail_fraction_5xx=0.0)

    users = await make_client(rng=lambda: 1.0).list_users()

    assert [u.name for u in users] == ["Alex Attorney"]
    assert env.clock.sleeps == [0.5]
    assert env.state.stats()["by_status"] == {"503": 1, "200": 1}


async def test_5xx_on_reads_gives_up_as_transient(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=1.0)

    with pytest.raises(TransientBillingError) as raised:
        await make_client(max_read_retries=2).list_users()

    assert not isinstance(raised.value, AmbiguousWriteError)
    assert env.state.stats()["by_status"] == {"503": 3}


async def test_429_burst_waits_retry_after_and_succeeds(env: Env, make_client) -> None:
    env.state.set_faults(burst_429=2)

    written = await make_client().write_entry(entry_request())

    assert [str(e["id"]) for e in env.state.entries("acme")] == [written.entry_id]
    assert env.clock.sleeps == [1.0, 1.0]
    assert env.state.stats()["rate_limited"] == 2


async def test_429_retries_are_bounded(env: Env, make_client) -> None:
    env.state.set_faults(burst_429=10)

    with pytest.raises(TransientBillingError) as raised:
        await make_client(max_rate_limit_retries=2).list_users()

    assert raised.value.status == 429 and not isinstance(raised.value, AmbiguousWriteError)


async def test_pacing_at_the_documented_25_per_second_never_meets_a_429(env: Env, make_client) -> None:
    client = make_client()

    for _ in range(60):
        await client.who_am_i()

    assert env.state.stats()["rate_limited"] == 0
    assert env.state.stats()["requests"] == 60
    assert len(env.clock.sleeps) == 2  # after request 25 and after request 50
    assert env.clock.now >= T0 + 2


# ---------------------------------------------------------------------------------------------------------------
# The fake against the reference samples


def _shape(value):
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, Decimal)):
        return "number"
    return type(value).__name__


def test_fake_time_entry_answer_matches_the_sample_for_the_samples_own_request(env: Env) -> None:
    request = (FIXTURES / "mycase_time_entry_create_request.json").read_bytes()
    with env.raw() as raw:
        response = raw.post("/v1/time_entries", content=request, headers={"Content-Type": "application/json"})

    assert response.status_code == 201
    body = json.loads(response.content, parse_float=Decimal)
    expected = sample("mycase_time_entry_response.json")
    assert _shape(body) == _shape(expected)
    assert body["rate"] == "350.0" and body["hours"] == Decimal("0.2")
    assert {k: body[k] for k in ("activity_name", "billable", "entry_date", "case", "staff")} == {
        k: expected[k] for k in ("activity_name", "billable", "entry_date", "case", "staff")}


def test_fake_case_client_and_token_answers_have_the_sample_fields(env: Env) -> None:
    with env.raw() as raw:
        case = raw.get(f"/v1/cases/{CASE_ID}").json()
        person = raw.get(f"/v1/clients/{CLIENT_ID}").json()
        listed = raw.get("/v1/clients")
    env.state.add_oauth_client("c", "s", "https://x.example/cb")
    with httpx.Client(base_url=env.server.base_url) as raw:
        token = raw.post("/tokens", json={"client_id": "c", "client_secret": "s", "grant_type": "authorization_code",
                                          "code": env.state.authorization_code("acme", STAFF_ID),
                                          "redirect_uri": "https://x.example/cb"}).json()

    assert list(case) == list(sample("mycase_case_response.json"))
    assert list(person) == list(sample("mycase_client_response.json"))
    assert set(token) == set(sample("mycase_token_response.json"))
    assert (token["token_type"], token["expires_in"]) == ("Bearer", 86400)
    assert isinstance(listed.json(), list) and listed.headers["Item-Count"] == "1"


def test_fake_errors_use_the_documented_shape(env: Env) -> None:
    with env.raw() as raw:
        invalid = raw.post("/v1/time_entries", json={"activity_name": "Call", "entry_date": "2026-03-02"})
        bad_param = raw.get("/v1/clients", params={"page_size": "1001"})
    with env.raw(token="expired-or-unknown") as raw:
        unauthorized = raw.get("/v1/me")

    expected = sample("mycase_error_response.json")
    for response in (invalid, bad_param, unauthorized):
        [error] = response.json()["errors"]
        assert set(error) == set(expected["errors"][0])
        assert set(error["source"]) <= {"pointer", "parameter"}
    assert (invalid.status_code, invalid.json()["errors"][0]["source"]) == (422, {"pointer": "/hours"})
    assert (bad_param.status_code, bad_param.json()["errors"][0]["source"]) == (400, {"parameter": "page_size"})
    assert unauthorized.status_code == 401


def test_fake_next_page_link_expires_after_three_days(env: Env) -> None:
    env.state.add_contact("acme", first_name="Second", last_name="Person")
    with env.raw() as raw:
        first = raw.get("/v1/clients", params={"page_size": "1"})
        next_url = first.links["next"]["url"]
        assert raw.get(next_url).status_code == 200
        env.clock.now += timedelta(days=3).total_seconds()
        env.tokens.token = env.state.issue_tokens("acme", STAFF_ID)["access_token"]
    with env.raw() as raw:
        expired = raw.get(next_url)

    assert "page_token=" in next_url
    assert (expired.status_code, expired.json()["errors"][0]["source"]) == (400, {"parameter": "page_token"})
