"""The billing-system port: what calltime needs from Clio or any other practice-management system."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Protocol, runtime_checkable

from calltime.billing.model import (
    BillingUser,
    DirectoryContact,
    DirectoryMatter,
    TimeEntryRequest,
    WrittenEntry,
)


@runtime_checkable
class BillingSystem(Protocol):
    async def list_users(self) -> list[BillingUser]:
        """Every user of the firm's account (enabled or not)."""
        ...

    def iter_contacts(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryContact]:
        """Contacts in id order, only those changed since `updated_since` when given."""
        ...

    def iter_matters(self, updated_since: datetime | None = None) -> AsyncIterator[DirectoryMatter]:
        """Matters of every status in id order, only those changed since `updated_since` when given."""
        ...

    async def find_entry(self, draft_id: str) -> WrittenEntry | None:
        """The entry already written for this draft, if any; call before retrying a write."""
        ...

    async def write_entry(self, req: TimeEntryRequest, *, resume: bool = False) -> WrittenEntry:
        """Write the entry; raises AmbiguousWriteError when unsure whether it landed. With
        `resume` (an earlier attempt may have landed) look first and never write a second."""
        ...
