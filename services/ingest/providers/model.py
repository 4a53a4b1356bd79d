"""What every phone-provider adapter speaks.

An adapter is pure: it gets the raw webhook request (headers, query, body bytes, arrival time)
and the firm's account for that provider, and answers with a handshake reply, a refusal, the
notices to store, and — from every notice stored for one call — the call as it now stands.
The webhook route, the inbox and the outbox are the same for all providers (see
`calltime.ingest.webhooks`); only these answers differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

# What a finished call must be before it is announced (`checked_call`).
DIRECTIONS = frozenset({"inbound", "outbound", "internal"})
RESULTS = frozenset({"answered", "missed", "voicemail", "rejected"})
MAX_CALL_SECONDS = 7 * 24 * 3600  # no call lasts a week: a longer one is a corrupt record
MAX_PROVIDER_CALL_ID_CHARS = 256


class InvalidNotification(ValueError):
    """The body is not a notification of this provider; the message says why (sent as a 400)."""


class Refused(Exception):
    """The request is not authentic (401) or not for this firm (403); nothing is stored."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class WebhookRequest:
    """The raw request as it reached us: signatures are checked over these exact body bytes."""

    headers: Mapping[str, str]  # names lower-cased
    query: Mapping[str, str]
    body: bytes
    received_at: datetime  # UTC, when our server read the request

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Reply:
    """A handshake answer, sent as is."""

    status: int = 200
    body: bytes = b""
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Account:
    """One firm's account with one provider, secrets already decrypted (held in memory only)."""

    firm_id: str
    provider: str
    account_id: str  # the provider's id for the firm's account / tenant / company
    webhook_secret: str  # RingCentral verification token, Graph clientState, Zoom secret
    # token, Dialpad JWT secret, Vonage signing key (VBC) or signature secret (Voice API)
    phone_region: str  # ISO region for numbers written without a country code
    attorneys_by_user: Mapping[str, str]  # provider user / extension id -> billing user id


@dataclass(frozen=True)
class Notice:
    """One event worth keeping from one delivery. `dedupe_key` is the same for every
    re-delivery of that event, so the inbox stores it once."""

    dedupe_key: str
    provider_call_id: str  # the call it belongs to; calltime's call id derives from it
    body: bytes  # what is stored and later handed back to `finished_call`
    fetch_record: bool = False  # id-only notification (Graph): the record must be fetched


@dataclass(frozen=True)
class FinishedCall:
    """A call the firm user has hung up, in the terms `CallEnded` needs."""

    provider_call_id: str
    direction: str  # inbound | outbound | internal, from the firm user's side
    external_number_e164: str | None
    external_number_raw: str | None
    internal_number: str | None
    provider_user_id: str
    started_at: datetime  # UTC
    ended_at: datetime  # UTC
    duration_seconds: int  # connected time, whole seconds
    result: str  # answered | missed | voicemail | rejected
    last_sequence: int | None = None  # RingCentral only: the highest `sequence` seen


def json_text(raw: bytes) -> str:
    """A JSON body as text: strictly UTF-8 (RFC 8259 §8.1), a leading BOM tolerated.

    `json.loads(bytes)` would also take UTF-16/32 and, through its 'surrogatepass' decoding,
    bytes that encode lone surrogates: text PostgreSQL and Avro cannot store, which would then
    fail long after the webhook was answered. Raises UnicodeDecodeError (a ValueError)."""
    return bytes(raw).decode("utf-8-sig")


def _storable(text: str) -> bool:
    """PostgreSQL text and Avro strings hold any UTF-8 but NUL; lone surrogates are not UTF-8."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checked_call(call: FinishedCall) -> FinishedCall:
    """`call` if the pipeline can store, publish and bill it; else InvalidNotification.

    Every adapter's `finished_call` answers through this, so a notice that parses but completes
    an impossible call (it ends before it starts, lasts for years, carries a NUL...) is refused
    with a 400 while its webhook is being answered, rather than accepted and then failing in
    the quiet-period or outbox machinery, where nobody is there to be told."""
    problems = []
    if not isinstance(call.provider_call_id, str) or not 0 < len(call.provider_call_id) <= MAX_PROVIDER_CALL_ID_CHARS:
        problems.append(f"the call id must be 1 to {MAX_PROVIDER_CALL_ID_CHARS} characters")
    if call.direction not in DIRECTIONS:
        problems.append(f"direction {call.direction!r}")
    if call.result not in RESULTS:
        problems.append(f"result {call.result!r}")
    for name in ("provider_call_id", "provider_user_id", "external_number_e164", "external_number_raw",
                 "internal_number"):
        value = getattr(call, name)
        if value is not None and (not isinstance(value, str) or not _storable(value)):
            problems.append(f"{name} holds a NUL or text that is not UTF-8")
    if call.started_at.utcoffset() is None or call.ended_at.utcoffset() is None:
        problems.append("its times carry no UTC offset")
    elif call.ended_at < call.started_at:
        problems.append("it ends before it starts")
    elif isinstance(call.duration_seconds, bool) or not isinstance(call.duration_seconds, int) \
            or not 0 <= call.duration_seconds <= MAX_CALL_SECONDS:
        problems.append(f"a duration of {call.duration_seconds!r} s")
    if problems:
        raise InvalidNotification(f"not a call that can be billed: {'; '.join(problems)}")
    return call


class PhoneProvider(Protocol):
    """One provider's webhook dialect. Every method is pure (no I/O)."""

    name: str
    # Optional: seconds of quiet after the notice that completes a call before its first
    # announcement, for providers that deliver out of order (absent or 0: announce at once).
    # settle_after_seconds: float

    def handshake(self, request: WebhookRequest, account: Account) -> Reply | None:
        """The answer to a subscription / URL-validation request, or None if this is not one.
        Must itself refuse (raise Refused) a handshake the provider would have signed but
        this one is not signed correctly."""
        ...

    def authenticate(self, request: WebhookRequest, account: Account) -> None:
        """Raise Refused unless the request is authentic and meant for this account."""
        ...

    def notices(self, request: WebhookRequest, account: Account) -> Sequence[Notice]:
        """The notices to keep; empty when the request is authentic but not about a finished
        call (acknowledged and ignored). Raise InvalidNotification for a malformed body."""
        ...

    def finished_call(self, bodies: Sequence[bytes], account: Account) -> FinishedCall | None:
        """The call as every stored notice of it (in arrival order) now tells it, or None while
        it is not finished (or, for Graph, until its record has been fetched). What it returns
        has passed `checked_call` (else InvalidNotification)."""
        ...
