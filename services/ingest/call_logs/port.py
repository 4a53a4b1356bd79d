"""The pull side of a phone provider: its call-log API, read for reconciliation, and its
webhook subscriptions, renewed before they lapse. One adapter per provider, all with this shape;
the reconciliation job (`calltime.ingest.reconcile`) never knows which provider it reads.

Adapters do HTTP (httpx) and nothing else: no database, no Kafka. Each module exposes
`source(account, base_url, credentials, http=None) -> CallLogSource`, where `credentials` is the
decrypted `<provider>.api` credential (client id/secret, API key, ... as that provider needs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from calltime.ingest.providers.model import FinishedCall


class CallLogError(Exception):
    """The provider's API failed; `transient` says whether a later sweep may succeed."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


@dataclass(frozen=True)
class CallLogPage:
    """One page of the provider's call log: `records_read` counts what the API returned (for
    the progress display), `calls` only the finished calls of the firm's users among them."""

    records_read: int
    calls: tuple[FinishedCall, ...]


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    expires_at: datetime | None  # None: does not expire


class CallLogSource(Protocol):
    provider: str

    def pages(self, since: datetime, until: datetime) -> AsyncIterator[CallLogPage]:
        """Every finished call that started in [since, until), page by page as the API pages.
        The call ids (`provider_call_id`) are the same ones the webhooks produce."""
        ...

    async def renew_subscriptions(self, now: datetime, *, renew_within_seconds: float) -> list[Subscription]:
        """Renew every subscription that expires within the margin; returns all, as now known."""
        ...

    async def aclose(self) -> None:
        ...
