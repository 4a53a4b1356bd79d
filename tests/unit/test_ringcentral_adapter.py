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

from calltime.ingest.providers import model
from calltime.ingest.providers.model import Account, Notice, Refused, WebhookRequest
from calltime.ingest.providers.ringcentral import (
    ADAPTER,
    MAX_VALIDATION_TOKEN_CHARS,
    FinishedCall,
    InvalidNotification,
    Party,
    RingCentral,
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
    sequence: int, status: str, after_ms: int, *, missed_call: bool = False, reason: str | None = None
) -> SessionNotification:
    """The reference inbound Setup sample, moved on to `status` (for `reason`) at T0 + `after_ms`."""
    envelope = copy.deepcopy(_load(SETUP))
    envelope["uuid"] = f"uuid-{sequence}"
    body = envelope["body"]
    body["sequence"] = sequence
    body["eventTime"] = _rc_time(T0 + timedelta(milliseconds=after_ms))
    body["parties"][0]["status"]["code"] = status
    if reason is not None:
        body["parties"][0]["status"]["reason"] = reason
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


def test_a_disconnect_whose_reason_is_a_rejection_is_rejected_not_missed() -> None:
    notifications = [_inbound(3, "Setup", 0), _inbound(4, "Disconnected", 4_000, reason="Rejected")]

    call = assemble_call(notifications, {SAMPLE_USER})

    assert call is not None
    assert (call.result, call.duration_seconds) == ("rejected", 0)
    assert notifications[1].parties[0].status_reason == "Rejected"


@pytest.mark.parametrize("reason", ["NoAnswer", "TargetBusy", None])
def test_an_unanswered_disconnect_for_any_other_reason_is_missed(reason: str | None) -> None:
    call = assemble_call([_inbound(3, "Setup", 0), _inbound(4, "Disconnected", 0, reason=reason)],
                         {SAMPLE_USER})

    assert call is not None and call.result == "missed"


def test_a_rejection_reason_after_the_user_answered_does_not_unanswer_the_call() -> None:
    notifications = [_inbound(3, "Setup", 0), _inbound(4, "Answered", 2_000),
                     _inbound(5, "Disconnected", 30_000, reason="Rejected")]

    assert assemble_call(notifications, {SAMPLE_USER}).result == "answered"


# --- The provider-neutral adapter (PhoneProvider) --------------------------------------------

DISCONNECTED = "ringcentral_telephony_sessions_disconnected.json"
SECRET = "the-verification-token"
RECEIVED = datetime(2020, 6, 23, 1, 19, 46, tzinfo=timezone.utc)


def _account(**changes: Any) -> Account:
    fields = dict(firm_id="firm-1", provider="ringcentral", account_id=SAMPLE_USER,
                  webhook_secret=SECRET, phone_region="US",
                  attorneys_by_user={SAMPLE_USER: "attorney-1"})
    return Account(**(fields | changes))


def _request(body: bytes, headers: dict[str, str] | None = None) -> WebhookRequest:
    if headers is None:
        headers = {"Verification-Token": SECRET, "Content-Type": "application/json"}
    return WebhookRequest(headers={k.lower(): v for k, v in headers.items()}, query={},
                          body=body, received_at=RECEIVED)


def _notices(body: bytes) -> list[Notice]:
    request = _request(body)
    ADAPTER.authenticate(request, _account())
    return list(ADAPTER.notices(request, _account()))


def test_the_adapter_speaks_the_shared_model() -> None:
    assert ADAPTER.name == "ringcentral"
    assert isinstance(ADAPTER, RingCentral)
    assert FinishedCall is model.FinishedCall
    assert InvalidNotification is model.InvalidNotification


@pytest.mark.parametrize("name", [DISCONNECTED])
def test_new_fixtures_are_verbatim_copies_of_the_reference_samples(name: str) -> None:
    if not (REFERENCE / name).exists():
        pytest.skip("reference samples not checked out beside the repo")
    assert (FIXTURES / name).read_bytes() == (REFERENCE / name).read_bytes()


def test_the_disconnected_sample_is_the_users_hang_up_in_the_full_call() -> None:
    assert _load(DISCONNECTED) == _full_call_envelopes()[7]


def test_the_handshake_echoes_the_validation_token_in_a_small_json_reply() -> None:
    reply = ADAPTER.handshake(_request(b"", {"Validation-Token": "abc-123"}), _account())

    assert reply is not None
    assert (reply.status, reply.body, reply.media_type) == (200, b"", "application/json")
    assert dict(reply.headers) == {"Validation-Token": "abc-123"}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Verification-Token": SECRET}, b""),
        ({"Validation-Token": SECRET}, (FIXTURES / SETUP).read_bytes()),
        ({}, b""),
    ],
)
def test_anything_but_an_empty_validation_request_is_not_a_handshake(
    headers: dict[str, str], body: bytes
) -> None:
    assert ADAPTER.handshake(_request(body, headers), _account()) is None


def test_a_validation_token_too_long_to_echo_within_1kb_is_refused() -> None:
    longest = "t" * MAX_VALIDATION_TOKEN_CHARS
    too_long = longest + "t"

    assert ADAPTER.handshake(_request(b"", {"Validation-Token": longest}), _account())
    with pytest.raises(Refused) as refused:
        ADAPTER.handshake(_request(b"", {"Validation-Token": too_long}), _account())
    assert refused.value.status == 400


@pytest.mark.parametrize("header", ["Verification-Token", "Validation-Token", "verification-token"])
def test_the_verification_token_in_either_header_authenticates(header: str) -> None:
    ADAPTER.authenticate(_request((FIXTURES / SETUP).read_bytes(), {header: SECRET}), _account())


@pytest.mark.parametrize(
    ("headers", "account"),
    [
        ({"Verification-Token": "forged"}, _account()),
        ({"Verification-Token": SECRET[:-1]}, _account()),
        ({}, _account()),
        ({"Content-Type": "application/json"}, _account()),
        ({"Verification-Token": ""}, _account(webhook_secret="")),
    ],
    ids=["forged", "truncated", "no-header", "other-headers-only", "no-secret-configured"],
)
def test_a_missing_or_wrong_token_is_refused_with_401(
    headers: dict[str, str], account: Account
) -> None:
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request((FIXTURES / SETUP).read_bytes(), headers), account)

    assert refused.value.status == 401


def test_a_notification_for_another_account_in_its_event_is_refused_with_403() -> None:
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request((FIXTURES / SETUP).read_bytes()),
                             _account(account_id="111111"))

    assert refused.value.status == 403


def _unwrapped_account_level_sample() -> dict[str, Any]:
    envelope = copy.deepcopy(_load(PROCEEDING_INTERNAL)["pn_apns"])
    del envelope["aps"]
    return envelope


def test_body_account_id_other_than_the_firms_is_refused_with_403() -> None:
    envelope = _unwrapped_account_level_sample()
    envelope["event"] = "/restapi/v1.0/account/~/extension/~/telephony/sessions"

    ADAPTER.authenticate(_request(_bytes(envelope)), _account(account_id="400144452008"))
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request(_bytes(envelope)), _account(account_id="400144452009"))
    assert refused.value.status == 403


def test_owner_id_is_the_subscribing_extension_not_the_account() -> None:
    # The account-level sample: ownerId 400144455008 is the extension under account ...2008.
    envelope = _unwrapped_account_level_sample()

    ADAPTER.authenticate(_request(_bytes(envelope)), _account(account_id="400144452008"))
    assert envelope["ownerId"] != "400144452008"


def test_a_body_that_names_no_account_is_left_to_the_parser() -> None:
    for body in (b"not json", b"[]", _bytes({"uuid": "1", "event": "/restapi/v1.0/account/~/presence"})):
        ADAPTER.authenticate(_request(body), _account())


def test_each_telephony_notification_is_one_notice_keyed_by_its_uuid() -> None:
    raw = (FIXTURES / SETUP).read_bytes()

    assert _notices(raw) == [Notice(dedupe_key="1823485288313944239",
                                    provider_call_id="s-a6abd24ca6774373a8120a3390d3cbe8",
                                    body=raw)]


def test_a_redelivery_gives_the_same_dedupe_key() -> None:
    raw = (FIXTURES / DISCONNECTED).read_bytes()
    reformatted = _bytes(json.loads(raw))

    assert _notices(raw)[0].dedupe_key == _notices(reformatted)[0].dedupe_key == "2093060148244630825"


@pytest.mark.parametrize(
    "event",
    ["/restapi/v1.0/account/~/extension/~/message-store",
     "/restapi/v1.0/subscription/~?threshold=86400&interval=3600",
     "/restapi/v1.0/account/~/extension/~/presence"],
)
def test_other_events_are_acknowledged_and_ignored(event: str) -> None:
    assert _notices(_bytes({"uuid": "u", "event": event, "body": {}})) == []


@pytest.mark.parametrize(
    "raw_body",
    [b"", b"{", b"[1, 2]", b'"x"', _setup_with("body.sequence", "two"), _setup_with("uuid"),
     (FIXTURES / SETUP).read_bytes()[:-40]],
    ids=["empty", "truncated-object", "array", "string", "wrong-type", "no-uuid", "truncated"],
)
def test_malformed_notifications_raise_the_models_invalid_notification(raw_body: bytes) -> None:
    with pytest.raises(model.InvalidNotification):
        ADAPTER.notices(_request(raw_body), _account())


@given(st.binary())
def test_arbitrary_bytes_are_refused_or_invalid_never_anything_else(raw_body: bytes) -> None:
    request = _request(raw_body)
    try:
        ADAPTER.handshake(request, _account())
        ADAPTER.authenticate(request, _account())
        ADAPTER.notices(request, _account())
    except (Refused, model.InvalidNotification):
        pass


@given(_JSON)
def test_arbitrary_json_is_refused_or_invalid_never_anything_else(value: Any) -> None:
    request = _request(_bytes(value))
    try:
        ADAPTER.authenticate(request, _account())
        ADAPTER.notices(request, _account())
    except (Refused, model.InvalidNotification):
        pass


def _full_call_bodies() -> list[bytes]:
    return [_bytes(e) for e in _full_call_envelopes()]


def test_the_reference_call_through_the_adapter_is_the_reference_call() -> None:
    bodies = [n.body for raw in _full_call_bodies() for n in _notices(raw)]

    assert ADAPTER.finished_call(bodies, _account()) == REFERENCE_CALL


def test_the_call_is_not_finished_until_the_users_hang_up_arrives() -> None:
    bodies = _full_call_bodies()

    assert ADAPTER.finished_call(bodies[:7], _account()) is None
    assert ADAPTER.finished_call(bodies[:8], _account()).duration_seconds == 16


def test_an_extension_of_the_firms_account_nobody_mapped_is_still_the_firms_call() -> None:
    call = ADAPTER.finished_call(_full_call_bodies(), _account(attorneys_by_user={}))

    assert call is not None and call.provider_user_id == SAMPLE_USER


def test_a_call_of_no_mapped_extension_in_another_account_is_not_the_firms() -> None:
    account = _account(account_id="111111", attorneys_by_user={"222": "attorney-2"})

    assert ADAPTER.finished_call(_full_call_bodies(), account) is None


def test_the_firms_region_reads_numbers_written_without_a_country_code() -> None:
    bodies = []
    for envelope in _full_call_envelopes():
        for party in envelope["body"]["parties"]:
            if party["to"].get("phoneNumber") == "+14083388064":
                party["to"]["phoneNumber"] = "020 7946 0958"
        bodies.append(_bytes(envelope))

    call = ADAPTER.finished_call(bodies, _account(phone_region="GB"))

    assert call.external_number_e164 == "+442079460958"
    assert call.external_number_raw == "020 7946 0958"


def test_a_lone_hang_up_is_a_finished_call_with_no_connected_time_until_the_answer_arrives() -> None:
    call = ADAPTER.finished_call([(FIXTURES / DISCONNECTED).read_bytes()], _account())

    assert call is not None
    assert (call.result, call.duration_seconds, call.last_sequence) == ("missed", 0, 9)
    assert call.ended_at == REFERENCE_CALL.ended_at


# --- Regressions found by the webhook fuzz (tests/e2e/test_webhook_fuzz.py) --------------------


def test_a_body_nested_deeper_than_the_parser_recurses_is_a_400_not_a_crash() -> None:
    body = b"[" * 5000 + b"]" * 5000
    request = _request(body)

    ADAPTER.authenticate(request, _account())  # names no account: nothing to refuse yet
    with pytest.raises(InvalidNotification, match="not JSON"):
        ADAPTER.notices(request, _account())


def test_a_time_with_no_utc_equivalent_is_invalid_not_a_crash() -> None:
    envelope = _full_call_envelopes()[-1]
    envelope["timestamp"] = "0001-01-01T00:00:00.073+01:00"  # valid ISO 8601, before year 1 in UTC

    with pytest.raises(InvalidNotification, match="timestamp is out of range"):
        _notices(_bytes(envelope))


def test_bytes_that_are_not_utf8_are_invalid_even_when_json_would_read_them() -> None:
    # json.loads(bytes) decodes with 'surrogatepass': these bytes would become "\ud800", which
    # PostgreSQL and Avro cannot store, and the call would fail after the webhook was answered.
    body = _bytes(_full_call_envelopes()[-1]).replace(b'"TESTER Babji"', b'"TESTER \xed\xa0\x80"')

    with pytest.raises(InvalidNotification, match="not JSON"):
        _notices(body)


def test_a_session_whose_events_span_millennia_is_not_announced() -> None:
    envelopes = _full_call_envelopes()
    envelopes[-2]["body"]["eventTime"] = "9999-12-31T23:59:59.000Z"  # the user's hang-up, ~8,000 years on
    bodies = [_bytes(e) for e in envelopes]

    with pytest.raises(InvalidNotification, match="duration"):
        ADAPTER.finished_call(bodies, _account())


def test_a_lone_surrogate_escape_in_a_number_is_not_announced() -> None:
    envelopes = _full_call_envelopes()
    for envelope in envelopes:
        for party in envelope["body"]["parties"]:
            if party["to"].get("phoneNumber") == "+14083388064":
                party["to"]["phoneNumber"] = "\ud800"
    bodies = [_bytes(e) for e in envelopes]  # json.dumps writes it as the ASCII escape \ud800

    with pytest.raises(InvalidNotification, match="not UTF-8"):
        ADAPTER.finished_call(bodies, _account())
