"""Hostile input at every ingest endpoint, at full size: the generators of the CI fuzz test
(`tests/e2e/test_webhook_fuzz.py`, `bench.webhook_inputs`) with many more examples.

    python -m bench.fuzz_webhooks --examples 20000 [--seed N] [--keep-going]

Runs the real ingest service (its own process) on the devstack's Kafka and PostgreSQL (or
CALLTIME_KAFKA_BOOTSTRAP / CALLTIME_DATABASE_URL) with a private database and topic prefix, two
firms onboarded with all five providers and the providers' fake APIs. Prints the figures per
endpoint (inputs, 2xx, 4xx by status, 5xx, dropped connections) and what the service holds
afterwards; exits 1 on any 5xx, dropped connection, refusal with the wrong status, anything
stored or published from invalid input, an ill-formed announced call, a logged error, or a
control call not announced exactly once. Without --seed the run is derandomized (the same
inputs every time); --keep-going records failures instead of stopping to shrink the first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.webhook_inputs import (
    Sender,
    Tally,
    budget,
    fuzz_target,
    openapi_gaps,
    place_controls,
    run_plans,
    strategies,
    verify,
)


async def main(examples: int, seed: int | None, keep_going: bool) -> int:
    kafka = os.environ.get("CALLTIME_KAFKA_BOOTSTRAP", "127.0.0.1:29092")
    database = os.environ.get("CALLTIME_DATABASE_URL", "postgresql://calltime@127.0.0.1:25432/postgres")
    run_dir = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    started = time.monotonic()
    async with fuzz_target(database, kafka, run_dir) as target:
        print(f"ingest at {target.url}, logs in {run_dir}; {examples} requests"
              f" ({'seed ' + str(seed) if seed is not None else 'derandomized'})", flush=True)
        controls = await place_controls(target, "before")
        tally = Tally()
        failures: list[str] = []
        sender = Sender(target.url)
        try:
            for row, strategy in strategies(target.material).items():
                count = budget(examples)[row]
                before = tally.sent
                try:
                    await asyncio.to_thread(run_plans, sender, strategy, count, tally, seed=seed,
                                            stop_on_failure=not keep_going)
                except Exception as error:  # noqa: BLE001 - a failure, or hypothesis finding one flaky
                    failures.append(f"{row}: {type(error).__name__}: {error}")
                print(f"  {row:<12} {tally.sent - before:>6} requests, {tally.seconds:6.1f} s sending so far",
                      flush=True)
        finally:
            sender.close()
        controls |= await place_controls(target, "after")
        problems = failures + openapi_gaps(target) + await verify(target, tally, controls)
        print(f"\n{tally.sent} requests in {tally.seconds:.1f} s of sending"
              f" ({tally.sent / max(tally.seconds, 1e-9):.0f}/s), {time.monotonic() - started:.0f} s in all")
        print(tally.table())
        print("\ninputs by kind:")
        for row, kinds in tally.kinds.items():
            print(f"  {row:<12} " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))
        print("\nafterwards: " + ", ".join(f"{name} {value}" for name, value in tally.facts.items()))
        if problems:
            print(f"\nFAILED: {len(problems)} problems", file=sys.stderr)
            for problem in problems:
                print(f"- {problem[:2000]}", file=sys.stderr)
            return 1
        print("\nOK: no 5xx, no dropped connection, nothing stored or published from invalid input,"
              " every announced call well formed")
        return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="requests in all (default 20000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized)")
    parser.add_argument("--keep-going", action="store_true", help="record failures instead of shrinking the first")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.examples, args.seed, args.keep_going)))
