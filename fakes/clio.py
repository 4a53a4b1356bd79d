"""A fake Clio Manage API v4 (several firms, in memory) served over real HTTP for tests and local runs."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import math
import re
import secrets
import time
from urllib.parse import parse_qsl
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import uvicorn
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from calltime.fakes import billing_common
from calltime.fakes.billing_common import (
    ApiError,
    DroppedResponse,
    FakeBillingServer,
    FakeBillingState,
    JsonStyle,
    bind,
    fixed_window_slot,
    loads,
)

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "4.0.9"  # the default marked in Clio's OpenAPI document (billing-apis.md §1.1)
SUPPORTED_API_VERSIONS = frozenset(f"4.0.{minor}" for minor in range(14))
FIRST_SECONDS_VERSION = (4, 0, 4)  # activity quantity is hours up to 4.0.3, seconds from 4.0.4 on
DEFAULT_RATE_LIMIT = 50
DEFAULT_RATE_WINDOW_SECONDS = 60
MAX_EXTERNAL_PROPERTIES = 5
INVALID_TOKEN_DESCRIPTION = (
    "The access token provided is expired, revoked, malformed or invalid for other reasons."
)
COMMIT_FAULT_TARGETS = ("activities", "communications")
DEFAULT_ACCESS_TOKEN_LIFETIME = 2_592_000  # 30 days, the expires_in Clio documents (billing-apis.md §1.2)
AUTHORIZATION_CODE_LIFETIME = 600  # "The code is valid for 10 minutes" (§1.2)
WEBHOOK_DEFAULT_LIFETIME = timedelta(days=3)
WEBHOOK_MAX_LIFETIME = timedelta(days=31)
# Delivery retries: "base timeout retry is 2 minutes, and we re-attempt 5 times ... doubling" (§1.9).
WEBHOOK_RETRY_BASE_SECONDS = 120
WEBHOOK_MAX_REATTEMPTS = 5
WEBHOOK_MODELS_FAKED = {"contact": "contact", "matter": "matter"}
_WEBHOOK_EVENTS = {
    "contact": frozenset({"created", "updated", "deleted"}),
    "matter": frozenset({"created", "updated", "deleted", "matter_opened", "matter_pended", "matter_closed"}),
}
# RFC 6750 b64token syntax; anything else is a malformed header rather than an unknown token.
_BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)

# ---------------------------------------------------------------------------------------------------------------
# Resource schemas: the readable fields of each resource and the nested resources it links to.

_FIELDS: dict[str, frozenset[str]] = {
    "account": frozenset({"id", "etag", "name"}),
    "user": frozenset({
        "id", "etag", "name", "first_name", "last_name", "email", "enabled", "subscription_type", "rate",
        "time_zone", "phone_number", "created_at", "updated_at",
    }),
    "phone_number": frozenset({"id", "etag", "name", "number", "primary", "created_at", "updated_at"}),
    "contact": frozenset({
        "id", "etag", "name", "first_name", "last_name", "type", "is_client", "primary_phone_number",
        "secondary_phone_number", "primary_email_address", "created_at", "updated_at",
    }),
    "matter": frozenset({
        "id", "etag", "number", "display_number", "description", "status", "billable", "billing_method",
        "open_date", "close_date", "pending_date", "client_id", "created_at", "updated_at",
    }),
    "activity_description": frozenset({
        "id", "etag", "name", "type", "default", "category_type", "utbms_activity_id", "utbms_task_id",
        "utbms_task_name", "accessible_to_user", "visible_to_co_counsel", "rate", "created_at", "updated_at",
    }),
    "utbms_code": frozenset({"id", "etag", "code", "name", "description", "type", "utbms_set_id"}),
    "webhook": frozenset({
        "id", "etag", "url", "fields", "shared_secret", "model", "status", "events", "expires_at", "created_at",
        "updated_at",
    }),
    "activity": frozenset({
        "id", "etag", "type", "date", "quantity", "quantity_in_hours", "rounded_quantity",
        "rounded_quantity_in_hours", "quantity_redacted", "price", "total", "note", "flat_rate", "billed",
        "on_bill", "non_billable", "non_billable_total", "no_charge", "created_at", "updated_at",
    }),
    "external_property": frozenset({"id", "etag", "name", "value", "created_at", "updated_at"}),
    "communication": frozenset({
        "id", "etag", "type", "subject", "body", "date", "received_at", "time_entries_count", "created_at",
        "updated_at",
    }),
}

_NESTED: dict[str, dict[str, str]] = {
    "account": {},
    "user": {"account": "account"},
    "phone_number": {},
    "contact": {"phone_numbers": "phone_number"},
    "matter": {"client": "contact", "responsible_attorney": "user"},
    "activity_description": {},
    "utbms_code": {},
    "webhook": {},
    "activity": {
        "matter": "matter", "user": "user", "communication": "communication",
        "activity_description": "activity_description",
    },
    "external_property": {},
    "communication": {"matter": "matter", "user": "user", "external_properties": "external_property"},
}

_DEFAULT_SPEC: tuple[tuple[str, Any], ...] = (("id", None), ("etag", None))

_ACTIVITY_TYPES = frozenset({"TimeEntry", "ExpenseEntry", "HardCostEntry", "SoftCostEntry"})
_ACTIVITY_WRITABLE = frozenset({
    "type", "date", "quantity", "price", "note", "matter", "user", "communication", "activity_description",
    "non_billable", "no_charge",
})
_COMMUNICATION_TYPES = frozenset({"PhoneCommunication", "EmailCommunication"})
_COMMUNICATION_WRITABLE = frozenset({
    "type", "subject", "body", "date", "received_at", "matter", "external_properties",
})
_MATTER_STATUSES = {"open": "Open", "pending": "Pending", "closed": "Closed"}


def render_time_zone(stored: str | None) -> str | None:
    """The one place that decides how a user's time zone is shown.

    Real Clio's format is UNCONFIRMED (its docs sample shows a Rails name such as "Eastern Time (US & Canada)");
    this fake stores and serves IANA names ("America/New_York").
    """
    return stored


# ---------------------------------------------------------------------------------------------------------------
# JSON: Decimal in, Decimal out, so money and quantities are never rounded through float.


def _decimal_literal(value: Decimal) -> str:
    text = format(value, "f")
    # Clio renders numbers like 350.0, so keep a fractional part on whole numbers.
    return text if "." in text else text + ".0"


_JSON = JsonStyle(decimal=_decimal_literal, moment=lambda m: m.astimezone(timezone.utc).isoformat(timespec="seconds"),
                  day=date.isoformat, floats=True)
_dumps = _JSON.dumps
_json_response = _JSON.response
_loads = loads


# ---------------------------------------------------------------------------------------------------------------
# State


class _ApiError(ApiError):
    """An error answer in Clio's documented Error shape (or another body given explicitly)."""

    style = _JSON

    def __init__(
        self, status: int, error_type: str, message: str, *, headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        body = body if body is not None else {"error": {"type": error_type, "message": message}}
        super().__init__(status, body, headers, message=message)


@dataclass
class Faults(billing_common.Faults):
    """Switchable misbehaviour: the faults every billing fake has and Clio's own. Here `slow_seconds` delays OAuth
    answers too, and `drop_after_commit_fraction` applies to `commit_fault_targets`. Counters count down as they
    fire; the delay stays until reset to 0."""

    fail_next_n_with_5xx: int = 0
    delay_after_commit_seconds: float = 0.0
    drop_after_commit_n: int = 0
    # Which POST endpoints the two after-commit faults apply to.
    commit_fault_targets: tuple[str, ...] = ("activities",)
    # None: echo X-API-VERSION honestly; "": leave the header out; anything else: echo that instead.
    echo_api_version: str | None = None
    burst_retry_after_seconds: int = 1  # the Retry-After of each burst_429 answer


_FRACTIONS = ("fail_fraction_5xx", "drop_after_commit_fraction")


@dataclass
class _Firm:
    key: str
    account_id: int
    name: str
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    matters: dict[int, dict[str, Any]] = field(default_factory=dict)
    activity_descriptions: dict[int, dict[str, Any]] = field(default_factory=dict)
    activities: dict[int, dict[str, Any]] = field(default_factory=dict)
    communications: dict[int, dict[str, Any]] = field(default_factory=dict)
    utbms_codes: dict[int, dict[str, Any]] = field(default_factory=dict)
    webhooks: dict[int, dict[str, Any]] = field(default_factory=dict)
    use_utbms_codes: bool = False
    client_rates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class WebhookDelivery:
    """One POST the fake sent (or tried to send) to a subscriber."""

    webhook_id: int
    kind: str  # 'handshake' or the event name
    url: str
    body: bytes
    headers: dict[str, str]
    status_code: int | None = None  # None: no answer (connection error or timeout)
    attempts: int = 0
    next_attempt_at: float = 0.0


@dataclass
class _Caller:
    firm: _Firm
    user_id: int
    version: str
    headers: dict[str, str]


class FakeClioState(FakeBillingState[Faults]):
    """Every firm's data, tokens, rate-limit windows, faults and request statistics, guarded by one lock."""

    STATS = FakeBillingState.STATS + ("oauth_requests",)

    def __init__(
        self,
        *,
        rate_limit: int = DEFAULT_RATE_LIMIT,
        rate_window_seconds: int = DEFAULT_RATE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
        access_token_lifetime_seconds: int = DEFAULT_ACCESS_TOKEN_LIFETIME,
    ) -> None:
        super().__init__(Faults(), clock)
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.access_token_lifetime_seconds = access_token_lifetime_seconds
        self._firms: dict[str, _Firm] = {}
        self._tokens: dict[str, tuple[str, int]] = {}
        self._token_expiry: dict[str, float] = {}
        self._token_grant: dict[str, str] = {}  # access token -> the refresh token it was issued under
        self._apps: dict[str, tuple[str, str | None]] = {}  # client_id -> (secret, redirect_uri)
        self._codes: dict[str, tuple[str, int, str, str | None, float]] = {}
        self._grants: dict[str, tuple[str, int, str]] = {}  # refresh token -> (firm, user, client_id)
        self._outbox: list[WebhookDelivery] = []
        self._delivered: list[WebhookDelivery] = []
        self._webhook_seen: set[tuple[int, int]] = set()
        self._windows: dict[str, tuple[float, int]] = {}
        self._ids = itertools.count(1001)
        self._used_ids: set[int] = set()
        self._etag_versions = itertools.count(1)
        self._by_version: Counter[str] = Counter()

    # -- seeding -------------------------------------------------------------------------------------------------

    def add_firm(self, key: str, name: str, *, account_id: int | None = None, use_utbms_codes: bool = False) -> None:
        self._add_firm(key, lambda: _Firm(key=key, account_id=account_id or self._next_id(), name=name,
                                          use_utbms_codes=use_utbms_codes))

    def add_user(
        self, firm: str, *, name: str, rate: Decimal | int | str | None = Decimal("0"), time_zone: str | None = None,
        phone_number: str | None = None, enabled: bool = True, subscription_type: str = "Attorney",
        email: str | None = None, id: int | None = None, tokens: Iterable[str] = (),
    ) -> int:
        with self._lock:
            user_id = self._claim_id(id)
            first, _, last = name.partition(" ")
            self._firm(firm).users[user_id] = self._stamp({
                "id": user_id, "name": name, "first_name": first, "last_name": last, "email": email,
                "enabled": enabled, "subscription_type": subscription_type,
                "rate": Decimal(str(rate)) if rate is not None else None,  # Clio answers null for a user without one
                "time_zone": time_zone, "phone_number": phone_number,
            })
            for token in tokens:
                self.add_token(firm, token, user_id)
            return user_id

    def add_token(self, firm: str, token: str, user_id: int) -> None:
        with self._lock:
            if user_id not in self._firm(firm).users:
                raise ValueError(f"user {user_id} is not in firm {firm!r}")
            self._tokens[token] = (firm, user_id)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def expire_token(self, token: str) -> None:
        """Make an access token expired now (as if its expires_in had run out)."""
        with self._lock:
            if token not in self._tokens:
                raise ValueError("unknown access token")
            self._token_expiry[token] = self.clock()

    # -- OAuth (billing-apis.md §1.2) ----------------------------------------------------------------------------

    def add_oauth_app(self, client_id: str, client_secret: str, *, redirect_uri: str | None = None) -> None:
        with self._lock:
            self._apps[client_id] = (client_secret, redirect_uri)

    def authorize(self, firm: str, user_id: int, client_id: str, *, redirect_uri: str | None = None) -> str:
        """The `code` Clio's consent page would redirect with after `user_id` approved `client_id`."""
        with self._lock:
            if client_id not in self._apps:
                raise ValueError(f"unknown OAuth client {client_id!r}")
            if user_id not in self._firm(firm).users:
                raise ValueError(f"user {user_id} is not in firm {firm!r}")
            code = secrets.token_urlsafe(24)
            self._codes[code] = (firm, user_id, client_id, redirect_uri, self.clock() + AUTHORIZATION_CODE_LIFETIME)
            return code

    def issue_tokens(self, firm: str, user_id: int, client_id: str = "fake-client") -> dict[str, Any]:
        """A grant as if the code exchange had happened: the token endpoint's answer for it."""
        with self._lock:
            if client_id not in self._apps:
                self._apps[client_id] = (secrets.token_urlsafe(16), None)
            refresh = secrets.token_urlsafe(32)
            self._grants[refresh] = (firm, user_id, client_id)
            return self._token_answer(refresh) | {"refresh_token": refresh}

    def revoke_grant(self, refresh_token: str) -> None:
        """Revoke a refresh token and every access token issued under it (a firm disconnecting the app)."""
        with self._lock:
            self._grants.pop(refresh_token, None)
            for token in [t for t, grant in self._token_grant.items() if grant == refresh_token]:
                self._tokens.pop(token, None)
                self._token_grant.pop(token, None)

    def _token_answer(self, refresh_token: str) -> dict[str, Any]:
        firm, user_id, _ = self._grants[refresh_token]
        access = secrets.token_urlsafe(32)
        self._tokens[access] = (firm, user_id)
        self._token_expiry[access] = self.clock() + self.access_token_lifetime_seconds
        self._token_grant[access] = refresh_token
        return {"token_type": "bearer", "access_token": access, "expires_in": self.access_token_lifetime_seconds}

    def _exchange(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The /oauth/token grant; raises _ApiError with an RFC 6749 body."""
        with self._lock:
            client_id = form.get("client_id")
            app = self._apps.get(client_id or "")
            if app is None or not hmac.compare_digest(app[0], form.get("client_secret", "")):
                raise _oauth_error(401, "invalid_client", "Client authentication failed")
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                return self._exchange_code(form, client_id)
            if grant_type == "refresh_token":
                grant = self._grants.get(form.get("refresh_token", ""))
                if grant is None or grant[2] != client_id:
                    raise _oauth_error(400, "invalid_grant", "The refresh token is invalid or revoked")
                # Clio keeps the refresh token: the refresh answer carries none (§1.2).
                return self._token_answer(form["refresh_token"])
            raise _oauth_error(400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token")

    def _exchange_code(self, form: Mapping[str, str], client_id: str) -> dict[str, Any]:
        entry = self._codes.pop(form.get("code", ""), None)  # single use, even when the exchange fails
        if entry is None or entry[2] != client_id or entry[4] <= self.clock():
            raise _oauth_error(400, "invalid_grant", "The authorization code is invalid or expired")
        if entry[3] is not None and form.get("redirect_uri") != entry[3]:
            raise _oauth_error(400, "invalid_grant", "redirect_uri does not match the authorization request")
        refresh = secrets.token_urlsafe(32)
        self._grants[refresh] = (entry[0], entry[1], client_id)
        return self._token_answer(refresh) | {"refresh_token": refresh}

    def add_contact(
        self, firm: str, *, name: str, type: str = "Person", is_client: bool = False,
        phone_numbers: Iterable[str | Mapping[str, Any]] = (), email: str | None = None, id: int | None = None,
        updated_at: datetime | None = None,
    ) -> int:
        with self._lock:
            contact_id = self._claim_id(id)
            first, _, last = name.partition(" ") if type == "Person" else ("", "", "")
            record = self._stamp({
                "id": contact_id, "name": name, "first_name": first or None, "last_name": last or None,
                "type": type, "is_client": is_client, "primary_email_address": email,
                "_phone_numbers": [self._phone_record(p, i == 0) for i, p in enumerate(phone_numbers)],
            })
            if updated_at is not None:
                record["updated_at"] = updated_at
            self._firm(firm).contacts[contact_id] = record
            self._emit(firm, "contact", record, ("created",), None)
            return contact_id

    def update_contact(self, firm: str, contact_id: int, **changes: Any) -> None:
        """Change a contact as if edited in Clio: bumps updated_at and etag. `phone_numbers` replaces the list."""
        with self._lock:
            record = self._firm(firm).contacts[contact_id]
            changed = set(changes)
            if "phone_numbers" in changes:
                numbers = changes.pop("phone_numbers")
                record["_phone_numbers"] = [self._phone_record(p, i == 0) for i, p in enumerate(numbers)]
                changed |= {"primary_phone_number", "secondary_phone_number"}
            record.update(changes)
            self._touch(record)
            self._emit(firm, "contact", record, ("updated",), changed)

    def delete_contact(self, firm: str, contact_id: int) -> None:
        with self._lock:
            record = self._firm(firm).contacts.pop(contact_id)
            self._emit(firm, "contact", record, ("deleted",), None)

    def add_matter(
        self, firm: str, *, display_number: str, description: str = "", status: str = "Open",
        client_id: int | None = None, responsible_attorney_id: int | None = None, id: int | None = None,
        updated_at: datetime | None = None,
    ) -> int:
        with self._lock:
            the_firm = self._firm(firm)
            if client_id is not None and client_id not in the_firm.contacts:
                raise ValueError(f"client {client_id} is not a contact of firm {firm!r}")
            matter_id = self._claim_id(id)
            record = self._stamp({
                "id": matter_id, "number": len(the_firm.matters) + 1, "display_number": display_number,
                "description": description, "status": _MATTER_STATUSES[status.lower()], "billable": True,
                "billing_method": "hourly", "open_date": None, "close_date": None, "pending_date": None,
                "_client_id": client_id, "_responsible_attorney_id": responsible_attorney_id,
            })
            if updated_at is not None:
                record["updated_at"] = updated_at
            the_firm.matters[matter_id] = record
            self._emit(firm, "matter", record, ("created",), None)
            return matter_id

    def update_matter(self, firm: str, matter_id: int, **changes: Any) -> None:
        """Change a matter as if edited in Clio: bumps updated_at and etag."""
        with self._lock:
            record = self._firm(firm).matters[matter_id]
            changed = set(changes) | ({"client"} if "client_id" in changes else set())
            events = ["updated"]
            if "status" in changes:
                changes["status"] = _MATTER_STATUSES[changes["status"].lower()]
                if changes["status"] != record["status"]:
                    events.append(_STATUS_EVENTS[changes["status"]])
            if "client_id" in changes:
                record["_client_id"] = changes.pop("client_id")
            record.update(changes)
            self._touch(record)
            self._emit(firm, "matter", record, tuple(events), changed)

    def add_activity_description(
        self, firm: str, name: str, *, id: int | None = None, rate: Decimal | int | str | None = None,
        flat_rate: bool = False, default: bool = False, utbms_activity_id: int | None = None,
        utbms_task_id: int | None = None,
    ) -> int:
        """An activity category. `rate` is its own rate (hourly, or the flat amount); None uses the user's rate."""
        if flat_rate and rate is None:
            raise ValueError("a flat-rate activity description needs its rate")
        with self._lock:
            the_firm = self._firm(firm)
            description_id = self._claim_id(id)
            task = the_firm.utbms_codes.get(utbms_task_id) if utbms_task_id is not None else None
            the_firm.activity_descriptions[description_id] = self._stamp({
                "id": description_id, "name": name, "type": "utbms" if utbms_activity_id is not None else "clio",
                "default": default, "category_type": "flat" if flat_rate else "hourly",
                "utbms_activity_id": utbms_activity_id, "utbms_task_id": utbms_task_id,
                "utbms_task_name": f"{task['code']} {task['name']}" if task else None,
                "accessible_to_user": True, "visible_to_co_counsel": False,
                "_rate": Decimal(str(rate)) if rate is not None else None,
            })
            return description_id

    def set_matter_rate(
        self, firm: str, matter_id: int, rate: Decimal | int | str, *, user_id: int | None = None,
        activity_description_id: int | None = None,
    ) -> None:
        """A matter custom hourly rate for one user, one activity description, or (neither) everyone."""
        with self._lock:
            matter = self._firm(firm).matters[matter_id]
            matter.setdefault("_custom_rates", []).append({
                "rate": Decimal(str(rate)), "user_id": user_id, "activity_description_id": activity_description_id,
            })

    def set_client_rate(self, firm: str, contact_id: int, rate: Decimal | int | str, *, user_id: int | None = None) -> None:
        """A contact (client) custom hourly rate for one user or (user_id None) everyone."""
        with self._lock:
            the_firm = self._firm(firm)
            if contact_id not in the_firm.contacts:
                raise ValueError(f"contact {contact_id} is not in firm {firm!r}")
            the_firm.client_rates.append({"contact_id": contact_id, "user_id": user_id, "rate": Decimal(str(rate))})

    def set_billing_settings(self, firm: str, *, use_utbms_codes: bool) -> None:
        """The account's Settings > Billing switch that UTBMS-coded entries need (§1.7)."""
        with self._lock:
            self._firm(firm).use_utbms_codes = use_utbms_codes

    def add_utbms_code(self, firm: str, type: str, code: str, name: str, *, id: int | None = None) -> int:
        if type not in ("UtbmsActivity", "UtbmsTask", "UtbmsExpense"):
            raise ValueError("type must be UtbmsActivity, UtbmsTask or UtbmsExpense")
        with self._lock:
            code_id = self._claim_id(id)
            self._firm(firm).utbms_codes[code_id] = self._stamp({
                "id": code_id, "code": code, "name": name, "description": name, "type": type, "utbms_set_id": 1,
            })
            return code_id

    # -- webhooks (billing-apis.md §1.9) -------------------------------------------------------------------------

    def webhooks(self, firm: str) -> list[dict[str, Any]]:
        with self._lock:
            return [_webhook_dump(w) for w in self._firm(firm).webhooks.values()]

    def pending_webhook_deliveries(self) -> list[WebhookDelivery]:
        with self._lock:
            return list(self._outbox)

    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every delivery attempt made so far, oldest first."""
        with self._lock:
            return list(self._delivered)

    async def deliver_webhooks(self, http: httpx.AsyncClient, *, timeout: float = 5.0) -> list[WebhookDelivery]:
        """Send every handshake and event that is due (by the state's clock) and record the outcomes.

        As Clio does: a 2xx, 3xx or 410 answer is a success (410 also suspends the webhook); a handshake
        answered 200 with the X-Hook-Secret echoed enables the webhook; anything else is retried after 2
        minutes, doubling, 5 times, after which the webhook is suspended.
        """
        with self._lock:
            now = self.clock()
            due = [d for d in self._outbox if d.next_attempt_at <= now]
            self._outbox = [d for d in self._outbox if d.next_attempt_at > now]
        sent = []
        for delivery in due:
            try:
                response = await http.post(delivery.url, content=delivery.body, headers=delivery.headers,
                                           timeout=timeout)
                status, echoed = response.status_code, response.headers.get("X-Hook-Secret")
            except httpx.HTTPError:
                status, echoed = None, None
            with self._lock:
                sent.append(self._record_delivery(delivery, status, echoed))
        return sent

    def _record_delivery(self, delivery: WebhookDelivery, status: int | None, echoed: str | None) -> WebhookDelivery:
        done = WebhookDelivery(**{**asdict(delivery), "status_code": status, "attempts": delivery.attempts + 1})
        self._delivered.append(done)
        webhook = self._webhook_by_id(delivery.webhook_id)
        if webhook is None:
            return done
        if delivery.kind == "handshake":
            if status == 200 and echoed == webhook["shared_secret"]:
                webhook["status"] = "enabled"
            return done
        if status == 410:
            webhook["status"] = "suspended"
        elif status is None or not 200 <= status < 400:
            if done.attempts > WEBHOOK_MAX_REATTEMPTS:
                webhook["status"] = "suspended"
            else:
                done.next_attempt_at = self.clock() + WEBHOOK_RETRY_BASE_SECONDS * 2 ** (done.attempts - 1)
                self._outbox.append(done)
        return done

    def _webhook_by_id(self, webhook_id: int) -> dict[str, Any] | None:
        return next((f.webhooks[webhook_id] for f in self._firms.values() if webhook_id in f.webhooks), None)

    def _queue_handshake(self, webhook: Mapping[str, Any]) -> None:
        body = _dumps(_handshake_body(webhook)).encode()
        self._outbox.append(WebhookDelivery(
            webhook_id=webhook["id"], kind="handshake", url=webhook["url"], body=body,
            headers={"Content-Type": "application/json", "X-Hook-Secret": webhook["shared_secret"]},
        ))

    def _emit(
        self, firm_key: str, model: str, record: Mapping[str, Any], events: tuple[str, ...],
        changed: set[str] | None,
    ) -> None:
        """Queue a signed delivery for each enabled, unexpired webhook of the firm watching this change."""
        firm = self._firm(firm_key)
        now = self._now()
        for webhook in firm.webhooks.values():
            if webhook["model"] != model or webhook["status"] != "enabled" or webhook["expires_at"] <= now:
                continue
            fields = parse_fields(webhook["fields"], model)
            watched = {name for name, _ in fields}
            for event in events:
                if event not in webhook["events"]:
                    continue
                key = (webhook["id"], record["id"])
                # `fields` are also the fields watched for updates; the first update of an object fires regardless.
                if event == "updated" and key in self._webhook_seen and not (changed or set()) & watched:
                    continue
                self._webhook_seen.add(key)
                spec = _DEFAULT_SPEC if event == "deleted" else fields
                data = _View(firm, DEFAULT_API_VERSION).render(model, record, spec)
                body = _dumps({"data": data, "meta": {"event": event, "webhook_id": webhook["id"]}}).encode()
                self._outbox.append(WebhookDelivery(
                    webhook_id=webhook["id"], kind=event, url=webhook["url"], body=body,
                    headers={"Content-Type": "application/json",
                             "X-Hook-Signature": webhook_signature(webhook["shared_secret"], body)},
                ))

    @classmethod
    def from_seed(cls, seed: Mapping[str, Any], **kwargs: Any) -> FakeClioState:
        """Build a state from the seed-file structure documented in `load_seed`."""
        limits = seed.get("rate_limit") or {}
        kwargs.setdefault("rate_limit", limits.get("limit", DEFAULT_RATE_LIMIT))
        kwargs.setdefault("rate_window_seconds", limits.get("window_seconds", DEFAULT_RATE_WINDOW_SECONDS))
        state = cls(**kwargs)
        for firm in seed.get("firms", ()):
            state._seed_firm(firm)
        return state

    def _seed_firm(self, firm: Mapping[str, Any]) -> None:
        key = firm["key"]
        self.add_firm(key, firm.get("name", key), account_id=firm.get("account_id"))
        for user in firm.get("users", ()):
            self.add_user(key, **_pick(user, (
                "id", "name", "rate", "time_zone", "phone_number", "enabled", "subscription_type", "email",
                "tokens",
            )))
        for contact in firm.get("contacts", ()):
            self.add_contact(key, **_pick(contact, ("id", "name", "type", "is_client", "phone_numbers", "email")))
        for matter in firm.get("matters", ()):
            self.add_matter(key, **_pick(matter, (
                "id", "display_number", "description", "status", "client_id", "responsible_attorney_id",
            )))
        for description in firm.get("activity_descriptions", ()):
            self.add_activity_description(key, description["name"], **_pick(description, (
                "id", "rate", "flat_rate", "default",
            )))

    # -- inspection (what tests and the admin API read) ----------------------------------------------------------

    def firm_keys(self) -> list[str]:
        with self._lock:
            return list(self._firms)

    def activities(self, firm: str) -> list[dict[str, Any]]:
        """Every stored activity of a firm, quantity in seconds, references as plain ids."""
        with self._lock:
            return [_activity_dump(a) for a in self._firm(firm).activities.values()]

    def communications(self, firm: str) -> list[dict[str, Any]]:
        with self._lock:
            the_firm = self._firm(firm)
            return [_communication_dump(the_firm, c) for c in the_firm.communications.values()]

    def _checked_fault(self, name: str, value: Any) -> Any:
        if name == "commit_fault_targets":
            value = tuple(value)
            if not set(value) <= set(COMMIT_FAULT_TARGETS):
                raise ValueError(f"commit_fault_targets must be within {COMMIT_FAULT_TARGETS}")
        if name in _FRACTIONS and not 0 <= float(value) <= 1:
            raise ValueError(f"{name} must be between 0 and 1")
        if name in ("burst_429", "slow_seconds") and value < 0:
            raise ValueError(f"{name} must not be negative")
        return value

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return super().stats() | {"by_api_version": dict(self._by_version)}

    def _counters(self) -> list[Counter[str]]:
        return super()._counters() + [self._by_version]

    # -- request admission: auth, rate limit, version, injected 5xx ----------------------------------------------

    def _admit(self, route: str, authorization: str | None, requested_version: str | None) -> _Caller:
        with self._lock:
            self._count_request(route)
            firm, user_id, token = self._authenticate(authorization)
            if self._take_burst_429():
                wait = max(1, int(self.faults.burst_retry_after_seconds))
                # The Manage API's 429: the Error schema plus Retry-After (the {"message": ...} body is the Platform
                # API's).
                raise _ApiError(429, "RateLimited", "Rate limit exceeded. Retry later.", headers={
                    "Retry-After": str(wait), "X-RateLimit-Limit": str(self.rate_limit),
                    "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(math.ceil(self.clock() + wait)),
                })
            headers = self._take_rate_slot(token)
            version = requested_version if requested_version is not None else DEFAULT_API_VERSION
            if version not in SUPPORTED_API_VERSIONS:
                raise _ApiError(410, "GoneError", f"API version {version} is not supported", headers=headers)
            self._by_version[version] += 1
            headers.update(self._version_headers(version))
            if self.faults.fail_next_n_with_5xx > 0:
                self.faults.fail_next_n_with_5xx -= 1
                self._stats["server_errors_injected"] += 1
                raise _ApiError(500, "InternalServerError", "Injected fault", headers=headers)
            if self._take_injected_5xx():
                raise _ApiError(503, "ServiceUnavailableError", "Injected fault: try again later", headers=headers)
            return _Caller(firm=firm, user_id=user_id, version=version, headers=headers)

    def _authenticate(self, authorization: str | None) -> tuple[_Firm, int, str]:
        match = _BEARER.fullmatch(authorization or "")
        if match is None:
            # A missing or malformed header gets the documented Error shape (samples/clio_error_401_unauthorized).
            self._stats["unauthorized"] += 1
            raise _ApiError(401, "UnauthorizedError", "User is not authorized")
        token = match.group(1)
        owner = self._tokens.get(token)
        expiry = self._token_expiry.get(token)
        if expiry is not None and expiry <= self.clock():
            owner = None
        if owner is None:
            # An unknown, expired or revoked token gets the RFC 6750 shape (samples/clio_error_401_invalid_token).
            self._stats["unauthorized"] += 1
            raise _ApiError(
                401, "invalid_token", INVALID_TOKEN_DESCRIPTION,
                body={"error": "invalid_token", "error_description": INVALID_TOKEN_DESCRIPTION},
                headers={"WWW-Authenticate": (
                    f'Bearer error="invalid_token", error_description="{INVALID_TOKEN_DESCRIPTION}"'
                )},
            )
        firm_key, user_id = owner
        return self._firms[firm_key], user_id, token

    def _take_rate_slot(self, token: str) -> dict[str, str]:
        now = self.clock()
        slot = fixed_window_slot(self._windows, token, now, self.rate_limit, self.rate_window_seconds)
        reset_at = math.ceil(slot.ends_at)
        headers = {"X-RateLimit-Limit": str(self.rate_limit), "X-RateLimit-Reset": str(reset_at)}
        if not slot.admitted:
            # A refused request neither counts against the window nor reaches a handler.
            self._stats["rate_limited"] += 1
            headers["X-RateLimit-Remaining"] = "0"
            headers["Retry-After"] = str(max(1, math.ceil(reset_at - now)))
            raise _ApiError(429, "RateLimited", "Rate limit exceeded. Retry later.", headers=headers)
        headers["X-RateLimit-Remaining"] = str(self.rate_limit - slot.used)
        return headers

    def _version_headers(self, version: str) -> dict[str, str]:
        echo = self.faults.echo_api_version
        if echo is None:
            return {"X-API-VERSION": version}
        return {"X-API-VERSION": echo} if echo else {}

    def _count_oauth(self, route: str) -> None:
        with self._lock:
            self._stats["oauth_requests"] += 1
            self._by_route[route] += 1

    def _take_commit_fault(self, target: str) -> tuple[bool, float]:
        """(drop the connection?, seconds to wait) for a write that has just been committed."""
        with self._lock:
            if target not in self.faults.commit_fault_targets:
                return False, 0.0
            if self.faults.drop_after_commit_n > 0:
                self.faults.drop_after_commit_n -= 1
                self._stats["dropped_after_commit"] += 1
                return True, 0.0
            if self._chance(self.faults.drop_after_commit_fraction):
                self._stats["dropped_after_commit"] += 1
                return True, 0.0
            return False, float(self.faults.delay_after_commit_seconds)

    # -- helpers --------------------------------------------------------------------------------------------------

    def _claim_id(self, wanted: int | None) -> int:
        # Clio ids are unique across accounts, so one pool of ids serves every firm.
        if wanted is None:
            return self._next_id()
        if int(wanted) in self._used_ids:
            raise ValueError(f"id {wanted} is already taken")
        self._used_ids.add(int(wanted))
        return int(wanted)

    def _next_id(self) -> int:
        candidate = next(self._ids)
        while candidate in self._used_ids:
            candidate = next(self._ids)
        self._used_ids.add(candidate)
        return candidate

    def _etag(self, record_id: int) -> str:
        digest = hashlib.md5(f"{record_id}:{next(self._etag_versions)}".encode()).hexdigest()
        return f'"{digest}"'

    def _stamp(self, record: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        record.update(etag=self._etag(record["id"]), created_at=now, updated_at=now)
        return record

    def _touch(self, record: dict[str, Any]) -> None:
        record.update(etag=self._etag(record["id"]), updated_at=self._now())

    def _phone_record(self, phone: str | Mapping[str, Any], first: bool) -> dict[str, Any]:
        spec = {"number": phone} if isinstance(phone, str) else dict(phone)
        return self._stamp({
            "id": self._claim_id(spec.get("id")), "name": spec.get("name", "Work"), "number": spec["number"],
            "primary": bool(spec.get("primary", first)),
        })


_STATUS_EVENTS = {"Open": "matter_opened", "Pending": "matter_pended", "Closed": "matter_closed"}


def webhook_signature(secret: str, body: bytes) -> str:
    """UNCONFIRMED (billing-apis.md §1.9): Clio does not document the encoding of X-Hook-Signature; the fake
    sends the hex digest of HMAC-SHA256(shared secret, raw body)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _handshake_body(webhook: Mapping[str, Any]) -> dict[str, Any]:
    """UNCONFIRMED (billing-apis.md §1.9): the handshake is documented as a POST with X-Hook-Secret "and the
    webhook id", not its body; the fake sends {"data": {"id": <webhook id>}}."""
    return {"data": {"id": webhook["id"]}}


def _oauth_error(status: int, error: str, description: str) -> _ApiError:
    """UNCONFIRMED: Clio's token-endpoint errors are not in the reference; the fake uses RFC 6749 §5.2."""
    return _ApiError(status, error, description, body={"error": error, "error_description": description},
                     headers={"Cache-Control": "no-store"})


def effective_rate(
    firm: _Firm, description: Mapping[str, Any], matter: Mapping[str, Any] | None, user: Mapping[str, Any],
) -> dict[str, Any]:
    """The rate_for answer of one activity description, as {amount, non_billable_amount, type, hierarchy}.

    Precedence from Clio's help centre ("Rates and Rate Hierarchies", help.clio.com article 9289801180187; not
    in billing-apis.md): flat-rate activity category > matter rate > client rate > activity category custom
    rate > user default rate. Among several matching matter (or client) rates the highest wins, as Clio's
    support article 203142764 says of conflicting group rates. Group rates are not modelled.
    """
    own = description.get("_rate")
    if description.get("category_type") == "flat":
        return _rate(own, "FlatRate", "Activity")
    matter_rates = [
        r["rate"] for r in (matter or {}).get("_custom_rates", ())
        if r["user_id"] in (None, user["id"]) and r["activity_description_id"] in (None, description["id"])
    ]
    if matter_rates:
        return _rate(max(matter_rates), "Custom", "Matter")
    client_id = (matter or {}).get("_client_id")
    client_rates = [
        r["rate"] for r in firm.client_rates if r["contact_id"] == client_id and r["user_id"] in (None, user["id"])
    ]
    if client_id is not None and client_rates:
        return _rate(max(client_rates), "Custom", "Client")
    if own is not None:
        return _rate(own, "Custom", "Activity")
    return _rate(user.get("rate"), "User", "Default")


def _rate(amount: Decimal | None, kind: str, hierarchy: str) -> dict[str, Any]:
    return {"amount": amount, "non_billable_amount": Decimal("0.0"), "type": kind, "hierarchy": hierarchy}


def _webhook_dump(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"], "url": record["url"], "model": record["model"], "events": list(record["events"]),
        "fields": record["fields"], "status": record["status"], "expires_at": record["expires_at"].isoformat(),
        "shared_secret": record["shared_secret"],
    }


def _pick(source: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    return {name: source[name] for name in names if name in source}


def load_seed(path: str | Path) -> FakeClioState:
    """Read a seed file (JSON) into a fresh state.

    {
      "rate_limit": {"limit": 50, "window_seconds": 60},            # optional
      "firms": [{
        "key": "acme", "name": "Acme Law LLP", "account_id": 9001,   # account_id optional
        "users": [{"id": 101, "name": "Alex Attorney", "rate": "350.00", "time_zone": "America/New_York",
                   "phone_number": "+16175550100", "enabled": true, "subscription_type": "Attorney",
                   "email": "alex@acme.example", "tokens": ["acme-token-1"]}],
        "contacts": [{"id": 201, "name": "Jane Client", "type": "Person", "is_client": true,
                      "phone_numbers": ["(617) 555-0142", {"name": "Mobile", "number": "617.555.0199"}]}],
        "matters": [{"id": 301, "display_number": "00001-Client", "description": "Client v. Acme",
                     "status": "Open", "client_id": 201, "responsible_attorney_id": 101}],
        "activity_descriptions": [{"id": 401, "name": "Telephone call"}]
      }]
    }
    Every id is optional (one counter assigns ids across all firms). A bare phone-number string means
    name "Work", and the first number of a contact is primary unless `primary` says otherwise.
    """
    return FakeClioState.from_seed(_loads(Path(path).read_bytes()))


# ---------------------------------------------------------------------------------------------------------------
# Fields, rendering and dumps


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _quantity_out(seconds: Decimal, version: str) -> Decimal:
    if _version_tuple(version) < FIRST_SECONDS_VERSION:
        return seconds / 3600
    return seconds


def _quantity_in(value: Decimal, version: str) -> Decimal:
    if _version_tuple(version) < FIRST_SECONDS_VERSION:
        return value * 3600
    return value


def _split_top_level(raw: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in raw:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise _ApiError(400, "BadRequestError", "Unbalanced braces in fields")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise _ApiError(400, "BadRequestError", "Unbalanced braces in fields")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_fields(raw: str | None, kind: str) -> tuple[tuple[str, Any], ...]:
    """A `fields=` value as ((name, sub-spec or None), ...); only one nesting level may name fields."""
    if raw is None or not raw.strip():
        return _DEFAULT_SPEC
    spec = []
    for item in _split_top_level(raw):
        name, brace, rest = item.partition("{")
        name = name.strip()
        if not brace:
            _check_field(kind, name)
            spec.append((name, None))
            continue
        if name not in _NESTED[kind]:
            raise _ApiError(400, "BadRequestError", f"Invalid field: {name} is not a nested resource of {kind}")
        inner = rest[:-1]
        if "{" in inner or "}" in inner:
            raise _ApiError(400, "BadRequestError", "Fields may only be nested one level deep")
        target = _NESTED[kind][name]
        sub = tuple(s.strip() for s in inner.split(",") if s.strip())
        for sub_name in sub:
            _check_field(target, sub_name)
        spec.append((name, tuple((s, None) for s in sub) or _DEFAULT_SPEC))
    return tuple(spec)


def _check_field(kind: str, name: str) -> None:
    if name not in _FIELDS[kind] and name not in _NESTED[kind]:
        raise _ApiError(400, "BadRequestError", f"Invalid field: {name}")


class _View:
    """Renders stored records of one firm as one API version shows them."""

    def __init__(
        self, firm: _Firm, version: str,
        rate_for: tuple[Mapping[str, Any] | None, Mapping[str, Any]] | None = None,
    ) -> None:
        self.firm = firm
        self.version = version
        self.rate_for = rate_for  # (matter or None, user) whose rates activity descriptions show

    def render(self, kind: str, record: Mapping[str, Any], spec: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, sub in spec:
            if name in _NESTED[kind]:
                out[name] = self._render_nested(_NESTED[kind][name], self._nested(kind, record, name), sub)
            else:
                out[name] = self._scalar(kind, record, name)
        return out

    def _render_nested(self, kind: str, value: Any, sub: Any) -> Any:
        # A nested resource named without braces, or a second level, shows only its default fields.
        spec = sub if sub is not None else _DEFAULT_SPEC
        if value is None:
            return None
        if isinstance(value, list):
            return [self.render(kind, v, spec) for v in value]
        return self.render(kind, value, spec)

    def _nested(self, kind: str, record: Mapping[str, Any], name: str) -> Any:
        firm = self.firm
        if kind == "user" and name == "account":
            return {"id": firm.account_id, "etag": f'"{firm.account_id}"', "name": firm.name}
        if kind == "contact" and name == "phone_numbers":
            return list(record["_phone_numbers"])
        if kind == "communication" and name == "external_properties":
            return list(record["_external_properties"])
        table = {
            "client": firm.contacts, "responsible_attorney": firm.users, "matter": firm.matters,
            "user": firm.users, "communication": firm.communications,
            "activity_description": firm.activity_descriptions,
        }[name]
        ref = record.get(f"_{name}_id")
        return table.get(ref) if ref is not None else None

    def _scalar(self, kind: str, record: Mapping[str, Any], name: str) -> Any:
        special = getattr(self, f"_{kind}_{name}", None)
        return special(record) if special else record.get(name)

    def _user_time_zone(self, record: Mapping[str, Any]) -> Any:
        return render_time_zone(record.get("time_zone"))

    def _contact_primary_phone_number(self, record: Mapping[str, Any]) -> Any:
        return next((p["number"] for p in record["_phone_numbers"] if p["primary"]), None)

    def _contact_secondary_phone_number(self, record: Mapping[str, Any]) -> Any:
        return next((p["number"] for p in record["_phone_numbers"] if not p["primary"]), None)

    def _matter_client_id(self, record: Mapping[str, Any]) -> Any:
        return record.get("_client_id")

    def _activity_description_rate(self, record: Mapping[str, Any]) -> Any:
        if self.rate_for is None:
            return None
        matter, user = self.rate_for
        return effective_rate(self.firm, record, matter, user)

    def _webhook_events(self, record: Mapping[str, Any]) -> list[str]:
        return list(record["events"])

    def _communication_time_entries_count(self, record: Mapping[str, Any]) -> int:
        return sum(
            1 for a in self.firm.activities.values()
            if a["_communication_id"] == record["id"] and a["type"] == "TimeEntry"
        )

    def _activity_quantity(self, record: Mapping[str, Any]) -> Decimal:
        return _quantity_out(record["_seconds"], self.version)

    _activity_rounded_quantity = _activity_quantity  # the fake applies no firm rounding increment

    def _activity_quantity_in_hours(self, record: Mapping[str, Any]) -> Decimal:
        return record["_seconds"] / 3600

    _activity_rounded_quantity_in_hours = _activity_quantity_in_hours

    def _activity_quantity_redacted(self, record: Mapping[str, Any]) -> bool:
        return False

    def _activity_total(self, record: Mapping[str, Any]) -> Decimal:
        return (record["price"] * record["_seconds"] / 3600).quantize(Decimal("0.01"))

    def _activity_non_billable_total(self, record: Mapping[str, Any]) -> Decimal:
        return self._activity_total(record) if record["non_billable"] else Decimal("0.0")


def _activity_dump(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"], "type": record["type"], "date": record["date"].isoformat(),
        "quantity": record["_seconds"], "price": record["price"], "note": record["note"],
        "matter_id": record["_matter_id"], "user_id": record["_user_id"],
        "communication_id": record["_communication_id"],
        "activity_description_id": record["_activity_description_id"],
        "non_billable": record["non_billable"], "no_charge": record["no_charge"],
        "created_at": record["created_at"].isoformat(),
    }


def _communication_dump(firm: _Firm, record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"], "type": record["type"], "subject": record["subject"], "body": record["body"],
        "date": record["date"].isoformat() if record["date"] else None,
        "received_at": record["received_at"].isoformat() if record["received_at"] else None,
        "matter_id": record["_matter_id"], "user_id": record["_user_id"],
        "external_properties": [{"name": p["name"], "value": p["value"]} for p in record["_external_properties"]],
        "time_entry_ids": [
            a["id"] for a in firm.activities.values()
            if a["_communication_id"] == record["id"] and a["type"] == "TimeEntry"
        ],
        "created_at": record["created_at"].isoformat(),
    }


# ---------------------------------------------------------------------------------------------------------------
# Index endpoints


@dataclass(frozen=True)
class _ListSpec:
    kind: str
    table: str
    filters: tuple[str, ...]
    max_limit: int = 200


_LIST_SPECS = {
    "users": _ListSpec("user", "users", ("enabled", "subscription_type", "updated_since"), max_limit=2000),
    "contacts": _ListSpec("contact", "contacts", ("updated_since", "type", "client_only")),
    "matters": _ListSpec("matter", "matters", ("updated_since", "status", "client_id")),
    "activities": _ListSpec("activity", "activities", ("communication_id", "matter_id", "type", "user_id")),
    "communications": _ListSpec(
        "communication", "communications",
        ("external_property_name", "external_property_value", "type", "matter_id"),
    ),
    "activity_descriptions": _ListSpec(
        "activity_description", "activity_descriptions",
        ("type", "flat_rate", "updated_since", "rate_for[matter_id]", "rate_for[user_id]"),
    ),
    "utbms_codes": _ListSpec("utbms_code", "utbms_codes", ("type", "utbms_set_id")),
    "webhooks": _ListSpec("webhook", "webhooks", ()),
}
_PAGING_PARAMS = frozenset({"fields", "limit", "order", "page_token"})


def _list_page(state: FakeClioState, caller: _Caller, request: Request, resource: str) -> dict[str, Any]:
    spec = _LIST_SPECS[resource]
    params = request.query_params
    unknown = set(params) - _PAGING_PARAMS - set(spec.filters)
    if unknown:
        # Real Clio has more filters; the fake refuses rather than silently ignoring one it does not implement.
        raise _ApiError(400, "BadRequestError", f"Unsupported parameter(s): {', '.join(sorted(unknown))}")
    fields = parse_fields(params.get("fields"), spec.kind)
    limit = _int_param(params.get("limit"), "limit", default=spec.max_limit, low=1, high=spec.max_limit)
    if params.get("order", "id(asc)") != "id(asc)":
        raise _ApiError(400, "BadRequestError", "The fake supports only order=id(asc)")
    after = _decode_page_token(params.get("page_token"))
    predicate = _filter_for(resource, params)
    with state._lock:
        rate_for = _rate_context(caller, params) if resource == "activity_descriptions" else None
        view = _View(caller.firm, caller.version, rate_for)
        table = getattr(caller.firm, spec.table)
        rows = [r for _, r in sorted(table.items()) if r["id"] > after and predicate(view, r)]
        page = rows[:limit]
        data = [view.render(spec.kind, r, fields) for r in page]
    paging: dict[str, str] = {}
    if len(rows) > limit:
        token = _encode_page_token(page[-1]["id"])
        paging["next"] = str(request.url.include_query_params(page_token=token))
    if after:
        paging["previous"] = str(request.url.remove_query_params("page_token"))
    return {"data": data, "meta": {"paging": paging}}


def _rate_context(caller: _Caller, params: Mapping[str, str]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(matter, user) for rate_for[...]: "If [user_id is] not provided, the user associated to the API request is
    assumed" (OpenAPI text in samples/billing/clio_activity_descriptions_rate_for_response.src.txt)."""
    firm = caller.firm
    matter = None
    if "rate_for[matter_id]" in params:
        matter = firm.matters.get(_id_param(params["rate_for[matter_id]"], "rate_for[matter_id]"))
        if matter is None:
            raise _ApiError(404, "NotFoundError", "rate_for[matter_id] is not a matter of this account")
    user_id = caller.user_id
    if "rate_for[user_id]" in params:
        user_id = _id_param(params["rate_for[user_id]"], "rate_for[user_id]")
        if user_id not in firm.users:
            raise _ApiError(404, "NotFoundError", "rate_for[user_id] is not a user of this account")
    return matter, firm.users[user_id]


def _int_param(raw: str | None, name: str, *, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(400, "BadRequestError", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise _ApiError(400, "BadRequestError", f"{name} must be between {low} and {high}")
    return value


def _encode_page_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def _decode_page_token(raw: str | None) -> int:
    if not raw:
        return 0
    try:
        padded = raw + "=" * (-len(raw) % 4)
        return int(json.loads(base64.urlsafe_b64decode(padded))["after"])
    except (ValueError, KeyError, TypeError):
        raise _ApiError(400, "BadRequestError", "Invalid page_token") from None


def _parse_since(raw: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise _ApiError(400, "BadRequestError", "updated_since must be an ISO-8601 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _id_param(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise _ApiError(400, "BadRequestError", f"{name} must be an integer id") from None


def _filter_for(resource: str, params: Mapping[str, str]) -> Callable[[_View, Mapping[str, Any]], bool]:
    checks: list[Callable[[_View, Mapping[str, Any]], bool]] = []
    if "updated_since" in params:
        since = _parse_since(params["updated_since"])
        # Inclusive: Clio's docs do not say, and inclusive never loses a change at the boundary.
        checks.append(lambda v, r: r["updated_at"] >= since)
    checks.extend(_RESOURCE_FILTERS[resource](params))
    return lambda view, record: all(check(view, record) for check in checks)


def _user_filters(params: Mapping[str, str]) -> list[Callable[[_View, Mapping[str, Any]], bool]]:
    checks = []
    if "enabled" in params:
        wanted = params["enabled"].lower() == "true"
        checks.append(lambda v, r: r["enabled"] == wanted)
    if "subscription_type" in params:
        kind = params["subscription_type"].lower()
        checks.append(lambda v, r: r["subscription_type"].lower() == kind)
    return checks


def _contact_filters(params: Mapping[str, str]) -> list[Callable[[_View, Mapping[str, Any]], bool]]:
    checks = []
    if "type" in params:
        checks.append(lambda v, r: r["type"] == params["type"])
    if params.get("client_only", "").lower() == "true":
        checks.append(lambda v, r: r["is_client"])
    return checks


def _matter_filters(params: Mapping[str, str]) -> list[Callable[[_View, Mapping[str, Any]], bool]]:
    checks = []
    if "status" in params:
        statuses = {s.strip() for s in params["status"].split(",") if s.strip()}
        if not statuses <= set(_MATTER_STATUSES):
            raise _ApiError(400, "BadRequestError", "status must be a comma list of open, pending, closed")
        wanted = {_MATTER_STATUSES[s] for s in statuses}
        checks.append(lambda v, r: r["status"] in wanted)
    if "client_id" in params:
        client_id = _id_param(params["client_id"], "client_id")
        checks.append(lambda v, r: r["_client_id"] == client_id)
    return checks


def _activity_filters(params: Mapping[str, str]) -> list[Callable[[_View, Mapping[str, Any]], bool]]:
    checks = []
    for name in ("communication_id", "matter_id", "user_id"):
        if name in params:
            wanted = _id_param(params[name], name)
            checks.append(lambda v, r, key=f"_{name}", wanted=wanted: r[key] == wanted)
    if "type" in params:
        checks.append(lambda v, r: r["type"] == params["type"])
    return checks


def _communication_filters(params: Mapping[str, str]) -> list[Callable[[_View, Mapping[str, Any]], bool]]:
    checks = []
    name, value = params.get("external_property_name"), params.get("external_property_value")
    if name is not None or value is not None:
        checks.append(lambda v, r: any(
            (name is None or p["name"] == name) and (value is None or p["value"] == value)
            for p in r["_external_properties"]
        ))
    if "type" in params:
        checks.append(lambda v, r: r["type"] == params["type"])
    if "matter_id" in params:
        matter_id = _id_param(params["matter_id"], "matter_id")
        checks.append(lambda v, r: r["_matter_id"] == matter_id)
    return checks


def _activity_description_filters(params: Mapping[str, str]) -> list[Callable[[_View, Mapping[str, Any]], bool]]:
    checks = []
    if "type" in params:
        if params["type"] not in ("utbms", "clio"):
            raise _ApiError(400, "BadRequestError", "type must be utbms or clio")
        checks.append(lambda v, r: r["type"] == params["type"])
    if "flat_rate" in params:
        flat = params["flat_rate"].lower() == "true"
        checks.append(lambda v, r: (r["category_type"] == "flat") == flat)
    return checks


def _utbms_code_filters(params: Mapping[str, str]) -> list[Callable[[_View, Mapping[str, Any]], bool]]:
    checks = []
    if "type" in params:
        checks.append(lambda v, r: r["type"] == params["type"])
    if "utbms_set_id" in params:
        set_id = _id_param(params["utbms_set_id"], "utbms_set_id")
        checks.append(lambda v, r: r["utbms_set_id"] == set_id)
    return checks


_RESOURCE_FILTERS = {
    "users": _user_filters,
    "contacts": _contact_filters,
    "matters": _matter_filters,
    "activities": _activity_filters,
    "communications": _communication_filters,
    "activity_descriptions": _activity_description_filters,
    "utbms_codes": _utbms_code_filters,
    "webhooks": lambda params: [],
}


# ---------------------------------------------------------------------------------------------------------------
# Create endpoints


async def _read_data(request: Request) -> dict[str, Any]:
    try:
        body = _loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise _ApiError(400, "BadRequestError", "The request body is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise _ApiError(422, "UnprocessableEntityError", "The request body must be {\"data\": {...}}")
    return body["data"]


def _unprocessable(message: str) -> _ApiError:
    return _ApiError(422, "UnprocessableEntityError", message)


def _reject_unknown(data: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise _unprocessable(f"Unknown or read-only attribute(s): {', '.join(sorted(unknown))}")


def _ref_id(data: Mapping[str, Any], name: str, table: Mapping[int, Any], *, required: bool) -> int | None:
    if name not in data:
        if required:
            raise _unprocessable(f"{name} is required")
        return None
    ref = data[name]
    if not isinstance(ref, dict) or not isinstance(ref.get("id"), int) or isinstance(ref.get("id"), bool):
        raise _unprocessable(f"{name} must be an object with an integer id")
    if ref["id"] not in table:
        raise _unprocessable(f"{name} {ref['id']} does not exist")
    return ref["id"]


def _date_value(data: Mapping[str, Any], name: str, *, required: bool) -> date | None:
    raw = data.get(name)
    if raw is None:
        if required:
            raise _unprocessable(f"{name} is required")
        return None
    try:
        return date.fromisoformat(raw)
    except (TypeError, ValueError):
        raise _unprocessable(f"{name} must be an ISO-8601 date") from None


def _datetime_value(data: Mapping[str, Any], name: str) -> datetime | None:
    raw = data.get(name)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except (TypeError, ValueError):
        raise _unprocessable(f"{name} must be an ISO-8601 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _number_value(data: Mapping[str, Any], name: str) -> Decimal | None:
    raw = data.get(name)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)):
        raise _unprocessable(f"{name} must be a number")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise _unprocessable(f"{name} must be a number") from None
    if not value.is_finite():
        raise _unprocessable(f"{name} must be a number")
    return value


def _bool_value(data: Mapping[str, Any], name: str) -> bool:
    raw = data.get(name, False)
    if not isinstance(raw, bool):
        raise _unprocessable(f"{name} must be true or false")
    return raw


def _create_activity(state: FakeClioState, caller: _Caller, data: Mapping[str, Any]) -> dict[str, Any]:
    _reject_unknown(data, _ACTIVITY_WRITABLE)
    if data.get("type") not in _ACTIVITY_TYPES:
        raise _unprocessable("type is required and must be one of " + ", ".join(sorted(_ACTIVITY_TYPES)))
    entry_date = _date_value(data, "date", required=True)
    quantity = _number_value(data, "quantity")
    if data["type"] == "TimeEntry" and (quantity is None or quantity <= 0):
        raise _unprocessable("quantity must be greater than 0")
    price = _number_value(data, "price")
    if price is not None and price < 0:
        raise _unprocessable("price must not be negative")
    if "note" in data and not isinstance(data["note"], (str, type(None))):
        raise _unprocessable("note must be a string")
    firm = caller.firm
    with state._lock:
        matter_id = _ref_id(data, "matter", firm.matters, required=False)
        user_id = _ref_id(data, "user", firm.users, required=False) or caller.user_id
        description_id = _activity_description_ref(state, firm, data)
        if price is None:
            # Without a price the rate hierarchy applies (likely Clio behaviour, UNCONFIRMED on create, §1.7).
            description = firm.activity_descriptions.get(description_id) or {"id": None, "category_type": "hourly"}
            price = effective_rate(firm, description, firm.matters.get(matter_id), firm.users[user_id])["amount"]
        record = state._stamp({
            "id": state._next_id(), "type": data["type"], "date": entry_date,
            "_seconds": _quantity_in(quantity or Decimal(0), caller.version),
            "price": price if price is not None else Decimal("0"),
            "note": data.get("note"), "flat_rate": False, "billed": False, "on_bill": False,
            "non_billable": _bool_value(data, "non_billable"), "no_charge": _bool_value(data, "no_charge"),
            "_matter_id": matter_id, "_user_id": user_id,
            "_communication_id": _ref_id(data, "communication", firm.communications, required=False),
            "_activity_description_id": description_id,
        })
        firm.activities[record["id"]] = record
        return record


def _activity_description_ref(state: FakeClioState, firm: _Firm, data: Mapping[str, Any]) -> int | None:
    """`activity_description` as {id} or as UTBMS codes {utbms_activity_id, utbms_task_id} (§1.6, §1.7)."""
    ref = data.get("activity_description")
    if not isinstance(ref, dict) or "id" in ref or ref is None:
        return _ref_id(data, "activity_description", firm.activity_descriptions, required=False)
    if set(ref) != {"utbms_activity_id", "utbms_task_id"}:
        raise _unprocessable("activity_description must be {id} or {utbms_activity_id, utbms_task_id}")
    if not firm.use_utbms_codes:
        raise _unprocessable("UTBMS codes are not enabled for this account (use_utbms_codes)")
    activity = firm.utbms_codes.get(ref["utbms_activity_id"])
    task = firm.utbms_codes.get(ref["utbms_task_id"])
    if activity is None or activity["type"] != "UtbmsActivity" or task is None or task["type"] != "UtbmsTask":
        raise _unprocessable("utbms_activity_id and utbms_task_id must name a UtbmsActivity and a UtbmsTask code")
    for record in firm.activity_descriptions.values():
        if (record["utbms_activity_id"], record["utbms_task_id"]) == (activity["id"], task["id"]):
            return record["id"]
    # UNCONFIRMED: assumed that Clio creates the UTBMS activity description for a new code pair on first use.
    return state.add_activity_description(
        firm.key, f"{activity['code']} {activity['name']}", utbms_activity_id=activity["id"], utbms_task_id=task["id"],
    )


def _create_communication(state: FakeClioState, caller: _Caller, data: Mapping[str, Any]) -> dict[str, Any]:
    _reject_unknown(data, _COMMUNICATION_WRITABLE)
    if data.get("type") not in _COMMUNICATION_TYPES:
        raise _unprocessable("type is required and must be PhoneCommunication or EmailCommunication")
    for name in ("subject", "body"):
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise _unprocessable(f"{name} is required")
    properties = _external_properties(data.get("external_properties", []))
    firm = caller.firm
    with state._lock:
        record = state._stamp({
            "id": state._next_id(), "type": data["type"], "subject": data["subject"], "body": data["body"],
            "date": _date_value(data, "date", required=False), "received_at": _datetime_value(data, "received_at"),
            "_matter_id": _ref_id(data, "matter", firm.matters, required=False), "_user_id": caller.user_id,
            "_external_properties": [
                state._stamp({"id": state._next_id(), "name": n, "value": v}) for n, v in properties
            ],
        })
        firm.communications[record["id"]] = record
        return record


def _external_properties(raw: Any) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        raise _unprocessable("external_properties must be a list")
    if len(raw) > MAX_EXTERNAL_PROPERTIES:
        raise _unprocessable(f"A Communication has a limit of {MAX_EXTERNAL_PROPERTIES} external_properties")
    pairs = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "value" not in item:
            raise _unprocessable("each external property needs a name and a value")
        pairs.append((item["name"], str(item["value"])))
    return pairs


_WEBHOOK_WRITABLE = frozenset({"url", "model", "events", "fields", "expires_at"})
_WEBHOOK_MODEL_IDS = {1: "matter", 6: "contact"}  # "numeric IDs are accepted too (matter=1, contact=6)" (§1.9)
_WEBHOOK_MODELS_DOCUMENTED = frozenset({
    "activity", "bill", "calendar_entry", "clio_payments_payment", "communication", "contact", "document",
    "folder", "matter", "task",
})


def _create_webhook(state: FakeClioState, caller: _Caller, data: Mapping[str, Any]) -> dict[str, Any]:
    _reject_unknown(data, _WEBHOOK_WRITABLE)
    model = _webhook_model(data.get("model"))
    url = _webhook_url(data.get("url"))
    fields = _webhook_fields(data.get("fields"), model)
    events = _webhook_events(data.get("events", sorted(_WEBHOOK_EVENTS[model])), model)
    with state._lock:
        now = state._now()
        record = state._stamp({
            "id": state._next_id(), "url": url, "model": model, "events": events, "fields": fields,
            "status": "pending", "expires_at": _webhook_expiry(data, now) or now + WEBHOOK_DEFAULT_LIFETIME,
            "shared_secret": secrets.token_hex(16),
        })
        caller.firm.webhooks[record["id"]] = record
        state._queue_handshake(record)
        return record


def _update_webhook(state: FakeClioState, caller: _Caller, webhook_id: int, data: Mapping[str, Any]) -> dict[str, Any]:
    _reject_unknown(data, _WEBHOOK_WRITABLE - {"model"})
    with state._lock:
        record = _owned_webhook(caller, webhook_id)
        changes: dict[str, Any] = {}
        if "url" in data:
            changes["url"] = _webhook_url(data["url"])
        if "fields" in data:
            changes["fields"] = _webhook_fields(data["fields"], record["model"])
        if "events" in data:
            changes["events"] = _webhook_events(data["events"], record["model"])
        expiry = _webhook_expiry(data, state._now())
        if expiry is not None:
            changes["expires_at"] = expiry
        record.update(changes)
        state._touch(record)
        if "url" in changes:
            # A new URL needs a new handshake before anything is sent to it (§1.9).
            record["status"] = "pending"
            state._queue_handshake(record)
        return record


def _owned_webhook(caller: _Caller, webhook_id: int) -> dict[str, Any]:
    record = caller.firm.webhooks.get(webhook_id)
    if record is None:
        raise _ApiError(404, "NotFoundError", f"No webhook {webhook_id}")
    return record


def _webhook_model(raw: Any) -> str:
    model = _WEBHOOK_MODEL_IDS.get(raw, raw) if isinstance(raw, int) else raw
    if model in WEBHOOK_MODELS_FAKED:
        return model
    if model in _WEBHOOK_MODELS_DOCUMENTED:
        raise _ApiError(400, "BadRequestError", f"the fake sends webhooks for contact and matter only, not {model}")
    raise _unprocessable("model must be one of " + ", ".join(sorted(_WEBHOOK_MODELS_DOCUMENTED)))


def _webhook_url(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.lower().startswith("https://") or len(raw) <= len("https://"):
        raise _unprocessable("url is required and must be an https URL")
    return raw


def _webhook_fields(raw: Any, model: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _unprocessable("fields is required")
    if len(raw) > 1000:
        raise _unprocessable("fields may be at most 1000 characters")
    parse_fields(raw, model)  # an unknown field is a 400, as on reads
    return raw


def _webhook_events(raw: Any, model: str) -> list[str]:
    allowed = _WEBHOOK_EVENTS[model]
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) and e in allowed for e in raw):
        raise _unprocessable(f"events must be a non-empty list drawn from {', '.join(sorted(allowed))}")
    return list(dict.fromkeys(raw))


def _webhook_expiry(data: Mapping[str, Any], now: datetime) -> datetime | None:
    if data.get("expires_at") is None:
        return None
    expires_at = _datetime_value(data, "expires_at")
    if expires_at <= now:
        raise _unprocessable("expires_at must be in the future")
    if expires_at - now > WEBHOOK_MAX_LIFETIME:
        raise _unprocessable(f"expires_at may be at most {WEBHOOK_MAX_LIFETIME.days} days ahead")
    return expires_at


# ---------------------------------------------------------------------------------------------------------------
# ASGI app


def create_app(state: FakeClioState) -> FastAPI:
    """The fake's FastAPI app: Clio routes under /api/v4 and an admin API under /_fake."""
    app = FastAPI(title="fake Clio Manage API v4", docs_url=None, redoc_url=None, openapi_url=None)

    async def serve(request: Request, route: str, handler: Callable[..., Any]) -> Response:
        try:
            caller = state._admit(
                route, request.headers.get("authorization"), request.headers.get("x-api-version")
            )
        except _ApiError as error:
            return await state._finish(error.response())
        try:
            response = await handler(caller, request)
        except _ApiError as error:
            response = error.response()
        response.headers.update(caller.headers)
        return await state._finish(response)

    def lister(resource: str) -> Callable[..., Any]:
        async def handler(caller: _Caller, request: Request) -> Response:
            return _json_response(200, _list_page(state, caller, request, resource))

        return handler

    def creator(target: str, kind: str, create: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
        async def handler(caller: _Caller, request: Request) -> Response:
            fields = parse_fields(request.query_params.get("fields"), kind)
            record = create(state, caller, await _read_data(request))
            with state._lock:
                payload = {"data": _View(caller.firm, caller.version).render(kind, record, fields)}
            drop, delay = state._take_commit_fault(target)
            if drop:
                return DroppedResponse(201, "fake Clio dropped the connection after committing")
            if delay > 0:
                await asyncio.sleep(delay)
            return _json_response(201, payload)

        return handler

    async def who_am_i(caller: _Caller, request: Request) -> Response:
        fields = parse_fields(request.query_params.get("fields"), "user")
        with state._lock:
            user = caller.firm.users[caller.user_id]
            data = _View(caller.firm, caller.version).render("user", user, fields)
        return _json_response(200, {"data": data})

    async def update_webhook(caller: _Caller, request: Request) -> Response:
        fields = parse_fields(request.query_params.get("fields"), "webhook")
        webhook_id = _id_param(request.path_params["webhook_id"], "id")
        record = _update_webhook(state, caller, webhook_id, await _read_data(request))
        with state._lock:
            return _json_response(200, {"data": _View(caller.firm, caller.version).render("webhook", record, fields)})

    async def activate_webhook(caller: _Caller, request: Request) -> Response:
        with state._lock:
            record = _owned_webhook(caller, _id_param(request.path_params["webhook_id"], "id"))
            given = request.headers.get("x-hook-secret") or ""
            if not hmac.compare_digest(given, record["shared_secret"]):
                raise _unprocessable("X-Hook-Secret does not match this webhook")
            record["status"] = "enabled"
            state._touch(record)
            # UNCONFIRMED: the activate answer's body is not documented; the fake returns the webhook's id and etag.
            return _json_response(200, {"data": {"id": record["id"], "etag": record["etag"]}})

    async def delete_webhook(caller: _Caller, request: Request) -> Response:
        with state._lock:
            record = _owned_webhook(caller, _id_param(request.path_params["webhook_id"], "id"))
            del caller.firm.webhooks[record["id"]]
        return Response(status_code=204)

    routes: list[tuple[str, str, Callable[..., Any]]] = [
        ("GET", "/api/v4/users/who_am_i.json", who_am_i),
        ("GET", "/api/v4/users.json", lister("users")),
        ("GET", "/api/v4/contacts.json", lister("contacts")),
        ("GET", "/api/v4/matters.json", lister("matters")),
        ("GET", "/api/v4/activities.json", lister("activities")),
        ("POST", "/api/v4/activities.json", creator("activities", "activity", _create_activity)),
        ("GET", "/api/v4/communications.json", lister("communications")),
        ("POST", "/api/v4/communications.json", creator("communications", "communication", _create_communication)),
        ("GET", "/api/v4/activity_descriptions.json", lister("activity_descriptions")),
        ("GET", "/api/v4/utbms/codes.json", lister("utbms_codes")),
        ("GET", "/api/v4/webhooks.json", lister("webhooks")),
        ("POST", "/api/v4/webhooks.json", creator("webhooks", "webhook", _create_webhook)),
        ("PATCH", "/api/v4/webhooks/{webhook_id}.json", update_webhook),
        ("DELETE", "/api/v4/webhooks/{webhook_id}.json", delete_webhook),
        ("PUT", "/api/v4/webhooks/{webhook_id}/activate", activate_webhook),
        ("PUT", "/api/v4/webhooks/{webhook_id}/activate.json", activate_webhook),
    ]
    for method, path, handler in routes:
        app.add_api_route(path, bind(serve, f"{method} {path}", handler), methods=[method])

    async def not_found(caller: _Caller, request: Request) -> Response:
        raise _ApiError(404, "NotFoundError", f"No route for {request.method} {request.url.path}")

    app.add_api_route(
        "/api/v4/{rest:path}", bind(serve, "unknown", not_found),
        methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
    )
    _add_oauth_routes(app, state)
    _add_admin_routes(app, state)
    return app


def _add_oauth_routes(app: FastAPI, state: FakeClioState) -> None:
    async def token(request: Request) -> Response:
        state._count_oauth("POST /oauth/token")
        try:
            form = await _read_form(request)
            answer = state._exchange(form)
        except _ApiError as error:
            response = error.response()
        else:
            response = _json_response(200, answer, {"Cache-Control": "no-store", "Pragma": "no-cache"})
        return await state._finish(response)

    async def deauthorize(request: Request) -> Response:
        state._count_oauth("POST /oauth/deauthorize")
        try:
            with state._lock:
                state._authenticate(request.headers.get("authorization"))
            form = await _read_form(request)
            with state._lock:
                grant = state._token_grant.get(form.get("token", ""))
                if grant is not None:
                    state.revoke_grant(grant)
                else:
                    state.revoke_token(form.get("token", ""))
        except _ApiError as error:
            return error.response()
        return _json_response(200, {})

    app.add_api_route("/oauth/token", token, methods=["POST"])
    app.add_api_route("/oauth/deauthorize", deauthorize, methods=["POST"])


async def _read_form(request: Request) -> dict[str, str]:
    """The form body (`application/x-www-form-urlencoded`, as Clio's token endpoint takes, §1.2)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise _oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        return dict(parse_qsl((await request.body()).decode(), strict_parsing=False))
    except (UnicodeDecodeError, ValueError):
        raise _oauth_error(400, "invalid_request", "unreadable form body") from None


def _add_admin_routes(app: FastAPI, state: FakeClioState) -> None:
    def firm_or_404(firm: str) -> None:
        if firm not in state.firm_keys():
            raise _ApiError(404, "NotFoundError", f"no firm {firm!r}")

    async def activities(firm: str) -> Response:
        try:
            firm_or_404(firm)
        except _ApiError as error:
            return error.response()
        return _json_response(200, {"data": state.activities(firm)})

    async def communications(firm: str) -> Response:
        try:
            firm_or_404(firm)
        except _ApiError as error:
            return error.response()
        return _json_response(200, {"data": state.communications(firm)})

    async def get_faults() -> Response:
        return _json_response(200, asdict(state.set_faults()))

    async def post_faults(request: Request) -> Response:
        try:
            changes = _loads(await request.body() or b"{}")
            faults = state.set_faults(**changes)
        except (ValueError, TypeError) as exc:
            return _json_response(400, {"error": {"type": "BadRequestError", "message": str(exc)}})
        return _json_response(200, asdict(faults))

    async def post_rate_limit(request: Request) -> Response:
        body = _loads(await request.body() or b"{}")
        with state._lock:
            state.rate_limit = int(body.get("limit", state.rate_limit))
            state.rate_window_seconds = int(body.get("window_seconds", state.rate_window_seconds))
            return _json_response(200, {"limit": state.rate_limit, "window_seconds": state.rate_window_seconds})

    async def get_stats() -> Response:
        return _json_response(200, state.stats())

    async def delete_stats() -> Response:
        state.reset_stats()
        return Response(status_code=204)

    app.add_api_route("/_fake/firms/{firm}/activities", activities, methods=["GET"])
    app.add_api_route("/_fake/firms/{firm}/communications", communications, methods=["GET"])
    app.add_api_route("/_fake/faults", get_faults, methods=["GET"])
    app.add_api_route("/_fake/faults", post_faults, methods=["POST"])
    app.add_api_route("/_fake/rate_limit", post_rate_limit, methods=["POST"])
    app.add_api_route("/_fake/stats", get_stats, methods=["GET"])
    app.add_api_route("/_fake/stats", delete_stats, methods=["DELETE"])


# ---------------------------------------------------------------------------------------------------------------
# Running it


class FakeClioServer(FakeBillingServer):
    """The fake Clio over HTTP."""

    app_factory = staticmethod(create_app)
    server_name = "fake-clio"
    token_path = "/oauth/token"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a fake Clio Manage API v4 server.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed-file", type=Path, help="JSON seed (see load_seed for the format)")
    parser.add_argument("--rate-limit", type=int, help="requests per window per token (default: seed or 50)")
    args = parser.parse_args(argv)
    state = load_seed(args.seed_file) if args.seed_file else FakeClioState()
    if args.rate_limit is not None:
        state.rate_limit = args.rate_limit
    logging.basicConfig(level=logging.INFO)
    log.info("fake Clio serving firms %s on http://%s:%d", state.firm_keys(), args.host, args.port)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
