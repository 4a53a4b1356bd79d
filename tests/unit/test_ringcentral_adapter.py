"""The RingCentral adapter turns telephony-session webhooks into one finished call, exactly once.

Fixtures in tests/fixtures/ringcentral/ are verbatim copies of the reference samples
(/work/shared/reference/samples/providers/), each with its .src.txt naming the source.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calltime.ingest.providers.ringcentral import (
    FinishedCall,
    InvalidNotification,
    Party,
    SessionNotification,
    assemble_call,
    is_validation_request,
    parse_notification,
    presented_token,
    token_matches,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ringcentral"
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "samples" / "providers"
FULL_CALL = "ringcentral_telephony_sessions_full_call_sequence.json"
SETUP = "ringcentral_telephony_sessions_setup.json"
PROCEEDING_INTERNAL = "ringcentral_account_telephony_sessions_proceeding.json"

SAMPLE_USER = "809646016"
T0 = datetime(2020, 6, 14, 19, 27, 18, 340000, tzinfo=timezone.utc)


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _bytes(envelope: Any) -> bytes:
    return json.dumps(envelope).encode()


def _full_call_envelopes() -> list[dict[str, Any]]:
    return _load(FULL_CALL)


def _full_call() -> list[SessionNotification]:
    return [parse_notification(_bytes(e)) for e in _full_call_envelopes()]


def _rc_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _inbound(
    sequence: int, status: str, after_ms: int, *, missed_call: bool = False
) -> SessionNotification:
    """The reference inbound Setup sample, moved on to `status` at T0 + `after_ms`."""
    envelope = copy.deepcopy(_load(SETUP))
    envelope["uuid"] = f"uuid-{sequence}"
    body = envelope["body"]
    body["sequence"] = sequence
    body["eventTime"] = _rc_time(T0 + timedelta(milliseconds=after_ms))
    body["parties"][0]["status"]["code"] = status
    body["parties"][0]["missedCall"] = missed_call
    return parse_notification(_bytes(envelope))


def _internal(sequence: int, status: str, after_ms: int) -> dict[str, Any]:
    """The reference extension-to-extension sample (103 calls 102), unwrapped from `pn_apns`."""
    envelope = copy.deepcopy(_load(PROCEEDING_INTERNAL)["pn_apns"])
    del envelope["aps"]
    envelope["uuid"] = f"internal-{sequence}"
    envelope["body"]["sequence"] = sequence
    envelope["body"]["eventTime"] = _rc_time(T0 + timedelta(milliseconds=after_ms))
    envelope["body"]["parties"][0]["status"] = {"code": status}
    return envelope


def _with_party(envelope: dict[str, Any], **changes: Any) -> SessionNotification:
    envelope = copy.deepcopy(envelope)
    envelope["body"]["parties"][0].update(changes)
    return parse_notification(_bytes(envelope))


# --- The fixtures are the reference ----------------------------------------------------------


@pytest.mark.parametrize("name", [FULL_CALL, SETUP, PROCEEDING_INTERNAL])
def test_fixtures_are_verbatim_copies_of_the_reference_samples(name: str) -> None:
    if not (REFERENCE / name).exists():
        pytest.skip("reference samples not checked out beside the repo")
    assert (FIXTURES / name).read_bytes() == (REFERENCE / name).read_bytes()


# --- Parsing ---------------------------------------------------------------------------------


def test_the_reference_full_call_parses_into_nine_session_notifications() -> None:
    notifications = _full_call()

    assert [n.sequence for n in notifications] == list(range(2, 11))
    assert all(n.is_telephony_session for n in notifications)
    assert {n.telephony_session_id for n in notifications} == {"s-c23b203d62db4f6aaee00717bafa99be"}
    first = notifications[0]
    assert first.uuid == "7841958329667892286"
    assert first.subscription_id == "2461434a-276a-4073-bd26-34089effbad5"
    assert first.owner_id == SAMPLE_USER
    assert first.session_id == "429182699016"
    assert first.timestamp == datetime(2020, 6, 23, 1, 19, 21, 700000, tzinfo=timezone.utc)
    assert first.event_time == datetime(2020, 6, 23, 1, 19, 21, 627000, tzinfo=timezone.utc)
    assert first.parties == (
        Party(
            id="p-c23b203d62db4f6aaee00717bafa99be-1",
            extension_id=SAMPLE_USER,
            account_id=SAMPLE_USER,
            direction="Outbound",
            from_number="+18003151571",
            from_extension_id=SAMPLE_USER,
            to_number="+14083388064",
            to_extension_id=None,
            status_code="Setup",
            missed_call=False,
        ),
    )


def test_the_reference_inbound_setup_names_the_user_as_callee() -> None:
    (party,) = parse_notification((FIXTURES / SETUP).read_bytes()).parties

    assert party.direction == "Inbound"
    assert party.to_extension_id == party.extension_id == SAMPLE_USER
    assert party.from_number == "+14083388064"
    assert party.from_extension_id is None


def test_times_are_aware_utc_whatever_offset_they_were_written_with() -> None:
    envelope = copy.deepcopy(_load(SETUP))
    envelope["body"]["eventTime"] = "2020-06-14T21:27:18.340+02:00"

    notification = parse_notification(_bytes(envelope))

    assert notification.event_time == T0
    assert notification.event_time.tzinfo == timezone.utc


def test_unknown_keys_are_ignored() -> None:
    envelope = copy.deepcopy(_load(SETUP))
    envelope["brandNew"] = {"x": 1}
    envelope["body"]["surprise"] = [1, 2]
    envelope["body"]["parties"][0]["conferenceRole"] = "Host"

    assert parse_notification(_bytes(envelope)) == parse_notification(_bytes(_load(SETUP)))


@pytest.mark.parametrize(
    "event",
    [
        "/restapi/v1.0/account/809646016/telephony/sessions",
        "/restapi/v1.0/account/809646016/extension/809646016/telephony/sessions",
        "/restapi/v1.0/account/~/extension/~/telephony/sessions",
        "/restapi/v1.0/account/~/telephony/sessions?statusCode=Disconnected",
    ],
)
def test_account_and_extension_level_filters_are_both_telephony_sessions(event: str) -> None:
    envelope = copy.deepcopy(_load(SETUP))
    envelope["event"] = event

    assert parse_notification(_bytes(envelope)).is_telephony_session


@pytest.mark.parametrize(
    ("event", "body"),
    [
        ("/restapi/v1.0/account/~/extension/~/message-store", {"changes": []}),
        ("/restapi/v1.0/subscription/~?threshold=86400&interval=3600", {"expiresIn": 3600}),
        ("/restapi/v1.0/account/~/extension/~/presence", {}),
    ],
)
def test_other_event_filters_parse_as_envelopes_only(event: str, body: dict[str, Any]) -> None:
    envelope = {"uuid": "u-1", "event": event, "timestamp": "2020-06-23T01:19:21.700Z",
                "subscriptionId": "sub", "ownerId": "1", "body": body}

    notification = parse_notification(_bytes(envelope))

    assert not notification.is_telephony_session
    assert notification.uuid == "u-1"
    assert notification.event == event
    assert notification.sequence is None
    assert notification.parties == ()


_MISSING = object()


def _setup_with(path: str, value: Any = _MISSING) -> bytes:
    """The reference Setup sample with the field at dotted `path` set to `value`, or removed."""
    envelope = copy.deepcopy(_load(SETUP))
    *parents, last = [int(key) if key.isdigit() else key for key in path.split(".")]
    container = envelope
    for key in parents:
        container = container[key]
    if value is _MISSING:
        del container[last]
    else:
        container[last] = value
    return _bytes(envelope)


P0 = "body.parties.0"


@pytest.mark.parametrize(
    ("raw_body", "reason"),
    [
        (b"", "not JSON"),
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b'{"uuid": ', "not JSON"),
        (b"[]", "notification must be a JSON object, not an array"),
        (b'[{"uuid": "1"}]', "must be a JSON object"),
        (b'"text"', "must be a JSON object, not a string"),
        (b"null", "must be a JSON object, not null"),
        (_setup_with("uuid"), "uuid is missing"),
        (_setup_with("uuid", 12), "uuid must be a string, not a number"),
        (_setup_with("event"), "event is missing"),
        (_setup_with("body"), "body is missing"),
        (_setup_with("body", []), "body must be an object, not an array"),
        (_setup_with("timestamp", "soon"), "timestamp is not an ISO 8601 time"),
        (_setup_with("body.parties"), "body.parties is missing"),
        (_setup_with("body.parties", {}), "body.parties must be an array"),
        (_setup_with("body.parties", [7]), "body.parties[0] must be a JSON object"),
        (_setup_with("body.sequence", "x"), "body.sequence must be an integer, not a string"),
        (_setup_with("body.sequence", True), "body.sequence must be an integer, not a boolean"),
        (_setup_with("body.sequence", 2.5), "body.sequence must be an integer, not a number"),
        (_setup_with("body.sequence"), "body.sequence is missing"),
        (_setup_with("body.telephonySessionId"), "body.telephonySessionId is missing"),
        (_setup_with("body.eventTime", "yesterday"), "body.eventTime is not an ISO 8601 time"),
        (_setup_with("body.eventTime", "2020-06-14T19:27:18.340"), "eventTime has no UTC offset"),
        (_setup_with("body.eventTime", 1592162838340), "body.eventTime must be a string"),
        (_setup_with(f"{P0}.id"), "body.parties[0].id is missing"),
        (_setup_with(f"{P0}.status"), "body.parties[0].status is missing"),
        (_setup_with(f"{P0}.status.code"), "body.parties[0].status.code is missing"),
        (_setup_with(f"{P0}.missedCall", "no"), "body.parties[0].missedCall must be a boolean"),
        (_setup_with(f"{P0}.extensionId", 8096), "body.parties[0].extensionId must be a string"),
        (_setup_with(f"{P0}.from", "+1408"), "body.parties[0].from must be an object"),
        (_setup_with(f"{P0}.to.phoneNumber", 1), "body.parties[0].to.phoneNumber must be a string"),
    ],
)
def test_malformed_bodies_are_rejected_with_a_reason_naming_the_field(
    raw_body: bytes, reason: str
) -> None:
    with pytest.raises(InvalidNotification) as raised:
        parse_notification(raw_body)

    assert reason in str(raised.value)
    assert isinstance(raised.value, ValueError)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(st.binary())
def test_any_bytes_either_parse_or_raise_invalid_notification(raw_body: bytes) -> None:
    try:
        parse_notification(raw_body)
    except InvalidNotification:
        pass


@given(
    st.fixed_dictionaries(
        {"uuid": st.text(), "event": st.just("/restapi/v1.0/account/1/telephony/sessions")},
        optional={
            "body": st.fixed_dictionaries(
                {},
                optional={
                    "sequence": _JSON,
                    "telephonySessionId": _JSON,
                    "eventTime": _JSON,
                    "parties": st.lists(_JSON | st.dictionaries(st.sampled_from(
                        ["id", "status", "from", "to", "missedCall", "extensionId"]), _JSON)),
                },
            )
        },
    )
)
def test_any_json_shape_either_parses_or_raises_invalid_notification(envelope: Any) -> None:
    try:
        parse_notification(_bytes(envelope))
    except InvalidNotification:
        pass


# --- Handshake and verification token --------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "raw_body", "expected"),
    [
        ({"Validation-Token": "abc"}, b"", "abc"),
        ({"validation-token": "abc"}, b"", "abc"),
        ({"VALIDATION-TOKEN": "abc"}, b"  \r\n", "abc"),
        ({"Validation-Token": "abc"}, _bytes({"uuid": "1"}), None),
        ({"Verification-Token": "abc"}, b"", None),
        ({}, b"", None),
    ],
)
def test_the_subscription_handshake_is_a_validation_token_with_an_empty_body(
    headers: dict[str, str], raw_body: bytes, expected: str | None
) -> None:
    assert is_validation_request(headers, raw_body) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Verification-Token": "secret"}, "secret"),
        ({"verification-token": "secret"}, "secret"),
        ({"Validation-Token": "secret"}, "secret"),
        ({"validation-token": "secret"}, "secret"),
        ({"Validation-Token": "other", "Verification-Token": "secret"}, "secret"),
        ({"Content-Type": "application/json"}, None),
        ({}, None),
    ],
)
def test_the_verification_token_is_read_from_either_header_spelling(
    headers: dict[str, str], expected: str | None
) -> None:
    assert presented_token(headers) == expected


@pytest.mark.parametrize(
    ("presented", "expected", "matches"),
    [
        ("secret", "secret", True),
        ("secret", "Secret", False),
        ("secre", "secret", False),
        (None, "secret", False),
        ("", "", False),
        (None, "", False),
        ("sécret", "secret", False),
        ("sécret", "sécret", True),
    ],
)
def test_the_token_must_match_exactly_and_an_unset_token_matches_nothing(
    presented: str | None, expected: str, matches: bool
) -> None:
    assert token_matches(presented, expected) is matches


# --- Assembling the reference call ------------------------------------------------------------

REFERENCE_CALL = FinishedCall(
    provider_call_id="s-c23b203d62db4f6aaee00717bafa99be",
    direction="outbound",
    external_number_e164="+14083388064",
    external_number_raw="+14083388064",
    internal_number="+18003151571",
    provider_user_id=SAMPLE_USER,
    started_at=datetime(2020, 6, 23, 1, 19, 21, 627000, tzinfo=timezone.utc),
    ended_at=datetime(2020, 6, 23, 1, 19, 45, 18000, tzinfo=timezone.utc),
    # 01:19:28.900 Answered → 01:19:45.018 Disconnected = 16.118 s, 3.275 s of hold included.
    duration_seconds=16,
    result="answered",
    last_sequence=10,
)


def test_the_reference_outbound_call_assembles_into_one_finished_call() -> None:
    assert assemble_call(_full_call(), {SAMPLE_USER}) == REFERENCE_CALL


def test_the_far_party_marked_inbound_does_not_make_an_outbound_call_inbound() -> None:
    notifications = _full_call()
    far_party = [n for n in notifications if n.parties[0].extension_id is None]

    assert {p.direction for n in far_party for p in n.parties} == {"Inbound"}
    assert assemble_call(notifications, {SAMPLE_USER}).direction == "outbound"


@settings(max_examples=200)
@given(st.permutations(range(9)), st.lists(st.integers(0, 8), max_size=9))
def test_shuffled_and_repeated_delivery_assembles_the_same_call(
    order: list[int], repeats: list[int]
) -> None:
    notifications = _full_call()
    delivered = [notifications[i] for i in order] + [notifications[i] for i in repeats]

    assert assemble_call(delivered, {SAMPLE_USER}) == REFERENCE_CALL


@pytest.mark.parametrize(
    "lost_sequences",
    [{9}, {9, 10}],
    ids=["only-the-far-party-hung-up", "nobody-hung-up-yet"],
)
def test_the_call_is_not_finished_while_the_user_party_has_not_hung_up(
    lost_sequences: set[int],
) -> None:
    delivered = [n for n in _full_call() if n.sequence not in lost_sequences]

    assert assemble_call(delivered, {SAMPLE_USER}) is None


def test_a_prefix_of_the_session_is_never_finished() -> None:
    notifications = _full_call()
    for end in range(len(notifications) - 2):
        assert assemble_call(notifications[: end + 1], {SAMPLE_USER}) is None


def test_a_session_without_a_firm_extension_is_not_the_firms_call() -> None:
    assert assemble_call(_full_call(), {"999"}) is None
    assert assemble_call(_full_call(), set()) is None


def test_no_notifications_is_no_call() -> None:
    assert assemble_call([], {SAMPLE_USER}) is None


def test_notifications_of_other_event_filters_are_ignored() -> None:
    presence = parse_notification(_bytes({"uuid": "p", "event": "/restapi/v1.0/account/~/presence",
                                          "body": {}}))

    assert assemble_call([presence, *_full_call()], {SAMPLE_USER}) == REFERENCE_CALL
    assert assemble_call([presence], {SAMPLE_USER}) is None


def test_mixing_two_sessions_is_a_caller_error() -> None:
    other = _inbound(3, "Setup", 0)

    with pytest.raises(ValueError, match="several telephony sessions"):
        assemble_call([*_full_call(), other], {SAMPLE_USER})


# --- Inbound, missed, voicemail, internal -----------------------------------------------------


def test_an_inbound_call_is_inbound_from_the_firm_users_side() -> None:
    notifications = [
        _inbound(3, "Setup", 0),
        _inbound(4, "Proceeding", 40),
        _inbound(5, "Answered", 7_000),
        _inbound(6, "Disconnected", 7_000 + 95_500),
    ]

    call = assemble_call(notifications, {SAMPLE_USER})

    assert call == FinishedCall(
        provider_call_id="s-a6abd24ca6774373a8120a3390d3cbe8",
        direction="inbound",
        external_number_e164="+14083388064",
        external_number_raw="+14083388064",
        internal_number="+19043014558",
        provider_user_id=SAMPLE_USER,
        started_at=T0,
        ended_at=T0 + timedelta(milliseconds=102_500),
        duration_seconds=96,
        result="answered",
        last_sequence=6,
    )


def test_an_inbound_call_nobody_answered_is_missed_with_no_connected_time() -> None:
    notifications = [
        _inbound(3, "Setup", 0),
        _inbound(4, "Proceeding", 40),
        _inbound(5, "Disconnected", 20_000, missed_call=True),
    ]

    call = assemble_call(notifications, {SAMPLE_USER})

    assert call is not None
    assert (call.result, call.duration_seconds, call.direction) == ("missed", 0, "inbound")
    assert call.ended_at == T0 + timedelta(seconds=20)


def test_a_call_never_answered_is_missed_even_without_the_missed_call_flag() -> None:
    notifications = [_inbound(3, "Setup", 0), _inbound(4, "Disconnected", 3_000)]

    assert assemble_call(notifications, {SAMPLE_USER}).result == "missed"


def test_a_call_that_went_to_voicemail_is_voicemail_with_no_connected_time() -> None:
    notifications = [
        _inbound(3, "Setup", 0),
        _inbound(4, "Proceeding", 40),
        _inbound(5, "VoiceMail", 25_000),
        _inbound(6, "Disconnected", 55_000, missed_call=True),
    ]

    call = assemble_call(notifications, {SAMPLE_USER})

    assert call is not None
    assert (call.result, call.duration_seconds) == ("voicemail", 0)
    assert call.ended_at == T0 + timedelta(seconds=55)


def test_a_party_gone_to_another_session_has_finished_this_call() -> None:
    notifications = [
        _inbound(3, "Setup", 0),
        _inbound(4, "Answered", 2_000),
        _inbound(5, "Gone", 32_000),
    ]

    call = assemble_call(notifications, {SAMPLE_USER})

    assert call is not None
    assert (call.result, call.duration_seconds) == ("answered", 30)


def test_an_extension_to_extension_call_is_internal_with_no_external_number() -> None:
    callee = "400144455008"
    notifications = [
        parse_notification(_bytes(_internal(5, "Proceeding", 0))),
        parse_notification(_bytes(_internal(6, "Answered", 4_000))),
        parse_notification(_bytes(_internal(7, "Disconnected", 64_000))),
    ]

    call = assemble_call(notifications, {callee})

    assert call is not None
    assert call.direction == "internal"
    assert call.external_number_e164 is None
    assert call.external_number_raw == "103"
    assert call.internal_number == "102"
    assert call.provider_user_id == callee
    assert (call.duration_seconds, call.result) == (60, "answered")


def test_a_call_from_an_extension_shown_by_its_short_number_is_internal() -> None:
    template = _internal(5, "Answered", 0)
    del template["body"]["parties"][0]["from"]["extensionId"]
    notifications = [
        _with_party(template),
        _with_party(_internal(6, "Disconnected", 10_000), **{"from": {"phoneNumber": "103"}}),
    ]

    assert assemble_call(notifications, {"400144455008"}).direction == "internal"


def test_of_two_firm_parties_the_one_who_answered_is_tracked() -> None:
    ringing = _internal(5, "Proceeding", 0)
    other_leg = {"id": "cs171841903434018384-3", "extensionId": "400144459008"}
    notifications = [
        _with_party(ringing),
        _with_party(ringing, **other_leg),
        _with_party(_internal(6, "Disconnected", 9_000), missedCall=True),
        _with_party(_internal(7, "Answered", 9_100), **other_leg),
        _with_party(_internal(8, "Disconnected", 39_100), **other_leg),
    ]

    call = assemble_call(notifications, {"400144455008", "400144459008"})

    assert call is not None
    assert call.provider_user_id == "400144459008"
    assert (call.result, call.duration_seconds) == ("answered", 30)


# --- Direction is who called whom, not RingCentral's technical leg direction ------------------


def test_a_user_calling_out_on_a_leg_ringcentral_calls_inbound_is_outbound() -> None:
    # RingOut: RingCentral first rings the user's own phone, so the user's leg is "Inbound"
    # although the user is the caller (`from`).
    notifications = [
        _with_party(e, direction="Inbound") for e in _full_call_envelopes()
        if e["body"]["parties"][0].get("extensionId") == SAMPLE_USER
    ]

    assert assemble_call(notifications, {SAMPLE_USER}).direction == "outbound"


@pytest.mark.parametrize(
    ("technical", "expected"), [("Inbound", "inbound"), ("Outbound", "outbound")]
)
def test_without_extension_ids_in_from_and_to_the_party_direction_decides(
    technical: str, expected: str
) -> None:
    envelopes = [e for e in _full_call_envelopes()
                 if e["body"]["parties"][0].get("extensionId") == SAMPLE_USER]
    for envelope in envelopes:
        envelope["body"]["parties"][0]["from"].pop("extensionId", None)

    notifications = [_with_party(e, direction=technical) for e in envelopes]

    assert assemble_call(notifications, {SAMPLE_USER}).direction == expected


# --- Connected time --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("talk_ms", "seconds"),
    [
        (0, 0), (499, 0), (500, 1), (1_499, 1), (1_500, 2),
        (16_118, 16), (59_999, 60), (3_600_000, 3600),
    ],
)
def test_connected_time_is_rounded_half_up_to_whole_seconds(talk_ms: int, seconds: int) -> None:
    notifications = [
        _inbound(3, "Setup", 0),
        _inbound(4, "Answered", 5_000),
        _inbound(5, "Disconnected", 5_000 + talk_ms),
    ]

    call = assemble_call(notifications, {SAMPLE_USER})

    assert call.duration_seconds == seconds
    assert isinstance(call.duration_seconds, int)


def test_connected_time_counts_from_the_first_answer_and_includes_hold() -> None:
    notifications = [
        _inbound(3, "Setup", 0),
        _inbound(4, "Answered", 1_000),
        _inbound(5, "Hold", 11_000),
        _inbound(6, "Answered", 71_000),
        _inbound(7, "Disconnected", 81_000),
    ]

    assert assemble_call(notifications, {SAMPLE_USER}).duration_seconds == 80


def test_events_after_the_user_hung_up_do_not_change_the_call() -> None:
    late = _full_call()
    stray = copy.deepcopy(_full_call_envelopes()[-3])  # the user's Disconnected, sequence 9
    stray["uuid"] = "late-1"
    stray["body"]["sequence"] = 11
    stray["body"]["eventTime"] = "2020-06-23T01:20:45.018Z"
    stray["body"]["parties"][0]["status"]["code"] = "Answered"

    call = assemble_call([*late, parse_notification(_bytes(stray))], {SAMPLE_USER})

    assert call is not None
    assert call.ended_at == REFERENCE_CALL.ended_at
    assert call.duration_seconds == REFERENCE_CALL.duration_seconds
    assert call.last_sequence == 11
