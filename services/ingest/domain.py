"""What ingest decides, as plain functions: a provider's finished call becomes one canonical
`CallEnded` with calltime's call id, and a fingerprint says whether a later notice changed it."""

from __future__ import annotations

import uuid
from datetime import datetime

from calltime.events import CallEnded
from calltime.ingest.providers.model import FinishedCall


def call_id_for(provider: str, provider_call_id: str) -> str:
    return f"{provider}:{provider_call_id}"


def fingerprint(finished: FinishedCall) -> str:
    """What a later notification may still change about a finished call."""
    return "|".join(str(v) for v in (finished.direction, finished.external_number_raw,
                                     finished.provider_user_id, finished.started_at.isoformat(),
                                     finished.ended_at.isoformat(), finished.duration_seconds,
                                     finished.result))


def call_ended(finished: FinishedCall, *, firm_id: str, provider: str,
               attorney_user_id: str | None, received_at: datetime) -> CallEnded:
    """The first report of a call; the store numbers later revisions."""
    return CallEnded(
        event_id=str(uuid.uuid4()),
        firm_id=firm_id,
        call_id=call_id_for(provider, finished.provider_call_id),
        revision=1,
        provider=provider,
        provider_call_id=finished.provider_call_id,
        direction=finished.direction,
        external_number_e164=finished.external_number_e164,
        external_number_raw=finished.external_number_raw,
        internal_number=finished.internal_number,
        provider_user_id=finished.provider_user_id,
        attorney_user_id=attorney_user_id,
        started_at=finished.started_at,
        ended_at=finished.ended_at,
        duration_seconds=finished.duration_seconds,
        result=finished.result,
        received_at=received_at,
    )
