"""The Smokeball adapter against the fake Smokeball served over real HTTP on an ephemeral 127.0.0.1 port.

Fixtures in tests/fixtures/smokeball/ are verbatim copies of the reference samples, each with its
.src.txt naming the source.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import billing_support
import httpx
import pytest
from billing_support import T0, ClientMaker, FakeClock, entry_request

from calltime.billing.errors import (
    AmbiguousWriteError,
    AuthenticationError,
    PermanentBillingError,
    TransientBillingError,
)
from calltime.billing.model import TimeEntryRequest
from calltime.billing.port import BillingSystem
from calltime.billing.smokeball import (
    SmokeballClient,
    datetime_from_ticks,
    marker,
    minutes_from_seconds,
    notification_signature,
    phone_text,
    request_id_for,
    ticks_from_datetime,
    verify_notification,
)
from calltime.fakes.smokeball import FakeSmokeballServer, FakeSmokeballState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "smokeball"


def sample(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


class RefreshingTokens(billing_support.RefreshingTokens):
    basic_auth = True  # Smokeball's token endpoint takes the client id and secret as HTTP Basic


@dataclass
class Env:
    state: FakeSmokeballState
    server: FakeSmokeballServer
    clock: FakeClock
    staff: str
    client: str
    matter: str
    tokens: RefreshingTokens

    def entry(self, **overrides) -> TimeEntryRequest:
        return entry_request(self.matter, self.staff, **overrides)

    def raw(self, token: str | None = None) -> httpx.Client:
        headers = {"x-api-key": self.state.api_key, "Authorization": f"Bearer {token or self.tokens.access}"}
        return httpx.Client(base_url=self.server.base_url, headers=headers)


@pytest.fixture
def env():
    clock = FakeClock()
    state = FakeSmokeballState(clock=clock.time)
    state.add_firm("acme")
    staff = state.add_user("acme", first_name="Alex", last_name="Attorney", rate="350.00", phone=("617", "5550100"))
    client = state.add_contact("acme", first_name="Jane", last_name="Client", phone=("617", "5550142"),
                               cell=("617", "5550199"))
    matter = state.add_matter("acme", number="FUS-124", title="Client v. Jones", client_ids=[client])
    server = FakeSmokeballServer(state).start()
    try:
        body = httpx.post(server.token_url, auth=(state.client_id, state.client_secret), data={
            "grant_type": "authorization_code", "code": state.issue_code("acme", staff),
            "redirect_uri": state.redirect_uri,
        }).json()
        tokens = RefreshingTokens(server.token_url, state, body["access_token"], body["refresh_token"])
        yield Env(state, server, clock, staff, client, matter, tokens)
    finally:
        server.stop()


@pytest.fixture
async def make_client(env: Env):
    async with ClientMaker(SmokeballClient, env.server.base_url, env.tokens, env.clock,
                           api_key=env.state.api_key) as make:
        yield make


# ---------------------------------------------------------------------------------------------------------------
# Pure conversions


@pytest.mark.parametrize(("seconds", "minutes"), [(60, 1), (360, 6), (720, 12), (3600, 60), (5400, 90)])
def test_duration_is_whole_minutes_never_seconds_or_hours(seconds: int, minutes: int) -> None:
    converted = minutes_from_seconds(seconds)
    assert converted == minutes and type(converted) is int
    assert converted * 60 == seconds


@pytest.mark.parametrize("seconds", [30, 90, 0, -60])
def test_durations_that_are_not_whole_minutes_are_refused(seconds: int) -> None:
    with pytest.raises(ValueError):
        minutes_from_seconds(seconds)


def test_net_ticks_round_trip_and_match_the_sample_timestamp() -> None:
    assert ticks_from_datetime(datetime(1970, 1, 1, tzinfo=timezone.utc)) == 621_355_968_000_000_000
    moment = datetime(2026, 3, 2, 15, 4, 11, 123456, tzinfo=timezone.utc)
    assert datetime_from_ticks(ticks_from_datetime(moment)) == moment
    # 637981232724209300 ticks - 621355968000000000 = 1662526472.4209300 s after the Unix epoch
    stamp = datetime_from_ticks(sample("smokeball_webhook_error")["timestamp"])
    assert stamp == datetime(2022, 9, 7, 4, 54, 32, 420930, tzinfo=timezone.utc)


def test_phone_objects_become_typed_text() -> None:
    person = sample("smokeball_contact_person_swagger_examples")["person"]
    assert phone_text(person["phone"]) == "(555) 1234567"
    assert phone_text(person["phone2"]) == "(555) 1234567 x103"
    assert phone_text({"areaCode": "", "number": "9999 9999"}) == "9999 9999"
    assert phone_text({"areaCode": "02", "number": ""}) is None and phone_text(None) is None


def test_request_ids_are_stable_guids_per_draft() -> None:
    assert request_id_for("draft-1") == request_id_for("draft-1") != request_id_for("draft-2")
    assert uuid.UUID(request_id_for("draft-1"))


# ---------------------------------------------------------------------------------------------------------------
# Writing


async def test_client_satisfies_the_port(make_client) -> None:
    assert isinstance(make_client(), BillingSystem)


async def test_approved_draft_becomes_exactly_one_fee_in_minutes(env: Env, make_client) -> None:
    request = env.entry()

    written = await make_client().write_entry(request)

    [fee] = env.state.entries("acme")
    assert fee["id"] == written.entry_id and written.communication_id is None
    assert fee["duration"] == 12 and fee["durationWorked"] == 12  # 720 s; 720 or 0.2 here is a 60x error
    assert fee["rate"] == Decimal("350.25") and fee["amount"] == Decimal("70.05")
    assert (fee["matterId"], fee["staffId"], fee["feeDate"], fee["feeType"]) == (
        env.matter, env.staff, "2026-03-02", 1)
    assert fee["subject"] == request.narrative and fee["description"] == marker("draft-0001")
    assert env.state.accepted("acme") == 1


async def test_a_duration_in_seconds_is_refused_before_any_request(env: Env, make_client) -> None:
    with pytest.raises(PermanentBillingError):
        await make_client().write_entry(env.entry(billed_seconds=90))
    with pytest.raises(PermanentBillingError):
        await make_client().write_entry(env.entry(matter_id="not-a-guid"))
    assert env.state.stats()["requests"] == 0


async def test_a_fee_accepted_but_processed_later_is_returned_once_readable(env: Env, make_client) -> None:
    env.state.set_faults(processing_delay_seconds=4.5)

    written = await make_client().write_entry(env.entry())

    [fee] = env.state.entries("acme")
    assert fee["id"] == written.entry_id
    assert env.clock.now >= T0 + 4.5
    assert env.state.stats()["by_status"]["404"] >= 4  # read back by id until processed


async def test_accepted_then_failed_is_ambiguous_and_the_error_webhook_names_the_request(
    env: Env, make_client
) -> None:
    with env.raw() as raw:
        subscription = raw.post("/webhooks", json={
            "name": "calltime", "eventTypes": ["fee.created", "error"],
            "eventNotificationUrl": "https://calltime.example/hooks/smokeball", "key": "k3y",
        }).json()
    env.state.set_faults(fail_after_accept_fraction=1.0)

    with pytest.raises(AmbiguousWriteError) as raised:
        await make_client(confirm_seconds=5).write_entry(env.entry())

    assert request_id_for("draft-0001") in str(raised.value)
    assert env.state.entries("acme") == [] and env.state.accepted("acme") == 1
    [delivery] = env.state.notifications("acme")
    error = sample("smokeball_webhook_error")
    assert set(delivery["body"]) == set(error) and set(delivery["body"]["payload"]) == set(error["payload"])
    assert delivery["body"]["type"] == "error" and delivery["body"]["subscriptionId"] == subscription["id"]
    assert delivery["headers"]["RequestId"] == request_id_for("draft-0001")
    assert verify_notification("k3y", delivery["headers"], env.state.client_id)
    assert not verify_notification("other-key", delivery["headers"], env.state.client_id)


async def test_committed_then_dropped_is_ambiguous_and_resume_writes_no_second_fee(env: Env, make_client) -> None:
    env.state.set_faults(drop_after_commit_fraction=1.0, processing_delay_seconds=8)
    client = make_client()

    with pytest.raises(AmbiguousWriteError):
        await client.write_entry(env.entry())

    env.state.set_faults(drop_after_commit_fraction=0.0)
    assert env.state.entries("acme") == []  # still in Smokeball's queue
    resumed = await client.write_entry(env.entry(), resume=True)

    [fee] = env.state.entries("acme")
    assert resumed.entry_id == fee["id"]
    assert env.state.accepted("acme") == 1


async def test_resume_writes_after_the_wait_when_nothing_landed(env: Env, make_client) -> None:
    written = await make_client(confirm_seconds=3).write_entry(env.entry(), resume=True)

    assert [f["id"] for f in env.state.entries("acme")] == [written.entry_id]
    assert env.clock.now >= T0 + 3


async def test_find_entry_without_the_matter_searches_every_matter(env: Env, make_client) -> None:
    other = env.state.add_matter("acme", number="FUS-125", client_ids=[env.client])
    written = await make_client().write_entry(env.entry(matter_id=other))

    fresh = make_client()  # remembers nothing about the draft

    found = await fresh.find_entry("draft-0001")
    assert found is not None and found.entry_id == written.entry_id
    assert await fresh.find_entry("draft-0002", matter_id=other) is None


async def test_5xx_on_a_write_is_ambiguous_and_never_re_sent(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=1.0)

    with pytest.raises(AmbiguousWriteError) as raised:
        await make_client().write_entry(env.entry())

    assert raised.value.status == 503
    assert env.state.stats()["by_route"] == {"POST /matters/{matterId}/fees": 1}
    assert env.state.accepted("acme") == 0


async def test_validation_errors_are_permanent(env: Env, make_client) -> None:
    closed = env.state.add_matter("acme", number="FUS-126", status="Closed", client_ids=[env.client])
    client = make_client()

    with pytest.raises(PermanentBillingError) as unknown:
        await client.write_entry(env.entry(matter_id=str(uuid.uuid4())))
    with pytest.raises(PermanentBillingError) as closed_matter:
        await client.write_entry(env.entry(matter_id=closed))
    with pytest.raises(PermanentBillingError) as unknown_staff:
        await client.write_entry(env.entry(user_id=str(uuid.uuid4())))

    assert (unknown.value.status, closed_matter.value.status, unknown_staff.value.status) == (404, 400, 400)
    assert "Closed" in str(closed_matter.value)
    for raised in (unknown, closed_matter, unknown_staff):
        assert not isinstance(raised.value, TransientBillingError)
    assert env.state.accepted("acme") == 0


def test_fake_refuses_fractional_minutes_and_missing_subject(env: Env) -> None:
    base = {"feeDate": "2026-03-02", "subject": "Call", "feeType": 1, "duration": 12, "rate": 350}
    with env.raw() as raw:
        fractional = raw.post(f"/matters/{env.matter}/fees", content=json.dumps(base | {"duration": 0.2}))
        no_subject = raw.post(f"/matters/{env.matter}/fees", json={k: v for k, v in base.items() if k != "subject"})
        accepted = raw.post(f"/matters/{env.matter}/fees", json=base)

    assert (fractional.status_code, no_subject.status_code, accepted.status_code) == (400, 400, 202)
    assert set(fractional.json()) == {"type", "title", "status", "detail", "instance"}
    assert set(accepted.json()) == set(sample("smokeball_fee_swagger_examples")["self"])


# ---------------------------------------------------------------------------------------------------------------
# Directory reads


async def test_list_users_asks_for_rates_and_maps_staff(env: Env, make_client) -> None:
    env.state.add_user("acme", first_name="Pat", last_name="Paralegal", rate="125.35", former=True)

    users = {u.name: u for u in await make_client().list_users()}

    assert users["Alex Attorney"].rate == Decimal("350.00") and users["Pat Paralegal"].rate == Decimal("125.35")
    assert users["Alex Attorney"].user_id == env.staff
    assert users["Alex Attorney"].phone_number == "(617) 5550100"
    assert users["Alex Attorney"].time_zone is None
    assert (users["Alex Attorney"].enabled, users["Pat Paralegal"].enabled) == (True, False)


async def test_iter_contacts_pages_and_flags_matter_clients(env: Env, make_client) -> None:
    for n in range(1100):
        env.state.add_contact("acme", first_name="Caller", last_name=f"{n:04d}", phone=("212", f"555{n:04d}"))
    acme_corp = env.state.add_contact("acme", company="Acme Corp", phone=("312", "5550000"))
    env.state.add_contact("acme", first_name="Gone", deleted=True)
    env.state.reset_stats()

    contacts = [c async for c in make_client().iter_contacts()]

    assert len(contacts) == 1102  # the deleted one is left out
    by_id = {c.contact_id: c for c in contacts}
    assert by_id[env.client].is_client and by_id[env.client].name == "Jane Client"
    assert by_id[env.client].phone_numbers == ("(617) 5550142", "(617) 5550199")
    assert by_id[acme_corp].name == "Acme Corp" and not by_id[acme_corp].is_client
    assert by_id[env.client].updated_at == datetime.fromtimestamp(T0, tz=timezone.utc)
    assert env.state.stats()["by_route"] == {"GET /contacts": 3, "GET /matters": 1}


async def test_incremental_reads_return_only_later_changes(env: Env, make_client) -> None:
    env.clock.now += 3600
    env.state.update_contact("acme", env.client, lastName="Q. Client")
    env.state.update_matter("acme", env.matter, status="Pending")
    since = datetime.fromtimestamp(T0 + 1800, tz=timezone.utc)
    client = make_client()

    contacts = [c async for c in client.iter_contacts(updated_since=since)]
    matters = [m async for m in client.iter_matters(updated_since=since)]

    assert [c.name for c in contacts] == ["Jane Q. Client"]
    assert [(m.matter_id, m.status) for m in matters] == [(env.matter, "pending")]


async def test_iter_matters_maps_every_status_number_title_and_client(env: Env, make_client) -> None:
    cancelled = env.state.add_matter("acme", number="FUS-200", status="Cancelled")
    deleted = env.state.add_matter("acme", number="FUS-201", status="Deleted")

    matters = {m.matter_id: m async for m in make_client().iter_matters()}

    first = matters[env.matter]
    assert (first.client_id, first.display_number, first.description, first.status) == (
        env.client, "FUS-124", "Client v. Jones", "open")
    assert matters[cancelled].status == matters[deleted].status == "closed"
    assert matters[cancelled].client_id is None


# ---------------------------------------------------------------------------------------------------------------
# Auth, retries, pacing


async def test_expired_token_is_refreshed_once_and_the_write_succeeds(env: Env, make_client) -> None:
    env.clock.now += 3601
    old_refresh = env.tokens.refresh

    written = await make_client().write_entry(env.entry())

    assert [f["id"] for f in env.state.entries("acme")] == [written.entry_id]
    assert env.tokens.refreshes == 1 and env.tokens.refresh == old_refresh


async def test_revoked_access_is_an_authentication_error_and_drops_subscriptions(env: Env, make_client) -> None:
    with env.raw() as raw:
        raw.post("/webhooks", json={"name": "c", "eventTypes": ["contact.updated"],
                                    "eventNotificationUrl": "https://calltime.example/h"})
    env.state.revoke_grant("acme")

    with pytest.raises(AuthenticationError) as raised:
        await make_client().list_users()

    assert "re-authorise" in str(raised.value)  # the 401 led to a refresh, which was refused too
    assert env.tokens.refreshes == 0
    env.state.add_user("acme", first_name="Admin", tokens=["fresh-admin-token"])
    with env.raw("fresh-admin-token") as raw:
        assert raw.get("/webhooks").json() == []


async def test_a_second_401_after_refresh_is_an_authentication_error(env: Env, make_client) -> None:
    class UselessRefresh(RefreshingTokens):
        async def after_rejection(self, rejected: str) -> str:
            self.refreshes += 1
            return "still-not-valid"

    tokens = UselessRefresh(env.server.token_url, env.state, "bogus", None)

    with pytest.raises(AuthenticationError) as raised:
        await make_client(tokens=tokens).write_entry(env.entry())

    assert raised.value.status == 401 and "Unauthorized" in str(raised.value)
    assert tokens.refreshes == 1 and env.state.accepted("acme") == 0


async def test_a_wrong_api_key_is_permanent_but_not_an_authentication_error(env: Env, make_client) -> None:
    with pytest.raises(PermanentBillingError) as raised:
        await make_client(api_key="wrong-key").list_users()
    assert raised.value.status == 403 and not isinstance(raised.value, AuthenticationError)


async def test_5xx_on_a_read_is_retried_then_gives_up_as_transient(env: Env, make_client) -> None:
    env.state.set_faults(fail_fraction_5xx=0.5, seed=7)
    users = await make_client(max_read_retries=10).list_users()
    assert [u.name for u in users] == ["Alex Attorney"]
    assert env.state.stats()["server_errors_injected"] >= 1

    env.state.set_faults(fail_fraction_5xx=1.0)
    with pytest.raises(TransientBillingError) as raised:
        await make_client(max_read_retries=2).list_users()
    assert raised.value.status == 503 and not isinstance(raised.value, AmbiguousWriteError)


async def test_429_burst_waits_retry_after_then_succeeds(env: Env, make_client) -> None:
    env.state.set_faults(burst_429=3)

    written = await make_client().write_entry(env.entry())

    assert [f["id"] for f in env.state.entries("acme")] == [written.entry_id]
    assert env.clock.sleeps[:3] == [1.0, 1.0, 1.0]
    assert env.state.accepted("acme") == 1


async def test_pacing_at_five_per_second_never_meets_a_429(env: Env, make_client) -> None:
    client = make_client()

    for _ in range(12):
        await client.list_users()

    stats = env.state.stats()
    assert stats["rate_limited"] == 0 and stats["requests"] == 12
    assert env.clock.now >= T0 + 2  # 5 at t=0, 5 at t=1, 2 at t=2


def test_the_fake_bucket_refuses_a_sixth_request_in_the_same_instant(env: Env) -> None:
    with env.raw() as raw:
        statuses = [raw.get("/staff").status_code for _ in range(6)]
        refused = raw.get("/staff")
    assert statuses == [200] * 5 + [429]
    assert refused.headers["Retry-After"] == "1" and refused.json() == {"message": "Too Many Requests"}


async def test_secrets_stay_out_of_repr_and_logs(env: Env, make_client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env.state.set_faults(fail_fraction_5xx=1.0)
    client = make_client(max_read_retries=1)

    with pytest.raises(TransientBillingError):
        await client.list_users()

    for secret in (env.tokens.access, env.state.api_key):
        assert secret not in repr(client) and secret not in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# The fake against the reference samples


def test_fake_token_answers_have_the_documented_shapes(env: Env) -> None:
    auth = (env.state.client_id, env.state.client_secret)
    code = env.state.issue_code("acme", env.staff)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": env.state.redirect_uri}
    with httpx.Client() as raw:
        first = raw.post(env.server.token_url, auth=auth, data=form)
        reused = raw.post(env.server.token_url, auth=auth, data=form)
        refreshed = raw.post(env.server.token_url, auth=auth, data={
            "grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"]})
        body_auth = raw.post(env.server.token_url, data=form | {
            "client_id": env.state.client_id, "client_secret": env.state.client_secret})

    token_sample = sample("smokeball_token_response")
    assert set(first.json()) == set(token_sample)
    assert (first.json()["token_type"], first.json()["expires_in"]) == ("Bearer", 3600)
    assert reused.status_code == 400  # "The code is single-use"
    assert set(refreshed.json()) == set(token_sample) - {"refresh_token"}
    assert body_auth.status_code == 401  # the client must authenticate with Basic


def test_fake_records_have_the_sample_fields(env: Env) -> None:
    with env.raw() as raw:
        staff = raw.get("/staff", params={"Fields": "rate"}).json()["value"][0]
        no_rate = raw.get("/staff").json()["value"][0]
        contact = raw.get("/contacts").json()["value"][0]
        matter = raw.get(f"/matters/{env.matter}").json()
        link = raw.post(f"/matters/{env.matter}/fees", json={
            "feeDate": "2026-03-02", "subject": "Call", "feeType": 1, "duration": 6, "rate": 300}).json()
        env.clock.now += 1  # the bucket holds five requests; let it refill
        fee = raw.get(f"/matters/{env.matter}/fees/{link['id']}").json()
        subscription = raw.post("/webhooks", json={
            "name": "MyContactsWebhook", "eventTypes": ["contact.created", "matter.updated"],
            "eventNotificationUrl": "https://calltime.example/hooks"}).json()

    assert set(staff) == set(sample("smokeball_staff_swagger_examples")) and "rate" not in no_rate
    person_sample = sample("smokeball_contact_person_swagger_examples")
    assert set(contact) == set(person_sample) and set(contact["person"]) == set(person_sample["person"])
    assert set(contact["person"]["phone"]) == set(person_sample["person"]["phone"])
    assert set(matter) == set(sample("smokeball_matter_swagger_examples"))
    assert set(fee) == set(sample("smokeball_fee_swagger_examples"))
    assert set(subscription) == set(sample("smokeball_webhook_subscription_response"))


def test_fake_pages_like_the_documented_contacts_list(env: Env) -> None:
    for n in range(3):
        env.state.add_contact("acme", first_name=f"P{n}")
    with env.raw() as raw:
        first = raw.get("/contacts", params={"Limit": "2"}).json()
        last = raw.get("/contacts", params={"limit": "2", "offset": "2"}).json()
        too_many = raw.get("/contacts", params={"Limit": "501"})

    listing = sample("smokeball_contacts_list_response")
    assert set(first) == set(listing)
    assert (first["offset"], first["limit"], first["size"], len(first["value"])) == (0, 2, 4, 2)
    assert first["next"]["rel"] == "collection" and "offset=2" in first["next"]["href"]
    assert "next" not in last and len(last["value"]) == 2
    assert too_many.status_code == 400


async def test_client_fee_body_uses_only_fee_dto_fields_with_their_types(env: Env, make_client) -> None:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        await make_client(http=http).write_entry(env.entry())

    [post] = [r for r in sent if r.method == "POST"]
    body = json.loads(post.content)
    dto = sample("smokeball_fee_create_request_swagger_examples")
    assert set(body) <= set(dto)
    for name in ("duration", "durationWorked", "feeType"):
        assert type(body[name]) is type(dto[name]) is int
    assert post.headers["RequestId"] == request_id_for("draft-0001")
    assert post.headers["x-api-key"] == env.state.api_key


def test_matter_updated_sample_notification_signature_is_checked_over_headers() -> None:
    headers = {"Timestamp": str(sample("smokeball_webhook_matter_updated")["timestamp"]), "RequestId": "r-1"}
    headers["Signature"] = notification_signature("key", headers["Timestamp"], "r-1", "client-1")
    assert verify_notification("key", headers, "client-1")
    assert not verify_notification("key", headers | {"RequestId": "r-2"}, "client-1")
    assert not verify_notification("key", {"Timestamp": "1"}, "client-1")
