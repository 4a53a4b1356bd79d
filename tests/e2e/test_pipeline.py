"""End to end on the real broker and database, the four services as real processes: a RingCentral
call becomes exactly one Clio activity."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg
import httpx

from calltime import topics
from calltime.demo.watch import eventually, read_topic
from calltime.fakes.ringcentral import CallSpec, RingCentralSimulator, notifications_for
from calltime.ingest.domain import call_id_for


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
            f"{p.stack.url('matcher')}/firms/{p.firm.firm_id}/directory/sync", timeout=30,
            headers={"Authorization": f"Bearer {p.firm.api_key}"})
    response.raise_for_status()
    return response.json()


async def draft_for(p, call_id: str) -> dict | None:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{p.stack.url('drafts')}/firms/{p.firm.firm_id}/drafts",
            headers={"Authorization": f"Bearer {p.firm.api_key}"})
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
    call_id = call_id_for("ringcentral", spec.telephony_session_id)
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


async def approved_draft(p, spec: CallSpec) -> dict:
    call_id = call_id_for("ringcentral", spec.telephony_session_id)
    async with RingCentralSimulator(webhook_url(p), p.firm.ringcentral_verification_token) as rc:
        await rc.place_call(spec)
    return await eventually(lambda: draft_for(p, call_id), what="the draft")


async def ledger_row(p, draft_id: str):
    conn = await asyncpg.connect(p.stack.database_url)
    try:
        return await conn.fetchrow("SELECT * FROM writer.ledger WHERE firm_id = $1 AND draft_id = $2",
                                   p.firm.firm_id, draft_id)
    finally:
        await conn.close()


async def test_writer_killed_between_clio_post_and_its_commit_still_leaves_one_activity(pipeline):
    p = pipeline
    await sync_directory(p)
    spec = client_call(p, started_at=datetime(2026, 11, 20, 17, 0, tzinfo=timezone.utc),
                       talk_seconds=7 * 60)
    draft = await approved_draft(p, spec)
    # Clio commits the TimeEntry, then holds its answer: the writer is mid-request when killed.
    p.clio.set_faults(delay_after_commit_seconds=60)
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.post(draft["approve_url"])).status_code == 200
        await eventually(lambda: _one_activity(p, draft["draft_id"]), what="the committed POST")
        p.stack.services["billing-writer"].kill()
    finally:
        p.clio.set_faults(delay_after_commit_seconds=0)
    row = await ledger_row(p, draft["draft_id"])
    assert row["state"] == "intent" and row["entry_attempted"]

    await p.stack.restart("billing-writer")
    row = await eventually(lambda: _written(p, draft["draft_id"]), what="the ledger to say written")
    assert row["attempts"] == 2
    assert len(activities_for(p, draft["draft_id"])) == 1
    entries = await read_topic(p.stack.kafka_bootstrap, p.stack.topic_prefix + topics.ENTRY_WRITTEN)
    assert [e.entry_id for e in entries if e.draft_id == draft["draft_id"]] == [row["entry_id"]]


async def _written(p, draft_id: str):
    row = await ledger_row(p, draft_id)
    return row if row and row["state"] == "written" else None


async def test_forged_malformed_and_oversized_webhooks_are_refused_and_publish_nothing(pipeline):
    p = pipeline
    spec = client_call(p, started_at=datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc),
                       talk_seconds=300)
    async with RingCentralSimulator(webhook_url(p), "not-the-firm-token") as forger:
        forged = await forger.place_call(spec)
    assert {r.status_code for r in forged} == {401}

    good_headers = {"Verification-Token": p.firm.ringcentral_verification_token,
                    "Content-Type": "application/json"}
    async with httpx.AsyncClient() as http:
        not_json = await http.post(webhook_url(p), content=b"{not json", headers=good_headers)
        wrong_shape = await http.post(webhook_url(p), content=b"[1, 2]", headers=good_headers)
        oversized = await http.post(webhook_url(p), content=b"{" + b" " * 200_000 + b"}",
                                    headers=good_headers)
        other_firm = await http.post(webhook_url(p).replace(p.firm.firm_id, "no-such-firm"),
                                     content=b"{}", headers=good_headers)
        health = await http.get(f"{p.stack.url('ingest')}/healthz")
    assert not_json.status_code == 400 and "JSON" in not_json.json()["detail"]
    assert wrong_shape.status_code == 400 and wrong_shape.json()["detail"]
    assert oversized.status_code == 413
    assert other_firm.status_code == 404
    assert health.status_code == 200

    call_id = call_id_for("ringcentral", spec.telephony_session_id)
    ended = await read_topic(p.stack.kafka_bootstrap, p.stack.topic_prefix + topics.CALL_ENDED)
    assert [e for e in ended if e.call_id == call_id] == []
    conn = await asyncpg.connect(p.stack.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM ingest.notices WHERE provider = 'ringcentral' AND provider_call_id = $1",
            spec.telephony_session_id)
    finally:
        await conn.close()
    assert stored == 0


def metric_value(exposition: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in exposition.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{wanted}}}")


async def test_every_service_is_healthy_ready_and_counts_its_work(pipeline):
    p = pipeline
    await sync_directory(p)
    spec = client_call(p, started_at=datetime(2026, 11, 22, 16, 0, tzinfo=timezone.utc),
                       talk_seconds=600)
    await approved_draft(p, spec)
    async with httpx.AsyncClient() as http:
        forged = await http.post(webhook_url(p), content=b"{}",
                                 headers={"Verification-Token": "forged"})
        assert forged.status_code == 401
        for name in ("ingest", "matcher", "drafts", "billing-writer"):
            base = p.stack.url(name)
            assert (await http.get(f"{base}/healthz")).status_code == 200
            ready = await http.get(f"{base}/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["database"] is True
        ingest = (await http.get(f"{p.stack.url('ingest')}/metrics")).text
        matcher = (await http.get(f"{p.stack.url('matcher')}/metrics")).text
    assert metric_value(ingest, "calltime_events_published_total",
                        service="ingest", topic="call.ended") >= 1
    assert metric_value(ingest, "calltime_http_rejections_total", service="ingest",
                        route="webhooks", status="401") >= 1
    assert metric_value(matcher, "calltime_outcomes_total", service="matcher", kind="match",
                        outcome="single_matter") >= 1


async def test_hang_up_delivered_before_the_answer_is_revised_into_the_right_draft(pipeline):
    p = pipeline
    await sync_directory(p)
    spec = client_call(p, started_at=datetime(2026, 11, 23, 18, 0, tzinfo=timezone.utc),
                       talk_seconds=17 * 60)
    call_id = call_id_for("ringcentral", spec.telephony_session_id)
    envelopes = notifications_for(spec, "sub-e2e")
    answered = [e for e in envelopes if e["body"]["parties"][0]["status"]["code"] == "Answered"]
    async with RingCentralSimulator(webhook_url(p), p.firm.ringcentral_verification_token) as rc:
        for envelope in [e for e in envelopes if e not in answered]:
            assert (await rc.send(envelope)).status_code == 200
        await eventually(lambda: _ended_revisions(p, call_id), what="revision 1")
        statuses = [(await rc.send(e)).json()["status"] for e in answered]
    assert statuses == ["call-revised-2"]
    assert await eventually(lambda: _ended_revisions(p, call_id, 2), what="revision 2") == [
        (1, 0, "missed"), (2, 17 * 60, "answered")]
    draft = await eventually(lambda: draft_for(p, call_id), what="the revised draft")
    assert (draft["revision"], draft["raw_seconds"], draft["billed_hours"]) == (2, 1020, "0.3")


async def _ended_revisions(p, call_id: str, at_least: int = 1):
    ended = await read_topic(p.stack.kafka_bootstrap, p.stack.topic_prefix + topics.CALL_ENDED,
                             idle_seconds=0.5)
    found = sorted((e.revision, e.duration_seconds, e.result) for e in ended if e.call_id == call_id)
    return found if len(found) >= at_least else None


async def test_call_on_an_extension_nobody_mapped_still_becomes_a_flagged_draft(pipeline):
    p = pipeline
    spec = client_call(p, started_at=datetime(2026, 11, 23, 20, 0, tzinfo=timezone.utc),
                       talk_seconds=240)
    spec = dataclasses.replace(spec, extension_id="62199999")
    async with RingCentralSimulator(webhook_url(p), p.firm.ringcentral_verification_token) as rc:
        await rc.place_call(spec)
    call_id = call_id_for("ringcentral", spec.telephony_session_id)
    draft = await eventually(lambda: draft_for(p, call_id), what="the draft")
    assert draft["attorney_user_id"] is None
    assert "no attorney mapped to the phone user" in draft["flags"]


async def test_unstorable_and_streamed_oversized_input_is_refused_not_crashed(pipeline):
    p = pipeline
    token = {"Verification-Token": p.firm.ringcentral_verification_token}

    async def chunks():
        for _ in range(100):
            yield b" " * 1024

    async with httpx.AsyncClient() as http:
        nul_firm = await http.post(webhook_url(p).replace(p.firm.firm_id, "a%00b"),
                                   content=b"{}", headers=token)
        streamed = await http.post(webhook_url(p), content=chunks(), headers=token)
        nul_drafts = await http.get(f"{p.stack.url('drafts')}/firms/a%00b/drafts",
                                    headers={"Authorization": "Bearer x"})
        alive = await http.get(f"{p.stack.url('ingest')}/healthz")
    assert nul_firm.status_code == 400
    assert streamed.status_code == 413
    assert nul_drafts.status_code in (400, 401)
    assert alive.status_code == 200
