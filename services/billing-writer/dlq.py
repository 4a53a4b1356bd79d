"""List, inspect and replay dead-lettered approvals, once their cause is fixed.

    python -m calltime.billing_writer.dlq list [--firm F]
    python -m calltime.billing_writer.dlq inspect DRAFT_ID
    python -m calltime.billing_writer.dlq replay (--draft D ... | --firm F | --all) [--wait 120]

The dead-letter topic `draft.approved.dlq` holds each parked approval with its reason; the
ledger says whether it was written since. Replay re-publishes the original approval to
`draft.approved`: the writer re-queues a dead draft and resumes it, looking in the billing
system before it writes, so a replay never bills twice. The progress display follows the
replayed drafts until each is written or dead again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from calltime import codec, db, topics
from calltime.kafka import REASON_HEADER, SOURCE_HEADER, Publisher
from calltime.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    firm_id: str
    draft_id: str
    call_id: str
    reason: str
    source: str
    offset: str  # partition/offset on the dead-letter topic
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    approval: Any


async def read_dead_letters(settings: Settings) -> list[DeadLetter]:
    """Every decodable approval on the dead-letter topic, latest per draft."""
    topic = settings.topic_prefix + topics.dead_letter(topics.DRAFT_APPROVED)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    found: dict[tuple[str, str], DeadLetter] = {}
    try:
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or
                                                         await _partitions(consumer, topic))]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while await _behind(consumer, partitions, ends):
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    letter = _letter(r)
                    if letter:
                        found[(letter.firm_id, letter.draft_id)] = letter
    finally:
        await consumer.stop()
    return list(found.values())


async def _behind(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict) -> bool:
    """Whether any partition is still short of the end offset it had when reading began."""
    for tp in partitions:
        if await consumer.position(tp) < ends[tp]:
            return True
    return False


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


def _letter(record) -> DeadLetter | None:
    headers = tuple((n, v or b"") for n, v in (record.headers or []))
    found = dict(headers)
    try:
        approval = codec.decode(record.value, headers)
    except codec.UndecodableMessage:
        return None  # not an approval: nothing a replay could do with it
    return DeadLetter(approval.firm_id, approval.draft_id, approval.call_id,
                      found.get(REASON_HEADER, b"").decode(errors="replace"),
                      found.get(SOURCE_HEADER, b"").decode(errors="replace"),
                      f"{record.partition}/{record.offset}", record.key, record.value, headers, approval)


async def ledger_states(pool: asyncpg.Pool, letters: list[DeadLetter]) -> dict[tuple[str, str], dict]:
    rows = await pool.fetch(
        "SELECT firm_id, draft_id, state, attempts, last_error, entry_id FROM writer.ledger"
        " WHERE (firm_id, draft_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [x.firm_id for x in letters], [x.draft_id for x in letters])
    return {(r["firm_id"], r["draft_id"]): dict(r) for r in rows}


def select(letters: list[DeadLetter], states: dict, args: argparse.Namespace) -> list[DeadLetter]:
    chosen = [x for x in letters if states.get((x.firm_id, x.draft_id), {}).get("state") != "written"]
    if getattr(args, "firm", None):
        chosen = [x for x in chosen if x.firm_id == args.firm]
    if getattr(args, "draft", None):
        chosen = [x for x in chosen if x.draft_id in set(args.draft)]
    return chosen


async def replay(settings: Settings, pool: asyncpg.Pool, letters: list[DeadLetter], wait_seconds: float,
                 out=sys.stderr) -> dict[str, int]:
    publisher = Publisher(settings, "dlq-replay")
    await publisher.start()
    try:
        for letter in letters:
            headers = [(n, v) for n, v in letter.headers if n not in (REASON_HEADER, SOURCE_HEADER)]
            await publisher.send_raw(topics.DRAFT_APPROVED, letter.key, letter.value, headers)
    finally:
        await publisher.stop()
    return await follow(pool, letters, wait_seconds, out)


async def follow(pool: asyncpg.Pool, letters: list[DeadLetter], wait_seconds: float, out) -> dict[str, int]:
    """Progress until every replayed draft is written or dead again (or the wait runs out)."""
    started = time.monotonic()
    counts: dict[str, int] = {}
    while True:
        await asyncio.sleep(0.5)
        states = await ledger_states(pool, letters)
        counts = {"written": 0, "dead": 0, "pending": 0}
        for letter in letters:
            state = states.get((letter.firm_id, letter.draft_id), {}).get("state")
            counts["written" if state == "written" else "pending" if state == "intent" else "dead"] += 1
        # A dead row is only final once the writer has picked the replay up (state moves to intent).
        elapsed = time.monotonic() - started
        _show(out, len(letters), counts, elapsed)
        if counts["written"] == len(letters) or elapsed > wait_seconds or (
                counts["pending"] == 0 and elapsed > 5.0):
            if out.isatty():
                out.write("\n")  # end the line the bar was redrawn on; piped output has one line per poll
            return counts


def _show(out, total: int, counts: dict[str, int], elapsed: float) -> None:
    done = counts["written"]
    bar = "#" * int(30 * done / max(total, 1))
    line = (f"[{bar:<30}] {done}/{total} written · {counts['pending']} pending · {counts['dead']} dead"
            f" · {elapsed:.1f}s")
    out.write(("\r" + line) if out.isatty() else line + "\n")
    out.flush()


async def _main(args: argparse.Namespace) -> int:
    settings = Settings()
    pool = await db.create_pool(settings.database_url, max_size=2)
    try:
        letters = await read_dead_letters(settings)
        states = await ledger_states(pool, letters)
        if args.command == "inspect":
            matches = [x for x in letters if x.draft_id == args.draft_id]
            if not matches:
                print(f"error: no dead-lettered approval for draft {args.draft_id}", file=sys.stderr)
                return 2
            x = matches[-1]
            state = states.get((x.firm_id, x.draft_id), {})
            print(f"draft {x.draft_id} (firm {x.firm_id}, call {x.call_id}) at {x.offset}\n"
                  f"  reason:  {x.reason}\n  source:  {x.source}\n"
                  f"  ledger:  {state.get('state', 'none')}, {state.get('attempts', 0)} attempts,"
                  f" last error: {state.get('last_error')}\n"
                  f"  entry:   matter {x.approval.matter_id}, user {x.approval.attorney_user_id},"
                  f" {x.approval.entry_date}, {x.approval.billed_hours} h at {x.approval.rate}"
                  f" {x.approval.currency}\n  narrative: {x.approval.narrative}")
            return 0
        chosen = select(letters, states, args)
        if args.command == "list":
            for x in chosen:
                print(f"{x.firm_id}\t{x.draft_id}\t{x.call_id}\t{x.reason}")
            print(f"{len(chosen)} dead-lettered approvals not yet written", file=sys.stderr)
            return 0
        if not chosen:
            print("nothing to replay", file=sys.stderr)
            return 0
        counts = await replay(settings, pool, chosen, args.wait)
        print(f"replayed {len(chosen)}: {counts['written']} written, {counts['dead']} dead again,"
              f" {counts['pending']} still pending")
        return 0 if counts["written"] == len(chosen) else 1
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calltime.billing_writer.dlq",
                                     description="Dead-lettered approvals: list, inspect, replay.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="approvals parked and not written since")
    listing.add_argument("--firm")
    inspect = commands.add_parser("inspect", help="one approval, its reason and ledger row")
    inspect.add_argument("draft_id")
    again = commands.add_parser("replay", help="re-publish parked approvals and follow them")
    scope = again.add_mutually_exclusive_group(required=True)
    scope.add_argument("--draft", action="append")
    scope.add_argument("--firm")
    scope.add_argument("--all", action="store_true")
    again.add_argument("--wait", type=float, default=120.0, help="seconds to follow the replay")
    args = parser.parse_args(argv)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
