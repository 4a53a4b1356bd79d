"""The PracticePanther adapter against the fake PracticePanther served over real HTTP on an ephemeral port."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import billing_support
import httpx
import pytest
from billing_support import T0, ClientMaker, FakeClock

from calltime.billing.errors import (
    AmbiguousWriteError,
    AuthenticationError,
    PermanentBillingError,
    TransientBillingError,
)
from calltime.billing.model import TimeEntryRequest, WrittenEntry
from calltime.billing.pacing import RateGate
from calltime.billing.port import BillingSystem
from calltime.billing.practicepanther import PracticePantherClient
from calltime.fakes.practicepanther import (
    ACCESS_TOKEN_SECONDS,
    FakePracticePantherServer,
    FakePracticePantherState,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "practicepanther"
# The GUIDs of the reference samples, so the samples' own request can be posted to the fake.
ACCOUNT = "6f1c2d3e-0000-4000-8000-000000000001"
MATTER = "6f1c2d3e-0000-4000-8000-000000000002"
USER = "6f1c2d3e-0000-4000-8000-000000000003"
CONTACT = "6f1c2d3e-0000-4000-8000-000000000010"


def sample(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(), parse_float=Decimal)


class CountingTokens:
    """AccessTokens that refreshes through the fake's own token endpoint (rotating refresh tokens) and counts."""

    def __init__(self, state: FakePracticePantherState, base_url: str) -> None:
        state.add_oauth_client("calltime", "s3cret", "https://calltime.example/cb")
        granted = state.issue_tokens("acme", USER)
        self.token, self.refresh_token = granted["access_token"], granted["refresh_token"]
        self.token_url = f"{base_url}/oauth/token"
        self.refreshes = 0

    async def bearer(self) -> str:
        return self.token

    async def after_rejection(self, rejected: str) -> str:
        self.refreshes += 1
        async with httpx.AsyncClient() as http:
            response = await http.post(self.token_url, data={
                "grant_type": "refresh_token", "refresh_token": self.refresh_token,
                "client_id": "calltime", "client_secret": "s3cret"})
        if response.status_code != 200:
            raise AuthenticationError("refresh refused: the firm must re-authorise", status=response.status_code)
        body = response.json()
        self.token, self.refresh_token = body["access_token"], body["refresh_token"]
        return self.token


@dataclass
class Env:
    state: FakePracticePantherState
    server: FakePracticePantherServer
    clock: FakeClock
    tokens: CountingTokens

    def raw(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.server.base_url,
                            headers={"Authorization": f"Bearer {token or self.tokens.token}"})


@pytest.fixture
def env():
    clock = FakeClock()
    state = FakePracticePantherState(clock=clock.time)
    state.add_firm("acme")
    state.add_user("acme", first_name="Alex", last_name="Attorney", email="alex@firm.example", id=USER)
    state.add_account("acme", display_name="Client, Jane", id=ACCOUNT)
    state.add_contact("acme", first_name="Jane", last_name="Client", account_id=ACCOUNT, phone_mobile="617-555-0142",
                      email="jane@example.com", id=CONTACT)
    state.update_contact("acme", CONTACT, is_primary_contact=True)
    state.add_matter("acme", account_id=ACCOUNT, name="Client v. Acme", assigned_user_ids=[USER], id=MATTER)
    state.add_firm("beta")
    state.add_user("beta", first_name="Bea", last_name="Barrister")
    server = FakePracticePantherServer(state).start()
    try:
        yield Env(state, server, clock, CountingTokens(state, server.base_url))
    finally:
        server.stop()


@pytest.fixture
async def make_client(env: Env):
    async with ClientMaker(PracticePantherClient, env.server.base_url, env.tokens, env.clock) as make:
        yield make


def entry_request(**overrides) -> TimeEntryRequest:
    called = datetime.fromtimestamp(T0 - 600, tz=timezone.utc)
    return billing_support.entry_request(MATTER, USER, **{"entry_date": date(2026, 1, 1), "call_started_at": called,
                                                         **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Writing


async def test_client_satisfies_the_port(make_client) -> None:
    assert isinstance(make_client(), BillingSystem)


async def test_approved_draft_becomes_exactly_one_entry_in_hours(env: Env, make_client) -> None:
    written = await make_client().write_entry(entry_request())

    [entry] = env.state.entries("acme")
    assert written == WrittenEntry(entry_id=entry["id"], communication_id=None)
    assert entry["hours"] == Decimal("0.2")  # 720 s; not 720 (seconds) nor 12 (minutes)
    assert entry["rate"] == Decimal("350.25")
    assert (entry["matter_id"], entry["account_id"], entry["user_id"]) == (MATTER, ACCOUNT, USER)
    assert entry["date"] == "2026-01-01"
    assert entry["description"] == "Telephone call with client re: settlement offer."  # the invoice text
    assert entry["private_notes"] == "Call call-0001 with +16175550142 [calltime:draft-0001]"
    assert entry["is_billable"] is True


@pytest.mark.parametrize(("seconds", "hours"), [
    (3600, Decimal("1")), (5400, Decimal("1.5")), (900, Decimal("0.25")), (396, Decimal("0.11")),
    (9, Decimal("0.0025")),
])
async def test_seconds_convert_to_exact_decimal_hours(env: Env, make_client, seconds: int, hours: Decimal) -> None:
    await make_client().write_entry(entry_request(billed_seconds=seconds))

    assert [e["hours"] for e in env.state.entries("acme")] == [hours]


async def test_durations_without_exact_hours_are_refused_before_sending(env: Env, make_client) -> None:
    with pytest.raises(PermanentBillingError) as raised:
        await make_client().write_entry(entry_request(billed_seconds=100))

    assert raised.value.error_type == "InvalidDuration"
    assert env.state.stats()["requests"] == 0


async def test_validation_errors_are_permanent(env: Env, make_client) -> None:
    closed = env.state.add_matter("acme", account_id=ACCOUNT, name="Old", status="Closed")
    client = make_client()

    with pytest.raises(PermanentBillingError) as unknown_matter:
        await client.write_entry(entry_request(matter_id="00000000-0000-4000-8000-00000000dead"))
    with pytest.raises(PermanentBillingError) as closed_matter:
        await client.write_entry(entry_request(matter_id=closed, draft_id="draft-0002"))
    with pytest.raises(PermanentBillingError) as unknown_user:
        await client.write_entry(entry_request(user_id="00000000-0000-4000-8000-00000000beef", draft_id="d3"))

    assert unknown_matter.value.status == 404
    assert closed_matter.value.status == 400 and "matter_ref" in str(closed_matter.value)
    assert unknown_user.value.status == 400 and "billed_by_user_ref" in str(unknown_user.value)
    for raised in (unknown_matter, closed_matter, unknown_user):
        assert not isinstance(raised.value, TransientBillingError)
    assert env.state.entries("acme") == []


async def test_committed_then_dropped_is_ambiguous_and_resume_writes_no_second_entry(env: Env, make_client) -> None:
    env.state.set_faults(drop_after_commit_fraction=1.0)

    with pytest.raises(AmbiguousWriteError):
        await make_client().write_entry(entry_request())

    env.state.set_faults(drop_after_commit_fraction=0.0)
    [committed] = env.state.entries("acme")
    resumed = await make_client().write_entry(entry_request(), resume=True)
    assert resumed.entry_id == committed["id"]
    assert len(env.state.entries("acme")) == 1


async def test_find_entry_without_hint_pages_through_every_entry(env: Env, make_client) -> None:
    client = make_client(page_size=2)
    for n in range(4):
        await client.write_entry(entry_request(draft_id=f"other-{n}"))
    await client.write_entry(entry_request(draft_id="draft-0001"))
    env.state.reset_stats()

    missing = await make_client(page_size=2).find_entry("draft-missing")
    found = await make_client(page_size=2).find_entry("draft-0001")

    assert missing is None
    assert env.state.stats()["by_route"]["GET /api/v2/timeentries"] >= 3 + 1  # all of 2 + 2 + 1, then a search
    [target] = [e for e in env.state.entries("acme") if "[calltime:draft-0001]" in e["private_notes"]]
    assert found == WrittenEntry(entry_id=target["id"], communication_id=None)


async def test_5xx_on_a_write_is_ambiguous_and_not_re_posted(env: Env, make_client) -> None:
    # With seed 10 and half the requests failing, the matter lookup passes and the POST draws the 503.
    env.state.set_faults(fail_fraction_5xx=0.5, seed=10)

    with pytest.raises(AmbiguousWriteError) as raised:
        await make_client().write_entry(entry_request())

    assert raised.value.status == 503
    assert env.state.stats()["by_route"] == {"GET /api/v2/matters/{id}": 1, "POST /api/v2/timeentries": 1}


# ---------------------------------------------------------------------------------------------------------------
# Directory reads


async def test_accounts_are_the_directory_contacts_with_every_persons_phones(env: Env, make_client) -> None:
    company = env.state.add_account("acme", display_name="Acme Corp", company_name="Acme Corp")
    env.state.add_contact("acme", first_name="Ceo", last_name="Person", account_id=company, phone_work="212-555-0100")
    env.state.add_contact("acme", first_name="Cfo", last_name="Person", account_id=company,
                          phone_mobile="212-555-0101", phone_fax="212-555-0199")
    for n in range(5):
        env.state.add_contact("acme", first_name="Caller", last_name=f"{n:03d}", phone_home=f"617-555-{n:04d}")
    env.state.reset_stats()

    contacts = [c async for c in make_client(page_size=3).iter_contacts()]

    assert len(contacts) == 7
    by_id = {c.contact_id: c for c in contacts}
    assert by_id[ACCOUNT].phone_numbers == ("617-555-0142",)
    assert by_id[ACCOUNT].name == "Client, Jane" and by_id[ACCOUNT].is_client is True
    assert set(by_id[company].phone_numbers) == {"212-555-0100", "212-555-0101"}  # fax left out
    assert by_id[ACCOUNT].updated_at == datetime.fromtimestamp(T0, tz=timezone.utc)
    assert env.state.stats()["by_route"] == {"GET /api/v2/accounts": 3}  # 3 + 3 + 1


async def test_matters_map_account_as_client_and_status(env: Env, make_client) -> None:
    pending = env.state.add_matter("acme", account_id=ACCOUNT, name="Pending one", status="Pending")
    archived = env.state.add_matter("acme", account_id=ACCOUNT, name="Archived one", status="Archived")

    matters = {m.matter_id: m async for m in make_client().iter_matters()}

    main = matters[MATTER]
    assert (main.client_id, main.description, main.status) == (ACCOUNT, "Client v. Acme", "open")
    assert main.display_number.endswith(" - Client v. Acme")
    assert matters[pending].status == "pending" and matters[archived].status == "closed"


async def test_incremental_read_finds_changed_accounts_people_and_matters(env: Env, make_client) -> None:
    other = env.state.add_contact("acme", first_name="Sam", last_name="Still", phone_mobile="555-0000")
    env.clock.now += timedelta(days=2).total_seconds()
    env.state.update_contact("acme", CONTACT, phone_mobile="617-555-0199")  # the account itself is untouched
    env.state.update_matter("acme", MATTER, status="Closed")
    since = datetime.fromtimestamp(T0 + 86_400, tz=timezone.utc)
    client = make_client()

    contacts = [c async for c in client.iter_contacts(updated_since=since)]
    matters = [m async for m in client.iter_matters(updated_since=since)]

    assert [(c.contact_id, c.phone_numbers) for c in contacts] == [(ACCOUNT, ("617-555-0199",))]
    assert other not in {c.contact_id for c in contacts}
    assert [(m.matter_id, m.status) for m in matters] == [(MATTER, "closed")]


async def test_list_users_reads_active_flag_and_has_no_rate(env: Env, make_client) -> None:
    env.state.add_user("acme", first_name="Pat", last_name="Paralegal", is_active=False)

    users = {u.name: u for u in await make_client().list_users()}

    assert set(users) == {"Alex Attorney", "Pat Paralegal"}  # beta's user is invisible
    assert users["Pat Paralegal"].enabled is False
    assert users["Alex Attorney"].rate == Decimal("0")  # the v2 User model carries no rate
    assert users["Alex Attorney"].user_id == USER


# ---------------------------------------------------------------------------------------------------------------
# Tokens


@pytest.mark.parametrize("style", ["401", "invalid_grant"])
async def test_expired_token_is_refreshed_once_and_the_request_succeeds(env: Env, make_client, style) -> None:
    env.state.expired_token_style = style
    client = make_client()
    env.clock.now += ACCESS_TOKEN_SECONDS

    written = await client.write_entry(entry_request())

    assert [e["id"] for e in env.state.entries("acme")] == [written.entry_id]
    assert env.tokens.refreshes == 1
    assert env.state.stats()["unauthorized"] == 1


async def test_revoked_grant_is_an_authentication_error(env: Env, make_client) -> None:
    env.state.revoke(env.tokens.refresh_token)

    with pytest.raises(AuthenticationError):
        await make_client().list_users()

    assert env.tokens.refreshes == 1


async def test_a_second_rejection_is_an_authentication_error(env: Env, make_client, caplog) -> None:
    caplog.set_level(logging.DEBUG)

    class UselessTokens:
        refreshes = 0

        async def bearer(self) -> str:
            return "sk-very-secret-token"

        async def after_rejection(self, rejected: str) -> str:
            self.refreshes += 1
            return "sk-very-secret-token"

    tokens = UselessTokens()
    client = make_client(tokens=tokens)
    with pytest.raises(AuthenticationError) as raised:
        await client.list_users()

    assert tokens.refreshes == 1 and raised.value.status == 401
    assert "sk-very-secret-token" not in str(raised.value) + repr(client) + caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Faults and pacing


async def test_5xx_on_a_read_is_retried_with_backoff(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=1.0)
    env.clock.on_sleep = lambda: env.state.set_faults(fail_fraction_5xx=0.0)

    matters = [m async for m in make_client(rng=lambda: 1.0).iter_matters()]

    assert [m.matter_id for m in matters] == [MATTER]
    assert env.clock.sleeps == [0.5]


async def test_429_burst_waits_retry_after_and_succeeds(env: Env, make_client) -> None:
    env.state.set_faults(burst_429=2)

    users = await make_client().list_users()

    assert [u.name for u in users] == ["Alex Attorney"]
    assert env.clock.sleeps == [1.0, 1.0]


async def test_pacing_with_the_firms_allowance_never_meets_a_429(env: Env, make_client) -> None:
    env.state.rate_limit, env.state.rate_window_seconds = 5, 10.0
    gate = RateGate(env.clock.time, env.clock.sleep, limit=5, window_seconds=10.0)
    client = make_client(rate_gate=gate)

    for _ in range(12):
        await client.who_am_i()

    assert env.state.stats()["rate_limited"] == 0
    assert len(env.clock.sleeps) == 2 and env.clock.now >= T0 + 20


async def test_without_pacing_a_429_is_waited_out(env: Env, make_client) -> None:
    env.state.rate_limit = 2
    client = make_client(rate_gate=RateGate(env.clock.time, env.clock.sleep))

    for _ in range(3):
        await client.who_am_i()

    assert env.state.stats()["rate_limited"] == 1
    assert env.clock.sleeps == [60.0]


# ---------------------------------------------------------------------------------------------------------------
# The fake against the reference samples


def test_fake_accepts_the_samples_own_time_entry_request(env: Env) -> None:
    request = (FIXTURES / "practicepanther_v2_time_entry_create_request.json").read_bytes()
    with env.raw() as raw:
        response = raw.post("/api/v2/timeentries", content=request, headers={"Content-Type": "application/json"})

    assert response.status_code == 200, response.text
    body = json.loads(response.content, parse_float=Decimal)
    expected = sample("practicepanther_v2_time_entry_create_request.json")
    assert set(expected) <= set(body)
    for name in ("is_billable", "is_billed", "date", "hours", "rate", "description", "private_notes"):
        assert body[name] == expected[name]
    for ref in ("account_ref", "matter_ref", "billed_by_user_ref"):
        assert body[ref]["id"] == expected[ref]["id"]


def test_fake_contact_and_matter_have_the_sample_fields(env: Env) -> None:
    with env.raw() as raw:
        contact = raw.get(f"/api/v2/contacts/{CONTACT}").json()
        matter = raw.get(f"/api/v2/matters/{MATTER}").json()
        listed = raw.get("/api/v2/contacts", params={"account_id": ACCOUNT, "$top": "1", "$skip": "0"})

    expected_contact = sample("practicepanther_v2_contact.json")
    expected_matter = sample("practicepanther_v2_matter.json")
    assert list(contact) == list(expected_contact)
    assert list(matter) == list(expected_matter)
    assert contact["account_ref"] == expected_contact["account_ref"]
    assert set(matter["assigned_to_users"][0]) == set(expected_matter["assigned_to_users"][0])
    assert matter["status"] == expected_matter["status"] == "Open"
    assert matter["updated_at"] == "2026-01-01T00:00:00"  # no offset, like the sample
    assert [c["id"] for c in listed.json()] == [CONTACT]


def test_fake_token_endpoint_rotates_refresh_tokens_and_rejects_bad_requests(env: Env) -> None:
    code = env.state.authorization_code("acme", USER)
    with httpx.Client(base_url=env.server.base_url) as raw:
        granted = raw.post("/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": "calltime", "client_secret": "s3cret",
            "redirect_uri": "https://calltime.example/cb"}).json()
        refresh = {"grant_type": "refresh_token", "refresh_token": granted["refresh_token"],
                   "client_id": "calltime", "client_secret": "s3cret"}
        first = raw.post("/oauth/token", data=refresh)
        again = raw.post("/oauth/token", data=refresh)
        wrong_secret = raw.post("/oauth/token", data={**refresh, "client_secret": "nope"})

    assert set(granted) >= {"access_token", "refresh_token", "expires_in", "token_type"}
    assert first.status_code == 200 and first.json()["refresh_token"] != granted["refresh_token"]
    assert (again.status_code, again.json()) == (400, {"error": "invalid_grant"})
    assert wrong_secret.status_code == 400


def test_fake_refuses_unknown_query_parameters_and_oversized_pages(env: Env) -> None:
    with env.raw() as raw:
        unknown = raw.get("/api/v2/matters", params={"colour": "red"})
        too_big = raw.get("/api/v2/matters", params={"$top": "201"})
    with env.raw(token="nope") as raw:
        unauthorized = raw.get("/api/v2/users/me")

    assert (unknown.status_code, too_big.status_code, unauthorized.status_code) == (400, 400, 401)
    assert "ModelState" in unknown.json()
