"""Exact conversions between billed hours (Decimal, 0.1 h steps) and whole seconds."""

from __future__ import annotations

from decimal import Decimal

SECONDS_PER_HOUR = 3600


def hours_to_seconds(hours: Decimal) -> int:
    seconds = hours * SECONDS_PER_HOUR
    if seconds != seconds.to_integral_value():
        raise ValueError(f"{hours} h is not a whole number of seconds")
    return int(seconds)
