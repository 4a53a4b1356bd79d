"""Hostile input for every ingest endpoint, shared by the CI fuzz test
(`tests/e2e/test_webhook_fuzz.py`) and the full-size run (`python -m bench.fuzz_webhooks`).

Two firms are onboarded with all five phone providers on a running ingest service:

* `fuzz-closed` gets only input that must never be stored: random bytes and JSON, deliveries
  truncated at random points, signed with another firm's (or no) secret, stale, naming another
  provider account, over 64 KiB, not UTF-8, nested too deep, and handshakes. Whatever it is
  answered, nothing may be stored or published for it.
* `fuzz-open` gets the providers' own deliveries (from the simulators in `calltime.fakes`) with
  one to three fields deleted or replaced by a wrongly-typed or out-of-range value ("mutated"),
  or with times, counts and numeric ids moved to the edges of their range in the same shape
  ("stretched"), then signed again with the firm's real secret, so they pass authentication and
  reach the parsers. Such an input may be accepted; what it leaves behind must be a well-formed
  call (`call_problems`) that an accepted request named (`verify`).

Each input is a `Plan` that hypothesis draws; it is signed when it is sent (Zoom and Dialpad
signatures carry the time). Every response is checked as it comes back (`response_problems`:
never a 5xx or a dropped connection, the statuses a refusal must have, no storing answer to the
closed firm), the service's state afterwards (`verify`). A set of correctly signed control calls
is placed before and after the fuzzing, so a pipeline that stopped announcing (or an observer that
could not see announcements) fails the run instead of passing it vacuously.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import hmac
import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import asyncpg
import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

from calltime import topics
from calltime.demo.phones import PHONE_SYSTEMS, PhoneFakes, start_phone_fakes
from calltime.demo.stack import FirmSetup, LocalStack, register_firm, stack_credentials
from calltime.demo.watch import read_topic
from calltime.fakes import dialpad as fake_dialpad
from calltime.fakes import graph as fake_graph
from calltime.fakes import ringcentral as fake_ringcentral
from calltime.fakes import vonage as fake_vonage
from calltime.fakes import zoom as fake_zoom
from calltime.fakes.calls import SimulatedCall
from calltime.ingest.providers import vonage as vonage_adapter
from calltime.ingest.providers import zoom as zoom_adapter
from calltime.onboarding import connect_phone_provider

PROVIDERS = ("ringcentral", "graph", "zoom", "dialpad", "vonage")
ROWS = (*PROVIDERS, "ops", "unknown")  # the figures table, one row each
OPEN_FIRM = "fuzz-open"
CLOSED_FIRM = "fuzz-closed"
USER = "700001"  # the firm user at every provider
ATTORNEY = "clio-user-fuzz"
MAX_BODY_BYTES = 64 * 1024
# The contract of an announced call (`call_problems`); see calltime.ingest.providers.model.
MAX_CALL_SECONDS = 7 * 24 * 3600
MAX_CALL_ID_CHARS = 256
DIRECTIONS = frozenset({"inbound", "outbound", "internal"})
RESULTS = frozenset({"answered", "missed", "voicemail", "rejected"})
# Answers of the webhook route that mean "stored": everything but "ignored".
STORING_STATUSES = frozenset({"call-ended", "recorded", "settling", "duplicate", "fetch-scheduled"})
# The operations the fuzz covers; `openapi_gaps` fails when the service grows one it does not.
COVERED_OPERATIONS = frozenset({("POST", "/webhooks/{provider}/{firm_id}"), ("GET", "/healthz"),
                                ("GET", "/readyz"), ("GET", "/metrics")})


@dataclass(frozen=True)
class Firm:
    firm_id: str
    accounts: dict[str, str]  # provider -> the firm's account / tenant / company id
    secrets: dict[str, str]  # provider -> webhook secret (token, clientState, signing key...)


OPEN = Firm(OPEN_FIRM, {p: PHONE_SYSTEMS[p].account_id for p in PROVIDERS},
            {p: PHONE_SYSTEMS[p].secret for p in PROVIDERS})
CLOSED = Firm(CLOSED_FIRM,
              {"ringcentral": "400555", "graph": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
               "zoom": "zoom-acct-closed", "dialpad": "dialpad-company-closed", "vonage": "vbc-account-closed"},
              {p: f"{p}-closed-firm-secret" for p in PROVIDERS})
# Accounts of nobody onboarded here; Dialpad events name no account (providers.md §4.2).
OTHER_ACCOUNTS = {"ringcentral": "400999", "graph": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                  "zoom": "zoom-acct-other", "vonage": "vbc-account-other"}


# --- The providers' own deliveries, as JSON documents ------------------------------------------


class _NoHttp:
    """Stands in for the simulators' HTTP client: only their delivery builders are used here."""

    async def aclose(self) -> None:
        pass


def seed_calls(now: datetime) -> list[SimulatedCall]:
    """Calls of every outcome and direction the providers can express, a few hours ago."""
    base = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    shapes = [("inbound", "answered", 5), ("outbound", "answered", 0), ("inbound", "missed", 0),
              ("inbound", "voicemail", 0), ("outbound", "rejected", 0), ("inbound", "answered", 30)]
    return [SimulatedCall(call_key=f"fuzz-seed-{i}", user_id=USER, external_number=f"+1212555{7000 + i:04d}",
                          direction=direction, started_at=base + timedelta(minutes=10 * i), ring_seconds=4,
                          talk_seconds=90 + i, hold_seconds=hold, outcome=outcome)
            for i, (direction, outcome, hold) in enumerate(shapes)]


def documents(provider: str, account_id: str, secret: str, calls: Iterable[SimulatedCall]) -> list[Any]:
    """Every delivery the provider sends for `calls`, parsed: envelopes (RingCentral, Zoom),
    notification collections (Graph), JWT claims (Dialpad), envelopes with metadata (Vonage)."""
    found: list[Any] = []
    for call in calls:
        if provider == "ringcentral":
            spec = fake_ringcentral.call_spec_for(call, account_id)
            found += fake_ringcentral.notifications_for(spec, "fuzz-subscription")
        elif provider == "graph":
            sim = fake_graph.GraphSimulator("http://127.0.0.1:9/unused", secret, account_id=account_id,
                                            http=_NoHttp(), state=fake_graph.GraphApiState(tenant_id=account_id))
            found += [json.loads(body) for _, body in sim.webhook_requests(call)]
        elif provider == "zoom":
            sim = fake_zoom.ZoomSimulator("http://127.0.0.1:9/unused", secret, account_id=account_id,
                                          generations=fake_zoom.GENERATIONS, realtime=True)
            found += [json.loads(body) for body in sim.event_bodies(call)]
        elif provider == "dialpad":
            sim = fake_dialpad.DialpadSimulator("http://127.0.0.1:9/unused", secret, account_id=account_id,
                                                http=_NoHttp())
            found += sim.events(call)
        elif provider == "vonage":
            sim = fake_vonage.VonageSimulator("http://127.0.0.1:9/unused", secret, account_id=account_id,
                                              http=_NoHttp(), state=fake_vonage.VonageApiState(account_id=account_id))
            found += [json.loads(body) for _, body in sim.webhook_requests(call)]
    return found


@dataclass(frozen=True)
class Material:
    """What the strategies draw from, per provider."""

    open_docs: dict[str, list[Any]]
    closed_docs: dict[str, list[Any]]
    other_docs: dict[str, list[Any]]  # the closed firm's deliveries, but naming another account


def material(now: datetime) -> Material:
    calls = seed_calls(now)
    return Material(
        open_docs={p: documents(p, OPEN.accounts[p], OPEN.secrets[p], calls) for p in PROVIDERS},
        closed_docs={p: documents(p, CLOSED.accounts[p], CLOSED.secrets[p], calls) for p in PROVIDERS},
        other_docs={p: documents(p, OTHER_ACCOUNTS[p], CLOSED.secrets[p], calls) for p in OTHER_ACCOUNTS})


# --- Rendering: a document and a secret become a signed request, at send time -------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as is (numbers `json.dumps` cannot write, e.g. 1e999999999)."""

    text: str


def dumps(document: Any) -> bytes:
    raws: dict[str, str] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            marker = f"@raw{len(raws)}@"
            raws[marker] = value.text
            return marker
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(document), separators=(",", ":"))
    for marker, raw in raws.items():
        text = text.replace(json.dumps(marker), raw)
    return text.encode()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def jws(payload: bytes, secret: str, header: dict[str, Any] | None = None) -> bytes:
    """A compact JWS over the payload bytes exactly as given (they need not be JSON, or UTF-8)."""
    header = {"alg": "HS256", "typ": "JWT"} if header is None else header
    head = _b64url(json.dumps(header, separators=(",", ":")).encode())
    signing_input = f"{head}.{_b64url(payload)}".encode("ascii")
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return signing_input + b"." + _b64url(signature).encode("ascii")


def vonage_signature(event: Any, secret: str) -> str:
    try:
        return vonage_adapter.sign_event(event, secret)
    except (TypeError, ValueError):  # not an object, or text UTF-8 cannot carry: no valid signature exists
        return "0" * 64


def payload(provider: str, document: Any, secret: str | None) -> bytes:
    """The document as the provider signs it: Graph carries its secret in each item
    (`clientState`), Vonage its signature in `metadata` (or, without metadata, a header)."""
    document = copy.deepcopy(document)
    if provider == "graph" and isinstance(document, dict) and isinstance(document.get("value"), list):
        for item in document["value"]:
            if isinstance(item, dict):
                if secret is None:
                    item.pop("clientState", None)
                else:
                    item["clientState"] = secret
    if provider == "vonage" and isinstance(document, dict):
        metadata = document.get("metadata")
        if isinstance(metadata, dict):
            if secret is None:
                metadata.pop("signature", None)
            else:
                metadata["signature"] = vonage_signature(document.get("event"), secret)
    return dumps(document)


def wrap(provider: str, body: bytes, secret: str | None, at: datetime, *, timestamp: str | None = None,
         jws_header: dict[str, Any] | None = None, vonage_document: Any = None) -> tuple[dict[str, str], bytes]:
    """Headers and body of the request carrying `body`, authenticated with `secret` (None: not)."""
    if provider == "ringcentral":
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["Verification-Token"] = secret
        return headers, body
    if provider == "zoom":
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if secret is not None:
            stamp = timestamp if timestamp is not None else str(int(at.timestamp()))
            headers |= {"x-zm-request-timestamp": stamp,
                        "x-zm-signature": zoom_adapter.signature(secret, stamp, body)}
        return headers, body
    if provider == "dialpad":
        return {"Content-Type": "application/jwt"}, (body if secret is None else jws(body, secret, jws_header))
    headers = {"Content-Type": "application/json"}
    if provider == "vonage" and secret is not None and isinstance(vonage_document, dict) \
            and not isinstance(vonage_document.get("metadata"), dict):
        headers[vonage_adapter.SIGNATURE_HEADER] = vonage_signature(vonage_document.get("event"), secret)
    return headers, body


# --- What hypothesis draws ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One request, rendered when sent. `expect`: the statuses it must get (None: any below 500);
    `may_store`: it is signed with the open firm's real secret and may legitimately be stored."""

    kind: str
    row: str  # the figures-table row: a provider, "ops" or "unknown"
    method: str = "POST"
    path: str = ""  # set for ops and unknown paths; else /webhooks/{provider}/{firm}
    provider: str | None = None
    firm: str = CLOSED_FIRM
    query: str = ""
    document: Any = None  # rendered through `payload` ...
    raw: bytes | None = None  # ... unless the payload bytes are given
    secret: str | None = None  # authenticate with this when sent (None: unauthenticated)
    clock_offset: int = 0  # seconds added to the signing time (stale Zoom signatures)
    timestamp: str | None = None  # a Zoom timestamp header as written, instead of the clock
    claims: tuple[tuple[str, Any], ...] = ()  # Dialpad JWT claims; ints are offsets from now
    jws_header: tuple[tuple[str, Any], ...] | None = None
    cut_payload: int | None = None  # truncate the payload before signing it ...
    cut_body: int | None = None  # ... or the signed body (the signature then fails)
    corrupt: bytes | None = None  # inserted into the payload at `corrupt_at` before signing
    corrupt_at: int = 0
    headers: tuple[tuple[str, str], ...] = ()  # added, or replacing the rendered ones
    drop_headers: tuple[str, ...] = ()
    chunked: bool = False  # stream the body without a Content-Length
    expect: frozenset[int] | None = None
    may_store: bool = False

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if k == "secret" or v not in (None, (), "", 0, False)}
        for key in ("document", "raw"):
            if key in shown:
                text = repr(shown[key])
                shown[key] = text if len(text) <= 400 else f"{text[:300]}...<{len(text)} chars>"
        return "Plan(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"

    def render(self, now: datetime) -> tuple[str, str, dict[str, str], bytes]:
        """(method, path with query, headers, body) as sent at `now`."""
        path = self.path or f"/webhooks/{self.provider}/{self.firm}"
        if self.query:
            path = f"{path}?{self.query}"
        if self.provider is None or self.path:
            return self.method, path, dict(self.headers), self.raw or b""
        document = self.document
        if self.claims:
            document = dict(document) if isinstance(document, dict) else {}
            for name, value in self.claims:
                document[name] = int(now.timestamp()) + value if type(value) is int else value
        body = self.raw if self.raw is not None else payload(self.provider, document, self.secret)
        if self.cut_payload is not None:
            body = body[:self.cut_payload]
        if self.corrupt is not None:
            body = body[:self.corrupt_at] + self.corrupt + body[self.corrupt_at:]
        headers, body = wrap(self.provider, body, self.secret, now + timedelta(seconds=self.clock_offset),
                             timestamp=self.timestamp,
                             jws_header=dict(self.jws_header) if self.jws_header is not None else None,
                             vonage_document=document)
        if self.cut_body is not None:
            body = body[:self.cut_body]
        for name in self.drop_headers:
            headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
        for name, value in self.headers:
            headers = {k: v for k, v in headers.items() if k.lower() != name.lower()} | {name: value}
        return self.method, path, headers, body


# Headers that authenticate a request or answer a handshake: the junk-header modifier leaves them
# alone, so it cannot turn a refusal into an acceptance by accident.
_AUTH_HEADERS = frozenset({"verification-token", "validation-token", "x-zm-signature", "x-zm-request-timestamp",
                           "x-von-signature", "content-length", "transfer-encoding", "host"})

ODD_STRINGS = (
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "x\ud83d", "\u202e", "\ufeff", "😀", "٣٤٥", "null", "None",
    "+", "0", "-1", "1e400", "NaN", "../..", "..", ".", "/", "a/b", "%00", "\n", "\r\n", "\t", "\\", '"',
    "a" * 300, "9" * 19, "9" * 30, "-9223372036854775809", "9223372036854775808", "253402300800000",
    "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59Z",
    "2021-02-30T00:00:00Z", "2021-01-01T00:00:00", "2021-01-01T00:00:00.1234567890Z", "2021-01-01",
    "1970-01-01T00:00:00.000+0000", "2021-01-01T25:00:00Z", "endpoint.url_validation", "hangup", "ANSWERED",
    "CALL", "Disconnected", "Answered", "VoiceMail", "internal", "INBOUND", "OUTBOUND", "inbound", "user",
)
ODD_INTS = (0, -1, 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, 10**300,
            253_402_300_799_999, 253_402_300_800_000, 604_800_001, 10**9)
ODD_FLOATS = (0.5, -0.0, 1e308, -1e308, 1.5e-300, float("inf"), float("-inf"), float("nan"))

texts = st.text(max_size=24) | st.sampled_from(ODD_STRINGS)
integers = st.integers(-(2**70), 2**70) | st.sampled_from(ODD_INTS)
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(ODD_FLOATS)
scalars = st.none() | st.booleans() | integers | floats | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(texts, inner, max_size=4), max_leaves=20)
_BY_TYPE: dict[str, st.SearchStrategy] = {
    "null": st.none(), "bool": st.booleans(), "int": integers, "float": floats, "str": texts,
    "list": st.lists(scalars, max_size=3), "object": st.dictionaries(texts, scalars, max_size=3),
}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "list", dict: "object"}.get(type(value), "other")


def _time_variants(text: str) -> list[str]:
    """Same shape, extreme values: the parsers accept the shape, the pipeline must bound the value."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return []
    fraction = text[19:].split("+")[0].split("-")[0].rstrip("Z")
    shifted = []
    for delta in (timedelta(days=-400), timedelta(days=30), timedelta(hours=-1)):
        with contextlib.suppress(OverflowError):  # already at an edge of the calendar
            shifted.append((moment + delta).isoformat())
    return [f"0001-01-01T00:00:00{fraction}+01:00", f"0001-01-01T00:00:00{fraction}Z",
            f"9999-12-31T23:59:59{fraction}-01:00", f"9999-12-31T23:59:59{fraction}Z", *shifted]


def boundary_values(value: Any) -> st.SearchStrategy:
    """Values of the same JSON type at or past the edges of what the field can mean."""
    kind = json_type(value)
    if kind == "str":
        # A time or a number written as text keeps its shape most of the time: the parser takes
        # it, and what comes after the parser has to cope with the value.
        shaped = _time_variants(value) + ([str(v) for v in ODD_INTS] if value.lstrip("-").isdigit() else [])
        anything = st.sampled_from(ODD_STRINGS) | st.text(max_size=40)
        return st.sampled_from(shaped) | st.sampled_from(shaped) | anything if shaped else anything
    if kind == "int":
        return st.sampled_from(ODD_INTS + tuple(v for v in (value * 1000, -value, value + 1) if abs(v) < 10**300))
    if kind == "float":
        return st.sampled_from(ODD_FLOATS)
    if kind == "bool":
        return st.just(not value)
    if kind == "list":
        return st.just([]) | st.just(value * 40) | st.lists(scalars, max_size=3)
    if kind == "object":
        return st.just({}) | st.dictionaries(texts, json_values, max_size=3)
    return json_values


def paths(document: Any, prefix: tuple = ()) -> list[tuple]:
    """Every node's path below the root, in document order."""
    found: list[tuple] = []
    items = document.items() if isinstance(document, dict) else enumerate(document) \
        if isinstance(document, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found += paths(child, (*prefix, key))
    return found


def get_at(document: Any, path: tuple) -> Any:
    for key in path:
        document = document[key]
    return document


def set_at(document: Any, path: tuple, value: Any, *, delete: bool = False) -> Any:
    document = copy.deepcopy(document)
    parent = get_at(document, path[:-1])
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return document


def _is_quantity(value: Any) -> bool:
    if json_type(value) == "int":
        return True
    return isinstance(value, str) and (value.lstrip("-").isdigit() or bool(_time_variants(value)))


@st.composite
def mutated(draw, document: Any) -> Any:
    """One to three edits anywhere in the document: a wrongly-typed value, an edge value of the
    right type, null, a deleted or an added key."""
    for _ in range(draw(st.integers(1, 3))):
        candidates = paths(document)
        if not candidates:
            break
        # Half the time a time, a count or an id-like number: the values calls are built from.
        valued = [p for p in candidates if _is_quantity(get_at(document, p))]
        path = draw(st.sampled_from(valued if valued and draw(st.booleans()) else candidates))
        old = get_at(document, path)
        edit = draw(st.sampled_from(("wrong-type", "wrong-type", "edge", "edge", "null", "delete", "add-key")))
        if edit == "wrong-type":
            kind = draw(st.sampled_from(sorted(set(_BY_TYPE) - {json_type(old)})))
            document = set_at(document, path, draw(_BY_TYPE[kind]))
        elif edit == "edge":
            document = set_at(document, path, draw(boundary_values(old)))
        elif edit == "null":
            document = set_at(document, path, None)
        elif edit == "delete":
            document = set_at(document, path, None, delete=True)
        elif isinstance(old, dict):
            document = set_at(document, (*path, draw(texts)), draw(json_values))
    return document


@st.composite
def stretched(draw, document: Any) -> Any:
    """One or two times, counts or numeric ids moved to the edge of their range, shape kept: the
    parsers accept them, so the call they make has to be judged on its merits."""
    for _ in range(draw(st.integers(1, 2))):
        valued = [p for p in paths(document) if _is_quantity(get_at(document, p))]
        if not valued:
            break
        path = draw(st.sampled_from(valued))
        old = get_at(document, path)
        shaped = (_time_variants(old) or [str(v) for v in ODD_INTS]) if isinstance(old, str) else []
        value = draw(st.sampled_from(shaped) if shaped else boundary_values(old))
        document = set_at(document, path, value)
    return document


header_names = st.sampled_from(("Content-Type", "Content-Encoding", "Accept", "User-Agent", "X-Forwarded-For",
                                "Authorization", "Cookie", "Expect", "Accept-Charset", "X-Custom", "Origin"))
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                        max_size=60) | st.sampled_from(("", "gzip", "br", "application/json", "*/*", "x" * 6000,
                                                        "multipart/form-data; boundary=x", "100-continue"))
content_types = st.sampled_from(("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=z",
                                 "application/json; charset=latin-1", "application/json; charset=utf-16", "",
                                 "application/xml", "application/jwt", "image/png", "application/json"))
# Query strings: only valid percent-escapes so the client sends them as written.
_query_text = st.text(st.sampled_from("abcXYZ019-_.~!$'()*,;:@/?+=&%"), max_size=30).map(
    lambda t: t.replace("%", "%25")) | st.sampled_from(("%FF%FE", "%00", "a=%C3%A9", "a&a=1&a=2", "=", "&&&",
                                                        "x=" + "y" * 3000, "%E2%80%AE"))
queries = st.just("") | st.just("") | _query_text.filter(lambda q: "validationtoken" not in q.lower())


@st.composite
def modifiers(draw) -> dict[str, Any]:
    """Odd headers and query strings, applied to any input: they must change nothing."""
    extra: list[tuple[str, str]] = []
    if draw(st.booleans()):
        extra.append(("Content-Type", draw(content_types)))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(header_names)
        if name.lower() not in _AUTH_HEADERS:
            extra.append((name, draw(header_values)))
    return {"headers": tuple(extra), "query": draw(queries)}


def _with(plan_kwargs: dict[str, Any], mods: dict[str, Any]) -> Plan:
    return Plan(**{**plan_kwargs, "headers": plan_kwargs.get("headers", ()) + mods["headers"],
                   "query": plan_kwargs.get("query") or mods["query"]})


REFUSED = frozenset({400, 401})


def provider_plans(provider: str, stuff: Material) -> st.SearchStrategy[Plan]:
    """Every kind of input aimed at one provider's endpoint, weighted towards the re-signed
    mutations that reach the parsers."""
    closed_docs, open_docs = stuff.closed_docs[provider], stuff.open_docs[provider]
    secret = CLOSED.secrets[provider]
    base = {"row": provider, "provider": provider}
    doc = doc_of
    kinds: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        # Re-signed with the open firm's real secret: passes authentication, exercises the parser.
        "mutated": doc(open_docs).flatmap(mutated).map(
            lambda d: {"kind": "mutated", "document": d, "firm": OPEN_FIRM, "secret": OPEN.secrets[provider],
                       "may_store": True}),
        "stretched": doc(open_docs).flatmap(stretched).map(
            lambda d: {"kind": "stretched", "document": d, "firm": OPEN_FIRM, "secret": OPEN.secrets[provider],
                       "may_store": True}),
        "random-bytes": st.tuples(st.binary(max_size=600), st.booleans()).map(
            lambda v: {"kind": "random-bytes", "raw": v[0], "secret": secret if v[1] else None,
                       "expect": REFUSED}),
        "random-json": st.tuples(json_values, st.booleans()).map(
            lambda v: {"kind": "random-json", "document": v[0], "secret": secret if v[1] else None}),
        # Deeper than the JSON parser recurses, yet under the 64 KiB limit even as a JWS.
        "nested": st.tuples(st.integers(1_000, 6_500), st.sampled_from("[{")).map(
            lambda v: {"kind": "nested", "secret": secret, "expect": REFUSED,
                       "raw": ("[" * 3 * v[0] + "]" * 3 * v[0]).encode() if v[1] == "[" else
                       ('{"a":' * v[0] + "1" + "}" * v[0]).encode()}),
        # Cut before signing (the signature holds, the parser gets a stump) or after (it does not);
        # a signed body's length does not depend on the signing time.
        "truncated": st.tuples(doc(closed_docs), st.floats(0, 1, exclude_max=True), st.booleans()).map(
            lambda v: {"kind": "truncated", "document": v[0], "secret": secret, "expect": REFUSED,
                       **({"cut_payload": int(len(payload(provider, v[0], secret)) * v[1])} if v[2]
                          else {"cut_body": int(len(wrap(provider, payload(provider, v[0], secret), secret,
                                                         datetime.now(timezone.utc))[1]) * v[1])})}),
        "wrong-signature": st.tuples(doc(closed_docs), st.sampled_from(
            (OPEN.secrets[provider], None, "", secret.upper(), secret[:-1], "x" * 200))).map(
            lambda v: {"kind": "wrong-signature", "document": v[0], "secret": v[1], "expect": frozenset({401})}),
        "oversized": st.tuples(doc(closed_docs), st.integers(1, 200_000), st.booleans()).map(
            lambda v: {"kind": "oversized", "secret": secret, "chunked": v[2], "expect": frozenset({413}),
                       "document": _padded(v[0], MAX_BODY_BYTES + v[1])}),
        "non-utf8": st.tuples(doc(closed_docs), st.sampled_from(
            (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\xfe\xff", b"\x80")),
            st.floats(0.05, 0.95)).map(
            lambda v: {"kind": "non-utf8", "document": v[0], "secret": secret, "expect": REFUSED,
                       "corrupt": v[1], "corrupt_at": _inside_string(payload(provider, v[0], secret), v[2])}),
        "unknown-firm": st.tuples(texts, st.sampled_from(("POST", "POST", "GET", "PUT", "DELETE"))).map(
            lambda v: {"kind": "unknown-firm", "method": v[1], "document": closed_docs[0], "secret": secret,
                       "firm": quote(("nobody-" + v[0])[:200], safe="", errors="surrogatepass"),
                       # a firm id ending in "/" is redirected (307) to the path without it
                       "expect": frozenset({307, 400, 404}) if v[1] == "POST" else frozenset({307, 404, 405})}),
    }
    if provider in OTHER_ACCOUNTS:
        kinds["other-account"] = doc(stuff.other_docs[provider]).map(
            lambda d: {"kind": "other-account", "document": d, "secret": secret, "expect": frozenset({403})})
    kinds |= _provider_specific(provider, stuff)
    weights = {"mutated": 6, "stretched": 4, "random-json": 2, "truncated": 2, "wrong-signature": 2}
    choices = [k for k in kinds for _ in range(weights.get(k, 1))]
    return st.tuples(st.sampled_from(choices).flatmap(lambda k: kinds[k]), modifiers()).map(
        lambda v: _with({**base, **v[0]}, v[1]))


def _padded(document: Any, size: int) -> Any:
    """The document grown past `size` bytes by a field no parser reads."""
    padding = "x" * size
    if isinstance(document, dict):
        return {**document, "padding": padding}
    return {"value": document, "padding": padding}


def _inside_string(body: bytes, where: float) -> int:
    """An offset just after an opening quote, roughly `where` through the body."""
    quotes = [i + 1 for i, byte in enumerate(body) if byte == ord('"')]
    return quotes[min(len(quotes) - 1, int(len(quotes) * where))] if quotes else 0


def _provider_specific(provider: str, stuff: Material) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    closed_docs, secret = stuff.closed_docs[provider], CLOSED.secrets[provider]
    if provider == "ringcentral":
        return {"handshake": st.tuples(texts | st.just("t" * 600), st.sampled_from((b"", b" ", b"\r\n"))).map(
            lambda v: {"kind": "handshake", "raw": v[1], "drop_headers": ("Verification-Token",),
                       "headers": (("Validation-Token", _header_safe(v[0])),), "expect": frozenset({200, 400})})}
    if provider == "graph":
        return {"handshake": _query_text.map(
            lambda q: {"kind": "handshake", "query": "validationToken=" + q, "raw": b"", "expect": frozenset({200})})}
    if provider == "zoom":
        stale = st.one_of(st.integers(301, 10**7), st.integers(-(10**7), -301)).map(
            lambda s: {"clock_offset": s}) | st.sampled_from(
            ("", " ", "12a", "-5", "1e9", "٣٤٥", "9" * 30, "0", "1.5", "+1700000000")).map(
            lambda t: {"timestamp": t})
        return {
            "stale": st.tuples(doc_of(closed_docs), stale).map(
                lambda v: {"kind": "stale", "document": v[0], "secret": secret, "expect": frozenset({401}), **v[1]}),
            # A URL validation with any plainToken, signed with the firm's secret or another one.
            "handshake": st.tuples(json_values, st.booleans()).map(
                lambda v: {"kind": "handshake", "secret": secret if v[1] else CLOSED.secrets["dialpad"],
                           "document": {"event": "endpoint.url_validation", "payload": {"plainToken": v[0]},
                                        "event_ts": 1},
                           "expect": frozenset({200, 400}) if v[1] else frozenset({401})}),
        }
    if provider == "dialpad":
        odd = st.sampled_from((Raw("1e999999999"), Raw("-1e999999999"), Raw("1e-999999999"), Raw("1.5"),
                               "1700000000", True, None, [], {}, 10**300, -(10**300)))
        claim_sets = st.one_of(
            st.tuples(st.just("iat"), st.integers(301, 10**9) | st.integers(-(10**9), -301)),
            st.tuples(st.just("exp"), st.integers(-(10**9), -31)),
            st.tuples(st.sampled_from(("iat", "exp")), odd),
        ).map(lambda c: (c,))
        headers = st.sampled_from(({"alg": "none"}, {"alg": "HS512"}, {"alg": "RS256"}, {"alg": "hs256"},
                                   {"alg": "HS256", "crit": ["exp"]}, {}, {"alg": None}, {"alg": ["HS256"]}))
        return {
            "stale": st.tuples(doc_of(closed_docs), claim_sets).map(
                lambda v: {"kind": "stale", "document": v[0], "claims": v[1], "secret": secret,
                           "expect": frozenset({401})}),
            "bad-jws-header": st.tuples(doc_of(closed_docs), headers).map(
                lambda v: {"kind": "wrong-signature", "document": v[0], "secret": secret,
                           "jws_header": tuple(v[1].items()), "expect": frozenset({401})}),
        }
    return {}


def doc_of(docs: list[Any]) -> st.SearchStrategy:
    return st.sampled_from(docs)


def _header_safe(text: str) -> str:
    """A header value h11 will send: printable Latin-1, no leading/trailing blanks."""
    kept = "".join(c for c in text if 0x20 <= ord(c) <= 0xFF and c != "\x7f").strip()
    return kept or "t"


OPS_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc")


def ops_plans() -> st.SearchStrategy[Plan]:
    """The operations endpoints with odd methods, query strings, headers and bodies."""
    def plan(v) -> Plan:
        (path, method, body), mods = v
        # FastAPI routes answer HEAD with 405 unless it is declared; either is a fine answer.
        expect = {"GET": {200}, "HEAD": {200, 405}}.get(method, {405})
        return _with({"kind": "ops", "row": "ops", "path": path, "method": method, "raw": body,
                      "expect": frozenset(expect)}, mods)
    return st.tuples(st.tuples(st.sampled_from(OPS_PATHS), st.sampled_from(
        ("GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")),
        st.binary(max_size=64)), modifiers()).map(plan)


def unknown_plans() -> st.SearchStrategy[Plan]:
    """Paths no route serves: never a 2xx, never a 5xx."""
    segment = st.text(min_size=1, max_size=30).map(lambda t: quote(t, safe="", errors="surrogatepass"))
    prefixes = st.sampled_from(("", "/webhooks", "/webhooks/ringcentral", "/healthz", "/metrics", "/x",
                                "/webhooks/ringcentral/fuzz-open/extra", "/..", "/%2e%2e"))

    def plan(v) -> Plan:
        (prefix, parts, method), mods = v
        path = prefix + "/" + "/".join(["zz-" + parts[0], *parts[1:]])
        return _with({"kind": "unknown-path", "row": "unknown", "path": path, "method": method,
                      "expect": frozenset(range(300, 500))}, mods)
    return st.tuples(st.tuples(prefixes, st.lists(segment, min_size=1, max_size=4),
                               st.sampled_from(("GET", "POST", "PUT", "DELETE"))), modifiers()).map(plan)


# --- Sending and judging ---------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int | None
    body: bytes = b""
    error: str | None = None
    content_type: str = ""
    query_sent: bytes = b""
    reset: str | None = None  # the first attempt's connection failed (then sent again, fresh)


@dataclass
class Tally:
    """Figures per table row, and what the verification needs to know about accepted inputs."""

    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    kinds: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    accepted: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    resets: Counter = field(default_factory=Counter)  # kind of the request before a reset
    previous: str = "-"
    facts: dict[str, int] = field(default_factory=dict)  # what the service holds afterwards

    def add(self, plan: Plan, outcome: Outcome) -> None:
        key = outcome.status if outcome.status is not None else "error"
        self.statuses[plan.row][key] += 1
        self.kinds[plan.row][plan.kind] += 1
        if outcome.reset:
            self.resets[self.previous] += 1
        self.previous = f"{plan.row}/{plan.kind}"

    @property
    def sent(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    def table(self) -> str:
        lines = [f"{'endpoint':<12} {'inputs':>7} {'2xx':>6} {'4xx':>6} {'5xx':>4} {'errors':>6}  4xx by status"]
        for row in ROWS:
            counts = self.statuses.get(row, Counter())
            ok = sum(n for s, n in counts.items() if isinstance(s, int) and 200 <= s < 300)
            client = dict(sorted((s, n) for s, n in counts.items() if isinstance(s, int) and 400 <= s < 500))
            server = sum(n for s, n in counts.items() if isinstance(s, int) and s >= 500)
            other = sum(n for s, n in counts.items() if isinstance(s, int) and 300 <= s < 400)
            note = f"  (3xx: {other})" if other else ""
            lines.append(f"{row:<12} {sum(counts.values()):>7} {ok:>6} {sum(client.values()):>6} {server:>4}"
                         f" {counts.get('error', 0):>6}  {client}{note}")
        if self.resets:
            lines.append(f"connections closed by the server and retried, by the request before: {dict(self.resets)}")
        return "\n".join(lines)


class Sender:
    """Sends plans one at a time over a keep-alive connection (a new one after any failure)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.http = httpx.Client(base_url=base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def send(self, plan: Plan) -> Outcome:
        """One answer. A keep-alive connection the server closed under us is retried once on a
        fresh one (any HTTP client does); the outcome says so, and a second failure is one."""
        method, path, headers, body = plan.render(datetime.now(timezone.utc))
        # A field value has no leading or trailing blanks (RFC 9110 §5.5): a client cannot send them.
        raw_headers = [(name, value.strip(" \t").encode("latin-1", "replace")) for name, value in headers.items()]
        reset = None
        for _ in range(2):
            content: Any = body
            if plan.chunked:
                content = iter([body[i:i + 16_384] for i in range(0, len(body), 16_384)] or [b""])
            try:
                response = self.http.request(method, path, headers=raw_headers, content=content)
            except httpx.HTTPError as error:
                self.http.close()
                self.http = httpx.Client(base_url=self.base_url, timeout=self.timeout)
                if reset is not None:
                    return Outcome(None, error=f"{type(error).__name__}: {error}", reset=reset)
                reset = f"{type(error).__name__}: {error}"
                continue
            return Outcome(response.status_code, response.content, reset=reset,
                           content_type=response.headers.get("content-type", ""),
                           query_sent=response.request.url.query)
        raise AssertionError("unreachable")


def _storing(outcome: Outcome) -> bool:
    try:
        answer = json.loads(outcome.body)
    except ValueError:
        return False
    status = answer.get("status") if isinstance(answer, dict) else None
    statuses = status if isinstance(status, list) else [status]
    return any(isinstance(s, str) and (s in STORING_STATUSES or s.startswith("call-revised")) for s in statuses)


def response_problems(plan: Plan, outcome: Outcome) -> list[str]:
    """What is wrong with this answer to this input (empty: nothing)."""
    if outcome.status is None:
        return [f"no answer ({outcome.error})"]
    found = []
    if outcome.status >= 500:
        found.append(f"server error {outcome.status}: {outcome.body[:300]!r}")
    elif plan.expect is not None and outcome.status not in plan.expect:
        found.append(f"status {outcome.status}, expected one of {sorted(plan.expect)[:8]}: {outcome.body[:300]!r}")
    if not plan.may_store and 200 <= outcome.status < 300 and _storing(outcome):
        found.append(f"input that must not be stored was stored: {outcome.body[:300]!r}")
    if plan.kind == "handshake" and plan.provider == "graph" and outcome.status == 200:
        token = dict(parse_qsl(outcome.query_sent.decode("latin-1"), keep_blank_values=True)).get("validationToken")
        if outcome.body != (token or "").encode() or not outcome.content_type.startswith("text/plain"):
            found.append(f"validation echo {outcome.body[:100]!r} ({outcome.content_type}) is not {token!r}")
    return found


def record_acceptance(tally: Tally, plan: Plan, outcome: Outcome) -> None:
    """Remember what an accepted input said, for `verify` to trace stored notices back to it."""
    if plan.provider and outcome.status is not None and 200 <= outcome.status < 300 and _storing(outcome):
        tally.accepted[plan.provider].append(
            plan.raw if plan.raw is not None else payload(plan.provider, plan.document, plan.secret))


def run_plans(sender: Sender, strategy: st.SearchStrategy[Plan], examples: int, tally: Tally, *,
              seed: int | None = None, stop_on_failure: bool = True) -> None:
    """Draw `examples` plans (deterministically: derandomized, or from `seed`), send each, judge
    each answer. A bad answer fails at once and hypothesis shrinks it to a minimal input, unless
    `stop_on_failure` is False (then it is recorded in `tally.problems` and the run goes on)."""

    @settings(max_examples=examples, derandomize=seed is None, database=None, deadline=None,
              phases=(Phase.generate, Phase.shrink) if stop_on_failure else (Phase.generate,),
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=False)
    @given(strategy)
    def one(plan: Plan) -> None:
        outcome = sender.send(plan)
        tally.add(plan, outcome)
        record_acceptance(tally, plan, outcome)
        found = response_problems(plan, outcome)
        if found:
            message = f"{plan!r}: {'; '.join(found)}"
            if stop_on_failure:
                raise AssertionError(message)
            tally.problems.append(message)

    if seed is not None:
        one = fixed_seed(seed)(one)
    started = time.monotonic()
    try:
        one()
    finally:
        tally.seconds += time.monotonic() - started


# --- The service under test --------------------------------------------------------------------------


@dataclass
class FuzzTarget:
    stack: LocalStack
    fakes: PhoneFakes
    material: Material

    @property
    def url(self) -> str:
        return self.stack.url("ingest")

    @property
    def process(self):
        return self.stack.services["ingest"].process

    @property
    def log_path(self) -> Path:
        return self.stack.services["ingest"].log_path


@contextlib.asynccontextmanager
async def fuzz_target(database_url: str, kafka: str, run_dir: Path) -> AsyncIterator[FuzzTarget]:
    """A private database and topic set, the five fake provider APIs, both firms onboarded with
    every provider, and the ingest service alone, running."""
    stack = LocalStack(database_url, kafka, run_dir,
                       extra_env={"CALLTIME_RECONCILE_EVERY_SECONDS": "3600", "CALLTIME_LOG_LEVEL": "WARNING"})
    await stack.create_database()
    fakes = start_phone_fakes(stack, OPEN_FIRM)
    try:
        now = datetime.now(timezone.utc)
        stuff = material(now)
        await _onboard(stack, fakes)
        graph_sim = fake_graph.GraphSimulator("http://127.0.0.1:9/unused", OPEN.secrets["graph"],
                                              account_id=OPEN.accounts["graph"], http=_NoHttp(),
                                              state=fakes.states["graph"])
        for call in seed_calls(now):  # so a re-signed Graph notice that survives finds its record
            fakes.states["graph"].put_record(graph_sim.call_record(call))
        await stack.start_services(("ingest",))
        yield FuzzTarget(stack, fakes, stuff)
    finally:
        stack.stop_services()
        fakes.stop()
        await stack.drop_database()


async def _onboard(stack: LocalStack, fakes: PhoneFakes) -> None:
    for firm in (OPEN, CLOSED):
        await register_firm(stack, FirmSetup(
            firm_id=firm.firm_id, name=f"{firm.firm_id} LLP", clio_base_url="http://127.0.0.1:9", clio_token="unused",
            ringcentral_account_id=firm.accounts["ringcentral"],
            ringcentral_verification_token=firm.secrets["ringcentral"], api_key=f"{firm.firm_id}-key",
            extensions={USER: ATTORNEY}))
    conn = await asyncpg.connect(stack.database_url)
    try:
        for provider in PROVIDERS:
            system = PHONE_SYSTEMS[provider]
            async with conn.transaction():
                await connect_phone_provider(
                    stack_credentials(conn), conn, firm_id=OPEN_FIRM, provider=provider,
                    account_id=OPEN.accounts[provider], webhook_secret=OPEN.secrets[provider], users={USER: ATTORNEY},
                    api_base_url=fakes.servers[provider].base_url,
                    api_credentials=system.api_credentials(fakes.states[provider]))
                await connect_phone_provider(
                    stack_credentials(conn), conn, firm_id=CLOSED_FIRM, provider=provider,
                    account_id=CLOSED.accounts[provider], webhook_secret=CLOSED.secrets[provider],
                    users={USER: ATTORNEY})
    finally:
        await conn.close()


def control_calls(tag: str, now: datetime) -> list[SimulatedCall]:
    started = now.replace(microsecond=0) - timedelta(minutes=40)
    return [SimulatedCall(call_key=f"fuzz-control-{tag}-{i}", user_id=USER, external_number=f"+1415555{8100 + i:04d}",
                          direction="inbound", started_at=started + timedelta(seconds=i), ring_seconds=5,
                          talk_seconds=200 + i, outcome=outcome)
            for i, outcome in enumerate(("answered", "missed"))]


async def place_controls(target: FuzzTarget, tag: str) -> dict[str, tuple[str, str, int]]:
    """Correctly signed calls through every provider: call id -> (provider, result, seconds) expected."""
    expected: dict[str, tuple[str, str, int]] = {}
    for provider in PROVIDERS:
        async with target.fakes.simulator(provider) as simulator:
            for call in control_calls(tag, datetime.now(timezone.utc)):
                responses = await simulator.place_call(call)
                bad = [r.status_code for r in responses if r.status_code >= 300]
                if bad:
                    raise AssertionError(f"control call {call.call_key} via {provider} refused: {bad}")
                result, seconds = PHONE_SYSTEMS[provider].expected(call)
                expected[f"{provider}:{simulator.provider_call_id(call)}"] = (provider, result, seconds)
    return expected


def call_problems(event: Any) -> list[str]:
    """Why an announced call is not a well-formed call of the open firm (empty: it is)."""
    found = []
    if event.firm_id != OPEN_FIRM:
        found.append(f"firm {event.firm_id!r}")
    if event.provider not in PROVIDERS or event.call_id != f"{event.provider}:{event.provider_call_id}":
        found.append(f"call id {event.call_id!r} of provider {event.provider!r}")
    if not 0 < len(event.provider_call_id) <= MAX_CALL_ID_CHARS:
        found.append(f"provider call id of {len(event.provider_call_id)} chars")
    if event.direction not in DIRECTIONS:
        found.append(f"direction {event.direction!r}")
    if event.result not in RESULTS:
        found.append(f"result {event.result!r}")
    if event.attorney_user_id not in (None, ATTORNEY) or event.revision < 1:
        found.append(f"attorney {event.attorney_user_id!r}, revision {event.revision}")
    moments = (event.started_at, event.ended_at)
    if any(m.utcoffset() != timedelta(0) for m in moments):
        found.append("times not in UTC")
    elif event.started_at > event.ended_at:
        found.append(f"ends ({event.ended_at}) before it starts ({event.started_at})")
    elif not 0 <= event.duration_seconds <= MAX_CALL_SECONDS:
        found.append(f"duration {event.duration_seconds} s")
    for name in ("provider_call_id", "external_number_raw", "internal_number", "provider_user_id"):
        value = getattr(event, name)
        if value is not None and "\x00" in value:
            found.append(f"{name} holds a NUL")
    return [f"{event.call_id}: {problem}" for problem in found]


async def _scalar(target: FuzzTarget, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(target.stack.database_url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def _rows(target: FuzzTarget, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(target.stack.database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def settled(target: FuzzTarget, controls: Iterable[str], timeout: float) -> list[str]:
    """Wait until every control call is announced and the quiet-period queue and the outbox are
    drained; what is still not done after `timeout` seconds."""
    wanted = sorted(controls)
    deadline = time.monotonic() + timeout
    while True:
        pending = []
        announced = await _scalar(target, "SELECT count(*) FROM ingest.calls WHERE firm_id = $1"
                                          " AND call_id = ANY($2)", OPEN_FIRM, wanted)
        if announced != len(wanted):
            pending.append(f"{len(wanted) - announced} of {len(wanted)} control calls not announced")
        overdue = await _scalar(target, "SELECT count(*) FROM ingest.settles WHERE due_at < now() - interval '5 s'")
        if overdue:
            pending.append(f"{overdue} calls stuck in their quiet period")
        unsent = await _scalar(target, "SELECT count(*) FROM ingest.outbox WHERE published_at IS NULL")
        if unsent:
            pending.append(f"{unsent} outbox rows not published")
        untried = await _scalar(target, "SELECT count(*) FROM ingest.record_fetches WHERE attempts = 0"
                                        " AND due_at < now() - interval '5 s'")
        if untried:
            pending.append(f"{untried} record fetches never attempted")
        if not pending or time.monotonic() > deadline:
            return pending
        await asyncio.sleep(0.5)


def _mentions(bodies: list[bytes], text: str) -> bool:
    forms = {text.encode("utf-8", "surrogatepass"), json.dumps(text)[1:-1].encode()}
    return any(form in body for body in bodies for form in forms)


async def verify(target: FuzzTarget, tally: Tally, controls: dict[str, tuple[str, str, int]], *,
                 timeout: float = 60.0) -> list[str]:
    """The service's state after the fuzzing; every problem found (empty: all is well)."""
    problems = list(tally.problems)
    if target.process.poll() is not None:
        return problems + [f"ingest exited with {target.process.returncode}"]
    try:
        health = httpx.get(f"{target.url}/healthz", timeout=10)
        if health.status_code != 200:
            problems.append(f"/healthz answered {health.status_code} after the fuzzing")
    except httpx.HTTPError as error:
        problems.append(f"/healthz unreachable after the fuzzing: {error}")
    problems += await settled(target, controls, timeout)

    for table in ("notices", "calls", "record_fetches", "settles"):
        count = await _scalar(target, f"SELECT count(*) FROM ingest.{table} WHERE firm_id = $1", CLOSED_FIRM)
        if count:
            problems.append(f"{count} rows in ingest.{table} for the firm that got only invalid input")

    notices = await _rows(target, "SELECT provider, provider_call_id, dedupe_key FROM ingest.notices"
                                  " WHERE firm_id = $1", OPEN_FIRM)
    stored_calls = {(r["provider"], r["provider_call_id"]) for r in notices}
    control_ids = {cid.split(":", 1)[1] for cid in controls}
    for provider, call_id in sorted(stored_calls):
        if call_id not in control_ids and not _mentions(tally.accepted.get(provider, []), call_id):
            problems.append(f"a {provider} notice of call {call_id!r} that no accepted request named")

    events = await read_topic(target.stack.kafka_bootstrap, target.stack.topic_prefix + topics.CALL_ENDED)
    seen = Counter(e.call_id for e in events if e.call_id in controls and e.firm_id == OPEN_FIRM)
    tally.facts |= {
        "accepted requests": sum(len(bodies) for bodies in tally.accepted.values()),
        "notices stored (open firm)": len(notices),
        "calls with notices": len(stored_calls),
        "call.ended published": len(events),
        "of them from fuzz input": sum(1 for e in events if e.call_id not in controls),
        "control calls": len(controls),
        "refused as impossible calls": _logged(target.log_path, "webhook refused"),
        "intake retried after a conflict": _logged(target.log_path, "webhook intake kept conflicting"),
    }
    for event in events:
        if event.firm_id == CLOSED_FIRM:
            problems.append(f"call.ended published for the firm that got only invalid input: {event.call_id}")
            continue
        problems += call_problems(event)
        if (event.provider, event.provider_call_id) not in stored_calls:
            problems.append(f"{event.call_id} announced without a stored notice")
        if event.call_id in controls:
            provider, result, seconds = controls[event.call_id]
            if (event.result, event.duration_seconds) != (result, seconds):
                problems.append(f"control {event.call_id}: {event.result}/{event.duration_seconds} s,"
                                f" expected {result}/{seconds} s")
    for call_id in controls:
        if seen[call_id] != 1:
            problems.append(f"control {call_id} announced {seen[call_id]} times, expected once")
    problems += log_problems(target.log_path)
    return problems


def _logged(path: Path, message: str) -> int:
    return sum(1 for line in path.read_text(errors="replace").splitlines() if f'"msg": "{message}' in line)


def log_problems(path: Path, limit: int = 5) -> list[str]:
    """Errors the service logged (a crashed request or background task), at most `limit` shown."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                found.append(line[:300])
            continue
        # Ours and the HTTP server's (a request that crashed); a client library's complaint about
        # the shared broker is not the service's doing.
        if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL") \
                and str(entry.get("logger", "")).startswith(("calltime", "uvicorn", "fastapi", "starlette", "root")):
            found.append(f"ingest logged {entry.get('level')}: {entry.get('msg')} {str(entry.get('exc', ''))[-600:]}")
    return found[:limit] + ([f"... and {len(found) - limit} more logged errors"] if len(found) > limit else [])


def openapi_gaps(target: FuzzTarget) -> list[str]:
    """Operations the service documents that the fuzz does not cover."""
    document = httpx.get(f"{target.url}/openapi.json", timeout=10).json()
    operations = {(method.upper(), path) for path, item in document.get("paths", {}).items() for method in item}
    return [f"{method} {path} is not fuzzed" for method, path in sorted(operations - COVERED_OPERATIONS)]


def budget(total: int) -> dict[str, int]:
    """How `total` requests are split: the ops and unknown paths get a little, providers the rest."""
    ops = max(10, total // 40)
    unknown = max(10, total // 40)
    each = max(10, (total - ops - unknown) // len(PROVIDERS))
    return {**{p: each for p in PROVIDERS}, "ops": ops, "unknown": unknown}


def strategies(stuff: Material) -> dict[str, st.SearchStrategy[Plan]]:
    return {**{p: provider_plans(p, stuff) for p in PROVIDERS}, "ops": ops_plans(), "unknown": unknown_plans()}

