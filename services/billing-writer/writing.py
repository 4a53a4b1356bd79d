"""Writing one approved draft into the firm's billing system, exactly once.

1. The ledger row for the draft is created (or found). Written and announced already? Done.
2. The attempt is recorded and committed *before* the request goes out.
3. If an earlier attempt may have landed, the adapter looks the entry up before writing.
4. The billing system's ids are recorded, then `entry.written` is published, then the row is
   marked written. A row with ids but not yet marked skips straight to the announcement.

A crash anywhere leaves the row queued; its next run converges on one entry, announced at least once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from calltime import metrics
from calltime.billing.errors import ApiVersionMismatch, PermanentBillingError
from calltime.billing.model import TimeEntryRequest
from calltime.billing.port import BillingSystem
from calltime.billing_writer import ledger
from calltime.units import hours_to_seconds
from calltime.events import DraftApproved, EntryWritten
from calltime.kafka import PermanentFailure

SERVICE = "billing-writer"
log = logging.getLogger(__name__)


def entry_request(approved: DraftApproved) -> TimeEntryRequest:
    return TimeEntryRequest(
        draft_id=approved.draft_id, call_id=approved.call_id, matter_id=approved.matter_id,
        user_id=approved.attorney_user_id, entry_date=approved.entry_date,
        billed_seconds=hours_to_seconds(approved.billed_hours), rate=approved.rate,
        narrative=approved.narrative, call_started_at=approved.call_started_at,
        external_number=approved.external_number_e164)


def entry_written(approved: DraftApproved, system: str, row: ledger.LedgerRow) -> EntryWritten:
    return EntryWritten(
        event_id=str(uuid.uuid4()), firm_id=approved.firm_id, call_id=approved.call_id,
        draft_id=approved.draft_id, billing_system=system, entry_id=row.entry_id,
        communication_id=row.communication_id, matter_id=approved.matter_id,
        user_id=approved.attorney_user_id, entry_date=approved.entry_date,
        billed_seconds=hours_to_seconds(approved.billed_hours), billed_hours=approved.billed_hours,
        rate=approved.rate, amount=approved.amount, currency=approved.currency,
        written_at=row.written_at or datetime.now(timezone.utc))


class WriteInProgress(Exception):
    """Another writer holds this draft right now (a rebalance mid-request); try again later."""


async def write_approved(pool, billing: BillingSystem, system: str, approved: DraftApproved,
                         announce: Callable[[EntryWritten], Awaitable[None]] | None = None) -> EntryWritten:
    """Write the draft's entry once; `announce` (publishing `entry.written`) runs before the row
    is marked written, still under the draft's lock, so a crash in between announces again."""
    key = (approved.firm_id, approved.draft_id)
    async with pool.acquire() as conn:
        if not await ledger.try_lock(conn, *key):
            raise WriteInProgress(f"draft {approved.draft_id} is being written elsewhere")
        try:
            row = await _write_once(conn, billing, system, approved)
            written = entry_written(approved, system, row)
            if row.state != "written":
                if announce is not None:
                    await announce(written)
                await ledger.mark_written(conn, *key)
        finally:
            await ledger.unlock(conn, *key)
    return written


async def _write_once(conn, billing: BillingSystem, system: str,
                      approved: DraftApproved) -> ledger.LedgerRow:
    key = (approved.firm_id, approved.draft_id)
    row = await ledger.begin(conn, *key, approved.call_id, system)
    if row.state == "written" or row.entry_id is not None:
        # In the billing system already: at most the announcement is left to do.
        metrics.OUTCOMES.labels(SERVICE, "entry", "already_written").inc()
        return row
    # A dead row comes back through a replay: it resumes, looking before it writes.
    await ledger.mark_attempt(conn, *key)
    try:
        written = await billing.write_entry(entry_request(approved),
                                            resume=row.attempted or row.state == "dead")
    except ApiVersionMismatch as exc:
        # The record may exist in the wrong unit: a person must look, the row stays resumable.
        reason = f"{system} answered under another API version; record {exc.resource_id}: {exc}"
        await ledger.mark_failed(conn, *key, reason, permanent=False)
        log.error("billing API version mismatch", extra={"resource_id": exc.resource_id})
        raise PermanentFailure(reason) from exc
    except PermanentBillingError as exc:
        await ledger.mark_failed(conn, *key, str(exc), permanent=True)
        metrics.OUTCOMES.labels(SERVICE, "entry", "rejected").inc()
        raise PermanentFailure(f"{system} refused the entry: {exc}") from exc
    except Exception as exc:
        await ledger.mark_failed(conn, *key, repr(exc), permanent=False)
        raise
    row = await ledger.record_entry(conn, *key, written)
    metrics.OUTCOMES.labels(SERVICE, "entry", "written").inc()
    log.info("entry written", extra={"entry_id": written.entry_id, "resumed": row.attempts > 1})
    return row
