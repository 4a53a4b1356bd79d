"""Webhook latency at the door: p50/p99 of `POST /webhooks/ringcentral/{firm}` answered 2xx only
after the notification is durably in PostgreSQL, at several fixed rates.

    python -m bench.webhook_latency --rates 100,250,500 --seconds 10

Runs the real ingest service (its own process, `python -m calltime.ingest`) on the devstack's
Kafka and PostgreSQL (or CALLTIME_KAFKA_BOOTSTRAP / CALLTIME_DATABASE_URL), with a private
database and topic prefix. The load is RingCentral's own traffic: the telephony-session
notifications of distinct calls (about 5 per call, the last one completing the call and
queueing its `call.ended`), signed with the firm's verification token, sent open-loop by
`bench.loadgen` over keep-alive connections. Target (issue 3): p99 <= 50 ms at 500/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench import loadgen
from calltime.demo.stack import FirmSetup, LocalStack, register_firm
from calltime.fakes.ringcentral import CallSpec, notifications_for

TOKEN = "bench-verification-token"
ACCOUNT = "400900"


def deliveries(firm_id: str, count: int) -> list[tuple[str, dict[str, str], bytes]]:
    """`count` notifications of distinct calls, interleaved as concurrent calls would be."""
    calls: list[list[bytes]] = []
    started = datetime.now(timezone.utc) - timedelta(hours=1)
    total = 0
    i = 0
    while total < count:
        spec = CallSpec(account_id=ACCOUNT, extension_id=f"4009{i % 40:05d}", started_at=started + timedelta(seconds=i),
                        outcome=("answered", "answered", "missed", "voicemail")[i % 4],
                        external_number=f"+1212555{i % 10000:04d}", talk_seconds=60 + i % 600)
        bodies = [json.dumps(n).encode() for n in notifications_for(spec, "bench-subscription")]
        calls.append(bodies)
        total += len(bodies)
        i += 1
    headers = {"Content-Type": "application/json", "Verification-Token": TOKEN}
    path = f"/webhooks/ringcentral/{firm_id}"
    interleaved: list[tuple[str, dict[str, str], bytes]] = []
    window = 50  # calls in flight at once
    for start in range(0, len(calls), window):
        group = calls[start:start + window]
        for step in range(max(len(c) for c in group)):
            interleaved += [(path, headers, c[step]) for c in group if step < len(c)]
    return interleaved[:count]


async def intake_share(url: str) -> str:
    """From the service's own histogram: the share of intakes done within each bucket, which
    separates time in the database transaction from queueing on a busy machine."""
    import httpx

    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    buckets = {}
    for line in text.splitlines():
        if line.startswith('calltime_stage_seconds_bucket{') and 'stage="webhook-intake:ringcentral"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    total = buckets.get("+Inf", 0.0) or 1.0
    return ", ".join(f"<= {float(le) * 1000:g} ms {count / total:.2%}" for le, count in buckets.items()
                     if le in ("0.005", "0.01", "0.025", "0.05", "0.1"))


async def main(rates: list[int], seconds: float) -> None:
    kafka = os.environ.get("CALLTIME_KAFKA_BOOTSTRAP", "127.0.0.1:29092")
    database = os.environ.get("CALLTIME_DATABASE_URL", "postgresql://calltime@127.0.0.1:25432/postgres")
    stack = LocalStack(database, kafka, Path(tempfile.mkdtemp(prefix="bench-webhooks-")),
                       extra_env={"CALLTIME_LOG_LEVEL": "WARNING"})
    await stack.create_database()
    try:
        firm = FirmSetup(firm_id="bench-firm", name="Bench LLP", clio_base_url="http://127.0.0.1:9",
                         clio_token="unused", ringcentral_account_id=ACCOUNT,
                         ringcentral_verification_token=TOKEN, api_key="bench-key",
                         extensions={f"4009{i:05d}": f"user-{i}" for i in range(40)})
        await register_firm(stack, firm)
        ready = await stack.start_services(("ingest",))
        url = stack.url("ingest")
        print(f"ingest ready in {ready['ingest']:.1f} s at {url}")
        # Warm-up: connections, caches, the JIT-less interpreter's first paths.
        await loadgen.run(url, deliveries(firm.firm_id, 200)[:200], rate=100)
        print("rate/s  requests  p50 ms  p90 ms  p99 ms  max ms  2xx    non-2xx  errors  late-starts")
        for rate in rates:
            batch = deliveries(f"{firm.firm_id}", int(rate * seconds))
            # each rate gets fresh calls: distinct session ids come from CallSpec defaults
            outcome = await loadgen.run(url, batch, rate=rate)
            ok = sum(n for s, n in outcome.statuses.items() if 200 <= s < 300)
            print(f"{rate:6d}  {len(batch):8d}  {outcome.percentile(50):6.1f}  {outcome.percentile(90):6.1f}"
                  f"  {outcome.percentile(99):6.1f}  {max(outcome.latencies_ms):6.1f}  {ok:5d}"
                  f"  {len(batch) - ok - outcome.errors:7d}  {outcome.errors:6d}  {outcome.late_starts:5d}  {dict(outcome.statuses)}")
            await asyncio.sleep(2)
        print("server side, the intake transaction (cumulative, all rates):", await intake_share(url))
    finally:
        stack.stop_services()
        await stack.drop_database()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,250,500")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main([int(r) for r in args.rates.split(",")], args.seconds))
