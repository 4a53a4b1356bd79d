"""Directory sync from (fake) Clio over real HTTP into the real database, and the matcher's look-up
on what it wrote: a full paged sync of 5,000 contacts, then an incremental one that sees edits."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from calltime import db
from calltime.billing.clio import ClioClient
from calltime.fakes.clio import FakeClioServer, FakeClioState
from calltime.matcher import directory
from calltime.matcher.domain import MatchOutcome, decide
from calltime.matcher.sync import sync_firm

FIRM = "firm-sync"
YESTERDAY = datetime.now(timezone.utc) - timedelta(days=1)


async def outcome(pool, number: str) -> MatchOutcome:
    async with pool.acquire() as conn:
        return decide(await directory.lookup(conn, FIRM, number), direction="inbound").outcome


async def test_full_then_incremental_sync_follows_number_and_matter_changes(stack):
    clio = FakeClioState(rate_limit=10_000)
    clio.add_firm(FIRM, "Sync & Co")
    clio.add_user(FIRM, name="Ada Counsel", rate=Decimal("300"), time_zone="America/Chicago",
                  phone_number="+1 312 555 0100", tokens=["sync-token"])
    contacts = [clio.add_contact(FIRM, name=f"Client {n}", is_client=True,
                                 phone_numbers=[f"(312) 555-{2000 + n:04d}"], updated_at=YESTERDAY)
                for n in range(5000)]
    matter = clio.add_matter(FIRM, display_number="00007", description="Estate of Client 7",
                             client_id=contacts[7], updated_at=YESTERDAY)
    clio.add_matter(FIRM, display_number="00008", description="Client 8 lease", client_id=contacts[8],
                    updated_at=YESTERDAY)
    pool = await db.create_pool(stack.database_url)
    try:
        with FakeClioServer(clio) as server:
            async with ClioClient(server.base_url, "sync-token") as client:
                first = await sync_firm(pool, client, FIRM, "US")
                assert (first.users, first.contacts, first.matters, first.incremental) == (1, 5000, 2, False)
                assert await outcome(pool, "+13125552007") is MatchOutcome.SINGLE_MATTER
                assert await outcome(pool, "+13125552100") is MatchOutcome.CLIENT_NO_MATTER
                assert await outcome(pool, "+13125550100") is MatchOutcome.NON_CLIENT  # our own line
                assert await outcome(pool, "+13125559999") is MatchOutcome.UNKNOWN_NUMBER

                clio.update_contact(FIRM, contacts[8], phone_numbers=["312.555.7777"])
                clio.update_matter(FIRM, matter, status="Closed")
                second = await sync_firm(pool, client, FIRM, "US")
    finally:
        await pool.close()
    pool = await db.create_pool(stack.database_url)
    try:
        assert (second.incremental, second.contacts, second.matters) == (True, 1, 1)
        assert await outcome(pool, "+13125552008") is MatchOutcome.UNKNOWN_NUMBER  # old number gone
        assert await outcome(pool, "+13125557777") is MatchOutcome.SINGLE_MATTER
        assert await outcome(pool, "+13125552007") is MatchOutcome.INACTIVE_MATTER_ONLY
    finally:
        await pool.close()
