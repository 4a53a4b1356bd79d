"""How a caller's number becomes a match outcome (mission.md step 2), as a pure function.

| lookup result                          | outcome               |
| one active matter                      | single_matter         |
| several active matters                 | multiple_matters      |
| client found, no matter at all         | client_no_matter      |
| no contact with this number            | unknown_number        |
| internal / co-counsel / vendor number  | non_client            |
| only closed or pending matters         | inactive_matter_only  |

"Active" means open. A pending matter is not yet engaged, so like a closed one it only earns a
flagged draft that asks the attorney to verify the matter's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from calltime.events import MatterCandidate


class MatchOutcome(str, Enum):
    SINGLE_MATTER = "single_matter"
    MULTIPLE_MATTERS = "multiple_matters"
    CLIENT_NO_MATTER = "client_no_matter"
    UNKNOWN_NUMBER = "unknown_number"
    NON_CLIENT = "non_client"
    INACTIVE_MATTER_ONLY = "inactive_matter_only"


ACTIVE_STATUSES = frozenset({"open"})


@dataclass(frozen=True)
class KnownContact:
    contact_id: str
    name: str
    is_client: bool
    matters: tuple[MatterCandidate, ...]


@dataclass(frozen=True)
class Lookup:
    """Everything the directory knows about one number in one firm."""

    number_e164: str | None
    non_client_kind: str | None  # internal | co_counsel | vendor, when listed as such
    contacts: tuple[KnownContact, ...]


@dataclass(frozen=True)
class Match:
    outcome: MatchOutcome
    client_id: str | None
    client_name: str | None
    matter: MatterCandidate | None
    candidates: tuple[MatterCandidate, ...]


def decide(lookup: Lookup, *, direction: str) -> Match:
    if direction == "internal" or lookup.non_client_kind is not None:
        return Match(MatchOutcome.NON_CLIENT, None, None, None, ())
    if lookup.number_e164 is None or not lookup.contacts:
        return Match(MatchOutcome.UNKNOWN_NUMBER, None, None, None, ())
    clients = [contact for contact in lookup.contacts if contact.is_client]
    if not clients:
        # A known contact who is nobody's client: opposing party, vendor, co-counsel.
        return Match(MatchOutcome.NON_CLIENT, None, None, None, ())
    matters = tuple(sorted({m for client in clients for m in client.matters},
                           key=lambda m: (m.display_number, m.matter_id)))
    active = tuple(m for m in matters if m.status in ACTIVE_STATUSES)
    client = _owning_client(clients, active or matters)
    client_id = client.contact_id if client else None
    client_name = client.name if client else None
    if len(active) == 1:
        return Match(MatchOutcome.SINGLE_MATTER, client_id, client_name, active[0], active)
    if len(active) > 1:
        return Match(MatchOutcome.MULTIPLE_MATTERS, client_id, client_name, None, active)
    if matters:
        only = matters[0] if len(matters) == 1 else None
        return Match(MatchOutcome.INACTIVE_MATTER_ONLY, client_id, client_name, only, matters)
    return Match(MatchOutcome.CLIENT_NO_MATTER, client_id, client_name, None, ())


def _owning_client(clients: list[KnownContact],
                   matters: tuple[MatterCandidate, ...]) -> KnownContact | None:
    """The client to name on the draft: the only one, or the one owning all relevant matters."""
    if len(clients) == 1:
        return clients[0]
    owners = [c for c in clients if any(m in c.matters for m in matters)]
    return owners[0] if len(owners) == 1 else None
