"""Every billing system end to end: the billing-writer service as a real process on the real broker and
database, one firm on each of Clio, MyCase, PracticePanther, TimeSolv and Smokeball (each served by its
fake over HTTP). One approval published to `draft.approved` becomes exactly one entry in that firm's
system — right matter, user, date, rate and quantity in the system's own unit (Clio seconds, MyCase /
PracticePanther / TimeSolv decimal hours, Smokeball minutes) — and one `entry.written` naming it.
MyCase and Smokeball are connected by OAuth, so the writer's OAuthSession refreshes at the fake's token
endpoint (MyCase ahead of expiry, Smokeball after a 401) and stores what it got."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from billing_harness import (
    OAuthGrant,
    approval,
    entry_id,
    entry_written_events,
    exchange_code,
    expected_quantity,
    expired,
    ledger_rows,
    onboard,
    publish,
    stored_billing_tokens,
    system_entries,
    written_terms,
)

from calltime.demo.stack import LocalStack
from calltime.demo.watch import eventually
from calltime.fakes.clio import FakeClioServer, FakeClioState
from calltime.fakes.mycase import FakeMyCaseServer, FakeMyCaseState
from calltime.fakes.practicepanther import FakePracticePantherServer, FakePracticePantherState
from calltime.fakes.smokeball import FakeSmokeballServer, FakeSmokeballState
from calltime.fakes.timesolv import FakeTimeSolvServer, FakeTimeSolvState

pytestmark = pytest.mark.e2e

REVIEW_KEY = "review-key-billing-systems"
# Billed minutes per system, each a multiple of 6 (the drafts service bills 0.1 h steps).
MINUTES = {"clio": 24, "mycase": 18, "practicepanther": 42, "timesolv": 30, "smokeball": 54}


@dataclass
class Firm:
    system: str
    firm_id: str
    state: Any
    matter_id: str
    user_id: str
    rate: Decimal
    original_tokens: dict[str, Any] | None = None  # what onboarding stored, for the OAuth firms


@dataclass
class Systems:
    stack: LocalStack
    firms: dict[str, Firm]


async def _clio(stack: LocalStack, servers: list) -> Firm:
    state = FakeClioState(rate_limit=600)
    server = FakeClioServer(state).start()
    servers.append(server)
    firm = "firm-bs-clio"
    state.add_firm(firm, "Harbor & Vale LLP")
    user = state.add_user(firm, name="Dana Whitfield", rate=Decimal("350.00"), tokens=["clio-token-bs"])
    client = state.add_contact(firm, name="Marisol Ortega", is_client=True, phone_numbers=["(415) 555-0142"])
    matter = state.add_matter(firm, display_number="00042-Ortega", client_id=client)
    await onboard(stack, firm_id=firm, system="clio", base_url=server.base_url, api_key=REVIEW_KEY,
                  static_token="clio-token-bs")
    return Firm("clio", firm, state, str(matter), str(user), Decimal("350.00"))


async def _mycase(stack: LocalStack, servers: list) -> Firm:
    state = FakeMyCaseState()
    server = FakeMyCaseServer(state).start()
    servers.append(server)
    firm = "firm-bs-mycase"
    state.add_firm(firm, "Lark & Stone")
    staff = state.add_user(firm, first_name="Ines", last_name="Okafor", default_hourly_rate=Decimal("295.50"))
    person = state.add_contact(firm, first_name="Tom", last_name="Reyes", cell_phone_number="(312) 555-0199")
    case = state.add_matter(firm, name="Reyes v. Acme", case_number="2026-17", client_ids=[person],
                            staff_ids=[staff])
    state.add_oauth_client("calltime-mycase", "mycase-client-secret", "https://calltime.example/oauth/mycase")
    grant = state.issue_tokens(firm, staff)
    # Expired on arrival: the writer must refresh (MyCase rotates the refresh token) before it writes.
    tokens = OAuthGrant(access_token=grant["access_token"], refresh_token=grant["refresh_token"],
                        expires_at=expired(), client_id="calltime-mycase", client_secret="mycase-client-secret",
                        token_url=server.token_url)
    await onboard(stack, firm_id=firm, system="mycase", base_url=server.base_url, api_key=REVIEW_KEY, oauth=tokens)
    return Firm("mycase", firm, state, str(case), str(staff), Decimal("295.50"),
                original_tokens={"access_token": grant["access_token"], "refresh_token": grant["refresh_token"]})


async def _practicepanther(stack: LocalStack, servers: list) -> Firm:
    state = FakePracticePantherState()
    server = FakePracticePantherServer(state).start()
    servers.append(server)
    firm = "firm-bs-pp"
    state.add_firm(firm)
    user = state.add_user(firm, first_name="Priya", last_name="Nair")
    account = state.add_account(firm, display_name="Delgado, Ana")
    state.add_contact(firm, first_name="Ana", last_name="Delgado", account_id=account, phone_mobile="2125550123")
    matter = state.add_matter(firm, account_id=account, name="Delgado estate")
    token = state.issue_tokens(firm, user)["access_token"]
    await onboard(stack, firm_id=firm, system="practicepanther", base_url=server.base_url, api_key=REVIEW_KEY,
                  static_token=token)
    return Firm("practicepanther", firm, state, matter, user, Decimal("410.00"))


async def _timesolv(stack: LocalStack, servers: list) -> Firm:
    state = FakeTimeSolvState()
    server = FakeTimeSolvServer(state).start()
    servers.append(server)
    firm = "firm-bs-timesolv"
    state.add_firm(firm)
    user = state.add_user(firm, first_name="Gus", last_name="Moreau", rate="250", tokens=["timesolv-token-bs"])
    client = state.add_contact(firm, name="Fernwood Holdings", phones=["(617) 555-0177"])
    project = state.add_matter(firm, code="FERN-001", name="Fernwood lease", client_id=client)
    await onboard(stack, firm_id=firm, system="timesolv", base_url=server.base_url, api_key=REVIEW_KEY,
                  static_token="timesolv-token-bs")
    return Firm("timesolv", firm, state, str(project), str(user), Decimal("262.75"))


async def _smokeball(stack: LocalStack, servers: list) -> Firm:
    state = FakeSmokeballState(api_key="smokeball-api-key-bs", client_id="calltime-sb", client_secret="sb-secret",
                               redirect_uri="https://calltime.example/oauth/smokeball")
    server = FakeSmokeballServer(state).start()
    servers.append(server)
    # Accepted fees surface a moment after the 202: the writer must confirm before it reports written.
    state.set_faults(processing_delay_seconds=1.5)
    firm = "firm-bs-smokeball"
    state.add_firm(firm)
    staff = state.add_user(firm, first_name="Ruth", last_name="Abbey", rate="380")
    contact = state.add_contact(firm, first_name="Omar", last_name="Haddad", phone=("02", "9555 0100"))
    matter = state.add_matter(firm, number="SB-0007", title="Haddad conveyance", client_ids=[contact])
    code = state.issue_code(firm, staff)
    grant = await exchange_code(server.token_url, {
        "grant_type": "authorization_code", "code": code, "redirect_uri": "https://calltime.example/oauth/smokeball",
    }, basic=("calltime-sb", "sb-secret"))
    # A stale access token that has not reached its expiry: the first request gets 401 and the writer refreshes.
    tokens = OAuthGrant(access_token="stale-smokeball-access-token", refresh_token=grant["refresh_token"],
                        expires_at=None, client_id="calltime-sb", client_secret="sb-secret",
                        token_url=server.token_url, client_auth="basic", api_key="smokeball-api-key-bs")
    await onboard(stack, firm_id=firm, system="smokeball", base_url=server.base_url, api_key=REVIEW_KEY,
                  oauth=tokens)
    return Firm("smokeball", firm, state, matter, staff, Decimal("380.00"),
                original_tokens={"access_token": "stale-smokeball-access-token",
                                 "refresh_token": grant["refresh_token"]})


@pytest.fixture(scope="module")
async def systems(infrastructure, tmp_path_factory):
    stack = LocalStack(infrastructure["database"], infrastructure["kafka"], tmp_path_factory.mktemp("billing-systems"))
    await stack.create_database()
    servers: list = []
    try:
        firms = {}
        for build in (_clio, _mycase, _practicepanther, _timesolv, _smokeball):
            firm = await build(stack, servers)
            firms[firm.system] = firm
        # Static tokens are in the stack's environment now, so the writer starts with them.
        await stack.start_services(("billing-writer",))
        yield Systems(stack, firms)
    finally:
        stack.stop_services()
        for server in servers:
            server.stop()
        await stack.drop_database()


@pytest.mark.parametrize("system", list(MINUTES))
async def test_one_approval_becomes_exactly_one_entry_in_the_firms_billing_system(systems, system):
    firm = systems.firms[system]
    approved = approval(firm.firm_id, matter_id=firm.matter_id, user_id=firm.user_id,
                        minutes=MINUTES[system], rate=firm.rate)
    await publish(systems.stack, [approved])

    async def written_row():
        rows = await ledger_rows(systems.stack, [firm.firm_id])
        return next((r for r in rows if r["draft_id"] == approved.draft_id and r["state"] == "written"), None)

    row = await eventually(written_row, timeout=120, what=f"the {system} ledger row to say written")
    mine = [e for draft, e in system_entries(system, firm.state, firm.firm_id) if draft == approved.draft_id]
    assert len(mine) == 1, f"{system} holds {len(mine)} entries for the draft: {mine}"
    assert len(system_entries(system, firm.state, firm.firm_id)) == 1
    matter, user, entry_date, quantity, rate = written_terms(system, mine[0])
    assert (matter, user, entry_date) == (firm.matter_id, firm.user_id, approved.entry_date.isoformat())
    assert quantity == expected_quantity(system, approved.billed_hours)
    assert type(quantity) is not float and Decimal(quantity) == expected_quantity(system, approved.billed_hours)
    assert rate == firm.rate
    assert row["entry_id"] == entry_id(system, mine[0])

    async def announced():
        events = [e for e in await entry_written_events(systems.stack) if e.draft_id == approved.draft_id]
        return events or None

    events = await eventually(announced, timeout=60, what="entry.written for the draft")
    assert len(events) == 1
    event = events[0]
    assert (event.billing_system, event.entry_id, event.firm_id) == (system, entry_id(system, mine[0]), firm.firm_id)
    assert event.billed_seconds == MINUTES[system] * 60
    assert event.amount == approved.amount and event.rate == firm.rate

    if firm.original_tokens is not None:
        # The writer's OAuthSession obtained fresh tokens at the fake's token endpoint and sealed them.
        tokens, version = await stored_billing_tokens(systems.stack, firm.firm_id)
        assert version >= 2
        assert tokens["access_token"] != firm.original_tokens["access_token"]
        assert tokens["expires_at"] is not None and tokens["refresh_token"]
        if system == "mycase":
            assert tokens["refresh_token"] != firm.original_tokens["refresh_token"]  # MyCase rotates it
