"""The Vonage (VBC / VIS) adapter: signed CALL events in, one finished call out, exactly once.

Fixtures in tests/fixtures/vonage/ are verbatim copies of the reference samples
(/work/shared/reference/samples/providers/vonage_vbc_*), each with its .src.txt. VIS documents
one event body (state RINGING); a call-ended event "has the same shape" with a final state, so
the final events below are that sample with the final-state fields filled in.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calltime.ingest.providers.model import (
    Account,
    FinishedCall,
    InvalidNotification,
    Refused,
    WebhookRequest,
)
from calltime.ingest.providers.vonage import (
    ADAPTER,
    canonical_event_bytes,
    number_e164,
    split_external_id,
    whole_seconds,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vonage"
RINGING = "vonage_vbc_vis_call_event_webhook_ringing.json"
SIGNATURE_EXAMPLE = "vonage_vbc_vis_signature_example.UNREPRODUCED.json"

KEY = "firm-signing-key"
SAMPLE_ACCOUNT = "-1"  # the sample's accountId
RECEIVED = datetime(2020, 10, 1, 16, 15, tzinfo=timezone.utc)
STARTED = datetime(2020, 10, 1, 16, 10, 6, tzinfo=timezone.utc)


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _account(**changes: Any) -> Account:
    values = dict(firm_id="firm-1", provider="vonage", account_id=SAMPLE_ACCOUNT, webhook_secret=KEY,
                  phone_region="US", attorneys_by_user={"1234": "attorney-7"})
    values.update(changes)
    return Account(**values)


def _sign(event: dict[str, Any], key: str = KEY) -> str:
    """Independent of the adapter: compact JSON, keys sorted, HMAC-SHA256 hex."""
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def _request(body: bytes, headers: dict[str, str] | None = None) -> WebhookRequest:
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    return WebhookRequest(headers=lowered, query={}, body=body, received_at=RECEIVED)


def _in_body(event: dict[str, Any], *, attempt: int = 1, signature: str | None = None) -> WebhookRequest:
    """metadataPolicy=BODY: the signature travels in `metadata`, as in the sample."""
    envelope = {"event": event, "metadata": {
        "attempt": attempt, "deliveryId": "abc1234-2795-446c-be6b-7cba85c6bba2",
        "signature": signature if signature is not None else _sign(event),
        "webhookId": "abc1234-c1ad-4a14-a30b-69dd92f57af2"}}
    return _request(json.dumps(envelope, indent=2).encode())


def _in_header(event: dict[str, Any], signature: str | None = None) -> WebhookRequest:
    """metadataPolicy=HEADER: `X-VON-Signature` and friends, the body holds the event only."""
    headers = {"X-VON-Signature": signature if signature is not None else _sign(event),
               "X-VON-Attempt": "1", "X-VON-Delivery-Id": "d-1", "X-VON-Webhook-Id": "w-1"}
    return _request(json.dumps({"event": event}).encode(), headers)


def _ringing() -> dict[str, Any]:
    return _load(RINGING)["event"]


def _final(state: str = "ANSWERED", duration: int = 125_499, **changes: Any) -> dict[str, Any]:
    event = _ringing()
    event.update(state=state, duration=duration if state == "ANSWERED" else 0,
                 answerTime="2020-10-01T16:10:12.000+0000", endTime="2020-10-01T16:12:17.499+0000")
    if state != "ANSWERED":
        del event["answerTime"]
        event["endTime"] = "2020-10-01T16:10:31.000+0000"
    event.update(changes)
    return event


def _read(*events: dict[str, Any], account: Account | None = None) -> FinishedCall | None:
    account = account or _account()
    bodies = []
    for event in events:
        request = _in_body(event)
        ADAPTER.authenticate(request, account)
        bodies += [notice.body for notice in ADAPTER.notices(request, account)]
    return ADAPTER.finished_call(bodies, account)


# --- The documented payload ------------------------------------------------------------------


def test_documented_ringing_event_is_authentic_and_ignored() -> None:
    sample = (FIXTURES / RINGING).read_bytes()
    # The sample's own metadata.signature is a placeholder; the header carries a real one.
    request = _request(sample, {"X-VON-Signature": _sign(_ringing())})

    ADAPTER.authenticate(request, _account())

    assert ADAPTER.notices(request, _account()) == []


def test_documented_event_ended_reads_as_the_finished_call() -> None:
    call = _read(_final("ANSWERED", duration=125_499))

    assert call == FinishedCall(
        provider_call_id="abc1234-288c-40d3-8ec8-3618a3ae7698",
        direction="outbound",
        external_number_e164=None,  # the sample's number is redacted to "xxxxxxxxxx"
        external_number_raw="xxxxxxxxxx",
        internal_number="123",
        provider_user_id="1234",
        started_at=STARTED,
        ended_at=datetime(2020, 10, 1, 16, 12, 17, 499000, tzinfo=timezone.utc),
        duration_seconds=125,
        result="answered",
    )


def test_handshake_is_never_asked_for() -> None:
    assert ADAPTER.handshake(_request(b""), _account()) is None
    assert ADAPTER.handshake(_in_body(_ringing()), _account()) is None


# --- Signature -------------------------------------------------------------------------------


def test_canonical_form_is_compact_json_with_keys_sorted_at_every_level() -> None:
    event = {"b": 1, "a": {"z": "é", "y": [True, None]}, "c": "x y"}

    assert canonical_event_bytes(event) == '{"a":{"y":[true,null],"z":"é"},"b":1,"c":"x y"}'.encode()


def test_documented_signature_example_stays_unreproduced() -> None:
    """Pins today's assumption: our canonical form gives what the reference computed for
    "compact sorted JSON", not Vonage's published (probably redacted) value."""
    example = _load(SIGNATURE_EXAMPLE)
    request = _in_header(example["event"], signature=example["documented_signature_hex"])

    with pytest.raises(Refused):
        ADAPTER.authenticate(request, _account(webhook_secret=example["signingKey"]))
    ADAPTER.authenticate(
        _in_header(example["event"], signature=example["locally_computed_hmac_sha256_of_compact_sorted_json"]),
        _account(webhook_secret=example["signingKey"]),
    )


def test_signature_in_body_metadata_or_header_is_accepted() -> None:
    ADAPTER.authenticate(_in_body(_final()), _account())
    ADAPTER.authenticate(_in_header(_final()), _account())
    ADAPTER.authenticate(_in_header(_final(), signature=_sign(_final()).upper()), _account())


def test_signature_is_over_the_event_not_the_body_bytes() -> None:
    event = _final()
    reordered = dict(reversed(list(event.items())))
    body = json.dumps({"metadata": {"signature": _sign(event)}, "event": reordered}, indent=4).encode()

    ADAPTER.authenticate(_request(body), _account())


@pytest.mark.parametrize("request_of", [
    lambda: _in_body(_final(), signature="0" * 64),
    lambda: _in_header(_final(), signature=_sign(_final(), key="someone-else")),
    lambda: _request(json.dumps({"event": _final()}).encode()),
    lambda: _request(json.dumps({"event": _final(), "metadata": {"signature": 7}}).encode()),
    lambda: _request(b'{"event": "not an object"}'),
    lambda: _request(b"\xff not json"),
], ids=["forged", "wrong-key", "unsigned", "signature-not-text", "no-event", "not-json"])
def test_unauthentic_requests_are_refused_with_401(request_of) -> None:
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(request_of(), _account())

    assert refused.value.status == 401


def test_tampered_event_is_refused() -> None:
    signed = _final(duration=60_000)
    tampered = dict(signed, duration=6_000_000)

    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_in_body(tampered, signature=_sign(signed)), _account())

    assert refused.value.status == 401


def test_account_without_a_signing_key_accepts_nothing() -> None:
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_in_body(_final(), signature=_sign(_final(), key="")), _account(webhook_secret=""))

    assert refused.value.status == 401


def test_authentic_event_of_another_account_is_refused_with_403() -> None:
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_in_body(_final(accountId="257073")), _account())

    assert refused.value.status == 403


def test_authentic_event_naming_no_account_is_refused_with_403() -> None:
    event = _final()
    del event["accountId"]

    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_in_body(event), _account())

    assert refused.value.status == 403


def test_integer_ids_of_the_openapi_schema_are_read_as_text() -> None:
    event = _final(accountId=257073, userId=522078, id=98765432101)

    ADAPTER.authenticate(_in_body(event), _account(account_id="257073"))
    call = _read(event, account=_account(account_id="257073"))

    assert call is not None and call.provider_user_id == "522078"
    assert ADAPTER.notices(_in_body(event), _account())[0].dedupe_key == "98765432101:ANSWERED"


def test_replayed_delivery_has_no_timestamp_to_refuse_but_dedupes_to_the_same_key() -> None:
    """VIS signs no timestamp, so no replay window exists; a replay is stored once instead."""
    first = ADAPTER.notices(_in_body(_final(), attempt=1), _account())
    replay = _in_body(_final(), attempt=4)

    ADAPTER.authenticate(replay, _account())

    assert ADAPTER.notices(replay, _account()) == first


# --- Which events count ----------------------------------------------------------------------


@pytest.mark.parametrize("state", ["INITIALIZING", "RINGING", "ACTIVE", "HELD", "REMOTE_HELD", "DETACHED"])
def test_non_final_states_are_acknowledged_and_ignored(state: str) -> None:
    assert ADAPTER.notices(_in_body(_final() | {"state": state}), _account()) == []


def test_events_of_other_types_are_ignored() -> None:
    assert ADAPTER.notices(_in_body(_final(type="SMS")), _account()) == []


@pytest.mark.parametrize(("state", "direction", "result"), [
    ("ANSWERED", "INBOUND", "answered"),
    ("MISSED", "INBOUND", "missed"),
    ("REJECTED", "INBOUND", "rejected"),
    ("CANCELLED", "OUTBOUND", "missed"),
])
def test_each_final_state_ends_the_call_with_its_result(state: str, direction: str, result: str) -> None:
    call = _read(_final(state, direction=direction))

    assert call is not None
    assert call.result == result
    assert call.direction == direction.lower()
    assert call.duration_seconds == (125 if state == "ANSWERED" else 0)


def test_one_notice_per_final_event_keyed_by_event_id_and_state() -> None:
    notices = ADAPTER.notices(_in_body(_final()), _account())

    assert len(notices) == 1
    assert notices[0].dedupe_key == "abc1234a806d07a6ff17ba:ANSWERED"
    assert notices[0].provider_call_id == "abc1234-288c-40d3-8ec8-3618a3ae7698"
    assert notices[0].fetch_record is False


def test_redeliveries_share_dedupe_key_and_stored_body() -> None:
    first = ADAPTER.notices(_in_body(_final(), attempt=1), _account())[0]
    retry = ADAPTER.notices(_in_header(dict(reversed(list(_final().items())))), _account())[0]

    assert (retry.dedupe_key, retry.body) == (first.dedupe_key, first.body)


def test_nothing_is_finished_before_a_final_event() -> None:
    assert ADAPTER.finished_call([], _account()) is None
    ringing = json.dumps(_ringing()).encode()
    assert ADAPTER.finished_call([ringing], _account()) is None


def test_answered_leg_outranks_a_missed_one_whatever_the_arrival_order() -> None:
    missed = _final("MISSED", userId="2222", externalId="abc1234-288c-40d3-8ec8-3618a3ae7698_124")
    answered = _final("ANSWERED")

    for order in ([missed, answered], [answered, missed]):
        call = _read(*order)
        assert call is not None
        assert (call.result, call.provider_user_id, call.internal_number) == ("answered", "1234", "123")


def test_later_final_event_of_equal_rank_wins() -> None:
    call = _read(_final("MISSED", userId="1111"), _final("CANCELLED", userId="2222"))

    assert call is not None and call.provider_user_id == "2222"


def test_missing_end_time_is_rebuilt_from_answer_and_duration() -> None:
    event = _final(duration=61_000)
    del event["endTime"]

    call = _read(event)

    assert call is not None
    assert call.ended_at == datetime(2020, 10, 1, 16, 11, 13, tzinfo=timezone.utc)


# --- Units, times, numbers, ids ---------------------------------------------------------------


@pytest.mark.parametrize(("milliseconds", "seconds"), [
    (0, 0), (1, 0), (499, 0), (500, 1), (1_499, 1), (1_500, 2), (60_000, 60), (125_499, 125), (125_500, 126),
])
def test_milliseconds_round_half_up_to_whole_seconds(milliseconds: int, seconds: int) -> None:
    assert whole_seconds(milliseconds) == seconds
    call = _read(_final(duration=milliseconds))
    assert call is not None and call.duration_seconds == seconds


def test_times_with_any_offset_are_read_as_utc() -> None:
    call = _read(_final(startTime="2020-10-01T12:10:06.250-0400", endTime="2020-10-01T16:12:17Z"))

    assert call is not None
    assert call.started_at == datetime(2020, 10, 1, 16, 10, 6, 250000, tzinfo=timezone.utc)
    assert call.ended_at == datetime(2020, 10, 1, 16, 12, 17, tzinfo=timezone.utc)
    assert call.started_at.tzinfo == timezone.utc


@pytest.mark.parametrize(("raw", "region", "e164"), [
    ("2125550123", "US", "+12125550123"),  # national, as the redacted sample's ten characters suggest
    ("12125550123", "US", "+12125550123"),  # E.164 digits without '+', as the Reports examples
    ("+12125550123", "US", "+12125550123"),
    ("442071838750", "US", "+442071838750"),  # international digits, not valid in the firm's region
    ("02071838750", "GB", "+442071838750"),
    ("102", "US", None),  # an extension
    ("anonymous", "US", None),
])
def test_numbers_are_normalised_with_the_firms_region(raw: str, region: str, e164: str | None) -> None:
    assert number_e164(raw, region) == e164
    call = _read(_final(phoneNumber=raw), account=_account(phone_region=region))
    assert call is not None
    assert (call.external_number_e164, call.external_number_raw) == (e164, raw)


def test_call_between_extensions_is_internal() -> None:
    call = _read(_final(internal=True, phoneNumber="102", direction="INBOUND"))

    assert call is not None
    assert (call.direction, call.external_number_e164, call.external_number_raw) == ("internal", None, "102")


def test_withheld_number_leaves_the_far_end_unknown() -> None:
    event = _final()
    del event["phoneNumber"]

    call = _read(event)

    assert call is not None and call.external_number_raw is None and call.external_number_e164 is None


@pytest.mark.parametrize(("external_id", "call_id", "extension"), [
    ("abc1234-288c-40d3-8ec8-3618a3ae7698_123", "abc1234-288c-40d3-8ec8-3618a3ae7698", "123"),
    ("call_with_underscores_4567", "call_with_underscores", "4567"),
    ("no-extension", "no-extension", None),
    ("_123", "_123", None),
    ("trailing_", "trailing", None),
])
def test_call_id_is_external_id_before_its_last_underscore(external_id, call_id, extension) -> None:
    assert split_external_id(external_id) == (call_id, extension)


# --- Malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"",
    b"not json",
    (FIXTURES / RINGING).read_bytes()[:120],
    b"[]",
    b'"event"',
    b'{"metadata": {}}',
    b'{"event": []}',
    b'{"event": {}, "metadata": "x"}',
], ids=["empty", "text", "truncated", "array", "string", "no-event", "event-array", "metadata-text"])
def test_malformed_bodies_are_invalid_notifications(body: bytes) -> None:
    with pytest.raises(InvalidNotification):
        ADAPTER.notices(_request(body), _account())


@pytest.mark.parametrize("change", [
    {"duration": "125499"},
    {"duration": 1.5},
    {"duration": True},
    {"duration": -1},
    {"direction": "SIDEWAYS"},
    {"startTime": "yesterday"},
    {"startTime": "2020-10-01T16:10:06"},
    {"endTime": 17},
    {"internal": "no"},
    {"userId": None},
    {"userId": ["1234"]},
    {"id": ""},
    {"externalId": 5},
    {"state": 3},
    {"type": None},
    {"phoneNumber": 2125550123},
])
def test_wrongly_typed_final_events_are_invalid_notifications(change: dict[str, Any]) -> None:
    event = _final() | change

    with pytest.raises(InvalidNotification):
        ADAPTER.notices(_in_body(event), _account())


def test_corrupt_stored_body_is_an_invalid_notification() -> None:
    with pytest.raises(InvalidNotification):
        ADAPTER.finished_call([b"{truncated"], _account())


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_FIELDS = st.sampled_from(sorted(_final().keys()) + ["answerTime", "endTime"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_the_adapters_own_errors(body: bytes) -> None:
    request = _request(body)
    with pytest.raises(Refused):
        ADAPTER.authenticate(request, _account())
    try:
        ADAPTER.notices(request, _account())
    except InvalidNotification:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_FIELDS, _JSON, max_size=4), st.sampled_from(["ANSWERED", "MISSED", "RINGING"]))
def test_arbitrary_field_values_never_raise_anything_else(changes: dict[str, Any], state: str) -> None:
    event = _final(state) | changes
    request = _in_body(copy.deepcopy(event))
    try:
        ADAPTER.authenticate(request, _account())
    except Refused as refused:
        assert refused.status in (401, 403)
    try:
        bodies = [notice.body for notice in ADAPTER.notices(request, _account())]
        ADAPTER.finished_call(bodies, _account())
    except InvalidNotification:
        pass


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_arbitrary_json_bodies_never_raise_anything_else(value: Any) -> None:
    request = _request(json.dumps(value).encode())
    try:
        ADAPTER.notices(request, _account())
    except InvalidNotification:
        pass


# --- Regressions found by the webhook fuzz (tests/e2e/test_webhook_fuzz.py) --------------------


def test_an_event_utf8_cannot_carry_is_unsigned_not_a_crash() -> None:
    # The signature is checked over the event re-serialised as UTF-8, before anything is
    # authenticated: a lone surrogate escape made that a UnicodeEncodeError, an unauthenticated 500.
    event = _final() | {"callerId": "\ud800"}

    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_in_body(event, signature="0" * 64), _account())
    assert refused.value.status == 401


def test_a_signature_utf8_cannot_carry_is_unsigned_not_a_crash() -> None:
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_in_body(_final(), signature="\ud800"), _account())
    assert refused.value.status == 401


def test_a_final_event_that_ends_before_it_starts_is_not_announced() -> None:
    event = _final(endTime="2020-10-01T15:00:00.000+0000")  # an hour before its startTime
    request = _in_body(event)
    ADAPTER.authenticate(request, _account())
    notices = ADAPTER.notices(request, _account())

    with pytest.raises(InvalidNotification, match="ends before it starts"):
        ADAPTER.finished_call([n.body for n in notices], _account())
