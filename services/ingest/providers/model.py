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
        it is not finished (or, for Graph, until its record has been fetched)."""
        ...
