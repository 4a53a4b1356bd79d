"""How a caller's number becomes a match outcome: every row of the outcome table in
`calltime.matcher.domain`, the non-client and withheld cases, and the shared-number cases."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from calltime.events import MatterCandidate
from calltime.matcher.domain import KnownContact, Lookup, Match, MatchOutcome, decide

NUMBER = "+14155550123"


def matter(matter_id: str, status: str = "open", display: str | None = None) -> MatterCandidate:
    return MatterCandidate(matter_id, display or f"00{matter_id}", f"Matter {matter_id}", status)


def client(contact_id: str, *matters: MatterCandidate, name: str | None = None) -> KnownContact:
    return KnownContact(contact_id, name or f"Client {contact_id}", True, tuple(matters))


def non_client_contact(contact_id: str, *matters: MatterCandidate) -> KnownContact:
    return KnownContact(contact_id, f"Contact {contact_id}", False, tuple(matters))


def lookup(*contacts: KnownContact, number: str | None = NUMBER,
           kind: str | None = None) -> Lookup:
    return Lookup(number, kind, tuple(contacts))


def inbound(found: Lookup) -> Match:
    return decide(found, direction="inbound")


NO_MATCH_FIELDS = dict(client_id=None, client_name=None, matter=None, candidates=())


# --- the outcome table, row by row -------------------------------------------------------------

def test_one_open_matter_is_a_single_matter_match_naming_client_and_matter():
    m1 = matter("1")
    result = inbound(lookup(client("c1", m1, name="Acme Ltd")))
    assert result == Match(MatchOutcome.SINGLE_MATTER, "c1", "Acme Ltd", m1, (m1,))


def test_several_open_matters_leave_the_matter_open_and_list_candidates_sorted_by_number():
    late, early, middle = (matter("a", display="2024-003"), matter("b", display="2024-001"),
                           matter("c", display="2024-002"))
    result = inbound(lookup(client("c1", late, early, middle)))
    assert result.outcome is MatchOutcome.MULTIPLE_MATTERS
    assert result.matter is None
    assert result.candidates == (early, middle, late)
    assert (result.client_id, result.client_name) == ("c1", "Client c1")


def test_client_with_no_matter_at_all_is_client_no_matter():
    result = inbound(lookup(client("c1", name="Acme Ltd")))
    assert result == Match(MatchOutcome.CLIENT_NO_MATTER, "c1", "Acme Ltd", None, ())


def test_number_with_no_contact_is_unknown_number():
    assert inbound(lookup()) == Match(MatchOutcome.UNKNOWN_NUMBER, **NO_MATCH_FIELDS)


@pytest.mark.parametrize("kind", ["internal", "co_counsel", "vendor"])
def test_number_listed_as_non_client_is_non_client(kind):
    assert inbound(lookup(kind=kind)) == Match(MatchOutcome.NON_CLIENT, **NO_MATCH_FIELDS)


@pytest.mark.parametrize("kind", ["internal", "co_counsel", "vendor"])
def test_non_client_listing_wins_over_a_client_contact_with_open_matters(kind):
    result = inbound(lookup(client("c1", matter("1")), kind=kind))
    assert result == Match(MatchOutcome.NON_CLIENT, **NO_MATCH_FIELDS)


def test_single_closed_matter_is_inactive_matter_only_with_that_matter_set():
    closed = matter("1", "closed")
    result = inbound(lookup(client("c1", closed)))
    assert result == Match(MatchOutcome.INACTIVE_MATTER_ONLY, "c1", "Client c1", closed, (closed,))


def test_single_pending_matter_is_inactive_matter_only_with_that_matter_set():
    pending = matter("1", "pending")
    result = inbound(lookup(client("c1", pending)))
    assert result == Match(MatchOutcome.INACTIVE_MATTER_ONLY, "c1", "Client c1", pending,
                           (pending,))


def test_several_closed_or_pending_matters_leave_matter_unset_and_list_all_sorted():
    closed, pending, other = (matter("x", "closed", "B-2"), matter("y", "pending", "A-1"),
                              matter("z", "closed", "C-3"))
    result = inbound(lookup(client("c1", closed, pending, other)))
    assert result.outcome is MatchOutcome.INACTIVE_MATTER_ONLY
    assert result.matter is None
    assert result.candidates == (pending, closed, other)
    assert result.client_id == "c1"


@pytest.mark.parametrize("status", ["closed", "pending", "", "archived", "Open"])
def test_only_the_exact_open_status_counts_as_active(status):
    result = inbound(lookup(client("c1", matter("1", status))))
    assert result.outcome is MatchOutcome.INACTIVE_MATTER_ONLY


# --- direction and missing numbers ------------------------------------------------------------

def test_internal_call_is_non_client_even_from_a_client_number():
    result = decide(lookup(client("c1", matter("1"))), direction="internal")
    assert result == Match(MatchOutcome.NON_CLIENT, **NO_MATCH_FIELDS)


def test_internal_call_with_no_number_is_non_client_not_unknown():
    result = decide(lookup(number=None), direction="internal")
    assert result.outcome is MatchOutcome.NON_CLIENT


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_outbound_and_inbound_calls_match_the_same_way(direction):
    m1 = matter("1")
    result = decide(lookup(client("c1", m1)), direction=direction)
    assert (result.outcome, result.matter) == (MatchOutcome.SINGLE_MATTER, m1)


def test_withheld_number_is_unknown_number():
    assert inbound(lookup(number=None)) == Match(MatchOutcome.UNKNOWN_NUMBER, **NO_MATCH_FIELDS)


def test_withheld_number_is_unknown_even_if_contacts_are_somehow_attached():
    result = inbound(lookup(client("c1", matter("1")), number=None))
    assert result == Match(MatchOutcome.UNKNOWN_NUMBER, **NO_MATCH_FIELDS)


# --- known contacts that are not clients -----------------------------------------------------

def test_known_contact_who_is_not_a_client_is_non_client():
    result = inbound(lookup(non_client_contact("opp1")))
    assert result == Match(MatchOutcome.NON_CLIENT, **NO_MATCH_FIELDS)


def test_non_client_contact_with_matters_is_still_non_client():
    result = inbound(lookup(non_client_contact("opp1", matter("1"))))
    assert result == Match(MatchOutcome.NON_CLIENT, **NO_MATCH_FIELDS)


def test_matters_of_a_non_client_contact_sharing_the_number_are_never_candidates():
    own, foreign = matter("1"), matter("2")
    result = inbound(lookup(client("c1", own), non_client_contact("opp1", foreign)))
    assert result == Match(MatchOutcome.SINGLE_MATTER, "c1", "Client c1", own, (own,))


def test_client_sharing_a_number_with_a_non_client_is_named_even_without_matters():
    result = inbound(lookup(non_client_contact("opp1", matter("9")), client("c1")))
    assert result == Match(MatchOutcome.CLIENT_NO_MATTER, "c1", "Client c1", None, ())


# --- mixed statuses ---------------------------------------------------------------------------

def test_open_matter_beside_closed_ones_is_a_single_matter_and_only_it_is_a_candidate():
    open_one = matter("2", "open", "B")
    closed, pending = matter("1", "closed", "A"), matter("3", "pending", "C")
    result = inbound(lookup(client("c1", closed, open_one, pending)))
    assert result == Match(MatchOutcome.SINGLE_MATTER, "c1", "Client c1", open_one, (open_one,))


def test_several_open_matters_beside_closed_ones_list_only_the_open_ones():
    a, b = matter("a", "open", "A"), matter("b", "open", "B")
    result = inbound(lookup(client("c1", matter("z", "closed", "0"), b, a)))
    assert result.outcome is MatchOutcome.MULTIPLE_MATTERS
    assert result.candidates == (a, b)


# --- two client contacts on one number --------------------------------------------------------

def test_two_clients_on_a_number_with_one_owning_the_only_open_matter_names_that_client():
    m1 = matter("1")
    result = inbound(lookup(client("c1", m1, name="Owner"), client("c2", name="Spouse")))
    assert result == Match(MatchOutcome.SINGLE_MATTER, "c1", "Owner", m1, (m1,))


def test_two_clients_where_one_owns_all_open_matters_names_that_client():
    a, b = matter("a", display="A"), matter("b", display="B")
    result = inbound(lookup(client("c1", name="Spouse"), client("c2", a, b, name="Owner")))
    assert result.outcome is MatchOutcome.MULTIPLE_MATTERS
    assert (result.client_id, result.client_name) == ("c2", "Owner")
    assert result.candidates == (a, b)


def test_two_clients_each_owning_an_open_matter_leave_the_client_unnamed():
    a, b = matter("a", display="A"), matter("b", display="B")
    result = inbound(lookup(client("c1", a), client("c2", b)))
    assert result.outcome is MatchOutcome.MULTIPLE_MATTERS
    assert (result.client_id, result.client_name) == (None, None)
    assert result.candidates == (a, b)


def test_open_matter_owner_is_named_even_if_another_client_has_only_closed_matters():
    open_one, closed = matter("a", "open"), matter("b", "closed")
    result = inbound(lookup(client("c1", closed), client("c2", open_one, name="Owner")))
    assert result == Match(MatchOutcome.SINGLE_MATTER, "c2", "Owner", open_one, (open_one,))


def test_two_clients_each_with_a_closed_matter_leave_client_and_matter_unset():
    a, b = matter("a", "closed", "A"), matter("b", "pending", "B")
    result = inbound(lookup(client("c1", a), client("c2", b)))
    assert result == Match(MatchOutcome.INACTIVE_MATTER_ONLY, None, None, None, (a, b))


def test_two_clients_where_one_owns_the_only_closed_matter_names_it_and_sets_the_matter():
    closed = matter("a", "closed")
    result = inbound(lookup(client("c1"), client("c2", closed, name="Owner")))
    assert result == Match(MatchOutcome.INACTIVE_MATTER_ONLY, "c2", "Owner", closed, (closed,))


def test_two_clients_with_no_matters_are_client_no_matter_with_no_client_named():
    result = inbound(lookup(client("c1"), client("c2")))
    assert result == Match(MatchOutcome.CLIENT_NO_MATTER, None, None, None, ())


def test_the_same_matter_listed_under_two_contacts_is_one_candidate():
    m1 = matter("1")
    result = inbound(lookup(client("c1", m1), client("c1-dup", m1)))
    assert result.outcome is MatchOutcome.SINGLE_MATTER
    assert result.candidates == (m1,)


def test_decide_does_not_depend_on_the_order_of_contacts_or_matters():
    a, b, c = matter("a", "open", "A"), matter("b", "closed", "B"), matter("c", "open", "C")
    first = inbound(lookup(client("c1", a, b), client("c2", c)))
    second = inbound(lookup(client("c2", c), client("c1", b, a)))
    assert first == second


# --- properties --------------------------------------------------------------------------------

STATUSES = st.sampled_from(["open", "closed", "pending"])
MATTER_POOL = [f"m{i}" for i in range(8)]


@st.composite
def lookups(draw):
    statuses = {mid: draw(STATUSES) for mid in MATTER_POOL}
    pool = [MatterCandidate(mid, f"D-{mid}", f"Matter {mid}", statuses[mid]) for mid in MATTER_POOL]
    contacts = draw(st.lists(
        st.builds(lambda i, name, is_client, ms: KnownContact(f"k{i}", name, is_client, tuple(ms)),
                  st.integers(0, 99), st.text(max_size=5), st.booleans(),
                  st.lists(st.sampled_from(pool), max_size=4, unique=True)),
        max_size=4, unique_by=lambda c: c.contact_id))
    number = draw(st.one_of(st.none(), st.just(NUMBER)))
    kind = draw(st.one_of(st.none(), st.sampled_from(["internal", "co_counsel", "vendor"])))
    return Lookup(number, kind, tuple(contacts))


@given(lookups(), st.sampled_from(["inbound", "outbound", "internal"]))
def test_match_outcome_properties(found, direction):
    result = decide(found, direction=direction)
    assert isinstance(result.outcome, MatchOutcome)

    reachable = (direction != "internal" and found.non_client_kind is None
                 and found.number_e164 is not None)
    client_matters = {m for c in found.contacts if c.is_client for m in c.matters}
    open_matters = {m for m in client_matters if m.status == "open"}
    assert (result.outcome is MatchOutcome.SINGLE_MATTER) == (reachable and len(open_matters) == 1)

    # Candidates only ever come from client contacts, sorted, and the matter is among them.
    assert set(result.candidates) <= client_matters
    assert list(result.candidates) == sorted(result.candidates, key=lambda m: m.display_number)
    assert len(set(result.candidates)) == len(result.candidates)
    assert result.matter is None or result.matter in result.candidates
    if result.outcome in (MatchOutcome.SINGLE_MATTER, MatchOutcome.MULTIPLE_MATTERS):
        assert set(result.candidates) == open_matters
    if result.outcome is MatchOutcome.INACTIVE_MATTER_ONLY:
        assert set(result.candidates) == client_matters and not open_matters
    if result.outcome in (MatchOutcome.NON_CLIENT, MatchOutcome.UNKNOWN_NUMBER):
        assert result == Match(result.outcome, **NO_MATCH_FIELDS)
    if result.client_id is not None:
        named = [c for c in found.contacts if c.contact_id == result.client_id]
        assert named and all(c.is_client for c in named)
        assert result.client_name == named[0].name
