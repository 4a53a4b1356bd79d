"""End to end on the real broker and database, the four services as real processes: a RingCentral
call becomes exactly one Clio activity."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import httpx

from calltime import topics
from calltime.fakes.ringcentral import CallSpec, RingCentralSimulator
from pipeline_support import eventually, read_topic


def webhook_url(p) -> str:
    return f"{p.stack.url('ingest')}/webhooks/ringcentral/{p.firm.firm_id}"


def client_call(p, *, started_at: datetime, talk_seconds: int) -> CallSpec:
    (extension, _user), = p.firm.extensions.items()
    return CallSpec(account_id=p.firm.ringcentral_account_id, extension_id=extension,
                    external_number=p.client_number, direction="inbound",
                    started_at=started_at, talk_seconds=talk_seconds)


async def sync_directory(p) -> dict:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{p.stack.url('matcher')}/firms/{p.firm.firm_id}/directory/sync", timeout=30)
    response.raise_for_status()
    return response.json()


async def draft_for(p, call_id: str) -> dict | None:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{p.stack.url('drafts')}/firms/{p.firm.firm_id}/drafts",
            headers={"Authorization": f"Bearer {p.firm.review_api_key}"})
    response.raise_for_status()
    return next((d for d in response.json() if d["call_id"] == call_id), None)


def activities_for(p, draft_id: str) -> list[dict]:
    communications = {c["id"] for c in p.clio.communications(p.firm.firm_id)
                      if {"name": "calltime_draft_id", "value": draft_id}
                      in c["external_properties"]}
    return [a for a in p.clio.activities(p.firm.firm_id)
            if a["communication_id"] in communications]


async def test_signed_webhook_redelivered_three_times_ends_as_one_clio_activity(pipeline):
    p = pipeline
    await sync_directory(p)
    # 23:50 in Los Angeles on 26 November is already 27 November in UTC.
    spec = client_call(p, started_at=datetime(2026, 11, 27, 7, 50, tzinfo=timezone.utc),
                       talk_seconds=22 * 60)
    call_id = f"ringcentral:{spec.telephony_session_id}"
    async with RingCentralSimulator(webhook_url(p), p.firm.ringcentral_verification_token) as rc:
        assert await rc.validate()
        responses = await rc.place_call(spec, duplicate_each=3)
    assert all(r.status_code == 200 for r in responses)

    draft = await eventually(lambda: draft_for(p, call_id), what="the draft")
    assert draft["billed_hours"] == "0.4" or Decimal(str(draft["billed_hours"])) == Decimal("0.4")
    async with httpx.AsyncClient() as http:
        approved = await http.post(draft["approve_url"])
        again = await http.post(draft["approve_url"])
    assert approved.status_code == 200, approved.text
    assert again.status_code == 409

    written = await eventually(lambda: _one_activity(p, draft["draft_id"]), timeout=60,
                               what="the Clio activity")
    assert written["matter_id"] == int(p.matter_id)
    assert written["user_id"] == int(p.attorney_id)
    assert written["date"] == "2026-11-26"
    assert written["quantity"] == 1440
    assert Decimal(str(written["price"])) == Decimal("350.00")

    entries = await read_topic(p.stack.kafka_bootstrap,
                               p.stack.topic_prefix + topics.ENTRY_WRITTEN)
    mine = [e for e in entries if e.call_id == call_id]
    assert len(mine) == 1
    assert mine[0].amount == Decimal("140.00")
    ended = await read_topic(p.stack.kafka_bootstrap, p.stack.topic_prefix + topics.CALL_ENDED)
    assert [e.duration_seconds for e in ended if e.call_id == call_id] == [22 * 60]
    assert len(activities_for(p, draft["draft_id"])) == 1


async def _one_activity(p, draft_id: str) -> dict | None:
    found = activities_for(p, draft_id)
    assert len(found) <= 1, f"duplicate Clio activities: {found}"
    return found[0] if found else None
