"""The Dialpad adapter accepts only HS256-signed call events, and turns the firm user's hangup
into exactly one finished call.

Fixtures in tests/fixtures/dialpad/ are verbatim copies of the reference samples, each with its
.src.txt. `dialpad_jwt_worked_example.COMPUTED.json` is the signed test vector;
`dialpad_call_get_response.json` is Dialpad's own `CallProto` example.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calltime.ingest.providers.dialpad import ADAPTER, REPLAY_TOLERANCE, connected_seconds
from calltime.ingest.providers.model import (
    Account,
    FinishedCall,
    InvalidNotification,
    Refused,
    WebhookRequest,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dialpad"
VECTOR = json.loads((FIXTURES / "dialpad_jwt_worked_example.COMPUTED.json").read_text())
API_CALL = json.loads((FIXTURES / "dialpad_call_get_response.json").read_text())
SECRET = VECTOR["secret"]
NOW = datetime(2024, 3, 5, 14, 45, tzinfo=timezone.utc)
T0 = datetime(2024, 3, 5, 14, 30, 7, 123000, tzinfo=timezone.utc)
T0_MS = 1709649007123
ACCOUNT = Account(
    firm_id="firm-1",
    provider="dialpad",
    account_id="company-9",
    webhook_secret=SECRET,
    phone_region="US",
    attorneys_by_user={"2": "attorney-7"},
)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jws(claims: Any, secret: str = SECRET, header: Any = None) -> bytes:
    head = _b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(signature)}".encode()


def _request(body: bytes, received_at: datetime = NOW) -> WebhookRequest:
    return WebhookRequest(headers={"content-type": "application/jwt"}, query={}, body=body,
                          received_at=received_at)


def _hangup(**changes: Any) -> dict[str, Any]:
    """Dialpad's own CallProto example as the hangup of a call answered at T0 + 5 s."""
    event = copy.deepcopy(API_CALL)
    event.update({
        "state": "hangup",
        "date_started": str(T0_MS),
        "date_rang": str(T0_MS),
        "date_connected": str(T0_MS + 5_000),
        "date_ended": str(T0_MS + 5_000 + 95_400),
        "event_timestamp": str(T0_MS + 5_000 + 95_400),
        "duration": 95400.0,
        "total_duration": 100400.0,
    })
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def _accepted(claims: Any, account: Account = ACCOUNT) -> FinishedCall | None:
    request = _request(_jws(claims, account.webhook_secret))
    ADAPTER.authenticate(request, account)
    notices = ADAPTER.notices(request, account)
    return ADAPTER.finished_call([n.body for n in notices], account) if notices else None


def _refusal(body: bytes, account: Account = ACCOUNT, received_at: datetime = NOW) -> Refused:
    with pytest.raises(Refused) as raised:
        ADAPTER.authenticate(_request(body, received_at), account)
    return raised.value


# --- The worked example and Dialpad's CallProto example ----------------------------------------


def test_worked_example_jwt_is_accepted_and_reads_as_the_expected_call() -> None:
    request = _request(VECTOR["raw_request_body_jwt"].encode())

    ADAPTER.authenticate(request, ACCOUNT)
    notices = ADAPTER.notices(request, ACCOUNT)

    assert [(n.dedupe_key, n.provider_call_id) for n in notices] == [("1002:hangup:1356998400000", "1002")]
    assert json.loads(notices[0].body) == VECTOR["decoded_payload"]
    moment = datetime(2013, 1, 1, tzinfo=timezone.utc)
    assert ADAPTER.finished_call([notices[0].body], ACCOUNT) == _example_call(
        started_at=moment,
        ended_at=moment,  # no date_ended in the vector: the hangup's event_timestamp
        duration_seconds=0,  # connected and ended at the same millisecond
    )


def _example_call(*, started_at: datetime, ended_at: datetime, duration_seconds: int) -> FinishedCall:
    """The firm user's answered inbound call that Dialpad's example `CallProto` describes."""
    return FinishedCall(
        provider_call_id="1002",
        direction="inbound",
        external_number_e164="+14155557777",
        external_number_raw="+14155557777",
        internal_number="+14155551001",
        provider_user_id="2",
        started_at=started_at,
        ended_at=ended_at,
        duration_seconds=duration_seconds,
        result="answered",
    )


def test_api_example_as_a_hangup_reads_as_the_firm_users_answered_call() -> None:
    assert _accepted(_hangup()) == _example_call(
        started_at=T0,
        ended_at=T0 + timedelta(seconds=100, milliseconds=400),
        duration_seconds=95,  # 95.4 s connected, rounded half up
    )


def test_api_example_verbatim_is_a_connected_event_and_is_ignored() -> None:
    request = _request(_jws(API_CALL))
    ADAPTER.authenticate(request, ACCOUNT)
    assert ADAPTER.notices(request, ACCOUNT) == []


def test_provider_call_id_is_the_users_leg_not_the_master_or_entry_point_call() -> None:
    call = _accepted(_hangup(call_id="5550001", master_call_id="5550000", entry_point_call_id="5550000"))
    assert call is not None and call.provider_call_id == "5550001"


def test_handshake_is_never_needed() -> None:
    assert ADAPTER.handshake(_request(b""), ACCOUNT) is None
    assert ADAPTER.handshake(_request(_jws(_hangup())), ACCOUNT) is None
    assert ADAPTER.name == "dialpad"


# --- Authenticity ------------------------------------------------------------------------------


def test_tampered_payload_is_refused() -> None:
    head, body, signature = VECTOR["raw_request_body_jwt"].split(".")
    forged_claims = dict(VECTOR["decoded_payload"], call_id="1003")
    forged = f"{head}.{_b64url(json.dumps(forged_claims).encode())}.{signature}".encode()
    assert _refusal(forged).status == 401


def test_wrong_secret_is_refused() -> None:
    assert _refusal(_jws(_hangup(), secret="another-firms-secret")).status == 401


def test_unsigned_json_body_is_refused() -> None:
    refusal = _refusal(json.dumps(VECTOR["decoded_payload"]).encode())
    assert refusal.status == 401 and "unsigned" in refusal.reason


@pytest.mark.parametrize("header", [
    {"alg": "none", "typ": "JWT"},
    {"alg": "None"},
    {"alg": "HS512", "typ": "JWT"},
    {"alg": "RS256"},
    {"typ": "JWT"},
    {"alg": "HS256", "crit": ["b64"]},
])
def test_any_algorithm_but_hs256_is_refused_even_when_hmac_signed(header: dict[str, Any]) -> None:
    assert _refusal(_jws(_hangup(), header=header)).status == 401


def test_alg_none_without_signature_is_refused() -> None:
    head = _b64url(json.dumps({"alg": "none"}).encode())
    body = _b64url(json.dumps(_hangup()).encode())
    assert _refusal(f"{head}.{body}.".encode()).status == 401


@pytest.mark.parametrize("body", [
    b"", b"   ", b"not-a-jwt", b"a.b", b"a.b.c.d", "é.é.é".encode(), b"eyJ9.eyJ9.!!!!", b"[1,2]",
])
def test_bodies_that_are_not_a_signed_jws_are_refused(body: bytes) -> None:
    assert _refusal(body).status == 401


def test_an_account_without_a_secret_accepts_nothing() -> None:
    account = Account("firm-1", "dialpad", "company-9", "", "US", {"2": "attorney-7"})
    assert _refusal(_jws(_hangup(), secret=""), account).status == 401


def test_surrounding_whitespace_does_not_break_a_valid_signature() -> None:
    ADAPTER.authenticate(_request(b"\r\n" + _jws(_hangup()) + b"\n"), ACCOUNT)


def test_another_firms_event_is_refused_by_its_secret_since_events_name_no_company() -> None:
    """No 403 path: a CallProto carries no company id; each firm's own secret binds events."""
    other_firm = Account("firm-2", "dialpad", "company-10", "firm-2-secret", "US", {"2": "attorney-1"})
    assert _refusal(_jws(_hangup()), other_firm).status == 401


# --- exp / iat (UNCONFIRMED whether Dialpad sends them) ----------------------------------------


def _at_now(offset_seconds: int) -> int:
    return int(NOW.timestamp()) + offset_seconds


@pytest.mark.parametrize("claims", [
    {"iat": _at_now(0)},
    {"iat": _at_now(-int(REPLAY_TOLERANCE.total_seconds()))},
    {"iat": _at_now(int(REPLAY_TOLERANCE.total_seconds()))},
    {"exp": _at_now(60)},
    {"exp": _at_now(-10)},  # within the clock-skew grace
    {"iat": _at_now(-2), "exp": _at_now(298)},
    {"iat": _at_now(0) + 0.5},  # NumericDates may be fractional
])
def test_fresh_time_claims_are_accepted(claims: dict[str, Any]) -> None:
    ADAPTER.authenticate(_request(_jws(_hangup(**claims))), ACCOUNT)


@pytest.mark.parametrize("claims", [
    {"iat": _at_now(-int(REPLAY_TOLERANCE.total_seconds()) - 1)},
    {"iat": _at_now(int(REPLAY_TOLERANCE.total_seconds()) + 1)},
    {"exp": _at_now(-31)},
    {"iat": _at_now(0), "exp": _at_now(-3600)},
    {"exp": "tomorrow"},
    {"iat": True},
])
def test_stale_expired_or_malformed_time_claims_are_refused(claims: dict[str, Any]) -> None:
    assert _refusal(_jws(_hangup(**claims))).status == 401


def test_replay_window_is_measured_from_our_arrival_time() -> None:
    body = _jws(_hangup(iat=_at_now(0)))
    ADAPTER.authenticate(_request(body, NOW + timedelta(seconds=299)), ACCOUNT)
    assert _refusal(body, received_at=NOW + timedelta(minutes=6)).status == 401


# --- Which events count ------------------------------------------------------------------------


@pytest.mark.parametrize("state", [
    "calling", "ringing", "connected", "hold", "missed", "voicemail", "voicemail_uploaded",
    "recording", "postcall", "transcription", "csat", "merged", "parked", "preanswer", "queued",
])
def test_events_other_than_hangup_are_acknowledged_and_ignored(state: str) -> None:
    request = _request(_jws(_hangup(state=state)))
    ADAPTER.authenticate(request, ACCOUNT)
    assert ADAPTER.notices(request, ACCOUNT) == []


def test_non_hangup_events_need_nothing_but_a_state() -> None:
    request = _request(_jws({"state": "ringing"}))
    ADAPTER.authenticate(request, ACCOUNT)
    assert ADAPTER.notices(request, ACCOUNT) == []


@pytest.mark.parametrize("target", [
    {"id": "124", "type": "office", "phone": "+14155551000"},
    {"id": "77", "type": "department"},
    None,
])
def test_hangups_of_legs_that_are_not_a_firm_users_are_ignored(target: Any) -> None:
    request = _request(_jws(_hangup(target=target)))
    ADAPTER.authenticate(request, ACCOUNT)
    assert ADAPTER.notices(request, ACCOUNT) == []


def test_a_hangup_of_a_user_with_no_attorney_mapping_is_still_a_call_of_that_user() -> None:
    request = _request(_jws(_hangup(target={"id": "99", "type": "user"})))
    ADAPTER.authenticate(request, ACCOUNT)
    notices = ADAPTER.notices(request, ACCOUNT)
    call = ADAPTER.finished_call([n.body for n in notices], ACCOUNT)
    assert "99" not in ACCOUNT.attorneys_by_user
    assert len(notices) == 1 and call is not None and call.provider_user_id == "99"


def test_redelivered_hangup_has_the_same_dedupe_key() -> None:
    first = ADAPTER.notices(_request(_jws(_hangup())), ACCOUNT)
    again = ADAPTER.notices(_request(_jws(_hangup())), ACCOUNT)
    later = ADAPTER.notices(_request(_jws(_hangup(event_timestamp=str(T0_MS + 200_000)))), ACCOUNT)
    assert first[0].dedupe_key == again[0].dedupe_key != later[0].dedupe_key


# --- Units and the duration rule ---------------------------------------------------------------


@pytest.mark.parametrize(("connected_ms", "ended_ms", "seconds"), [
    (None, 10_000, 0),
    (1_000, 1_000, 0),
    (1_000, 1_499, 0),
    (1_000, 1_500, 1),
    (1_000, 2_499, 1),
    (1_000, 2_500, 2),
    (0, 3_600_000, 3600),
    (5_000, 4_000, 0),
])
def test_connected_seconds_round_half_up_from_integer_milliseconds(
    connected_ms: int | None, ended_ms: int, seconds: int
) -> None:
    assert connected_seconds(connected_ms, ended_ms) == seconds


def test_duration_field_is_not_trusted_when_the_dates_say_otherwise() -> None:
    """Dialpad shows `duration: 0` with a non-zero `total_duration` on some legs (§4.2)."""
    call = _accepted(_hangup(duration=0, total_duration=100400.0))
    assert call is not None and call.duration_seconds == 95


def test_never_connected_call_has_no_seconds_even_with_a_duration() -> None:
    call = _accepted(_hangup(date_connected=None, duration=12000.0))
    assert call is not None and (call.duration_seconds, call.result) == (0, "missed")


def test_int64_values_may_also_arrive_as_json_integers() -> None:
    as_strings = _accepted(_hangup())
    as_numbers = _accepted(_hangup(call_id=1002, date_started=T0_MS, date_connected=T0_MS + 5_000,
                                   date_ended=T0_MS + 100_400, event_timestamp=T0_MS + 100_400))
    assert as_strings == as_numbers


def test_times_keep_their_milliseconds_and_are_utc() -> None:
    call = _accepted(_hangup(date_ended=str(T0_MS + 7_001)))
    assert call is not None
    assert call.started_at == datetime(2024, 3, 5, 14, 30, 7, 123000, tzinfo=timezone.utc)
    assert call.ended_at == datetime(2024, 3, 5, 14, 30, 14, 124000, tzinfo=timezone.utc)
    assert call.started_at.utcoffset() == timedelta(0)


# --- Direction, numbers, result ----------------------------------------------------------------


def test_outbound_call_is_outbound_from_the_users_side() -> None:
    call = _accepted(_hangup(direction="outbound"))
    assert call is not None and call.direction == "outbound"


def test_call_with_another_dialpad_user_is_internal() -> None:
    contact = {"id": "3", "name": "Other User", "phone": "+14155551002", "type": "user"}
    call = _accepted(_hangup(contact=contact, external_number="+14155551002"))
    assert call is not None and call.direction == "internal"


def test_other_sides_number_is_normalised_and_kept_raw() -> None:
    call = _accepted(_hangup(external_number="(212) 555-0123"))
    assert call is not None
    assert (call.external_number_e164, call.external_number_raw) == ("+12125550123", "(212) 555-0123")


def test_missing_numbers_fall_back_to_contact_and_target_phones() -> None:
    call = _accepted(_hangup(external_number=None, internal_number=None))
    assert call is not None
    assert (call.external_number_raw, call.internal_number) == ("+14155557777", "+14155551001")


def test_call_to_the_users_voicemail_reads_as_voicemail_without_seconds() -> None:
    recording = {"id": "r1", "recording_type": "voicemail", "duration": 30000, "start_time": str(T0_MS)}
    call = _accepted(_hangup(date_connected=None, recording_details=[recording]))
    assert call is not None and (call.result, call.duration_seconds) == ("voicemail", 0)
    call = _accepted(_hangup(date_connected=None, voicemail_share_link="https://dialpad.com/v/1"))
    assert call is not None and call.result == "voicemail"


def test_a_connected_call_stays_answered_whatever_recordings_it_has() -> None:
    call = _accepted(_hangup(voicemail_share_link="https://dialpad.com/v/1"))
    assert call is not None and (call.result, call.duration_seconds) == ("answered", 95)


# --- Several notices of one call ---------------------------------------------------------------


def _body(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def test_the_latest_hangup_of_a_call_is_the_authoritative_one() -> None:
    late = _hangup(event_timestamp=str(T0_MS + 200_000), date_ended=str(T0_MS + 125_000))
    early = _hangup()
    call = ADAPTER.finished_call([_body(late), _body(early)], ACCOUNT)
    assert call is not None and call.duration_seconds == 120


def test_of_equally_timed_hangups_the_last_to_arrive_wins() -> None:
    first = _hangup(date_ended=str(T0_MS + 65_000))
    second = _hangup(date_ended=str(T0_MS + 66_000))
    call = ADAPTER.finished_call([_body(first), _body(second)], ACCOUNT)
    assert call is not None and call.duration_seconds == 61


def test_without_a_hangup_there_is_no_finished_call() -> None:
    assert ADAPTER.finished_call([], ACCOUNT) is None
    assert ADAPTER.finished_call([_body(_hangup(state="connected"))], ACCOUNT) is None


def test_bodies_of_two_calls_are_a_caller_error() -> None:
    with pytest.raises(ValueError, match="several Dialpad calls"):
        ADAPTER.finished_call([_body(_hangup()), _body(_hangup(call_id="1003"))], ACCOUNT)


# --- Malformed bodies --------------------------------------------------------------------------


def _notices(body: bytes) -> Any:
    return ADAPTER.notices(_request(body), ACCOUNT)


@pytest.mark.parametrize("changes", [
    {"call_id": None},
    {"call_id": True},
    {"call_id": 10.5},
    {"call_id": "10a"},
    {"state": 3},
    {"date_started": None},
    {"date_started": "yesterday"},
    {"date_ended": "-5"},
    {"date_ended": "99999999999999999"},
    {"date_ended": None, "event_timestamp": None},
    {"direction": None},
    {"direction": "sideways"},
    {"target": "2"},
    {"target": {"id": ["2"], "type": "user"}},
    {"contact": []},
    {"external_number": 14155557777},
])
def test_wrongly_typed_hangups_are_invalid(changes: dict[str, Any]) -> None:
    body = _jws(_hangup(**changes))
    with pytest.raises(InvalidNotification):
        _notices(body)


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b"null", b'"hangup"', b"\xff\xfe", b'{"state": NaN}'])
def test_payloads_that_are_not_an_event_object_are_invalid(payload: bytes) -> None:
    head = _b64url(b'{"alg":"HS256"}')
    with pytest.raises(InvalidNotification):
        _notices(f"{head}.{_b64url(payload)}.sig".encode())


def test_truncated_jws_is_invalid() -> None:
    body = _jws(_hangup())
    with pytest.raises(InvalidNotification):
        _notices(body[: body.rindex(b".")])
    with pytest.raises(InvalidNotification):
        _notices(body[: len(body) // 2 + 1] + b"=")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_refused_or_invalid_never_anything_else(body: bytes) -> None:
    try:
        ADAPTER.authenticate(_request(body), ACCOUNT)
    except Refused as refusal:
        assert refusal.status == 401
    try:
        assert isinstance(ADAPTER.notices(_request(body), ACCOUNT), list)
    except InvalidNotification:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_field_values = st.one_of(
    _json, st.from_regex(r"-?[0-9]{1,20}", fullmatch=True),
    st.sampled_from(["hangup", "inbound", "outbound", "user", "2", ""]),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(
    st.sampled_from(sorted(_hangup()) + ["recording_details", "voicemail_share_link", "exp", "iat"]),
    _field_values,
))
def test_arbitrary_signed_events_are_refused_invalid_or_read_never_a_crash(
    changes: dict[str, Any]
) -> None:
    body = _jws(_hangup() | changes)
    try:
        ADAPTER.authenticate(_request(body), ACCOUNT)
    except Refused as refusal:
        assert refusal.status == 401
        return
    try:
        notices = ADAPTER.notices(_request(body), ACCOUNT)
    except InvalidNotification:
        return
    call = ADAPTER.finished_call([n.body for n in notices], ACCOUNT)
    assert call is None or call.duration_seconds >= 0


def test_invalid_notification_reason_names_the_field() -> None:
    with pytest.raises(InvalidNotification, match="date_started"):
        _notices(_jws(_hangup(date_started="soon")))


# --- Regressions found by the webhook fuzz (tests/e2e/test_webhook_fuzz.py) --------------------


def _signed_raw(payload: bytes, header: bytes = b'{"alg":"HS256","typ":"JWT"}') -> bytes:
    """A JWS over payload bytes as given: JSON `json.dumps` cannot write, or no JSON at all."""
    signing_input = f"{_b64url(header)}.{_b64url(payload)}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}".encode()


@pytest.mark.parametrize("claim", ["iat", "exp"])
@pytest.mark.parametrize("value", ["1e999999999", "-1e999999999", "1e400"])
def test_a_numeric_date_past_any_date_is_refused_not_an_overflow(claim: str, value: str) -> None:
    # Decimal arithmetic on 1e999999999 overflowed the context: a 500 instead of a 401.
    payload = json.dumps(_hangup()).encode()[:-1] + f',"{claim}":{value}}}'.encode()

    assert _refusal(_signed_raw(payload)).status == 401


def test_a_jws_header_nested_deeper_than_the_parser_recurses_is_refused() -> None:
    header = b"[" * 5000 + b"]" * 5000

    assert _refusal(_signed_raw(json.dumps(_hangup()).encode(), header)).status == 401


def test_a_payload_that_is_not_utf8_is_invalid_even_when_signed() -> None:
    payload = json.dumps(_hangup()).encode().replace(b'"hangup"', b'"hangup\xed\xa0\x80"')

    with pytest.raises(InvalidNotification, match="not JSON"):
        _notices(_signed_raw(payload))


def test_a_hangup_connected_decades_before_it_ended_is_refused_before_it_is_stored() -> None:
    with pytest.raises(InvalidNotification, match="duration"):
        _notices(_jws(_hangup(date_started="1", date_connected="1")))
