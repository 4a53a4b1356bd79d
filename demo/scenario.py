"""The demo's firm and its day of calls: a 5-attorney firm on Clio whose offices run five phone
systems (RingCentral, Zoom Phone, Teams, Dialpad, Vonage), 85 calls (clients with one or several
matters, clients without an open matter, unknown numbers, colleagues' and vendors' lines, missed
calls), deterministic for a given seed."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from calltime.demo.phones import PHONE_SYSTEMS
from calltime.fakes.calls import SimulatedCall
from calltime.fakes.clio import FakeClioState
from calltime.fakes.ringcentral import CallSpec

FIRM_ID = "harbor-vale"
FIRM_NAME = "Harbor & Vale LLP"
RINGCENTRAL_ACCOUNT = PHONE_SYSTEMS["ringcentral"].account_id
FIRM_MAIN_NUMBER = "+13125550100"
DAY = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)  # 09:00 in New York

ATTORNEYS = [  # name, hourly rate, time zone, phone system, the user's id there, extension number
    ("Dana Whitfield", "350.00", "America/New_York", "ringcentral", "62100001", "101"),
    ("Luis Carranza", "295.00", "America/Chicago", "zoom", "zoom-ext-102", "102"),
    ("Priya Natarajan", "425.00", "America/Denver", "graph", "8e2f1a3c-5b7d-4e10-9c21-00000000a103", "103"),
    ("Owen Brandt", "310.00", "America/Los_Angeles", "dialpad", "5810004", "104"),
    ("Mei Tanaka", "380.00", "America/Phoenix", "vonage", "7100105", "105"),
]

CALL_MIX = {  # kind of caller -> number of calls; 85 in all
    "one_matter": 38,
    "several_matters": 12,
    "no_matter": 5,
    "closed_matter": 4,
    "unknown": 12,
    "internal": 6,
    "vendor": 3,
    "missed": 5,
}


@dataclass(frozen=True)
class Caller:
    kind: str
    number: str


@dataclass
class Directory:
    attorney_ids: dict[str, dict[str, str]]  # phone system -> its user id -> Clio user id
    callers: dict[str, list[Caller]]


@dataclass(frozen=True)
class PlacedCall:
    kind: str
    provider: str
    call: SimulatedCall | CallSpec  # RingCentral's simulator takes its own, richer CallSpec


def direct_line(index: int) -> str:
    return f"+1312555{1000 + index}"


def _number(rng: random.Random, area: str) -> str:
    return f"+1{area}555{rng.randint(200, 9999):04d}"


def seed_clio(clio: FakeClioState, token: str, rng: random.Random) -> Directory:
    clio.add_firm(FIRM_ID, FIRM_NAME)
    attorney_ids: dict[str, dict[str, str]] = {}
    for index, (name, rate, zone, provider, user_id, _extension_number) in enumerate(ATTORNEYS):
        user = clio.add_user(FIRM_ID, name=name, rate=Decimal(rate), time_zone=zone,
                             phone_number=direct_line(index), tokens=[token] if index == 0 else ())
        attorney_ids.setdefault(provider, {})[user_id] = str(user)
    callers: dict[str, list[Caller]] = {kind: [] for kind in CALL_MIX}
    plans = [("one_matter", 20, ["Open"]), ("several_matters", 6, ["Open", "Open", "Closed"]),
             ("no_matter", 4, []), ("closed_matter", 3, ["Closed"])]
    for kind, clients, statuses in plans:
        for n in range(clients):
            number = _number(rng, rng.choice(["312", "773", "415", "212"]))
            written = f"({number[2:5]}) {number[5:8]}-{number[8:]}"  # as staff type it
            contact = clio.add_contact(FIRM_ID, name=f"{kind.replace('_', ' ').title()} Client {n + 1}",
                                       is_client=True, phone_numbers=[written])
            for m, status in enumerate(statuses):
                clio.add_matter(FIRM_ID, display_number=f"{contact:05d}-{m + 1}",
                                description=f"Matter {m + 1} of client {contact}", status=status,
                                client_id=contact)
            callers[kind].append(Caller(kind, number))
    # a known contact who is nobody's client: calls with them make no billable draft
    clio.add_contact(FIRM_ID, name="Lakeshore Court Reporters", type="Company", is_client=False,
                     phone_numbers=["312-555-0188"])
    callers["vendor"].append(Caller("vendor", "+13125550188"))
    callers["unknown"] = [Caller("unknown", _number(rng, "630")) for _ in range(12)]
    callers["missed"] = callers["one_matter"][:5]
    return Directory(attorney_ids, callers)


def day_of_calls(directory: Directory, rng: random.Random) -> list[PlacedCall]:
    """Calls spread over one business day, attorneys in five time zones on five phone systems.
    A colleague's call is to their direct line, which the directory knows as the firm's own."""
    calls = []
    for kind, count in CALL_MIX.items():
        for i in range(count):
            index = rng.randrange(len(ATTORNEYS))
            _name, _rate, _zone, provider, user_id, ext_number = ATTORNEYS[index]
            start = DAY + timedelta(minutes=rng.randint(0, 17 * 60))  # until 07:00 UTC next day
            if kind == "internal":
                other = direct_line(rng.choice([n for n in range(len(ATTORNEYS)) if n != index]))
            else:
                other = directory.callers[kind][i % len(directory.callers[kind])].number
            direction = "inbound" if kind == "missed" else rng.choice(["inbound", "inbound", "outbound"])
            call = SimulatedCall(user_id=user_id, user_number=direct_line(index), extension_number=ext_number,
                                 external_number=other, direction=direction, started_at=start,
                                 talk_seconds=rng.randint(40, 45 * 60),
                                 outcome="missed" if kind == "missed" else "answered")
            if provider == "ringcentral":
                call = CallSpec(account_id=RINGCENTRAL_ACCOUNT, extension_id=user_id, extension_number=ext_number,
                                firm_number=FIRM_MAIN_NUMBER, external_number=other, direction=direction,
                                started_at=start, talk_seconds=call.talk_seconds, outcome=call.outcome)
            calls.append(PlacedCall(kind, provider, call))
    rng.shuffle(calls)
    return calls
