"""The billing writer's exactly-once rules on the real database against the fake Clio over HTTP:
concurrent writers, a permanent failure and its replay."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from calltime import db
from calltime.billing.clio import ClioClient
from calltime.billing_writer.writing import WriteInProgress, write_approved
from calltime.events import DraftApproved
from calltime.fakes.clio import FakeClioServer, FakeClioState
from calltime.kafka import PermanentFailure

FIRM = "firm-writer"


@pytest.fixture
async def clio_and_pool(stack):
    clio = FakeClioState(rate_limit=10_000)
    clio.add_firm(FIRM, "Writer & Co")
    user = clio.add_user(FIRM, name="Ada Counsel", rate=Decimal("300"), tokens=["writer-token"])
    client = clio.add_contact(FIRM, name="Client", is_client=True)
    matter = clio.add_matter(FIRM, display_number="00001", client_id=client)
    pool = await db.create_pool(stack.database_url)
    with FakeClioServer(clio) as server:
        yield clio, server, pool, str(user), str(matter)
    await pool.close()


def approval(user: str, matter: str) -> DraftApproved:
    now = datetime(2026, 11, 24, 15, 0, tzinfo=timezone.utc)
    return DraftApproved(
        event_id=str(uuid.uuid4()), firm_id=FIRM, call_id=f"ringcentral:s-{uuid.uuid4().hex}",
        draft_id=str(uuid.uuid4()), attorney_user_id=user, approved_by=user, approved_at=now,
        matter_id=matter, entry_date=date(2026, 11, 24), raw_seconds=1320,
        billed_hours=Decimal("0.4"), rate=Decimal("300.00"), amount=Decimal("120.00"),
        currency="USD", activity_code="Telephone Conference", narrative="Call re: lease",
        call_started_at=now, external_number_e164="+14155550142", edited_fields=())


def time_entries(clio: FakeClioState, draft_id: str) -> list[dict]:
    linked = {c["id"] for c in clio.communications(FIRM)
              if {"name": "calltime_draft_id", "value": draft_id} in c["external_properties"]}
    return [a for a in clio.activities(FIRM) if a["communication_id"] in linked]


async def test_two_writers_on_one_approval_write_one_entry(clio_and_pool):
    clio, server, pool, user, matter = clio_and_pool
    approved = approval(user, matter)
    clio.set_faults(delay_after_commit_seconds=1.0)
    try:
        async with ClioClient(server.base_url, "writer-token") as first, \
                ClioClient(server.base_url, "writer-token") as second:
            slow = asyncio.create_task(write_approved(pool, first, "clio", approved))
            await asyncio.sleep(0.3)
            with pytest.raises(WriteInProgress):
                await write_approved(pool, second, "clio", approved)
            written = await slow
            again = await write_approved(pool, second, "clio", approved)
    finally:
        clio.set_faults(delay_after_commit_seconds=0)
    assert again.entry_id == written.entry_id
    assert [str(a["id"]) for a in time_entries(clio, approved.draft_id)] == [written.entry_id]
    assert written.billed_seconds == 1440 and written.amount == Decimal("120.00")


async def test_a_permanent_failure_parks_the_approval_and_its_replay_writes_it_once(clio_and_pool):
    clio, server, pool, user, matter = clio_and_pool
    approved = approval(user, matter)
    clio.revoke_token("writer-token")
    async with ClioClient(server.base_url, "writer-token") as client:
        with pytest.raises(PermanentFailure, match="refused"):
            await write_approved(pool, client, "clio", approved)
    state = await pool.fetchval("SELECT state FROM writer.ledger WHERE draft_id = $1",
                                approved.draft_id)
    assert state == "dead" and time_entries(clio, approved.draft_id) == []

    clio.add_token(FIRM, "writer-token", int(user))  # the firm re-authorises calltime
    async with ClioClient(server.base_url, "writer-token") as client:
        written = await write_approved(pool, client, "clio", approved)
        replayed = await write_approved(pool, client, "clio", approved)
    assert replayed.entry_id == written.entry_id
    assert len(time_entries(clio, approved.draft_id)) == 1
