"""The Graph adapter: callRecord notifications are authenticated by clientState and tenant, turn
into id-only notices, and the fetched record becomes exactly one finished call.

Fixtures in tests/fixtures/graph/ are verbatim copies of the reference samples
(/work/shared/reference/samples/providers/graph_*), each with its .src.txt naming the source.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calltime.ingest.providers.graph import (
    ADAPTER,
    TICKS_PER_SECOND,
    call_from_record,
    lifecycle_events,
    parse_graph_time,
    record_notice,
    whole_seconds,
)
from calltime.ingest.providers.model import (
    Account,
    FinishedCall,
    InvalidNotification,
    Refused,
    WebhookRequest,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "graph"
NOTIFICATION = "graph_callrecord_change_notification.json"
EXPANDED = "graph_callrecord_get_expand_sessions_segments.json"
LISTED = "graph_callrecords_list.json"

SAMPLE_TENANT = "dc368399-474c-4d40-900c-6265431fd81f"
ABBIE = "821809f5-0000-0000-0000-3b5136c0e777"
OWEN = "f69e2c00-0000-0000-0000-185e5f5f5d8a"
TENANT = "11111111-2222-3333-4444-555555555555"
USER = "aaaaaaaa-0000-0000-0000-000000000101"
SECRET = "client-state-secret"
NOW = datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)


def _load_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _account(**changes: Any) -> Account:
    values: dict[str, Any] = {
        "firm_id": "firm-1",
        "provider": "graph",
        "account_id": TENANT,
        "webhook_secret": SECRET,
        "phone_region": "US",
        "attorneys_by_user": {USER: "atty-1"},
    }
    return Account(**(values | changes))


SAMPLE_ACCOUNT = _account(
    account_id="{Organization/Tenant id}",
    webhook_secret="{Secret client state}",
    attorneys_by_user={ABBIE: "atty-abbie"},
)
EXPANDED_ACCOUNT = _account(account_id=SAMPLE_TENANT, attorneys_by_user={ABBIE: "atty-abbie"})


def _request(body: bytes, query: dict[str, str] | None = None) -> WebhookRequest:
    return WebhookRequest(headers={"content-type": "application/json"}, query=query or {},
                          body=body, received_at=NOW)


def _item(record_id: str = "rec-1", **changes: Any) -> dict[str, Any]:
    item = {
        "subscriptionId": "sub-1",
        "clientState": SECRET,
        "changeType": "created",
        "resource": f"communications/callRecords/{record_id}",
        "subscriptionExpirationDateTime": "2024-03-07T00:00:00.0000000Z",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.callRecord",
            "@odata.id": f"communications/callRecords/{record_id}",
            "id": record_id,
        },
        "tenantId": TENANT,
    }
    return item | changes


def _envelope(*items: dict[str, Any]) -> bytes:
    return json.dumps({"value": list(items)}).encode()


# --- Records written for the rules -----------------------------------------------------------


def _user(user_id: str = USER, tenant: str = TENANT, role: str | None = None) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"identity": {"user": {"id": user_id, "displayName": "U", "tenantId": tenant}}}
    if role is not None:
        endpoint["userAgent"] = {"@odata.type": "#microsoft.graph.callRecords.serviceUserAgent", "role": role}
    return endpoint


def _phone(number: str = "+12125550123") -> dict[str, Any]:
    return {"identity": {"user": None, "phone": {"id": number, "displayName": None, "tenantId": None}}}


def _session(caller, callee, start: str, end: str, failure: dict[str, Any] | None = None) -> dict[str, Any]:
    session = {"startDateTime": start, "endDateTime": end, "caller": caller, "callee": callee}
    if failure is not None:
        session["failureInfo"] = failure
    return session


def _record(*sessions: dict[str, Any], version: int = 1, organizer: dict[str, Any] | None = None,
            start: str = "2024-03-05T14:30:00.0000000Z", end: str = "2024-03-05T14:32:10.0000000Z",
            record_id: str = "rec-1") -> bytes:
    record: dict[str, Any] = {"id": record_id, "version": version, "type": "peerToPeer",
                              "startDateTime": start, "endDateTime": end, "sessions": list(sessions)}
    if organizer is not None:
        record["organizer_v2"] = {"id": "x", "identity": organizer["identity"]}
    return json.dumps(record).encode()


def _finished(record: bytes, account: Account | None = None) -> FinishedCall | None:
    return ADAPTER.finished_call([record], account or _account())


# --- The documented samples ------------------------------------------------------------------


def test_the_documented_notification_is_authentic_for_its_tenant_and_asks_for_a_fetch() -> None:
    request = _request(_load_bytes(NOTIFICATION))

    ADAPTER.authenticate(request, SAMPLE_ACCOUNT)
    [notice] = ADAPTER.notices(request, SAMPLE_ACCOUNT)

    assert notice.fetch_record is True
    assert notice.provider_call_id == "{Call id}"
    assert notice.dedupe_key.startswith("graph:notification:")
    stored = json.loads(notice.body)
    assert "clientState" not in stored  # the secret stays out of the inbox
    assert stored["resourceData"]["id"] == "{Call id}"
    assert ADAPTER.finished_call([notice.body], SAMPLE_ACCOUNT) is None  # not fetched yet


def test_the_documented_expanded_record_is_one_internal_answered_call() -> None:
    notice = record_notice(_load_bytes(EXPANDED), EXPANDED_ACCOUNT)

    assert notice.dedupe_key == "graph:record:e523d2ed-2966-4b6b-925b-754a88034cc5:v1"
    assert notice.provider_call_id == "e523d2ed-2966-4b6b-925b-754a88034cc5"
    assert notice.fetch_record is False
    assert notice.body == _load_bytes(EXPANDED)
    assert ADAPTER.finished_call([notice.body], EXPANDED_ACCOUNT) == FinishedCall(
        provider_call_id="e523d2ed-2966-4b6b-925b-754a88034cc5",
        direction="internal",  # Owen Franklin is a user of the same tenant
        external_number_e164=None,
        external_number_raw=None,
        internal_number=None,
        provider_user_id=ABBIE,
        started_at=datetime(2020, 2, 25, 18, 52, 21, 216988, tzinfo=timezone.utc),
        ended_at=datetime(2020, 2, 25, 18, 52, 46, 764001, tzinfo=timezone.utc),
        duration_seconds=26,  # 25.5470124 s of session, rounded half up
        result="answered",
    )


def test_the_callee_is_the_firm_user_when_only_the_callee_is_mapped() -> None:
    account = _account(account_id=SAMPLE_TENANT, attorneys_by_user={OWEN: "atty-owen"})

    finished = ADAPTER.finished_call([_load_bytes(EXPANDED)], account)

    assert finished is not None and finished.provider_user_id == OWEN
    assert finished.direction == "internal"


def test_listed_records_without_sessions_fall_back_to_the_record_span() -> None:
    listed = json.loads(_load_bytes(LISTED))["value"]
    account = _account(account_id=SAMPLE_TENANT, attorneys_by_user={ABBIE: "atty-abbie"})

    first = call_from_record(json.dumps(listed[0]).encode(), account)
    pstn_organizer = call_from_record(json.dumps(listed[1]).encode(), account)

    assert first is not None
    assert (first.direction, first.duration_seconds, first.result) == ("outbound", 3, "answered")
    assert first.provider_call_id == "3cf3bbc8-b21d-4f2e-bfd0-b13603ae6c65"
    assert pstn_organizer is None  # only a phone number organised it: no firm user to bill


# --- Handshake -------------------------------------------------------------------------------


def test_the_validation_token_is_echoed_as_text_plain() -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: 25% off"

    reply = ADAPTER.handshake(_request(b"", {"validationToken": token}), _account())

    assert reply is not None
    assert (reply.status, reply.media_type, reply.body) == (200, "text/plain", token.encode())


def test_a_notification_is_no_handshake() -> None:
    assert ADAPTER.handshake(_request(_envelope(_item())), _account()) is None


# --- Authenticity ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "items",
    [
        [_item(clientState="forged")],
        [{k: v for k, v in _item().items() if k != "clientState"}],
        [_item(clientState=None)],
        [_item(clientState=123)],
        [_item("rec-1"), _item("rec-2", clientState=SECRET + "x")],
        [_item(clientState=SECRET.upper())],
        [],
    ],
    ids=["forged", "missing", "null", "number", "second-forged", "case", "empty"],
)
def test_a_notification_without_the_firms_client_state_is_refused_401(items: list[dict[str, Any]]) -> None:
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request(_envelope(*items)), _account())
    assert refused.value.status == 401


def test_an_account_without_a_secret_accepts_nothing() -> None:
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request(_envelope(_item(clientState=""))), _account(webhook_secret=""))
    assert refused.value.status == 401


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"value": {}}', b'{"value": [1]}'])
def test_a_body_that_cannot_show_a_client_state_is_refused_401(body: bytes) -> None:
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request(body), _account())
    assert refused.value.status == 401


@pytest.mark.parametrize("tenant", ["99999999-2222-3333-4444-555555555555", None, 7])
def test_an_authentic_notification_of_another_tenant_is_refused_403(tenant: Any) -> None:
    items = [_item("rec-1"), _item("rec-2", tenantId=tenant)]
    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(_request(_envelope(*items)), _account())
    assert refused.value.status == 403


def test_the_tenant_id_compares_without_case() -> None:
    ADAPTER.authenticate(_request(_envelope(_item(tenantId=TENANT.upper()))), _account())


# --- Notices ---------------------------------------------------------------------------------


def test_each_item_of_a_batch_is_one_notice() -> None:
    notices = ADAPTER.notices(_request(_envelope(_item("rec-1"), _item("rec-2"))), _account())
    assert [n.provider_call_id for n in notices] == ["rec-1", "rec-2"]
    assert all(n.fetch_record for n in notices)


def test_a_redelivery_shares_the_dedupe_key_and_a_change_does_not() -> None:
    def key(item: dict[str, Any]) -> str:
        return ADAPTER.notices(_request(_envelope(item)), _account())[0].dedupe_key

    first = key(_item())
    assert key(_item(subscriptionExpirationDateTime="2024-03-08T00:00:00Z")) == first
    assert key(_item(changeType="updated")) != first
    assert key(_item(subscriptionId="sub-2")) != first
    assert key(_item(id="n-1")) != key(_item(id="n-2"))  # Graph's optional notification id
    assert key(_item("rec-2")) != first


def test_lifecycle_notifications_are_acknowledged_without_notices_but_recognisable() -> None:
    lifecycle = {"subscriptionId": "sub-1", "subscriptionExpirationDateTime": "2024-03-07T00:00:00Z",
                 "tenantId": TENANT, "clientState": SECRET, "lifecycleEvent": "reauthorizationRequired"}
    request = _request(_envelope(lifecycle))

    ADAPTER.authenticate(request, _account())
    assert ADAPTER.notices(request, _account()) == []
    assert lifecycle_events(request) == ["reauthorizationRequired"]
    assert lifecycle_events(_request(_envelope(_item()))) == []
    assert lifecycle_events(_request(b"\xff garbage")) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"changeType": "deleted"},
        {"resource": "users/u-1/messages/m-1", "resourceData": {"id": "m-1"}},
        {"resourceData": {"@odata.type": "#Microsoft.Graph.message", "id": "rec-1"}},
    ],
    ids=["deleted", "other-resource", "other-type"],
)
def test_notifications_about_anything_but_a_call_record_are_ignored(changes: dict[str, Any]) -> None:
    assert ADAPTER.notices(_request(_envelope(_item(**changes))), _account()) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"changeType": None},
        {"changeType": 1},
        {"resource": ["communications/callRecords/rec-1"]},
        {"subscriptionId": None},
        {"resourceData": "rec-1"},
        {"resourceData": {"id": "rec-2"}},
        {"resource": "communications/callRecords/.."},
        {"lifecycleEvent": 5},
    ],
)
def test_malformed_notifications_are_invalid(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidNotification):
        ADAPTER.notices(_request(_envelope(_item(**changes))), _account())


@pytest.mark.parametrize("body", [b"", b"{", b'{"value": 1}', b'{"value": ["x"]}', b"null", b"\xff\xfe"])
def test_malformed_bodies_are_invalid(body: bytes) -> None:
    with pytest.raises(InvalidNotification):
        ADAPTER.notices(_request(body), _account())


def test_a_truncated_notification_is_invalid() -> None:
    body = _load_bytes(NOTIFICATION)
    with pytest.raises(InvalidNotification):
        ADAPTER.notices(_request(body[: len(body) // 2]), SAMPLE_ACCOUNT)


# --- The call a record tells -----------------------------------------------------------------

T_RING = "2024-03-05T14:30:00.0000000Z"
T_ANSWER = "2024-03-05T14:30:06.0000000Z"
T_END = "2024-03-05T14:32:10.0000000Z"


def test_an_inbound_pstn_call_counts_connected_session_time_not_the_ringing() -> None:
    finished = _finished(_record(_session(_phone("(212) 555-0123"), _user(), T_ANSWER, T_END),
                                 organizer=_phone("(212) 555-0123")))

    assert finished == FinishedCall(
        provider_call_id="rec-1",
        direction="inbound",
        external_number_e164="+12125550123",
        external_number_raw="(212) 555-0123",
        internal_number=None,
        provider_user_id=USER,
        started_at=datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc),
        ended_at=datetime(2024, 3, 5, 14, 32, 10, tzinfo=timezone.utc),
        duration_seconds=124,  # 14:30:06 → 14:32:10; the record spans 130 s
        result="answered",
    )


def test_an_outbound_pstn_call_is_outbound_from_the_caller() -> None:
    finished = _finished(_record(_session(_user(), _phone("+442079460000"), T_ANSWER, T_END), organizer=_user()))

    assert finished is not None
    assert (finished.direction, finished.external_number_e164, finished.result) == ("outbound", "+442079460000", "answered")


def test_a_call_that_failed_at_setup_is_missed() -> None:
    failed = {"stage": "callSetup", "reason": "NoAnswer"}
    finished = _finished(_record(_session(_phone(), _user(), T_RING, T_ANSWER, failed)))

    assert finished is not None
    assert (finished.direction, finished.result, finished.duration_seconds) == ("inbound", "missed", 0)


def test_a_midcall_failure_still_counts_the_connected_time() -> None:
    dropped = {"stage": "midcall", "reason": "network"}
    finished = _finished(_record(_session(_phone(), _user(), T_ANSWER, T_END, dropped)))

    assert finished is not None and (finished.result, finished.duration_seconds) == ("answered", 124)


def test_an_inbound_call_to_the_users_voicemail_is_voicemail() -> None:
    finished = _finished(_record(
        _session(_phone(), _user(), T_RING, T_ANSWER, {"stage": "callSetup"}),
        _session(_phone(), _user(role="voicemail"), T_ANSWER, T_END),
    ))

    assert finished is not None
    assert (finished.direction, finished.result, finished.duration_seconds) == ("inbound", "voicemail", 0)


def test_overlapping_sessions_count_once() -> None:
    finished = _finished(_record(
        _session(_phone(), _user(), "2024-03-05T14:30:00Z", "2024-03-05T14:31:00Z"),
        _session(_phone(), _user(), "2024-03-05T14:30:30Z", "2024-03-05T14:31:30Z"),
        _session(_phone(), _user(), "2024-03-05T14:32:00Z", "2024-03-05T14:32:10Z"),
    ))
    assert finished is not None and finished.duration_seconds == 100


@pytest.mark.parametrize(
    ("end", "seconds"),
    [("14:30:10.4999999", 10), ("14:30:10.5000000", 11), ("14:30:10.5", 11), ("14:30:00.0000001", 0)],
)
def test_connected_time_rounds_half_up_in_exact_ticks(end: str, seconds: int) -> None:
    finished = _finished(_record(_session(_phone(), _user(), "2024-03-05T14:30:00.0000000Z", f"2024-03-05T{end}Z")))
    assert finished is not None and finished.duration_seconds == seconds


def test_a_call_between_two_firm_users_is_internal() -> None:
    colleague = "aaaaaaaa-0000-0000-0000-000000000102"
    finished = _finished(_record(_session(_user(), _user(colleague), T_ANSWER, T_END), organizer=_user()))

    assert finished is not None
    assert (finished.direction, finished.external_number_raw, finished.provider_user_id) == ("internal", None, USER)


def test_a_federated_user_of_another_tenant_is_an_external_party() -> None:
    stranger = _user("bbbbbbbb-0000-0000-0000-000000000001", tenant="99999999-0000-0000-0000-000000000000")
    finished = _finished(_record(_session(stranger, _user(), T_ANSWER, T_END)))

    assert finished is not None and finished.direction == "inbound"


def test_an_unmapped_user_of_the_firm_is_still_reported() -> None:
    unmapped = "aaaaaaaa-0000-0000-0000-000000000999"
    finished = _finished(_record(_session(_phone(), _user(unmapped), T_ANSWER, T_END)))

    assert finished is not None and finished.provider_user_id == unmapped


def test_a_record_without_any_firm_user_is_no_call() -> None:
    stranger = _user("bbbbbbbb-0000-0000-0000-000000000001", tenant="99999999-0000-0000-0000-000000000000")
    assert _finished(_record(_session(_phone(), stranger, T_ANSWER, T_END))) is None


def test_the_highest_version_wins_whatever_the_arrival_order() -> None:
    first = _record(_session(_phone(), _user(), T_ANSWER, "2024-03-05T14:31:06Z"), version=1)
    corrected = _record(_session(_phone(), _user(), T_ANSWER, T_END), version=2)
    notification = ADAPTER.notices(_request(_envelope(_item())), _account())[0].body

    for bodies in ([notification, first, corrected], [corrected, notification, first]):
        finished = ADAPTER.finished_call(bodies, _account())
        assert finished is not None and finished.duration_seconds == 124
    assert record_notice(first, _account()).dedupe_key != record_notice(corrected, _account()).dedupe_key


def test_records_of_two_calls_cannot_be_mixed() -> None:
    one = _record(_session(_phone(), _user(), T_ANSWER, T_END), record_id="rec-1")
    other = _record(_session(_phone(), _user(), T_ANSWER, T_END), record_id="rec-2")
    with pytest.raises(ValueError):
        ADAPTER.finished_call([one, other], _account())


@pytest.mark.parametrize(
    "change",
    [
        {"version": "1"},
        {"version": True},
        {"id": None},
        {"startDateTime": "yesterday"},
        {"endDateTime": "2024-03-05 14:32"},
        {"sessions": {}},
        {"sessions": [{"startDateTime": T_ANSWER}]},
        {"sessions": [{"startDateTime": T_ANSWER, "endDateTime": T_END, "caller": "me"}]},
        {"organizer_v2": {"identity": {"user": "x"}}},
    ],
)
def test_malformed_records_are_invalid(change: dict[str, Any]) -> None:
    record = json.loads(_record(_session(_phone(), _user(), T_ANSWER, T_END))) | change
    with pytest.raises(InvalidNotification):
        record_notice(json.dumps(record).encode(), _account())


# --- Units -----------------------------------------------------------------------------------


def test_graph_times_are_read_as_exact_ticks() -> None:
    assert parse_graph_time("1970-01-01T00:00:01.0000001Z") == TICKS_PER_SECOND + 1
    assert parse_graph_time("1970-01-01T01:00:00+01:00") == 0
    assert parse_graph_time("1970-01-01T00:00:00.123456789Z") == 1_234_567
    with pytest.raises(ValueError):
        parse_graph_time("1970-01-01T00:00:00")  # no offset: ambiguous


def test_whole_seconds_round_half_up_and_never_go_negative() -> None:
    assert [whole_seconds(t) for t in (0, 4_999_999, 5_000_000, 15_000_000, -30_000_000)] == [0, 0, 1, 2, 0]


# --- Properties ------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_item_like = st.fixed_dictionaries(
    {},
    optional={
        "changeType": st.sampled_from(["created", "updated", "deleted", 3, None]),
        "resource": st.sampled_from(["communications/callRecords/r-1", "communications/callRecords/", "x", 1]),
        "subscriptionId": st.sampled_from(["s", None, []]),
        "resourceData": st.sampled_from([{"id": "r-1"}, {"id": 2}, {"@odata.type": 4}, "r", None]),
        "lifecycleEvent": st.sampled_from(["missed", 1, None]),
        "id": st.sampled_from(["n", 7, None]),
    },
)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | _json_values.map(lambda v: json.dumps(v).encode())
       | st.lists(_item_like, max_size=3).map(lambda items: json.dumps({"value": items}).encode()))
def test_arbitrary_bodies_never_raise_anything_but_the_documented_errors(body: bytes) -> None:
    request = _request(body)
    try:
        ADAPTER.authenticate(request, _account())
    except Refused as refused:
        assert refused.status in (401, 403)
    try:
        notices = ADAPTER.notices(request, _account())
    except InvalidNotification:
        notices = []
    assert all(n.fetch_record and n.provider_call_id for n in notices)
    assert isinstance(lifecycle_events(request), list)
    try:
        record_notice(body, _account())
    except InvalidNotification:
        pass


@settings(max_examples=200, deadline=None)
@given(record=st.fixed_dictionaries(
    {"id": st.sampled_from(["rec-1", "", 5]), "version": st.sampled_from([1, 2, "3", None])},
    optional={
        "startDateTime": st.sampled_from([T_RING, "2024-13-45T00:00:00Z", "", 0]),
        "endDateTime": st.sampled_from([T_END, "9999-12-31T23:59:59.9999999Z", None]),
        "sessions": st.lists(_json_values, max_size=3) | _json_values,
        "organizer_v2": _json_values,
    },
))
def test_arbitrary_records_are_a_call_none_or_invalid(record: dict[str, Any]) -> None:
    body = json.dumps(record).encode()
    try:
        finished = ADAPTER.finished_call([body], _account())
    except InvalidNotification:
        return
    assert finished is None or finished.duration_seconds >= 0



# --- Regressions found by the webhook fuzz (tests/e2e/test_webhook_fuzz.py) --------------------


def test_a_lone_surrogate_in_client_state_is_unauthenticated_not_a_crash() -> None:
    # Read before anything is authenticated: the comparison used to encode it and raise.
    request = _request(_envelope(_item(clientState="\ud800")))

    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(request, _account())
    assert refused.value.status == 401


def test_a_lone_surrogate_in_the_tenant_is_another_tenant_not_a_crash() -> None:
    request = _request(_envelope(_item(tenantId="x\ud83d")))

    with pytest.raises(Refused) as refused:
        ADAPTER.authenticate(request, _account())
    assert refused.value.status == 403


def test_a_record_that_ends_before_it_starts_is_not_announced() -> None:
    record = _record(_session(_user(), _phone(), "2024-03-05T14:30:05.0000000Z", "2024-03-05T14:32:00.0000000Z"),
                     start="2024-03-05T14:30:00.0000000Z", end="2024-03-05T14:00:00.0000000Z")

    with pytest.raises(InvalidNotification, match="ends before it starts"):
        _finished(record)


def test_a_number_holding_a_nul_escape_is_not_announced() -> None:
    # PostgreSQL text cannot hold NUL: announcing it would fail in the fetcher, out of sight.
    record = _record(_session(_user(), _phone("+1212555\u00000123"), "2024-03-05T14:30:05.0000000Z",
                              "2024-03-05T14:32:00.0000000Z"))

    with pytest.raises(InvalidNotification, match="NUL"):
        _finished(record)
