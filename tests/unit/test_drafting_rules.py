"""Rounding, the attorney's local date, money and narratives: the rules a draft is built by."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from calltime.drafts.domain import (
    RoundingRule, amount, billed_hours, local_entry_date, narrative, spoken_minutes)

NEAREST, UP = RoundingRule.NEAREST, RoundingRule.UP


@pytest.mark.parametrize("seconds, rule, hours", [
    (22 * 60, NEAREST, "0.4"),
    (23 * 60, NEAREST, "0.4"),
    (19 * 60, NEAREST, "0.3"),
    (19 * 60, UP, "0.4"),
    (1, NEAREST, "0.1"),
    (1, UP, "0.1"),
    (0, NEAREST, "0.1"),
    (6 * 60, NEAREST, "0.1"),
    (6 * 60, UP, "0.1"),
    (6 * 60 + 1, UP, "0.2"),
    (8 * 60 + 59, NEAREST, "0.1"),
    (9 * 60, NEAREST, "0.2"),  # exactly half an increment rounds up
    (60 * 60, NEAREST, "1.0"),
    (60 * 60, UP, "1.0"),
    (3 * 3600 + 1, UP, "3.1"),
])
def test_call_bills_in_tenth_hour_increments(seconds, rule, hours):
    billed = billed_hours(seconds, rule)
    assert billed == Decimal(hours)
    assert billed.as_tuple().exponent == -1  # 0.4, never 0.38 or 0.4000


@given(st.integers(min_value=0, max_value=24 * 3600))
def test_rounding_is_never_below_one_increment_and_up_never_below_nearest(seconds):
    nearest, up = billed_hours(seconds, NEAREST), billed_hours(seconds, UP)
    assert Decimal("0.1") <= nearest <= up
    assert up * 3600 >= seconds
    assert abs(nearest * 3600 - seconds) <= 180 or seconds < 180


def test_negative_duration_is_refused():
    with pytest.raises(ValueError):
        billed_hours(-1, NEAREST)


def test_call_late_evening_in_los_angeles_is_dated_the_local_day():
    started = datetime(2026, 11, 27, 7, 50, tzinfo=timezone.utc)  # 23:50 on the 26th in LA
    assert local_entry_date(started, "America/Los_Angeles").isoformat() == "2026-11-26"
    assert local_entry_date(started, "America/New_York").isoformat() == "2026-11-27"


def test_call_across_the_dst_change_uses_the_local_offset_of_that_moment():
    # 2026-03-08: US clocks go from 02:00 PST to 03:00 PDT (10:00 UTC).
    before = datetime(2026, 3, 8, 7, 59, tzinfo=timezone.utc)  # 23:59 PST on 7 March
    after = datetime(2026, 3, 9, 6, 59, tzinfo=timezone.utc)  # 23:59 PDT on 8 March
    assert local_entry_date(before, "America/Los_Angeles").isoformat() == "2026-03-07"
    assert local_entry_date(after, "America/Los_Angeles").isoformat() == "2026-03-08"
    # the same UTC instant one day later would be the 9th under a fixed -8 h offset
    assert local_entry_date(datetime(2026, 3, 9, 7, 30, tzinfo=timezone.utc),
                            "America/Los_Angeles").isoformat() == "2026-03-09"


def test_naive_times_are_refused():
    with pytest.raises(ValueError):
        local_entry_date(datetime(2026, 1, 1, 12, 0), "UTC")


@pytest.mark.parametrize("hours, rate, expected", [
    ("0.4", "350.00", "140.00"),
    ("0.1", "333.33", "33.33"),
    ("0.3", "333.35", "100.01"),  # 100.005 rounds half up
    ("1.0", "0", "0.00"),
])
def test_amount_is_exact_to_the_cent(hours, rate, expected):
    result = amount(Decimal(hours), Decimal(rate))
    assert result == Decimal(expected) and str(result) == expected


def test_narrative_names_the_matter_and_whole_minutes():
    text = narrative("Telephone conference re: {matter} — {minutes} min",
                     subject="Ortega lease dispute", seconds=22 * 60 + 29)
    assert text == "Telephone conference re: Ortega lease dispute — 22 min"
    assert spoken_minutes(1) == 1 and spoken_minutes(90) == 2
