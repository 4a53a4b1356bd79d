"""The RingCentral call-log source: records read as the same calls the webhooks give, the JWT
bearer grant, paging, errors sorted into transient and not, and subscription renewal.

HTTP is answered in-process by `httpx.MockTransport`, so every request can be inspected; the
fake RingCentral server is exercised in test_ringcentral_simulator.py.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calltime.ingest.call_logs import ringcentral
from calltime.ingest.call_logs.port import CallLogError, Subscription
from calltime.ingest.call_logs.ringcentral import (
    JWT_BEARER_GRANT,
    UnusableRecord,
    call_from_record,
    outcome_of,
    source,
)
from calltime.ingest.providers.model import Account, FinishedCall

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ringcentral"
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "samples" / "providers"
SIMPLE_RECORD = "ringcentral_call_log_record_simple.json"
BLACKLISTED = "ringcentral_subscription_list_blacklisted.json"

BASE = "https://platform.ringcentral.test"
CREDENTIALS = {"client_id": "app-id", "client_secret": "app-secret", "jwt": "eyJ.jwt.credential"}
ACCOUNT = Account(firm_id="firm-1", provider="ringcentral", account_id="37439510",
                  webhook_secret="token", phone_region="US", attorneys_by_user={"2253168021": "a-1"})
SINCE = datetime(2023, 6, 6, 0, 0, tzinfo=timezone.utc)
UNTIL = datetime(2023, 6, 7, 0, 0, tzinfo=timezone.utc)


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("name", [SIMPLE_RECORD, BLACKLISTED])
def test_fixtures_are_verbatim_copies_of_the_reference_samples(name: str) -> None:
    if not (REFERENCE / name).exists():
        pytest.skip("reference samples not checked out beside the repo")
    assert (FIXTURES / name).read_bytes() == (REFERENCE / name).read_bytes()


def _record(**changes: Any) -> dict[str, Any]:
    """The reference record, with what the company log adds: session id and extension."""
    record = copy.deepcopy(_load(SIMPLE_RECORD))
    record["telephonySessionId"] = "s-a6abd24ca6774373a8120a3390d3cbe8"
    record["extension"] = {"id": "2253168021"}
    record.update(changes)
    return record


# --- One record, one call --------------------------------------------------------------------


def test_the_reference_record_cannot_be_matched_to_webhooks_without_its_session_id() -> None:
    # The Simple-view sample predates `telephonySessionId` and is an extension-level record.
    assert call_from_record(_load(SIMPLE_RECORD), "US") is None


def test_the_reference_record_with_its_session_and_extension_is_an_inbound_answered_call() -> None:
    assert call_from_record(_record(), "US") == FinishedCall(
        provider_call_id="s-a6abd24ca6774373a8120a3390d3cbe8",
        direction="inbound",
        external_number_e164="+14155555900",
        external_number_raw="+14155555900",
        internal_number="+15625555772",
        provider_user_id="2253168021",
        started_at=datetime(2023, 6, 6, 23, 7, 20, tzinfo=timezone.utc),
        ended_at=datetime(2023, 6, 6, 23, 8, 15, tzinfo=timezone.utc),
        duration_seconds=55,
        result="answered",
    )


def test_an_outbound_record_has_the_firm_user_as_caller() -> None:
    record = _record(direction="Outbound", result="Call connected",
                     **{"from": {"phoneNumber": "+15625555772", "extensionId": "2253168021"},
                        "to": {"phoneNumber": "+44 20 7946 0958"}})

    call = call_from_record(record, "US")

    assert (call.direction, call.external_number_e164, call.internal_number) == (
        "outbound", "+442079460958", "+15625555772")
    assert call.external_number_raw == "+44 20 7946 0958"


def test_an_extension_to_extension_record_is_internal_with_extension_numbers() -> None:
    record = _record(**{"from": {"extensionNumber": "205", "extensionId": "2253168999"},
                        "to": {"extensionNumber": "101", "extensionId": "2253168021"}})

    call = call_from_record(record, "US")

    assert (call.direction, call.external_number_e164, call.external_number_raw) == (
        "internal", None, "205")
    assert call.internal_number == "101"


def test_a_short_number_on_the_other_side_is_internal_too() -> None:
    call = call_from_record(_record(**{"from": {"phoneNumber": "205"}}), "US")

    assert call.direction == "internal"


def test_the_firms_region_reads_a_number_without_country_code() -> None:
    call = call_from_record(_record(**{"from": {"phoneNumber": "020 7946 0958"}}), "GB")

    assert call.external_number_e164 == "+442079460958"


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ("Accepted", "answered"), ("Call connected", "answered"), ("Voicemail", "voicemail"),
        ("Rejected", "rejected"), ("Declined", "rejected"), ("Missed", "missed"),
        ("No Answer", "missed"), ("Busy", "missed"), ("Hang Up", "missed"),
        ("Abandoned", "missed"), ("Call Failed", "missed"), ("Unknown", "missed"),
        ("In Progress", None),
    ],
)
def test_call_log_results_map_onto_our_four(result: str, expected: str | None) -> None:
    assert outcome_of(result) == expected


@pytest.mark.parametrize("result", ["Missed", "Voicemail", "Rejected", "No Answer"])
def test_only_an_answered_call_has_connected_time(result: str) -> None:
    call = call_from_record(_record(result=result, duration=31), "US")

    assert call.duration_seconds == 0
    assert call.ended_at == call.started_at + timedelta(seconds=31)


@pytest.mark.parametrize(
    ("duration_ms", "seconds"), [(0, 0), (499, 0), (500, 1), (16_118, 16), (59_999, 60)]
)
def test_milliseconds_win_over_seconds_and_round_half_up(duration_ms: int, seconds: int) -> None:
    call = call_from_record(_record(duration=999, durationMs=duration_ms), "US")

    assert call.duration_seconds == seconds
    assert isinstance(call.duration_seconds, int)


def test_the_call_ends_when_its_last_detailed_leg_ends() -> None:
    legs = [{"startTime": "2023-06-06T23:07:20.000Z", "durationMs": 61_250},
            {"startTime": "2023-06-06T23:07:26.000Z", "duration": 55}]

    call = call_from_record(_record(legs=legs), "US")

    assert call.ended_at == datetime(2023, 6, 6, 23, 8, 21, 250000, tzinfo=timezone.utc)
    assert call.duration_seconds == 55


def test_times_are_utc_whatever_offset_they_carry() -> None:
    call = call_from_record(_record(startTime="2023-06-06T16:07:20.000-07:00"), "US")

    assert call.started_at == datetime(2023, 6, 6, 23, 7, 20, tzinfo=timezone.utc)
    assert call.started_at.tzinfo == timezone.utc


@pytest.mark.parametrize(
    "changes",
    [{"type": "Fax"}, {"result": "In Progress"}, {"result": None}, {"extension": None},
     {"telephonySessionId": None}],
    ids=["fax", "in-progress", "no-result", "no-extension", "no-session"],
)
def test_records_that_are_no_finished_voice_call_of_a_firm_user_are_skipped(
    changes: dict[str, Any]
) -> None:
    assert call_from_record(_record(**changes), "US") is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"startTime": None}, "startTime"),
        ({"startTime": "yesterday"}, "startTime"),
        ({"startTime": "2023-06-06T23:07:20"}, "UTC offset"),
        ({"duration": "55"}, "duration"),
        ({"duration": -1}, "duration"),
        ({"duration": True}, "duration"),
        ({"legs": {}}, "legs"),
        ({"extension": "2253168021"}, "extension"),
        ({"telephonySessionId": 12.5}, "telephonySessionId"),
    ],
)
def test_malformed_records_raise_unusable_record_naming_the_field(
    changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(UnusableRecord, match=reason):
        call_from_record(_record(**changes), "US")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=15,
)


@given(st.fixed_dictionaries({}, optional={
    key: _JSON for key in ("type", "result", "telephonySessionId", "extension", "startTime",
                           "duration", "durationMs", "direction", "from", "to", "legs")}))
def test_any_record_shape_is_a_call_none_or_unusable_never_a_crash(record: dict[str, Any]) -> None:
    try:
        call = call_from_record(record, "US")
    except UnusableRecord:
        return
    assert call is None or call.duration_seconds >= 0


# --- HTTP, answered by a scripted RingCentral ------------------------------------------------


class Scripted:
    """A RingCentral answering from a script; records every request."""

    def __init__(self, api: Callable[[httpx.Request], httpx.Response] | None = None,
                 token: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.tokens_issued = 0
        self._api = api or (lambda request: httpx.Response(200, json={"records": []}))
        self._token = token or self._issue

    def _issue(self, request: httpx.Request) -> httpx.Response:
        self.tokens_issued += 1
        return httpx.Response(200, json={"access_token": f"token-{self.tokens_issued}",
                                         "token_type": "bearer", "expires_in": 3600})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/restapi/oauth/token":
            return self._token(request)
        return self._api(request)

    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path != "/restapi/oauth/token"]


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _source(server: Scripted, sleeps: Sleeps | None = None, **options: Any):
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return source(ACCOUNT, BASE, CREDENTIALS, http, sleep=sleeps or Sleeps(), **options)


async def _all_pages(log) -> list:
    return [page async for page in log.pages(SINCE, UNTIL)]


def _page(records: list[dict[str, Any]], next_uri: str | None = None) -> httpx.Response:
    navigation = {"nextPage": {"uri": next_uri}} if next_uri else {}
    return httpx.Response(200, json={"records": records, "navigation": navigation,
                                     "paging": {"page": 1, "perPage": 2}})


async def test_the_jwt_is_exchanged_with_basic_client_auth_for_a_bearer_token() -> None:
    server = Scripted()

    await _all_pages(_source(server))

    token_request = server.requests[0]
    assert (token_request.method, token_request.url.path) == ("POST", "/restapi/oauth/token")
    expected = base64.b64encode(b"app-id:app-secret").decode()
    assert token_request.headers["authorization"] == f"Basic {expected}"
    assert parse_qs(token_request.content.decode()) == {
        "grant_type": [JWT_BEARER_GRANT], "assertion": ["eyJ.jwt.credential"]}
    assert server.api_requests()[0].headers["authorization"] == "Bearer token-1"


async def test_the_company_call_log_is_asked_for_the_window_in_the_detailed_view() -> None:
    server = Scripted()

    await _all_pages(_source(server, per_page=500))

    (request,) = server.api_requests()
    assert request.url.path == "/restapi/v1.0/account/~/call-log"
    assert dict(request.url.params) == {
        "dateFrom": "2023-06-06T00:00:00.000Z", "dateTo": "2023-06-07T00:00:00.000Z",
        "view": "Detailed", "type": "Voice", "page": "1", "perPage": "500"}


async def test_pages_follow_next_page_on_the_configured_host_only() -> None:
    def api(request: httpx.Request) -> httpx.Response:
        page = request.url.params.get("page")
        if page == "1":
            return _page([_record(), _record(telephonySessionId="s-2", type="Fax")],
                         "https://elsewhere.example/restapi/v1.0/account/~/call-log?page=2&x=1")
        return _page([_record(telephonySessionId="s-3")])

    server = Scripted(api)

    pages = await _all_pages(_source(server))

    assert [p.records_read for p in pages] == [2, 1]
    assert [[c.provider_call_id for c in p.calls] for p in pages] == [
        ["s-a6abd24ca6774373a8120a3390d3cbe8"], ["s-3"]]
    second = server.api_requests()[1]
    assert (second.url.host, second.url.path) == ("platform.ringcentral.test",
                                                  "/restapi/v1.0/account/~/call-log")
    assert dict(second.url.params) == {"page": "2", "x": "1"}
    assert server.tokens_issued == 1


async def test_a_next_page_that_repeats_itself_ends_the_paging() -> None:
    loop = f"{BASE}/restapi/v1.0/account/~/call-log?page=2"
    server = Scripted(lambda request: _page([], loop))

    pages = await _all_pages(_source(server))

    assert len(pages) == 2


async def test_only_calls_started_within_the_window_are_returned() -> None:
    records = [_record(telephonySessionId="s-in"),
               _record(telephonySessionId="s-at-end", startTime="2023-06-07T00:00:00.000Z"),
               _record(telephonySessionId="s-before", startTime="2023-06-05T23:59:59.999Z")]
    server = Scripted(lambda request: _page(records))

    (page,) = await _all_pages(_source(server))

    assert page.records_read == 3
    assert [c.provider_call_id for c in page.calls] == ["s-in"]


async def test_an_unusable_record_is_skipped_and_the_rest_are_read() -> None:
    server = Scripted(lambda request: _page([_record(duration="x"), "nonsense",
                                             _record(telephonySessionId="s-ok")]))

    (page,) = await _all_pages(_source(server))

    assert [c.provider_call_id for c in page.calls] == ["s-ok"]


@pytest.mark.parametrize(
    ("status", "transient"),
    [(500, True), (502, True), (503, True), (429, True), (408, True),
     (403, False), (404, False), (400, False)],
)
async def test_api_errors_are_transient_or_not(status: int, transient: bool) -> None:
    server = Scripted(lambda request: httpx.Response(status, headers={"Retry-After": "0"},
                                                     json={"errorCode": "X"}))

    with pytest.raises(CallLogError) as raised:
        await _all_pages(_source(server))

    assert (raised.value.transient, raised.value.status) == (transient, status)


async def test_a_401_gets_one_fresh_token_and_then_stands() -> None:
    server = Scripted(lambda request: httpx.Response(401, json={"errorCode": "TokenInvalid"}))

    with pytest.raises(CallLogError) as raised:
        await _all_pages(_source(server))

    assert (raised.value.transient, raised.value.status) == (False, 401)
    assert server.tokens_issued == 2


async def test_a_token_revoked_mid_sweep_is_replaced_once() -> None:
    def api(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer token-1":
            return httpx.Response(401, json={"errorCode": "TokenInvalid"})
        return _page([_record()])

    server = Scripted(api)

    (page,) = await _all_pages(_source(server))

    assert len(page.calls) == 1 and server.tokens_issued == 2


@pytest.mark.parametrize(("status", "transient"), [(400, False), (401, False), (429, True),
                                                   (503, True)])
async def test_a_refused_jwt_is_not_transient_an_unavailable_token_endpoint_is(
    status: int, transient: bool
) -> None:
    server = Scripted(token=lambda request: httpx.Response(status, json={"error": "invalid_grant"}))

    with pytest.raises(CallLogError) as raised:
        await _all_pages(_source(server))

    assert raised.value.transient is transient
    assert server.api_requests() == []


@pytest.mark.parametrize("error", [httpx.ReadTimeout("slow"), httpx.ConnectError("down")])
async def test_timeouts_and_network_failures_are_transient(error: Exception) -> None:
    def api(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(CallLogError) as raised:
        await _all_pages(_source(Scripted(api)))

    assert raised.value.transient is True


async def test_a_body_that_is_not_json_is_transient() -> None:
    server = Scripted(lambda request: httpx.Response(200, text="<html>maintenance</html>"))

    with pytest.raises(CallLogError) as raised:
        await _all_pages(_source(server))

    assert raised.value.transient is True


async def test_a_429_waits_for_retry_after_once_then_carries_on() -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "7"}), _page([_record()])])
    server = Scripted(lambda request: next(answers))
    sleeps = Sleeps()

    (page,) = await _all_pages(_source(server, sleeps))

    assert sleeps.waits == [7.0]
    assert len(page.calls) == 1


async def test_a_second_429_gives_up_as_transient() -> None:
    server = Scripted(lambda request: httpx.Response(429, headers={"Retry-After": "2"}))
    sleeps = Sleeps()

    with pytest.raises(CallLogError) as raised:
        await _all_pages(_source(server, sleeps))

    assert (raised.value.transient, raised.value.status) == (True, 429)
    assert sleeps.waits == [2.0]
    assert len(server.api_requests()) == 2


async def test_a_retry_after_longer_than_a_sweep_should_wait_is_left_to_the_next_sweep() -> None:
    server = Scripted(lambda request: httpx.Response(429, headers={"Retry-After": "3600"}))
    sleeps = Sleeps()

    with pytest.raises(CallLogError) as raised:
        await _all_pages(_source(server, sleeps))

    assert raised.value.transient is True
    assert sleeps.waits == []


@pytest.mark.parametrize("missing", ["client_id", "client_secret", "jwt"])
def test_an_incomplete_credential_is_a_permanent_error(missing: str) -> None:
    credentials = {k: v for k, v in CREDENTIALS.items() if k != missing}

    with pytest.raises(CallLogError) as raised:
        source(ACCOUNT, BASE, credentials)

    assert raised.value.transient is False
    assert missing in str(raised.value)


def test_secrets_stay_out_of_the_repr() -> None:
    text = repr(_source(Scripted()))

    assert "app-secret" not in text and "jwt" not in text
    assert "firm-1" in text


async def test_naive_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        await anext(_source(Scripted()).pages(datetime(2023, 6, 6), UNTIL))


# --- Subscriptions ---------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _subscription(sid: str, expires: datetime, status: str = "Active") -> dict[str, Any]:
    return {"id": sid, "status": status, "expirationTime": ringcentral.rc_time(expires),
            "deliveryMode": {"transportType": "WebHook", "address": "https://x/webhook"}}


async def test_subscriptions_expiring_within_the_margin_are_renewed() -> None:
    soon, later = NOW + timedelta(hours=1), NOW + timedelta(days=30)
    listing = {"records": [_subscription("soon", soon), _subscription("later", later)]}

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=listing)
        return httpx.Response(200, json=_subscription("soon", NOW + timedelta(days=7)))

    server = Scripted(api)

    renewed = await _source(server).renew_subscriptions(NOW, renew_within_seconds=2 * 3600)

    assert renewed == [Subscription("soon", NOW + timedelta(days=7)), Subscription("later", later)]
    assert [(r.method, r.url.path) for r in server.api_requests()] == [
        ("GET", "/restapi/v1.0/subscription"), ("POST", "/restapi/v1.0/subscription/soon/renew")]


async def test_a_blacklisted_subscription_is_reported_not_renewed() -> None:
    listing = _load(BLACKLISTED)
    server = Scripted(lambda request: httpx.Response(200, json=listing))

    renewed = await _source(server).renew_subscriptions(
        datetime(2037, 3, 14, tzinfo=timezone.utc), renew_within_seconds=86400)

    assert renewed == [Subscription("1423e408-e25c-4421-8dd1-5f754e2f5648",
                                    datetime(2037, 3, 14, 1, 45, 30, 573000, tzinfo=timezone.utc))]
    assert [r.method for r in server.api_requests()] == ["GET"]


async def test_a_failed_renewal_is_an_error_not_a_silent_lapse() -> None:
    listing = {"records": [_subscription("soon", NOW + timedelta(minutes=5))]}

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=listing)
        return httpx.Response(503)

    with pytest.raises(CallLogError) as raised:
        await _source(Scripted(api)).renew_subscriptions(NOW, renew_within_seconds=600)

    assert raised.value.transient is True
