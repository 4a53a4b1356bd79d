"""Which matched calls earn a draft, and what the draft says: review state, billability, the
narrative's subject, exact money, flags and the attorney's local date. (Rounding and date rules
themselves are in test_drafting_rules.py.)"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given, strategies as st

from calltime.drafts.domain import DraftPolicy, RoundingRule, build_draft, should_draft
from calltime.events import CallEnded, CallMatched, MatterCandidate

STARTED = datetime(2026, 3, 10, 15, 0, tzinfo=timezone.utc)
NOW = datetime(2026, 3, 10, 16, 0, tzinfo=timezone.utc)
NUMBER = "+14155550123"
MATTER = MatterCandidate("m1", "2026-001", "Smith v. Jones", "open")
OTHER = MatterCandidate("m2", "2026-002", "Estate of Smith", "open")
CLOSED = MatterCandidate("m3", "2019-004", "Old lease dispute", "closed")

POLICY = DraftPolicy(rounding=RoundingRule.NEAREST, activity_code="TEL",
                     narrative_template="Call re: {matter} ({minutes} min)", currency="USD",
                     time_zone="America/New_York", rate=Decimal("300.00"))


def call(**overrides) -> CallEnded:
    seconds = overrides.pop("duration_seconds", 22 * 60)
    started = overrides.pop("started_at", STARTED)
    values = dict(
        event_id="ev-1", firm_id="firm-1", call_id="call-1", revision=2, provider="ringcentral",
        provider_call_id="rc-1", direction="inbound", external_number_e164=NUMBER,
        external_number_raw="(415) 555-0123", internal_number="+12125550100",
        provider_user_id="rc-user-1", attorney_user_id="att-1", started_at=started,
        ended_at=started + timedelta(seconds=seconds), duration_seconds=seconds,
        result="answered", received_at=started + timedelta(seconds=seconds + 5))
    values.update(overrides)
    return CallEnded(**values)


# What the matcher says for each outcome, as a realistic CallMatched would carry it.
OUTCOMES = {
    "single_matter": dict(client_id="c1", client_name="Jane Smith", matter=MATTER,
                          candidates=(MATTER,)),
    "multiple_matters": dict(client_id="c1", client_name="Jane Smith", matter=None,
                             candidates=(MATTER, OTHER)),
    "client_no_matter": dict(client_id="c1", client_name="Jane Smith", matter=None,
                             candidates=()),
    "inactive_matter_only": dict(client_id="c1", client_name="Jane Smith", matter=CLOSED,
                                 candidates=(CLOSED,)),
    "unknown_number": dict(client_id=None, client_name=None, matter=None, candidates=()),
    "non_client": dict(client_id=None, client_name=None, matter=None, candidates=()),
}
DRAFTED_OUTCOMES = [o for o in OUTCOMES if o != "non_client"]


def matched(outcome: str = "single_matter", *, the_call: CallEnded | None = None,
            **overrides) -> CallMatched:
    fields = {**OUTCOMES[outcome], **overrides}
    return CallMatched(event_id="ev-2", firm_id="firm-1", call=the_call or call(),
                       outcome=outcome, matched_at=NOW, **fields)


def policy(**overrides) -> DraftPolicy:
    return dataclasses.replace(POLICY, **overrides)


# --- which calls are drafted -------------------------------------------------------------------

@pytest.mark.parametrize("outcome", DRAFTED_OUTCOMES)
def test_answered_call_with_a_draftable_outcome_is_drafted(outcome):
    assert should_draft(matched(outcome)) is True


def test_non_client_call_is_not_drafted():
    assert should_draft(matched("non_client")) is False


@pytest.mark.parametrize("result", ["missed", "voicemail", "rejected", "unknown"])
@pytest.mark.parametrize("outcome", DRAFTED_OUTCOMES)
def test_call_that_was_not_answered_is_not_drafted(outcome, result):
    assert should_draft(matched(outcome, the_call=call(result=result))) is False


@pytest.mark.parametrize("outcome", DRAFTED_OUTCOMES)
def test_zero_second_call_is_not_drafted(outcome):
    assert should_draft(matched(outcome, the_call=call(duration_seconds=0))) is False


def test_one_second_answered_call_is_drafted():
    assert should_draft(matched(the_call=call(duration_seconds=1))) is True


def test_unrecognised_outcome_is_not_drafted():
    assert should_draft(dataclasses.replace(matched(), outcome="something_new")) is False


@given(outcome=st.sampled_from(sorted(OUTCOMES)),
       result=st.sampled_from(["answered", "missed", "voicemail", "rejected", "unknown"]),
       seconds=st.integers(min_value=0, max_value=6 * 3600))
def test_only_answered_calls_of_some_length_with_a_client_side_outcome_are_drafted(
        outcome, result, seconds):
    decision = should_draft(matched(outcome, the_call=call(result=result, duration_seconds=seconds)))
    assert decision == (outcome != "non_client" and result == "answered" and seconds > 0)


# --- review state and billability -------------------------------------------------------------

@pytest.mark.parametrize("outcome, state", [
    ("single_matter", "ready"),
    ("multiple_matters", "needs_matter"),
    ("client_no_matter", "needs_matter"),
    ("inactive_matter_only", "verify_matter_status"),
    ("unknown_number", "unmatched"),
])
def test_review_state_follows_the_match_outcome(outcome, state):
    draft = build_draft(matched(outcome), POLICY, now=NOW)
    assert draft.review_state == state
    assert draft.match_outcome == outcome


def test_unknown_caller_draft_defaults_to_not_billable():
    assert build_draft(matched("unknown_number"), POLICY, now=NOW).billable is False


@pytest.mark.parametrize("outcome", [o for o in DRAFTED_OUTCOMES if o != "unknown_number"])
def test_client_side_drafts_are_billable(outcome):
    assert build_draft(matched(outcome), POLICY, now=NOW).billable is True


def test_inactive_matter_draft_is_flagged_to_verify_the_matter_status():
    draft = build_draft(matched("inactive_matter_only"), POLICY, now=NOW)
    assert draft.flags == ("verify matter status before approving: no open matter",)


@pytest.mark.parametrize("outcome", [o for o in DRAFTED_OUTCOMES if o != "inactive_matter_only"])
def test_other_drafts_with_an_attorney_carry_no_flags(outcome):
    assert build_draft(matched(outcome), POLICY, now=NOW).flags == ()


@pytest.mark.parametrize("outcome", DRAFTED_OUTCOMES)
def test_draft_without_a_mapped_attorney_is_flagged(outcome):
    draft = build_draft(matched(outcome, the_call=call(attorney_user_id=None)), POLICY, now=NOW)
    assert draft.attorney_user_id is None
    assert "no attorney mapped to the phone user" in draft.flags


def test_inactive_matter_draft_without_attorney_carries_both_flags_in_order():
    draft = build_draft(matched("inactive_matter_only", the_call=call(attorney_user_id=None)),
                        POLICY, now=NOW)
    assert draft.flags == ("verify matter status before approving: no open matter",
                           "no attorney mapped to the phone user")


# --- the narrative's subject ------------------------------------------------------------------

def test_narrative_names_the_matter_description_when_a_matter_is_set():
    draft = build_draft(matched("single_matter"), POLICY, now=NOW)
    assert draft.narrative == "Call re: Smith v. Jones (22 min)"


def test_inactive_single_matter_narrative_names_that_matter():
    draft = build_draft(matched("inactive_matter_only"), POLICY, now=NOW)
    assert draft.narrative == "Call re: Old lease dispute (22 min)"


@pytest.mark.parametrize("outcome", ["multiple_matters", "client_no_matter"])
def test_narrative_names_the_client_when_there_is_no_single_matter(outcome):
    draft = build_draft(matched(outcome), POLICY, now=NOW)
    assert draft.narrative == "Call re: Jane Smith (22 min)"


def test_narrative_names_the_number_for_an_unknown_caller():
    draft = build_draft(matched("unknown_number"), POLICY, now=NOW)
    assert draft.narrative == f"Call re: {NUMBER} (22 min)"


def test_narrative_falls_back_to_the_number_when_the_client_name_is_empty():
    draft = build_draft(matched("client_no_matter", client_name=""), POLICY, now=NOW)
    assert draft.narrative == f"Call re: {NUMBER} (22 min)"


def test_narrative_for_a_withheld_number_says_unknown_caller():
    the_call = call(external_number_e164=None, external_number_raw=None)
    draft = build_draft(matched("unknown_number", the_call=the_call), POLICY, now=NOW)
    assert draft.narrative == "Call re: unknown caller (22 min)"


def test_narrative_uses_the_firms_template():
    draft = build_draft(matched(), policy(narrative_template="{minutes}m tel. conf. / {matter}"),
                        now=NOW)
    assert draft.narrative == "22m tel. conf. / Smith v. Jones"


def test_braces_in_a_matter_description_are_kept_literally():
    odd = MatterCandidate("m9", "9", "In re {matter} {0}", "open")
    draft = build_draft(matched(matter=odd, candidates=(odd,)), POLICY, now=NOW)
    assert draft.narrative == "Call re: In re {matter} {0} (22 min)"


def test_matter_with_an_empty_description_falls_back_to_the_client_name():
    blank = MatterCandidate("m7", "2026-007", "", "open")
    draft = build_draft(matched(matter=blank, candidates=(blank,)), POLICY, now=NOW)
    assert draft.narrative == "Call re: Jane Smith (22 min)"


# --- money ------------------------------------------------------------------------------------

def test_amount_is_billed_hours_times_rate_in_exact_decimal():
    draft = build_draft(matched(), policy(rate=Decimal("275.50")), now=NOW)  # 22 min -> 0.4 h
    assert draft.billed_hours == Decimal("0.4")
    assert draft.amount == Decimal("110.20")
    assert isinstance(draft.amount, Decimal) and draft.amount.as_tuple().exponent == -2


def test_amount_of_a_tenth_hour_at_an_odd_rate_is_exact_to_the_cent():
    the_call = call(duration_seconds=3 * 3600 + 1)
    draft = build_draft(matched(the_call=the_call), policy(rounding=RoundingRule.UP,
                                                           rate=Decimal("333.33")), now=NOW)
    assert draft.billed_hours == Decimal("3.1")
    assert draft.amount == Decimal("1033.32")  # 3.1 x 333.33 = 1033.323, never 1033.3229999


def test_rate_is_carried_to_the_cent():
    draft = build_draft(matched(), policy(rate=Decimal("300")), now=NOW)
    assert draft.rate == Decimal("300.00") and draft.rate.as_tuple().exponent == -2
    assert draft.amount == Decimal("120.00")


def test_draft_with_no_attorney_rate_bills_zero():
    draft = build_draft(matched(the_call=call(attorney_user_id=None)), policy(rate=Decimal(0)),
                        now=NOW)
    assert draft.amount == Decimal("0.00")


def test_draft_uses_the_policys_rounding_rule():
    the_call = call(duration_seconds=19 * 60)
    assert build_draft(matched(the_call=the_call), POLICY, now=NOW).billed_hours == Decimal("0.3")
    up = build_draft(matched(the_call=the_call), policy(rounding=RoundingRule.UP), now=NOW)
    assert up.billed_hours == Decimal("0.4") and up.amount == Decimal("120.00")


@given(seconds=st.integers(min_value=1, max_value=12 * 3600),
       cents=st.integers(min_value=0, max_value=10_000_000),
       rule=st.sampled_from(list(RoundingRule)))
def test_amount_always_equals_hours_times_rate_to_the_cent(seconds, cents, rule):
    rate = Decimal(cents) / 100
    draft = build_draft(matched(the_call=call(duration_seconds=seconds)),
                        policy(rate=rate, rounding=rule), now=NOW)
    assert draft.rate == rate
    assert draft.amount == (draft.billed_hours * draft.rate).quantize(Decimal("0.01"),
                                                                      rounding=ROUND_HALF_UP)
    assert draft.raw_seconds == seconds


# --- dates and the rest of the draft ----------------------------------------------------------

def test_entry_date_is_the_day_in_the_policys_time_zone():
    late = datetime(2026, 11, 27, 7, 50, tzinfo=timezone.utc)  # 23:50 on the 26th in LA
    the_call = call(started_at=late)
    la = build_draft(matched(the_call=the_call), policy(time_zone="America/Los_Angeles"), now=NOW)
    ny = build_draft(matched(the_call=the_call), policy(time_zone="America/New_York"), now=NOW)
    assert (la.entry_date, la.time_zone) == (date(2026, 11, 26), "America/Los_Angeles")
    assert (ny.entry_date, ny.time_zone) == (date(2026, 11, 27), "America/New_York")


def test_entry_date_east_of_utc_can_be_the_next_day():
    the_call = call(started_at=datetime(2026, 6, 30, 23, 30, tzinfo=timezone.utc))
    draft = build_draft(matched(the_call=the_call), policy(time_zone="Europe/Berlin"), now=NOW)
    assert draft.entry_date == date(2026, 7, 1)


@pytest.mark.parametrize("outcome", DRAFTED_OUTCOMES)
def test_draft_carries_the_call_the_match_and_the_policy(outcome):
    source = matched(outcome)
    draft = build_draft(source, POLICY, now=NOW)
    assert (draft.firm_id, draft.call_id, draft.revision) == ("firm-1", "call-1", 2)
    assert draft.attorney_user_id == "att-1"
    assert (draft.client_id, draft.client_name) == (source.client_id, source.client_name)
    assert (draft.matter, draft.candidates) == (source.matter, source.candidates)
    assert (draft.raw_seconds, draft.currency, draft.activity_code) == (22 * 60, "USD", "TEL")
    assert draft.created_at == NOW


def test_each_draft_gets_fresh_event_and_draft_ids():
    first, second = (build_draft(matched(), POLICY, now=NOW) for _ in range(2))
    assert first.draft_id != second.draft_id
    assert first.event_id != second.event_id
    assert first.draft_id != first.event_id


def test_draft_for_an_attorney_without_a_rate_is_flagged_and_priced_at_zero():
    draft = build_draft(matched(), policy(rate=Decimal("0")), now=NOW)
    assert draft.amount == Decimal("0.00")
    assert "no hourly rate known for the attorney" in draft.flags
