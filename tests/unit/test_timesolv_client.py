"""The TimeSolv adapter against the fake TimeSolv served over real HTTP on an ephemeral 127.0.0.1 port.

Fixtures in tests/fixtures/timesolv/ are verbatim copies of the reference samples, each with its
.src.txt naming the source.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from billing_support import T0, ClientMaker, FakeClock, RefreshingTokens, entry_request

from calltime.billing.errors import (
    AmbiguousWriteError,
    AuthenticationError,
    PermanentBillingError,
    TransientBillingError,
)
from calltime.billing.model import TimeEntryRequest
from calltime.billing.pacing import RateGate
from calltime.billing.port import BillingSystem
from calltime.billing.timesolv import (
    API_PREFIX,
    ASSUMED,
    TimeSolvClient,
    hours_from_seconds,
    marker,
    time_zone_from_timesolv,
)
from calltime.fakes.timesolv import FakeTimeSolvServer, FakeTimeSolvState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "timesolv"
A = ASSUMED


@dataclass
class Env:
    state: FakeTimeSolvState
    server: FakeTimeSolvServer
    clock: FakeClock
    user: int
    client: int
    matter: int
    tokens: RefreshingTokens

    def entry(self, **overrides) -> TimeEntryRequest:
        return entry_request(str(self.matter), str(self.user), **overrides)


@pytest.fixture
def env():
    clock = FakeClock()
    state = FakeTimeSolvState(clock=clock.time)
    state.add_firm("acme")
    user = state.add_user("acme", first_name="Alex", last_name="Attorney", rate="350.00",
                          time_zone="Eastern Standard Time", phone="(617) 555-0100")
    client = state.add_contact("acme", name="Jane Client", phones=["(617) 555-0142", "617.555.0199"])
    matter = state.add_matter("acme", code="00001", name="Client v. Jones", client_id=client)
    server = FakeTimeSolvServer(state).start()
    try:
        tokens = _authorize(server, state, user)
        yield Env(state, server, clock, user, client, matter, tokens)
    finally:
        server.stop()


def _authorize(server: FakeTimeSolvServer, state: FakeTimeSolvState, user: int) -> RefreshingTokens:
    form = {"grant_type": "authorization_code", "code": state.issue_code("acme", user),
            "redirect_uri": state.redirect_uri, "client_id": state.client_id, "client_secret": state.client_secret}
    body = httpx.post(server.token_url, data=form).json()
    return RefreshingTokens(server.token_url, state, body["access_token"], body["refresh_token"])


@pytest.fixture
async def make_client(env: Env):
    async with ClientMaker(TimeSolvClient, env.server.base_url, env.tokens, env.clock) as make:
        yield make


# ---------------------------------------------------------------------------------------------------------------
# Units


@pytest.mark.parametrize(("seconds", "hours"), [
    (360, Decimal("0.1")), (720, Decimal("0.2")), (1080, Decimal("0.3")), (3600, Decimal("1")),
    (5400, Decimal("1.5")), (36000, Decimal("10")), (9, Decimal("0.0025")),
])
def test_hours_are_exact_decimal_hours_never_minutes_or_seconds(seconds: int, hours: Decimal) -> None:
    converted = hours_from_seconds(seconds)
    assert converted == hours and isinstance(converted, Decimal)
    assert converted * 3600 == seconds


@pytest.mark.parametrize("seconds", [100, 1, 0, -360])
def test_durations_without_an_exact_hour_value_are_refused(seconds: int) -> None:
    with pytest.raises(ValueError):
        hours_from_seconds(seconds)


def test_time_zones_map_windows_ids_and_pass_iana_names() -> None:
    assert time_zone_from_timesolv("Eastern Standard Time") == "America/New_York"
    assert time_zone_from_timesolv("Europe/Paris") == "Europe/Paris"
    assert time_zone_from_timesolv("Mars/Olympus") is None
    assert time_zone_from_timesolv(None) is None


# ---------------------------------------------------------------------------------------------------------------
# Writing


async def test_client_satisfies_the_port(make_client) -> None:
    assert isinstance(make_client(), BillingSystem)


async def test_approved_draft_becomes_exactly_one_time_card_in_hours(env: Env, make_client) -> None:
    request = env.entry()

    written = await make_client().write_entry(request)

    [card] = env.state.entries("acme")
    assert str(card[A.id_field]) == written.entry_id and written.communication_id is None
    assert card[A.timecard_hours_field] == Decimal("0.2")  # 720 s; 12 or 720 here would bill 60x or 3600x
    assert card[A.timecard_rate_field] == Decimal("350.25")
    assert card["Date"] == "2026-03-02"
    assert (card["FirmUserId"], card[A.timecard_project_field]) == (env.user, env.matter)
    assert card[A.timecard_description_field] == f"{request.narrative} [calltime:draft-0001]"


async def test_a_duration_without_exact_hours_is_refused_before_any_request(env: Env, make_client) -> None:
    with pytest.raises(PermanentBillingError):
        await make_client().write_entry(env.entry(billed_seconds=100))
    assert env.state.stats()["requests"] == 0


async def test_validation_errors_are_permanent(env: Env, make_client) -> None:
    closed = env.state.add_matter("acme", code="00002", client_id=env.client, status="Closed")
    client = make_client()

    with pytest.raises(PermanentBillingError) as unknown:
        await client.write_entry(env.entry(matter_id="999999"))
    with pytest.raises(PermanentBillingError) as closed_matter:
        await client.write_entry(env.entry(matter_id=str(closed)))
    with pytest.raises(PermanentBillingError):
        await client.write_entry(env.entry(matter_id="not-a-number"))

    for raised in (unknown, closed_matter):
        assert raised.value.status == 400 and not isinstance(raised.value, TransientBillingError)
    assert "does not exist" in str(unknown.value) and "closed" in str(closed_matter.value)
    assert env.state.entries("acme") == []


async def test_committed_then_dropped_is_ambiguous_and_resume_writes_nothing_more(env: Env, make_client) -> None:
    env.state.set_faults(drop_after_commit_fraction=1.0)
    client = make_client()

    with pytest.raises(AmbiguousWriteError):
        await client.write_entry(env.entry())

    env.state.set_faults(drop_after_commit_fraction=0.0)
    [committed] = env.state.entries("acme")
    resumed = await client.write_entry(env.entry(), resume=True)
    found = await client.find_entry("draft-0001")  # without user and date: the description search
    assert resumed.entry_id == found.entry_id == str(committed[A.id_field])
    assert len(env.state.entries("acme")) == 1
    assert await client.find_entry("draft-other") is None


async def test_resume_writes_when_nothing_landed(env: Env, make_client) -> None:
    other_day = await make_client().write_entry(env.entry(draft_id="draft-0002", entry_date=date(2026, 3, 1)))

    written = await make_client().write_entry(env.entry(), resume=True)

    assert written.entry_id != other_day.entry_id
    assert len(env.state.entries("acme")) == 2


async def test_5xx_on_a_write_is_ambiguous_and_never_re_sent(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=1.0)

    with pytest.raises(AmbiguousWriteError) as raised:
        await make_client().write_entry(env.entry())

    assert raised.value.status == 503
    assert env.state.stats()["by_route"] == {f"post {API_PREFIX}/{A.timecard_create_path}".lower(): 1}


async def test_slow_answer_to_a_write_is_ambiguous(env: Env, make_client) -> None:
    env.state.set_faults(slow_seconds=0.5)

    with pytest.raises(AmbiguousWriteError):
        await make_client(timeout=0.1).write_entry(env.entry())

    env.state.set_faults(slow_seconds=0.0)
    assert len(env.state.entries("acme")) == 1
    assert (await make_client().find_entry("draft-0001")) is not None


# ---------------------------------------------------------------------------------------------------------------
# Directory reads


async def test_list_users_keeps_rate_exact_maps_zone_and_includes_inactive(env: Env, make_client) -> None:
    env.state.add_user("acme", first_name="Pat", last_name="Paralegal", rate="125.35", active=False)

    users = {u.name: u for u in await make_client().list_users()}

    assert users["Alex Attorney"].rate == Decimal("350.00")
    assert users["Pat Paralegal"].rate == Decimal("125.35")
    assert users["Alex Attorney"].time_zone == "America/New_York"
    assert users["Alex Attorney"].phone_number == "(617) 555-0100"
    assert (users["Alex Attorney"].enabled, users["Pat Paralegal"].enabled) == (True, False)


async def test_iter_contacts_pages_through_250_clients_with_phone_numbers(env: Env, make_client) -> None:
    for n in range(249):
        env.state.add_contact("acme", name=f"Caller {n:03d}", phones=[f"617-555-{n:04d}"])
    env.state.reset_stats()

    contacts = [c async for c in make_client().iter_contacts()]

    assert len(contacts) == 250
    assert [int(c.contact_id) for c in contacts] == sorted(int(c.contact_id) for c in contacts)
    by_name = {c.name: c for c in contacts}
    assert by_name["Jane Client"].phone_numbers == ("(617) 555-0142", "617.555.0199")
    assert by_name["Caller 248"].phone_numbers == ("617-555-0248",)
    assert all(c.is_client for c in contacts)
    assert env.state.stats()["by_route"] == {"post /services/rest/oauth2v1/clientsearch": 3}


async def test_incremental_reads_return_only_later_changes(env: Env, make_client) -> None:
    env.clock.now += 3600
    env.state.update_contact("acme", env.client, name="Jane Q. Client")
    env.state.update_matter("acme", env.matter, status="Inactive")
    since = datetime.fromtimestamp(T0 + 1800, tz=timezone.utc)
    client = make_client()

    contacts = [c async for c in client.iter_contacts(updated_since=since)]
    matters = [m async for m in client.iter_matters(updated_since=since)]

    assert [c.name for c in contacts] == ["Jane Q. Client"]
    assert contacts[0].updated_at == datetime.fromtimestamp(T0 + 3600, tz=timezone.utc)
    assert [(m.matter_id, m.status) for m in matters] == [(str(env.matter), "closed")]


async def test_iter_matters_maps_client_code_name_and_status(env: Env, make_client) -> None:
    pending = env.state.add_matter("acme", code="00003", client_id=env.client, status="Pending")
    odd = env.state.add_matter("acme", code="00004", status="Archived-ish")

    matters = {m.matter_id: m async for m in make_client().iter_matters()}

    first = matters[str(env.matter)]
    assert (first.client_id, first.display_number, first.description, first.status) == (
        str(env.client), "00001", "Client v. Jones", "open")
    assert matters[str(pending)].status == "pending"
    assert matters[str(odd)].status == "closed" and matters[str(odd)].client_id is None


# ---------------------------------------------------------------------------------------------------------------
# Auth, retries, pacing


async def test_expired_token_is_refreshed_once_and_the_request_succeeds(env: Env, make_client) -> None:
    env.clock.now += env.state.token_lifetime + 1

    users = await make_client().list_users()

    assert [u.name for u in users] == ["Alex Attorney"]
    assert env.tokens.refreshes == 1
    assert env.state.stats()["by_status"] == {"401": 1, "200": 1}


async def test_revoked_grant_is_an_authentication_error(env: Env, make_client) -> None:
    env.state.revoke_grant("acme")

    with pytest.raises(AuthenticationError) as raised:
        await make_client().write_entry(env.entry())

    assert isinstance(raised.value, PermanentBillingError)
    assert env.state.entries("acme") == []


async def test_a_second_401_after_refresh_is_an_authentication_error(env: Env, make_client) -> None:
    class UselessRefresh(RefreshingTokens):
        async def after_rejection(self, rejected: str) -> str:
            self.refreshes += 1
            return "still-not-valid"

    tokens = UselessRefresh(env.server.token_url, env.state, "bogus", None)

    with pytest.raises(AuthenticationError) as raised:
        await make_client(tokens=tokens).list_users()

    assert raised.value.status == 401 and tokens.refreshes == 1
    assert "Authorization has been denied" in str(raised.value)


async def test_5xx_on_a_read_is_retried_with_backoff(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=0.5, seed=3)

    users = await make_client(max_read_retries=10, rng=lambda: 1.0).list_users()

    assert [u.name for u in users] == ["Alex Attorney"]
    injected = env.state.stats()["server_errors_injected"]
    assert injected >= 1
    assert env.clock.sleeps == [min(8.0, 0.5 * 2 ** n) for n in range(injected)]


async def test_5xx_on_a_read_gives_up_as_transient(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=1.0)

    with pytest.raises(TransientBillingError) as raised:
        await make_client(max_read_retries=2).list_users()

    assert not isinstance(raised.value, AmbiguousWriteError)
    assert env.state.stats()["server_errors_injected"] == 3


async def test_429_burst_waits_retry_after_then_succeeds(env: Env, make_client) -> None:
    env.state.set_faults(burst_429=2)

    written = await make_client().write_entry(env.entry())

    assert [str(c[A.id_field]) for c in env.state.entries("acme")] == [written.entry_id]
    assert env.clock.sleeps == [1.0, 1.0]


async def test_pacing_at_the_assumed_allowance_never_meets_a_429(env: Env, make_client) -> None:
    env.state.rate_limit = 5
    gate = RateGate(env.clock.time, env.clock.sleep, limit=5, window_seconds=60)
    client = make_client(rate_gate=gate)

    for _ in range(12):
        await client.list_users()

    stats = env.state.stats()
    assert stats["rate_limited"] == 0 and stats["requests"] == 12
    assert env.clock.now >= T0 + 120


async def test_secrets_stay_out_of_repr_and_logs(env: Env, make_client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env.state.set_faults(fail_fraction_5xx=1.0)
    client = make_client(max_read_retries=1)

    with pytest.raises(TransientBillingError):
        await client.list_users()

    assert env.tokens.access not in repr(client) and env.tokens.access not in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# The fake against the reference


def test_fake_answers_the_reference_search_request_verbatim(env: Env) -> None:
    sample = (FIXTURES / "timesolv_firmUserSearch_request.json").read_bytes()
    headers = {"Authorization": f"Bearer {env.tokens.access}", "Content-Type": "application/json"}
    with httpx.Client(base_url=env.server.base_url, headers=headers) as raw:
        # The seen client spells the segment both ways; IIS matches paths without case.
        answers = [raw.post(f"/Services/rest/{segment}/firmUserSearch", content=sample)
                   for segment in ("oauth2v1", "oAuth2V1")]

    for answer in answers:
        assert answer.status_code == 200, answer.text
        [user] = answer.json()["FirmUsers"]
        assert user["UserStatus"] == "Active" and user["Id"] == env.user


async def test_client_search_body_has_the_reference_shape(env: Env, make_client) -> None:
    sent: list[dict] = []

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    sample = json.loads((FIXTURES / "timesolv_firmUserSearch_request.json").read_text())
    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        client = make_client(http=http)
        await client.list_users()
        await client.find_entry("draft-0001", user_id=str(env.user), entry_date=date(2026, 3, 2))

    users_body, cards_body = sent
    assert set(users_body) == set(cards_body) == set(sample)
    assert (users_body["OrderBy"], users_body["PageNumber"], users_body["PageSize"]) == ("Id", 1, 100)
    assert users_body["Criteria"] == []  # every user, disabled ones too
    assert all(set(c) == set(sample["Criteria"][0]) for c in cards_body["Criteria"])
    assert [(c["FieldName"], c["Operator"]) for c in cards_body["Criteria"]] == [
        ("FirmUserId", "="), ("Date", ">="), ("Date", "<=")]


def test_fake_token_endpoint_reuses_the_code_and_refuses_bad_grants(env: Env) -> None:
    code = env.state.issue_code("acme", env.user)
    base = {"client_id": env.state.client_id, "client_secret": env.state.client_secret,
            "redirect_uri": env.state.redirect_uri}
    with httpx.Client() as raw:
        first = raw.post(env.server.token_url, data=base | {"grant_type": "authorization_code", "code": code})
        again = raw.post(env.server.token_url, data=base | {"grant_type": "authorization_code", "code": code})
        wrong_uri = raw.post(env.server.token_url, data=base | {
            "grant_type": "authorization_code", "code": code, "redirect_uri": "https://evil.example/"})
        wrong_secret = raw.post(env.server.token_url, data=base | {
            "grant_type": "authorization_code", "code": code, "client_secret": "nope"})

    assert first.status_code == again.status_code == 200  # "This code will not expire"
    assert set(first.json()) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert (wrong_uri.status_code, wrong_uri.json()) == (400, {"error": "invalid_grant"})
    assert wrong_secret.status_code == 401


def test_fake_refuses_malformed_searches(env: Env) -> None:
    headers = {"Authorization": f"Bearer {env.tokens.access}"}
    base = {"OrderBy": "Id", "SortOrderAscending": True, "PageSize": 10, "PageNumber": 1, "Criteria": []}
    with httpx.Client(base_url=env.server.base_url, headers=headers) as raw:
        too_big = raw.post(f"{API_PREFIX}/clientSearch", json=base | {"PageSize": 1000})
        bad_field = raw.post(f"{API_PREFIX}/clientSearch", json=base | {
            "Criteria": [{"FieldName": "Colour", "Operator": "=", "Value": "red"}]})
        unknown = raw.post(f"{API_PREFIX}/nothingSearch", json=base)
        no_token = httpx.post(f"{env.server.base_url}{API_PREFIX}/clientSearch", json=base)

    assert (too_big.status_code, bad_field.status_code, unknown.status_code) == (400, 400, 404)
    assert set(bad_field.json()) == {"Message"}
    assert no_token.status_code == 401
    assert marker("x") == "[calltime:x]"
