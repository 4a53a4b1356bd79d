"""Exact conversions between billed durations: whole seconds, decimal hours and whole minutes.

A conversion that would have to round is refused, never rounded: rounding changes what a client is billed.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

SECONDS_PER_HOUR = 3600
SECONDS_PER_MINUTE = 60

# Traps instead of rounding, so a quotient with no exact decimal form raises.
_EXACT = decimal.Context(prec=28, traps=[decimal.Inexact, decimal.Rounded])


class InexactDuration(ValueError):
    """The duration has no exact form in the unit asked for (e.g. 100 s = 0.02777… h)."""


def hours_to_seconds(hours: Decimal) -> int:
    seconds = hours * SECONDS_PER_HOUR
    if seconds != seconds.to_integral_value():
        raise ValueError(f"{hours} h is not a whole number of seconds")
    return int(seconds)


def seconds_to_hours(billed_seconds: int) -> Decimal:
    """Exact decimal hours. Only multiples of 9 s have one (9 s = 0.0025 h); InexactDuration for the others."""
    _check_seconds(billed_seconds)
    try:
        return _EXACT.divide(Decimal(billed_seconds), Decimal(SECONDS_PER_HOUR))
    except (decimal.Inexact, decimal.Rounded):
        raise InexactDuration(f"{billed_seconds} s is not an exact decimal number of hours") from None


def seconds_to_minutes(billed_seconds: int) -> int:
    """Whole minutes; InexactDuration for a duration that is not exact minutes."""
    _check_seconds(billed_seconds)
    minutes = Decimal(billed_seconds) / Decimal(SECONDS_PER_MINUTE)
    if minutes != minutes.to_integral_value():
        raise InexactDuration(f"{billed_seconds} s is not a whole number of minutes ({minutes} min)")
    return int(minutes)


def _check_seconds(billed_seconds: object) -> None:
    # bool is an int subclass; True seconds is a bug upstream, not one second.
    if isinstance(billed_seconds, bool) or not isinstance(billed_seconds, int) or billed_seconds <= 0:
        raise ValueError(f"billed_seconds must be a positive whole number, not {billed_seconds!r}")
