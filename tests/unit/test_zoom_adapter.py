"""The Zoom Phone adapter reads Zoom's documented payloads (tests/fixtures/zoom, copied verbatim
from the reference samples) into exactly the calls they describe, checks Zoom's signature and
replay window over the raw body, answers the URL-validation CRC, and refuses everything else."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calltime.ingest.providers import zoom
from calltime.ingest.providers.model import (
    Account,
    FinishedCall,
    InvalidNotification,
    Refused,
    WebhookRequest,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "zoom"
SECRET = "zoom-secret-token"
ACCOUNT_ID = "TQTvjT52Tmi_wrhASNNOEw"  # the account of Zoom's examples
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)
UTC = timezone.utc


def _account(attorneys: dict[str, str] | None = None, **changes: Any) -> Account:
    values: dict[str, Any] = dict(firm_id="firm-1", provider="zoom", account_id=ACCOUNT_ID, webhook_secret=SECRET,
                                  phone_region="US", attorneys_by_user=attorneys or {})
    return Account(**(values | changes))


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _request(body: bytes, *, secret: str = SECRET, sent_at: datetime = NOW, received_at: datetime = NOW,
             headers: dict[str, str] | None = None) -> WebhookRequest:
    timestamp = str(int(sent_at.timestamp()))
    signed = {"x-zm-request-timestamp": timestamp, "x-zm-signature": zoom.signature(secret, timestamp, body),
              "content-type": "application/json"}
    return WebhookRequest(headers=signed if headers is None else headers, query={}, body=body,
                          received_at=received_at)


def _read(bodies: list[bytes], account: Account | None = None) -> FinishedCall | None:
    """Bodies through the whole adapter, as the webhook route would, then assembled."""
    account = account or _account()
    stored: list[bytes] = []
    for body in bodies:
        request = _request(body)
        assert zoom.ADAPTER.handshake(request, account) is None
        zoom.ADAPTER.authenticate(request, account)
        stored += [notice.body for notice in zoom.ADAPTER.notices(request, account)]
    return zoom.ADAPTER.finished_call(stored, account)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- The signature: Zoom's scheme and the worked example ---------------------------------------------


def test_signature_reproduces_the_worked_example() -> None:
    example = json.loads(_fixture("zoom_signature_worked_example.json"))["event_signature_example"]
    assert zoom.signature(example["secret_token"], example["header_x_zm_request_timestamp"],
                          example["raw_body"].encode()) == example["expected_header_x_zm_signature"]


def test_the_worked_example_request_is_accepted_at_its_own_time() -> None:
    example = json.loads(_fixture("zoom_signature_worked_example.json"))["event_signature_example"]
    sent = datetime.fromtimestamp(int(example["header_x_zm_request_timestamp"]), tz=UTC)
    request = WebhookRequest(
        headers={"x-zm-request-timestamp": example["header_x_zm_request_timestamp"],
                 "x-zm-signature": example["expected_header_x_zm_signature"]},
        query={}, body=example["raw_body"].encode(), received_at=sent + timedelta(seconds=2))
    zoom.ADAPTER.authenticate(request, _account(webhook_secret=example["secret_token"]))


def test_url_validation_answers_the_worked_example() -> None:
    example = json.loads(_fixture("zoom_signature_worked_example.json"))["url_validation_example"]
    body = _json(example["request_body_shape"] | {"event_ts": int(NOW.timestamp() * 1000)})
    account = _account(webhook_secret=example["secret_token"])
    reply = zoom.ADAPTER.handshake(_request(body, secret=example["secret_token"]), account)
    assert reply is not None
    assert reply.status == 200
    assert reply.media_type == "application/json"
    assert json.loads(reply.body) == example["response_body"]


def test_url_validation_must_itself_be_signed() -> None:
    body = _json({"event": "endpoint.url_validation", "payload": {"plainToken": "abc"}, "event_ts": 1})
    with pytest.raises(Refused) as unsigned:
        zoom.ADAPTER.handshake(_request(body, headers={}), _account())
    with pytest.raises(Refused) as forged:
        zoom.ADAPTER.handshake(_request(body, secret="not-the-secret"), _account())
    with pytest.raises(Refused) as stale:
        zoom.ADAPTER.handshake(_request(body, sent_at=NOW - timedelta(minutes=10)), _account())
    assert (unsigned.value.status, forged.value.status, stale.value.status) == (401, 401, 401)


def test_url_validation_without_a_plain_token_is_answered_400() -> None:
    body = _json({"event": "endpoint.url_validation", "payload": {}, "event_ts": 1})
    reply = zoom.ADAPTER.handshake(_request(body), _account())
    assert reply is not None and reply.status == 400


def test_other_requests_are_not_handshakes() -> None:
    for body in (_fixture("zoom_phone.callee_ended.json"), b"not json", b"[]", b'{"event": 5}'):
        assert zoom.ADAPTER.handshake(_request(body), _account()) is None


# --- Refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["forged", "tampered", "no signature", "no timestamp", "no secret",
                                  "stale", "future", "timestamp not a number", "milliseconds"])
def test_unauthentic_requests_are_refused_401(case: str) -> None:
    body = _fixture("zoom_phone.callee_call_element_completed.json")
    good = _request(body)
    account = _account()
    request = {
        "forged": _request(body, secret="guessed-secret"),
        "tampered": WebhookRequest(good.headers, {}, body.replace(b'"talk_time": 31', b'"talk_time": 3100'), NOW),
        "no signature": WebhookRequest({"x-zm-request-timestamp": good.headers["x-zm-request-timestamp"]},
                                       {}, body, NOW),
        "no timestamp": WebhookRequest({"x-zm-signature": good.headers["x-zm-signature"]}, {}, body, NOW),
        "no secret": good,
        "stale": _request(body, sent_at=NOW - zoom.REPLAY_TOLERANCE - timedelta(seconds=1)),
        "future": _request(body, sent_at=NOW + zoom.REPLAY_TOLERANCE + timedelta(seconds=1)),
        "timestamp not a number": _signed_with_timestamp(body, "soon"),
        "milliseconds": _signed_with_timestamp(body, str(int(NOW.timestamp() * 1000))),
    }[case]
    if case == "no secret":
        account = _account(webhook_secret="")
    with pytest.raises(Refused) as refused:
        zoom.ADAPTER.authenticate(request, account)
    assert refused.value.status == 401
    assert refused.value.reason


def _signed_with_timestamp(body: bytes, timestamp: str) -> WebhookRequest:
    headers = {"x-zm-request-timestamp": timestamp, "x-zm-signature": zoom.signature(SECRET, timestamp, body)}
    return WebhookRequest(headers, {}, body, NOW)


def test_requests_inside_the_replay_window_are_accepted() -> None:
    body = _fixture("zoom_phone.caller_ended.json")
    for skew in (-zoom.REPLAY_TOLERANCE, timedelta(0), zoom.REPLAY_TOLERANCE):
        zoom.ADAPTER.authenticate(_request(body, sent_at=NOW + skew), _account())


def test_request_time_reads_epoch_seconds() -> None:
    assert zoom.request_time("1710000000") == datetime(2024, 3, 9, 16, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        zoom.request_time("1.7e9")


def test_an_authentic_request_for_another_account_is_refused_403() -> None:
    body = _fixture("zoom_phone.callee_call_history_completed.json")
    with pytest.raises(Refused) as refused:
        zoom.ADAPTER.authenticate(_request(body), _account(account_id="another-zoom-account"))
    assert refused.value.status == 403


# --- Every documented payload -------------------------------------------------------------------------

_V2_V3_CALL = dict(
    provider_call_id="7018317023722949162", direction="internal", external_number_e164=None,
    external_number_raw="101229", internal_number="+12059300920", provider_user_id="ATu63--9TjudZetpf4UuQg",
    started_at=_t("2023-10-08T16:12:04"), ended_at=_t("2023-10-08T16:12:15"),
    duration_seconds=31 + 20,  # talk_time + hold_time; wait_time (20) is ringing, not connected
    result="answered",
)
EXPECTED: dict[str, FinishedCall] = {
    "zoom_phone.callee_call_element_completed.json": FinishedCall(**_V2_V3_CALL),
    "zoom_phone.caller_call_element_completed.json": FinishedCall(**_V2_V3_CALL),
    "zoom_phone.callee_call_history_completed.json": FinishedCall(**_V2_V3_CALL),
    "zoom_phone.caller_call_history_completed.json": FinishedCall(**_V2_V3_CALL),
    "zoom_phone.callee_call_log_completed.json": FinishedCall(
        provider_call_id="6971668473388011511", direction="internal", external_number_e164=None,
        external_number_raw="1045", internal_number="+15104381494", provider_user_id="IqoQmDRqS-aIoXqV_FZ88w",
        started_at=_t("2021-06-09T05:55:07"), ended_at=_t("2021-06-09T05:55:12"), duration_seconds=0,
        result="rejected"),
    "zoom_phone.caller_call_log_completed.json": FinishedCall(
        provider_call_id="6971668473388011511", direction="internal", external_number_e164=None,
        external_number_raw="1026", internal_number="+12055967465", provider_user_id="IqoQmDRqS-aIoXqV_FZ88w",
        started_at=_t("2021-06-09T05:55:07"), ended_at=_t("2021-06-09T05:55:12"), duration_seconds=0,
        result="missed"),  # the example's result "outbound" is no outcome Zoom documents
    "zoom_phone.callee_ended.json": FinishedCall(
        provider_call_id="6998252113337041462", direction="inbound", external_number_e164="+12092592844",
        external_number_raw="+12092592844", internal_number="+12058945456",
        provider_user_id="52OdSKGSSS-EOyJwQncFvA", started_at=_t("2021-08-19T21:12:28"),
        ended_at=_t("2021-08-19T21:12:44"), duration_seconds=6, result="answered"),  # answer 21:12:38 -> end
    "zoom_phone.caller_ended.json": FinishedCall(
        provider_call_id="6997939173429971528", direction="outbound", external_number_e164="+12092592844",
        external_number_raw="+12092592844", internal_number="+12058945456",
        provider_user_id="52OdSKGSSS-EOyJwQncFvA", started_at=_t("2021-08-19T00:58:02"),
        ended_at=_t("2021-08-19T00:59:11"), duration_seconds=0, result="missed"),  # never answered
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_documented_payload_yields_exactly_its_call(name: str) -> None:
    assert _read([_fixture(name)]) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_documented_payload_is_one_notice_keyed_by_the_call_id(name: str) -> None:
    request = _request(_fixture(name))
    notices = zoom.ADAPTER.notices(request, _account())
    assert len(notices) == 1
    assert notices[0].provider_call_id == EXPECTED[name].provider_call_id
    assert notices[0].dedupe_key.startswith(json.loads(_fixture(name))["event"] + ":")
    assert not notices[0].fetch_record


def test_the_firm_user_is_named_by_whichever_zoom_id_the_firm_mapped() -> None:
    by_user_id = _account({"IqoQmDRqS-aIoXqV_FZ88w": "attorney-7"})
    by_extension = _account({"ATu63--9TjudZetpf4UuQg": "attorney-7", "IqoQmDRqS-aIoXqV_FZ88w": "attorney-7"})
    element = _fixture("zoom_phone.callee_call_element_completed.json")
    assert _read([element], by_user_id).provider_user_id == "IqoQmDRqS-aIoXqV_FZ88w"
    assert _read([element], by_extension).provider_user_id == "ATu63--9TjudZetpf4UuQg"
    ended = _fixture("zoom_phone.callee_ended.json")
    assert _read([ended], _account({"DnEopNmXQEGU2uvvzjgojw": "a"})).provider_user_id == "DnEopNmXQEGU2uvvzjgojw"


# --- Several notices of one call: the record is authoritative ------------------------------------------


def _ended_for_element(talk_end: str = "2023-10-08T16:12:40Z") -> bytes:
    """A callee_ended for the call of the element example (Zoom's ended example, re-keyed)."""
    envelope = json.loads(_fixture("zoom_phone.callee_ended.json"))
    obj = envelope["payload"]["object"]
    obj["call_id"] = "7018317023722949162"
    obj["ringing_start_time"], obj["answer_start_time"] = "2023-10-08T16:12:04Z", "2023-10-08T16:12:04Z"
    obj["call_end_time"] = talk_end
    return _json(envelope)


def test_the_record_beats_the_real_time_ended_event_in_either_arrival_order() -> None:
    ended, element = _ended_for_element(), _fixture("zoom_phone.callee_call_element_completed.json")
    assert _read([ended]).duration_seconds == 36  # until the record arrives, ended is all we know
    assert _read([ended, element]) == EXPECTED["zoom_phone.callee_call_element_completed.json"]
    assert _read([element, ended]) == EXPECTED["zoom_phone.callee_call_element_completed.json"]


def _with_talk(name: str, talk: int) -> bytes:
    envelope = json.loads(_fixture(name))
    obj = envelope["payload"]["object"]
    key = "call_elements" if "call_elements" in obj else "call_logs"
    obj[key][0]["talk_time"] = talk
    return _json(envelope)


def test_newer_record_generations_beat_older_ones_whatever_the_order() -> None:
    legacy_for_same_call = json.loads(_fixture("zoom_phone.callee_call_log_completed.json"))
    legacy_for_same_call["payload"]["object"]["call_logs"][0] |= {"call_id": "7018317023722949162",
                                                                   "duration": 999, "result": "Call connected"}
    legacy = _json(legacy_for_same_call)
    v2 = _with_talk("zoom_phone.callee_call_history_completed.json", 100)
    v3 = _with_talk("zoom_phone.callee_call_element_completed.json", 200)
    assert _read([v3, v2, legacy]).duration_seconds == 220
    assert _read([legacy, v2]).duration_seconds == 120
    assert _read([v2, legacy]).duration_seconds == 120
    assert _read([legacy]).duration_seconds == 999


def test_a_retry_shares_the_dedupe_key_and_a_corrected_record_does_not() -> None:
    name = "zoom_phone.callee_call_element_completed.json"
    first = zoom.ADAPTER.notices(_request(_fixture(name)), _account())
    retry = zoom.ADAPTER.notices(_request(_fixture(name), sent_at=NOW + timedelta(minutes=5),
                                          received_at=NOW + timedelta(minutes=5)), _account())
    corrected = zoom.ADAPTER.notices(_request(_with_talk(name, 45)), _account())
    assert first[0].dedupe_key == retry[0].dedupe_key
    assert corrected[0].dedupe_key != first[0].dedupe_key
    bodies = [first[0].body, corrected[0].body]
    assert zoom.ADAPTER.finished_call(bodies, _account()).duration_seconds == 65  # the later record wins


def test_one_event_listing_several_records_gives_one_notice_per_record() -> None:
    envelope = json.loads(_fixture("zoom_phone.caller_call_element_completed.json"))
    item = envelope["payload"]["object"]["call_elements"][0]
    other = item | {"call_element_id": "20231008-other", "call_id": "7018317023722949999", "talk_time": 1}
    envelope["payload"]["object"]["call_elements"].append(other)
    notices = zoom.ADAPTER.notices(_request(_json(envelope)), _account())
    assert [n.provider_call_id for n in notices] == ["7018317023722949162", "7018317023722949999"]
    assert [zoom.ADAPTER.finished_call([n.body], _account()).duration_seconds for n in notices] == [51, 21]


def test_in_a_ring_group_the_member_who_answered_is_the_call() -> None:
    answered = json.loads(_fixture("zoom_phone.callee_call_element_completed.json"))
    missed = json.loads(_fixture("zoom_phone.callee_call_element_completed.json"))
    missed["payload"]["object"]["call_elements"][0] |= {
        "call_element_id": "20231008-missed-leg", "callee_ext_id": "other-member", "result": "no_answer",
        "talk_time": 0, "hold_time": 0}
    call = _read([_json(answered), _json(missed)])
    assert (call.result, call.duration_seconds, call.provider_user_id) == ("answered", 51, "ATu63--9TjudZetpf4UuQg")


def test_notices_of_two_calls_cannot_be_one_call() -> None:
    with pytest.raises(ValueError):
        _read([_fixture("zoom_phone.callee_ended.json"), _fixture("zoom_phone.caller_ended.json")])


def test_no_notices_no_call() -> None:
    assert zoom.ADAPTER.finished_call([], _account()) is None


# --- Ignored and malformed -----------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["phone.callee_ringing", "phone.callee_answered", "phone.caller_connected",
                                   "phone.callee_missed", "phone.call_element_deleted",
                                   "endpoint.url_validation", "meeting.started"])
def test_events_not_about_a_finished_call_are_acknowledged_and_ignored(event: str) -> None:
    body = _json({"event": event, "event_ts": 1, "payload": {"account_id": ACCOUNT_ID, "object": {"call_id": "1"}}})
    request = _request(body)
    zoom.ADAPTER.authenticate(request, _account())
    assert zoom.ADAPTER.notices(request, _account()) == []


def _broken(name: str, change) -> bytes:
    envelope = json.loads(_fixture(name))
    change(envelope)
    return _json(envelope)


def _element(envelope: dict[str, Any]) -> dict[str, Any]:
    return envelope["payload"]["object"]["call_elements"][0]


MALFORMED = {
    "not json": b"<xml/>",
    "truncated": _fixture("zoom_phone.callee_call_element_completed.json")[:700],
    "an array": b"[1, 2]",
    "event not a string": b'{"event": ["phone.callee_ended"], "payload": {}}',
    "no payload": b'{"event": "phone.callee_ended"}',
    "no account": _broken("zoom_phone.callee_ended.json", lambda e: e["payload"].pop("account_id")),
    "records not an array": _broken("zoom_phone.callee_call_element_completed.json",
                                    lambda e: e["payload"]["object"].update(call_elements={})),
    "record not an object": _broken("zoom_phone.callee_call_history_completed.json",
                                    lambda e: e["payload"]["object"].update(call_logs=["x"])),
    "talk_time a string": _broken("zoom_phone.callee_call_element_completed.json",
                                  lambda e: _element(e).update(talk_time="31")),
    "talk_time negative": _broken("zoom_phone.callee_call_element_completed.json",
                                  lambda e: _element(e).update(talk_time=-1)),
    "talk_time a boolean": _broken("zoom_phone.callee_call_element_completed.json",
                                   lambda e: _element(e).update(talk_time=True)),
    "no call id": _broken("zoom_phone.callee_call_element_completed.json", lambda e: _element(e).pop("call_id")),
    "call id a number": _broken("zoom_phone.callee_ended.json",
                                lambda e: e["payload"]["object"].update(call_id=6998252113337041462)),
    "bad time": _broken("zoom_phone.callee_call_element_completed.json",
                        lambda e: _element(e).update(start_time="yesterday")),
    "time without zone": _broken("zoom_phone.callee_ended.json",
                                 lambda e: e["payload"]["object"].update(call_end_time="2021-08-19T21:12:44")),
    "legacy duration a string": _broken("zoom_phone.callee_call_log_completed.json",
                                        lambda e: e["payload"]["object"]["call_logs"][0].update(duration="0")),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_bodies_are_invalid_notifications(case: str) -> None:
    with pytest.raises(InvalidNotification) as error:
        zoom.ADAPTER.notices(_request(MALFORMED[case]), _account())
    assert str(error.value)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
_EVENTS = st.sampled_from([*zoom.RECORD_EVENTS, *zoom.ENDED_EVENTS, "endpoint.url_validation"])


def _must_not_crash(body: bytes) -> None:
    request = _request(body)
    account = _account()
    try:
        notices = zoom.ADAPTER.notices(request, account)
    except InvalidNotification:
        notices = []
    by_call: dict[str, list[bytes]] = {}
    for notice in notices:
        by_call.setdefault(notice.provider_call_id, []).append(notice.body)
    for bodies in by_call.values():
        try:
            zoom.ADAPTER.finished_call(bodies, account)
        except InvalidNotification:
            pass
    try:
        zoom.ADAPTER.authenticate(request, account)
    except Refused:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(body: bytes) -> None:
    _must_not_crash(body)


@settings(max_examples=300, deadline=None)
@given(_EVENTS, _JSON, _JSON)
def test_arbitrary_json_under_a_known_event_never_raises_anything_else(event: str, payload: Any,
                                                                        obj: Any) -> None:
    _must_not_crash(_json({"event": event, "payload": payload}))
    _must_not_crash(_json({"event": event, "payload": {"account_id": ACCOUNT_ID, "object": obj}}))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(EXPECTED)), st.text(max_size=8), _JSON)
def test_any_field_of_a_documented_record_replaced_never_raises_anything_else(name: str, key: str,
                                                                             value: Any) -> None:
    envelope = json.loads(_fixture(name))
    obj = envelope["payload"]["object"]
    records = obj.get("call_elements") or obj.get("call_logs") or [obj]
    field = key if key else next(iter(records[0]))
    records[0][field] = value
    _must_not_crash(_json(envelope))


# --- The call-history API record ----------------------------------------------------------------------


def _api_item(**changes: Any) -> dict[str, Any]:
    item = {
        "call_history_uuid": "20231008-48c1dfd4", "call_id": "7018317023722949162", "direction": "inbound",
        "start_time": "2023-10-08T16:12:04Z", "answer_time": "2023-10-08T16:12:10Z",
        "end_time": "2023-10-08T16:14:10Z", "duration": 120, "connect_type": "external",
        "call_result": "answered", "caller_did_number": "+12125550123", "caller_number_type": "external_pstn",
        "callee_ext_id": "ext-1", "callee_ext_number": "101", "callee_ext_type": "user",
        "callee_did_number": "+14155550100", "callee_number_type": "zoom_pstn",
    }
    return item | changes


def test_a_call_history_item_is_the_call_the_webhooks_describe() -> None:
    call = zoom.history_call(_api_item(), _account({"ext-1": "a"}))
    assert call == FinishedCall(
        provider_call_id="7018317023722949162", direction="inbound", external_number_e164="+12125550123",
        external_number_raw="+12125550123", internal_number="+14155550100", provider_user_id="ext-1",
        started_at=_t("2023-10-08T16:12:04"), ended_at=_t("2023-10-08T16:14:10"), duration_seconds=120,
        result="answered")


def test_a_call_history_item_without_a_user_of_the_firm_is_not_a_firm_call() -> None:
    queue_only = _api_item(callee_ext_type="call_queue")
    assert zoom.history_call(queue_only, _account()) is None
    assert zoom.history_call(_api_item(callee_ext_id=None), _account()) is None


def test_an_unanswered_call_history_item_has_no_connected_seconds() -> None:
    call = zoom.history_call(_api_item(call_result="voicemail", duration=40), _account())
    assert (call.result, call.duration_seconds) == ("voicemail", 0)


# --- Regressions found by the webhook fuzz (tests/e2e/test_webhook_fuzz.py) --------------------


def test_a_plain_token_utf8_cannot_carry_is_a_400_not_a_crash() -> None:
    body = b'{"payload":{"plainToken":"\\ud800"},"event_ts":1,"event":"endpoint.url_validation"}'

    reply = zoom.ADAPTER.handshake(_request(body), _account())

    assert reply is not None and reply.status == 400


def test_a_record_lasting_decades_is_not_announced() -> None:
    # 10^9 s of talk: a JSON integer the parser takes, a call no attorney had (and past what
    # the event's 32-bit duration could carry a little further up).
    with pytest.raises(InvalidNotification, match="duration"):
        _read([_with_talk("zoom_phone.callee_call_element_completed.json", 10**9)])


def test_a_record_with_an_empty_call_id_is_not_announced() -> None:
    envelope = json.loads(_fixture("zoom_phone.callee_call_element_completed.json"))
    envelope["payload"]["object"]["call_elements"][0]["call_id"] = ""

    with pytest.raises(InvalidNotification, match="call id"):
        _read([_json(envelope)])


def test_a_body_that_is_not_utf8_is_invalid_even_when_signed() -> None:
    # Inside a field nobody reads: json.loads(bytes) would have taken it as "\ud800" ('surrogatepass').
    body = _fixture("zoom_phone.callee_ended.json").replace(b'"TestCAP01"', b'"TestCAP\xed\xa0\x80"')

    with pytest.raises(InvalidNotification, match="not JSON"):
        zoom.ADAPTER.notices(_request(body), _account())
