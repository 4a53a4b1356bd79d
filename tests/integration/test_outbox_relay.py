"""The outbox on the real database and broker: what is committed is published, in order, even when
Kafka was unavailable while it was committed."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone
from decimal import Decimal

import asyncpg

from calltime import db, outbox, topics
from calltime.demo.watch import eventually, read_topic
from calltime.events import DraftApproved
from calltime.kafka import Publisher, ensure_topics


def approval(firm_id: str, n: int) -> DraftApproved:
    now = datetime(2026, 11, 24, 15, 0, tzinfo=timezone.utc)
    return DraftApproved(
        event_id=str(uuid.uuid4()), firm_id=firm_id, call_id=f"ringcentral:s-{n % 5}",
        draft_id=str(uuid.uuid4()), attorney_user_id="7", approved_by="7", approved_at=now,
        matter_id="42", entry_date=date(2026, 11, 24), raw_seconds=1320,
        billed_hours=Decimal("0.4"), rate=Decimal("350.00"), amount=Decimal("140.00"),
        currency="USD", activity_code="Telephone Conference", narrative=f"call {n}",
        call_started_at=now, external_number_e164="+14155550142", edited_fields=())


class FlakyPublisher(Publisher):
    """A publisher whose broker is away for the first `outages` batches."""

    def __init__(self, *args, outages: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outages = outages

    async def send_batch(self, messages) -> None:
        if self.outages:
            self.outages -= 1
            raise ConnectionError("broker unavailable")
        await super().send_batch(messages)


async def test_approvals_committed_while_kafka_is_away_are_all_published_in_order(settings):
    await ensure_topics(settings)
    firm_id = f"firm-{uuid.uuid4().hex[:8]}"
    events = [approval(firm_id, n) for n in range(25)]
    pool = await db.create_pool(settings.database_url)
    try:
        async with pool.acquire() as conn:
            for event in events:
                async with conn.transaction():
                    await outbox.enqueue(conn, "drafts", event)
        publisher = FlakyPublisher(settings, "drafts", outages=3)
        await publisher.start()
        relay = outbox.OutboxRelay(pool, publisher, "drafts", poll_seconds=0.05)
        await relay.start()
        try:
            await eventually(lambda: _unpublished(pool, firm_id), every=0.1,
                             what="the outbox to drain")
        finally:
            await relay.stop()
            await publisher.stop()
    finally:
        await pool.close()
    published = [e for e in await read_topic(settings.kafka_bootstrap,
                                             settings.topic_prefix + topics.DRAFT_APPROVED)
                 if e.firm_id == firm_id]
    assert publisher.outages == 0
    assert sorted(e.draft_id for e in published) == sorted(e.draft_id for e in events)
    # one call's events share a key, hence a partition: they arrive in commit order
    same_call = [e.narrative for e in published if e.call_id == "ringcentral:s-2"]
    assert same_call == [f"call {n}" for n in range(2, 25, 5)]


async def _unpublished(pool: asyncpg.Pool, firm_id: str) -> bool:
    waiting = await pool.fetchval(
        "SELECT count(*) FROM drafts.outbox WHERE published_at IS NULL AND key LIKE $1",
        f"{firm_id}/%".encode())
    return waiting == 0
