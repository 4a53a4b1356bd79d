"""Clio Manage webhooks (billing-apis.md §1.9): pure helpers to verify, parse and register subscriptions.

Nothing here does HTTP; `ClioClient` registers and renews webhooks, and a receiving endpoint calls
`handshake_secret`, `verify_signature` and `parse_event` on what Clio POSTs to it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

SIGNATURE_HEADER = "X-Hook-Signature"
SECRET_HEADER = "X-Hook-Secret"
DEFAULT_LIFETIME = timedelta(days=3)
MAX_LIFETIME = timedelta(days=31)
MAX_FIELDS_LENGTH = 1000
WEBHOOK_MODELS = frozenset({
    "activity", "bill", "calendar_entry", "clio_payments_payment", "communication", "contact", "document",
    "folder", "matter", "task",
})
BASE_EVENTS = frozenset({"created", "updated", "deleted"})
MATTER_EVENTS = BASE_EVENTS | {"matter_opened", "matter_pended", "matter_closed"}


class WebhookPayloadError(ValueError):
    """A webhook body that is not the documented {"data": {id, ...}, "meta": {event, webhook_id}} shape."""


@dataclass(frozen=True)
class ClioWebhookEvent:
    """One delivery. Clio's payload has no event id and no timestamp (§1.9): `occurred_at` is the record's
    `updated_at` when the subscription asked for that field, else None; deduplicate on (id, etag)."""

    webhook_id: int
    event: str
    id: int
    etag: str | None
    model: str | None  # from the caller's webhook_id -> model map; the payload does not name the model
    occurred_at: datetime | None
    data: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ClioWebhook:
    """A registered subscription as Clio reports it."""

    id: int
    url: str
    model: str
    events: tuple[str, ...]
    fields: str
    status: str | None  # pending | enabled | suspended
    expires_at: datetime | None
    shared_secret: str | None = field(default=None, repr=False)


def accepted_signatures(digest: bytes) -> tuple[str, ...]:
    """UNCONFIRMED (billing-apis.md §1.9): Clio does not say whether X-Hook-Signature is hex or base64;
    both encodings of the HMAC-SHA256 digest are accepted, as the reference's third-party source does."""
    return digest.hex(), base64.b64encode(digest).decode("ascii")


def verify_signature(secret: str, raw_body: bytes, header_value: str | None) -> bool:
    """True when `header_value` is HMAC-SHA256(secret, raw_body). Verify the bytes as received, before parsing."""
    if not secret or not header_value:
        return False
    digest = hmac.new(secret.encode(), raw_body, hashlib.sha256).digest()
    given = header_value.strip()
    candidates = accepted_signatures(digest)
    # Hex may arrive upper-case; base64 is case-sensitive, so only the hex candidate is compared folded.
    return (
        hmac.compare_digest(given.lower().encode(), candidates[0].encode())
        or hmac.compare_digest(given.encode(), candidates[1].encode())
    )


def handshake_secret(headers: Mapping[str, str]) -> str | None:
    """The X-Hook-Secret of Clio's activation POST (answer 200 echoing it), or None for an ordinary delivery."""
    for name, value in headers.items():
        if name.lower() == SECRET_HEADER.lower() and value:
            return value
    return None


def parse_event(raw_body: bytes, *, models: Mapping[int, str] | None = None) -> ClioWebhookEvent:
    """The delivery in `raw_body`; `models` maps the caller's webhook ids to the model each one watches."""
    try:
        body = json.loads(raw_body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookPayloadError(f"webhook body is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict) or not isinstance(body.get("meta"), dict):
        raise WebhookPayloadError('webhook body must be {"data": {...}, "meta": {...}}')
    data, meta = body["data"], body["meta"]
    record_id = _int(data.get("id"), "data.id")
    webhook_id = _int(meta.get("webhook_id"), "meta.webhook_id")
    event = meta.get("event")
    if not isinstance(event, str) or not event:
        raise WebhookPayloadError("meta.event is missing")
    etag = data.get("etag")
    return ClioWebhookEvent(
        webhook_id=webhook_id, event=event, id=record_id, etag=etag if isinstance(etag, str) else None,
        model=(models or {}).get(webhook_id), occurred_at=_timestamp(data.get("updated_at")), data=data,
    )


def check_subscription(model: str, events: tuple[str, ...] | list[str], fields: str) -> None:
    """ValueError unless the model, events and fields are ones Clio documents."""
    if model not in WEBHOOK_MODELS:
        raise ValueError(f"model {model!r} is not one Clio sends webhooks for")
    allowed = MATTER_EVENTS if model == "matter" else BASE_EVENTS
    unknown = set(events) - allowed
    if not events or unknown:
        raise ValueError(f"events must be a non-empty subset of {sorted(allowed)}")
    if not fields or len(fields) > MAX_FIELDS_LENGTH:
        raise ValueError(f"fields is required and at most {MAX_FIELDS_LENGTH} characters")


def check_expiry(expires_at: datetime, now: datetime) -> datetime:
    """`expires_at` in UTC, or ValueError when it is naive, past, or beyond Clio's 31-day maximum."""
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    if expires_at <= now:
        raise ValueError("expires_at must be in the future")
    if expires_at - now > MAX_LIFETIME:
        raise ValueError(f"Clio webhooks expire after at most {MAX_LIFETIME.days} days")
    return expires_at.astimezone(timezone.utc)


def renewal_due(webhook: ClioWebhook, now: datetime, *, margin: timedelta = timedelta(days=2)) -> bool:
    """True when the subscription lapses within `margin` (or has no known expiry)."""
    return webhook.expires_at is None or webhook.expires_at - now <= margin


def webhook_from(item: Mapping[str, Any]) -> ClioWebhook:
    return ClioWebhook(
        id=_int(item.get("id"), "id"), url=str(item.get("url") or ""), model=str(item.get("model") or ""),
        events=tuple(item.get("events") or ()), fields=str(item.get("fields") or ""),
        status=item.get("status"), expires_at=_timestamp(item.get("expires_at")),
        shared_secret=item.get("shared_secret"),
    )


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WebhookPayloadError(f"{what} must be an integer")
    return value


def _timestamp(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
