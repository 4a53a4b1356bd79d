"""Billing-system-neutral value types exchanged between calltime and a billing adapter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal


@dataclass(frozen=True)
class BillingUser:
    user_id: str
    name: str
    rate: Decimal
    time_zone: str | None  # IANA name, or None when the billing system's value could not be mapped
    phone_number: str | None  # as typed in the billing system, not normalised
    enabled: bool


@dataclass(frozen=True)
class DirectoryContact:
    contact_id: str
    name: str
    is_client: bool
    phone_numbers: tuple[str, ...]  # free text as typed by firm staff; normalise before matching
    updated_at: datetime | None


@dataclass(frozen=True)
class DirectoryMatter:
    matter_id: str
    client_id: str | None
    display_number: str
    description: str
    status: str  # 'open' | 'pending' | 'closed' (lowercase)
    updated_at: datetime | None


@dataclass(frozen=True)
class TimeEntryRequest:
    draft_id: str
    call_id: str
    matter_id: str
    user_id: str
    entry_date: date
    billed_seconds: int
    rate: Decimal
    narrative: str
    call_started_at: datetime
    external_number: str | None


@dataclass(frozen=True)
class WrittenEntry:
    entry_id: str
    communication_id: str | None
