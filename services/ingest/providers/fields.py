"""Reading a provider's JSON the one way every adapter does: strict JSON text, typed fields whose
errors name the field, ISO 8601 times, whole seconds, the firm side's number, secret comparison.

Pure, no I/O. Every error is an `InvalidNotification` whose message names the offending field
(`where` is the path so far, e.g. "body.parties[0]."), so a malformed body is answered with the
same kind of 400 whichever provider sent it. `model.py` keeps what adapters *are* (the contract
and `checked_call`); this module is how they read.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from calltime.ingest.providers.model import InvalidNotification, json_text
from calltime.phone import normalise

JSON_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    dict: "an object",
    list: "an array",
}

_MICROSECONDS_PER_SECOND = 1_000_000


# --- JSON ------------------------------------------------------------------------------------


def load_json(raw: bytes, what: str = "body", **decoding: Any) -> Any:
    """`raw` as JSON (strict UTF-8, see `json_text`); `decoding` goes to `json.loads` (Dialpad
    reads floats as Decimal). A body that is not JSON, or nests deeper than Python recurses, is
    an InvalidNotification naming `what`."""
    try:
        return json.loads(json_text(raw), **decoding)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise InvalidNotification(f"{what} is not JSON: {error}") from None


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    return JSON_NAMES.get(type(value), type(value).__name__)


def require_object(value: Any, name: str) -> None:
    if not isinstance(value, dict):
        raise InvalidNotification(f"{name} must be a JSON object, not {json_type(value)}")


def required(container: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """`container[key]`, which must be present, not null, and of `kind`."""
    if container.get(key) is None:
        raise InvalidNotification(f"{where}{key} is missing")
    return typed(container[key], key, kind, where)


def optional(container: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """`container[key]` if present and not null (then of `kind`), else None."""
    value = container.get(key)
    return None if value is None else typed(value, key, kind, where)


def typed(value: Any, key: str, kind: type, where: str) -> Any:
    # bool is an int in Python, but `"sequence": true` is not a number of anything.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidNotification(f"{where}{key} must be {JSON_NAMES[kind]}, not {json_type(value)}")
    return value


# --- Times and durations ---------------------------------------------------------------------


def parse_time(text: str, name: str) -> datetime:
    """An ISO 8601 time with an offset (`Z`, `+00:00`, `+0000`) as an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidNotification(f"{name} is not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise InvalidNotification(f"{name} has no UTC offset: {text!r}")
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is a valid ISO time but no UTC one
        raise InvalidNotification(f"{name} is out of range in UTC: {text!r}") from None


def required_time(container: Mapping[str, Any], key: str, where: str) -> datetime:
    return parse_time(required(container, key, str, where), f"{where}{key}")


def optional_time(container: Mapping[str, Any], key: str, where: str) -> datetime | None:
    text = optional(container, key, str, where)
    return None if text is None else parse_time(text, f"{where}{key}")


def whole_units(amount: int, per_unit: int) -> int:
    """`amount` (ms, 100 ns ticks, µs...) in whole units of `per_unit`, rounded half up, in
    integers only so no float ever touches a duration; a negative span counts as 0."""
    return (max(amount, 0) + per_unit // 2) // per_unit


def span_seconds(span: timedelta) -> int:
    """A timedelta as whole seconds, half up (exact: counted in integer microseconds)."""
    return whole_units(span // timedelta(microseconds=1), _MICROSECONDS_PER_SECOND)


# --- Numbers and secrets ---------------------------------------------------------------------


def firm_side_number(number: str | None, region: str) -> str | None:
    """The firm user's own number: E.164 when it is a phone number, else as sent (an extension)."""
    if number is None:
        return None
    return normalise(number, region) or number.strip() or None


def secret_matches(presented: Any, expected: str) -> bool:
    """Constant-time comparison; an unset secret never matches, nor does anything not a string."""
    if not isinstance(presented, str) or not expected:
        return False
    try:
        return hmac.compare_digest(presented.encode(), expected.encode())
    except UnicodeEncodeError:  # "\ud800" from an unauthenticated body names no secret
        return False
