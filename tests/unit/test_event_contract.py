"""The Avro contract between services: events survive the codec, and schemas only evolve in ways
that let the newest version read every message already on the topics."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calltime import codec, topics
from calltime.events import (
    CallEnded,
    CallMatched,
    DraftApproved,
    DraftCreated,
    EntryWritten,
    MatterCandidate,
)
from calltime.schema_compat import (
    SCHEMA_DIR,
    backward_problems,
    check_repository,
    main,
    released_versions,
)

UTC = timezone.utc
STARTED = datetime(2024, 3, 5, 14, 30, 1, 123456, tzinfo=UTC)


# --- sample events ---------------------------------------------------------------------------

def call_ended(**changes: Any) -> CallEnded:
    values = dict(
        event_id="0b6d7c1e-8f0a-4a56-9d3e-3c2f6f1d9a01",
        firm_id="firm-smith-law",
        call_id="ringcentral:s-a0d7e3c1b2",
        revision=1,
        provider="ringcentral",
        provider_call_id="s-a0d7e3c1b2",
        direction="inbound",
        external_number_e164="+14155550123",
        external_number_raw="(415) 555-0123",
        internal_number="101",
        provider_user_id="62811055004",
        attorney_user_id="345678",
        started_at=STARTED,
        ended_at=STARTED + timedelta(minutes=7, seconds=12),
        duration_seconds=432,
        result="answered",
        received_at=STARTED + timedelta(minutes=7, seconds=15, microseconds=250),
    )
    return CallEnded(**{**values, **changes})


MATTER = MatterCandidate("1001", "00012-Smith", "Smith v. Jones — custody", "open")
OTHER_MATTER = MatterCandidate("1002", "00013-Smith", "Smith estate planning", "pending")


def call_matched() -> CallMatched:
    return CallMatched(
        event_id="5f1c2d3e-0000-4000-8000-000000000002",
        firm_id="firm-smith-law",
        call=call_ended(),
        outcome="multiple_matters",
        client_id="778899",
        client_name="Jane Smith",
        matter=None,
        candidates=(MATTER, OTHER_MATTER),
        matched_at=STARTED + timedelta(minutes=8),
    )


def draft_created() -> DraftCreated:
    return DraftCreated(
        event_id="5f1c2d3e-0000-4000-8000-000000000003",
        firm_id="firm-smith-law",
        call_id="ringcentral:s-a0d7e3c1b2",
        revision=1,
        draft_id="d-7a1b",
        attorney_user_id="345678",
        match_outcome="single_matter",
        client_id="778899",
        client_name="Jane Smith",
        matter=MATTER,
        candidates=(MATTER,),
        entry_date=date(2024, 3, 5),
        time_zone="America/Los_Angeles",
        raw_seconds=432,
        billed_hours=Decimal("0.2"),
        rate=Decimal("350.00"),
        amount=Decimal("70.00"),
        currency="USD",
        activity_code="A106",
        narrative="Telephone conference with Jane Smith re custody schedule.",
        billable=True,
        review_state="ready",
        flags=("long_hold",),
        created_at=STARTED + timedelta(minutes=8, seconds=1),
    )


def draft_approved() -> DraftApproved:
    return DraftApproved(
        event_id="5f1c2d3e-0000-4000-8000-000000000004",
        firm_id="firm-smith-law",
        call_id="ringcentral:s-a0d7e3c1b2",
        draft_id="d-7a1b",
        attorney_user_id="345678",
        approved_by="345678",
        approved_at=STARTED + timedelta(hours=3),
        matter_id="1001",
        entry_date=date(2024, 3, 5),
        raw_seconds=432,
        billed_hours=Decimal("0.3"),
        rate=Decimal("350.00"),
        amount=Decimal("105.00"),
        currency="USD",
        activity_code="A106",
        narrative="Telephone conference with Jane Smith re custody schedule and mediation.",
        call_started_at=STARTED,
        external_number_e164=None,
        edited_fields=("billed_hours", "narrative"),
    )


def entry_written() -> EntryWritten:
    return EntryWritten(
        event_id="5f1c2d3e-0000-4000-8000-000000000005",
        firm_id="firm-smith-law",
        call_id="ringcentral:s-a0d7e3c1b2",
        draft_id="d-7a1b",
        billing_system="clio",
        entry_id="clio-act-99812",
        communication_id=None,
        matter_id="1001",
        user_id="345678",
        entry_date=date(2024, 3, 5),
        billed_seconds=1080,
        billed_hours=Decimal("0.3"),
        rate=Decimal("1250.50"),
        amount=Decimal("375.15"),
        currency="USD",
        written_at=STARTED + timedelta(hours=3, seconds=2),
    )


SAMPLES: dict[str, Callable[[], Any]] = {
    "CallEnded": call_ended,
    "CallMatched": call_matched,
    "DraftCreated": draft_created,
    "DraftApproved": draft_approved,
    "EntryWritten": entry_written,
}
MONEY_FIELDS = ("rate", "amount")


# --- round trip ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SAMPLES)
def test_every_event_survives_the_codec_unchanged(name: str) -> None:
    event = SAMPLES[name]()
    encoded = codec.encode(event)
    assert codec.decode(encoded.value, encoded.headers) == event


@pytest.mark.parametrize("name", ["DraftCreated", "DraftApproved", "EntryWritten"])
def test_decoded_money_keeps_two_places_and_hours_one(name: str) -> None:
    # Decimal equality ignores the exponent; the billing system does not, so check it too.
    encoded = codec.encode(SAMPLES[name]())
    decoded = codec.decode(encoded.value, encoded.headers)
    assert all(getattr(decoded, f).as_tuple().exponent == -2 for f in MONEY_FIELDS)
    assert decoded.billed_hours.as_tuple().exponent == -1


def test_decoded_times_are_aware_utc_and_nested_values_typed() -> None:
    encoded = codec.encode(call_matched())
    decoded = codec.decode(encoded.value, encoded.headers)
    assert decoded.matched_at.utcoffset() == timedelta(0)
    assert decoded.call.started_at.utcoffset() == timedelta(0)
    assert isinstance(decoded.call, CallEnded)
    assert isinstance(decoded.candidates, tuple)
    assert all(isinstance(candidate, MatterCandidate) for candidate in decoded.candidates)


def test_optional_values_absent_round_trip_as_none() -> None:
    event = call_ended(external_number_e164=None, external_number_raw=None, internal_number=None,
                       provider_user_id=None, attorney_user_id=None)
    encoded = codec.encode(event)
    assert codec.decode(encoded.value, encoded.headers) == event


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
int32 = st.integers(-(2**31), 2**31 - 1)
utc_times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                         timezones=st.just(UTC))


@settings(max_examples=200, deadline=None)
@given(
    strings=st.tuples(*[texts] * 6),
    optionals=st.tuples(*[st.none() | texts] * 5),
    numbers=st.tuples(int32, int32),
    times=st.tuples(utc_times, utc_times, utc_times),
)
def test_any_call_ended_survives_the_codec(strings: tuple, optionals: tuple, numbers: tuple,
                                           times: tuple) -> None:
    event_id, firm_id, call_id, provider, provider_call_id, direction = strings
    event = CallEnded(event_id, firm_id, call_id, numbers[0], provider, provider_call_id,
                      direction, *optionals, times[0], times[1], numbers[1], "answered", times[2])
    encoded = codec.encode(event)
    assert codec.decode(encoded.value, encoded.headers) == event


# --- key and headers -------------------------------------------------------------------------

@pytest.mark.parametrize("name", SAMPLES)
def test_key_is_firm_and_call_and_headers_name_the_schema_version(name: str) -> None:
    encoded = codec.encode(SAMPLES[name]())
    headers = dict(encoded.headers)
    assert encoded.key == b"firm-smith-law/ringcentral:s-a0d7e3c1b2"
    assert headers[codec.SCHEMA_HEADER] == name.encode()
    assert headers[codec.VERSION_HEADER] == b"1"
    assert headers[codec.CALL_ID_HEADER] == b"ringcentral:s-a0d7e3c1b2"


# --- undecodable input -----------------------------------------------------------------------

def _good() -> tuple[bytes, dict[str, bytes]]:
    encoded = codec.encode(call_ended())
    return encoded.value, dict(encoded.headers)


def _without(headers: dict[str, bytes], name: str) -> dict[str, bytes]:
    return {key: value for key, value in headers.items() if key != name}


BAD_MESSAGES: dict[str, Callable[[bytes, dict[str, bytes]], tuple[bytes, dict[str, bytes]]]] = {
    "garbage bytes": lambda value, headers: (b"not avro at all", headers),
    "high-bit garbage": lambda value, headers: (b"\xff" * 12, headers),
    "empty value": lambda value, headers: (b"", headers),
    "truncated value": lambda value, headers: (value[: len(value) // 2], headers),
    "last byte missing": lambda value, headers: (value[:-1], headers),
    "unknown schema": lambda value, headers: (value, {**headers, codec.SCHEMA_HEADER: b"Nope"}),
    "unknown version": lambda value, headers: (value, {**headers, codec.VERSION_HEADER: b"99"}),
    "version not a number": lambda value, headers: (value, {**headers, codec.VERSION_HEADER: b"x"}),
    "missing version header": lambda value, headers: (value, _without(headers,
                                                                       codec.VERSION_HEADER)),
    "missing schema header": lambda value, headers: (value, _without(headers,
                                                                     codec.SCHEMA_HEADER)),
}


@pytest.mark.parametrize("case", BAD_MESSAGES)
def test_undecodable_input_raises_undecodable_message(case: str) -> None:
    value, headers = BAD_MESSAGES[case](*_good())
    with pytest.raises(codec.UndecodableMessage):
        codec.decode(value, list(headers.items()))


# --- schema evolution that works -------------------------------------------------------------

def load(topic: str, version: int = 1, schema_dir: Path = SCHEMA_DIR) -> dict:
    return json.loads((schema_dir / topic / f"v{version}.avsc").read_text())


def with_field(schema: dict, field: dict) -> dict:
    return {**schema, "fields": [*schema["fields"], field]}


def replace_field(schema: dict, field_name: str, **changes: Any) -> dict:
    fields = [{**f, **changes} if f["name"] == field_name else f for f in schema["fields"]]
    return {**schema, "fields": fields}


RECORDING_URL = {"name": "recording_url", "type": ["null", "string"], "default": None,
                 "doc": "Where the provider keeps the recording, if any."}


@pytest.fixture
def schema_copy(tmp_path: Path) -> Path:
    """A private copy of the repository's schemas and lock to evolve or vandalise."""
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, target)
    return target


def write_schema(schema_dir: Path, topic: str, version: int, schema: dict) -> None:
    (schema_dir / topic / f"v{version}.avsc").write_text(json.dumps(schema, indent=2))


def test_message_written_with_v1_reads_under_a_v2_with_a_defaulted_optional_field(
        schema_copy: Path) -> None:
    v1 = load(topics.CALL_ENDED)
    write_schema(schema_copy, topics.CALL_ENDED, 2, with_field(v1, RECORDING_URL))
    v2 = load(topics.CALL_ENDED, 2, schema_copy)
    encoded = codec.encode(call_ended())

    record = fastavro.schemaless_reader(io.BytesIO(encoded.value), fastavro.parse_schema(v1),
                                        fastavro.parse_schema(v2))

    assert record["recording_url"] is None
    assert codec.from_record(CallEnded, record) == call_ended()
    assert backward_problems(v2, v1) == []
    assert check_repository(schema_copy) == []


@pytest.fixture
def codec_on(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Point the codec at another schema folder; its caches are dropped before and after."""
    def use(schema_dir: Path) -> None:
        monkeypatch.setattr(codec, "SCHEMA_DIR", schema_dir)
        _clear_codec_caches()
    yield use
    monkeypatch.undo()
    _clear_codec_caches()


def _clear_codec_caches() -> None:
    codec.parsed_schema.cache_clear()
    codec.current_version.cache_clear()


def test_the_codec_resolves_an_old_message_into_the_newest_version(
        schema_copy: Path, codec_on: Callable[[Path], None]) -> None:
    encoded_by_v1 = codec.encode(call_ended())
    write_schema(schema_copy, topics.CALL_ENDED, 2, with_field(load(topics.CALL_ENDED),
                                                                RECORDING_URL))
    codec_on(schema_copy)

    assert codec.decode(encoded_by_v1.value, encoded_by_v1.headers) == call_ended()
    assert dict(codec.encode(call_ended()).headers)[codec.VERSION_HEADER] == b"2"


COMPATIBLE_CHANGES: dict[str, Callable[[dict], dict]] = {
    "optional field with default": lambda s: with_field(s, RECORDING_URL),
    "int promoted to long": lambda s: replace_field(s, "duration_seconds", type="long"),
    "int promoted to double": lambda s: replace_field(s, "revision", type="double"),
    "string read as bytes": lambda s: replace_field(s, "provider", type="bytes"),
    "required field made optional": lambda s: replace_field(s, "result",
                                                            type=["null", "string"]),
    "union widened": lambda s: replace_field(s, "internal_number",
                                             type=["null", "string", "long"]),
    "field dropped": lambda s: {**s, "fields": [f for f in s["fields"]
                                                if f["name"] != "provider_user_id"]},
    "field renamed with alias": lambda s: replace_field(s, "result", name="outcome",
                                                        aliases=["result"]),
    "doc changed": lambda s: replace_field(s, "result", doc="How the call ended."),
}


@pytest.mark.parametrize("change", COMPATIBLE_CHANGES)
def test_compatible_changes_pass_and_fastavro_agrees(change: str) -> None:
    v1 = load(topics.CALL_ENDED)
    v2 = COMPATIBLE_CHANGES[change](copy.deepcopy(v1))
    value = codec.encode(call_ended()).value
    assert backward_problems(v2, v1) == []
    fastavro.schemaless_reader(io.BytesIO(value), fastavro.parse_schema(v1),
                               fastavro.parse_schema(v2))


# --- schema evolution that breaks ------------------------------------------------------------

def _matter_status_as_enum(schema: dict) -> dict:
    """call.matched with MatterCandidate.status as an enum, edited where the record is defined
    (inside the `matter` union); `candidates` reaches it only by name."""
    schema = copy.deepcopy(schema)
    matter = next(f for f in schema["fields"] if f["name"] == "matter")
    status = next(f for f in matter["type"][1]["fields"] if f["name"] == "status")
    status["type"] = {"type": "enum", "name": "MatterStatus",
                      "symbols": ["open", "pending", "closed"]}
    return schema


def _without_symbol(schema: dict, symbol: str) -> dict:
    schema = copy.deepcopy(schema)
    matter = next(f for f in schema["fields"] if f["name"] == "matter")
    enum = next(f for f in matter["type"][1]["fields"] if f["name"] == "status")["type"]
    enum["symbols"].remove(symbol)
    return schema


def _nested_call_field(schema: dict, field_name: str, **changes: Any) -> dict:
    call = next(f for f in schema["fields"] if f["name"] == "call")
    return replace_field(schema, "call", type=replace_field(call["type"], field_name, **changes))


def _decimal(precision: int, scale: int) -> dict:
    return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}


# (topic, make writer from v1, make reader from v1, texts every problem list must contain)
BREAKING_CHANGES: dict[str, tuple[str, Callable, Callable, list[str]]] = {
    "required field added without default": (
        topics.CALL_ENDED, lambda s: s,
        lambda s: with_field(s, {"name": "recording_url", "type": "string"}),
        ["field 'recording_url' added without a default"]),
    "int to string": (
        topics.CALL_ENDED, lambda s: s,
        lambda s: replace_field(s, "duration_seconds", type="string"),
        ["field 'duration_seconds' int -> string is not a promotion"]),
    "long narrowed to int": (
        topics.CALL_ENDED, lambda s: replace_field(s, "revision", type="long"),
        lambda s: s,
        ["field 'revision' long -> int is not a promotion"]),
    "optional made required": (
        topics.CALL_ENDED, lambda s: s,
        lambda s: replace_field(s, "external_number_e164", type="string"),
        ["field 'external_number_e164'", "writer union branch null cannot be read as string"]),
    "field renamed without alias": (
        topics.CALL_ENDED, lambda s: s,
        lambda s: replace_field(s, "result", name="outcome"),
        ["field 'outcome' added without a default"]),
    "timestamp precision changed": (
        topics.CALL_ENDED, lambda s: s,
        lambda s: replace_field(s, "started_at",
                                type={"type": "long", "logicalType": "timestamp-millis"}),
        ["field 'started_at'", "timestamp-micros", "timestamp-millis"]),
    "decimal scale changed": (
        topics.DRAFT_CREATED, lambda s: s,
        lambda s: replace_field(s, "billed_hours", type=_decimal(6, 2)),
        ["field 'billed_hours'", "scale 1", "scale 2"]),
    "decimal precision changed": (
        topics.ENTRY_WRITTEN, lambda s: s,
        lambda s: replace_field(s, "amount", type=_decimal(12, 2)),
        ["field 'amount'", "precision 18", "precision 12"]),
    "union loses a branch": (
        topics.DRAFT_CREATED, lambda s: replace_field(s, "client_id", type=["null", "string",
                                                                            "long"]),
        lambda s: s,
        ["field 'client_id'", "long", "no branch of the reader union"]),
    "array items changed": (
        topics.DRAFT_APPROVED, lambda s: s,
        lambda s: replace_field(s, "edited_fields", type={"type": "array", "items": "int"}),
        ["field 'edited_fields[]' string -> int is not a promotion"]),
    "nested record field changed": (
        topics.CALL_MATCHED, lambda s: s,
        lambda s: _nested_call_field(s, "duration_seconds", type="string"),
        ["field 'call.duration_seconds' int -> string is not a promotion"]),
    "enum symbol removed": (
        topics.CALL_MATCHED, _matter_status_as_enum,
        lambda s: _without_symbol(_matter_status_as_enum(s), "pending"),
        ["field 'matter.status'", "field 'candidates[].status'", "pending"]),
    "union default not its first branch": (
        topics.CALL_ENDED, lambda s: s,
        lambda s: with_field(s, {"name": "recording_url", "type": ["string", "null"],
                                 "default": None}),
        ["field 'recording_url'", "default null"]),
    "nested record renamed": (
        topics.CALL_MATCHED, lambda s: s,
        lambda s: replace_field(s, "call", type={**next(
            f for f in s["fields"] if f["name"] == "call")["type"], "name": "PhoneCall"}),
        ["field 'call'", "record CallEnded -> record PhoneCall"]),
}


@pytest.mark.parametrize("change", BREAKING_CHANGES)
def test_breaking_changes_are_reported_by_field(change: str) -> None:
    topic, make_writer, make_reader, expected = BREAKING_CHANGES[change]
    v1 = load(topic)
    problems = backward_problems(make_reader(copy.deepcopy(v1)), make_writer(copy.deepcopy(v1)))
    assert problems
    text = "\n".join(problems)
    for fragment in expected:
        assert fragment in text, text


def test_removed_enum_symbol_is_fine_when_the_reader_enum_has_a_default() -> None:
    writer = _matter_status_as_enum(load(topics.CALL_MATCHED))
    reader = _without_symbol(writer, "pending")
    enum = next(f for f in next(f for f in reader["fields"] if f["name"] == "matter")["type"][1]
                ["fields"] if f["name"] == "status")["type"]
    enum["default"] = "open"
    assert backward_problems(reader, writer) == []


def test_removing_a_default_breaks_reading_the_versions_before_the_field(
        schema_copy: Path) -> None:
    # v2 adds a defaulted field; v3 keeps it but drops the default. v3 can read v2 data (the
    # field is there) but not v1 data, which the codec still resolves straight into v3.
    v1 = load(topics.CALL_ENDED)
    v2 = with_field(v1, {"name": "recording_url", "type": "string", "default": ""})
    v3 = with_field(v1, {"name": "recording_url", "type": "string"})
    for version, schema in ((2, v2), (3, v3)):
        write_schema(schema_copy, topics.CALL_ENDED, version, schema)

    assert backward_problems(v3, v2) == []
    assert check_repository(schema_copy) == [
        "call.ended: v3 cannot read v1: field 'recording_url' added without a default: data "
        "written before has no value"]


def test_recursive_records_are_compared_without_looping() -> None:
    node = {"type": "record", "name": "Node", "namespace": "t",
            "fields": [{"name": "value", "type": "int"},
                       {"name": "next", "type": ["null", "Node"], "default": None}]}
    changed = replace_field(node, "value", type="string")
    assert backward_problems(node, node) == []
    # The inner Node is the same pair of types already being compared: reported once.
    assert backward_problems(changed, node) == ["field 'value' int -> string is not a promotion"]


# --- the repository and its release lock -----------------------------------------------------

def test_the_repository_schemas_pass_the_check() -> None:
    assert check_repository(SCHEMA_DIR) == []


def test_every_topic_has_a_released_v1() -> None:
    released = released_versions()
    assert set(released) == set(topics.PIPELINE)
    assert all(versions[0] == 1 for versions in released.values())


def test_the_lock_holds_the_canonical_hash_of_each_released_file() -> None:
    lock = json.loads((SCHEMA_DIR / "released.lock.json").read_text())
    for key, digest in lock.items():
        topic, version = key.split("/v")
        canonical = json.dumps(load(topic, int(version)), sort_keys=True, separators=(",", ":"))
        assert hashlib.sha256(canonical.encode()).hexdigest() == digest, key


def test_editing_a_released_version_in_place_is_reported(schema_copy: Path) -> None:
    edited = replace_field(load(topics.CALL_ENDED), "result", doc="How the call ended.")
    write_schema(schema_copy, topics.CALL_ENDED, 1, edited)
    assert check_repository(schema_copy) == [
        "call.ended/v1: released schema was changed in place; released versions are immutable, "
        "add v2 instead"]


def test_reformatting_a_released_version_is_not_a_change(schema_copy: Path) -> None:
    schema = load(topics.DRAFT_CREATED)
    reordered = {key: schema[key] for key in reversed(list(schema))}
    (schema_copy / topics.DRAFT_CREATED / "v1.avsc").write_text(json.dumps(reordered))
    assert check_repository(schema_copy) == []


def test_deleting_a_released_version_is_reported(schema_copy: Path) -> None:
    (schema_copy / topics.ENTRY_WRITTEN / "v1.avsc").unlink()
    assert check_repository(schema_copy) == [
        "entry.written/v1: released but its file is missing or unreadable"]


def test_cli_fails_on_problems_and_releases_new_versions(
        schema_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_schema(schema_copy, topics.CALL_ENDED, 2, with_field(load(topics.CALL_ENDED),
                                                                RECORDING_URL))
    assert main(["--schema-dir", str(schema_copy), "--release"]) == 0
    assert "released call.ended/v2" in capsys.readouterr().out
    assert released_versions(schema_copy)[topics.CALL_ENDED] == [1, 2]

    write_schema(schema_copy, topics.CALL_ENDED, 2, load(topics.CALL_ENDED))
    assert main(["--schema-dir", str(schema_copy)]) == 1
    assert "call.ended/v2: released schema was changed in place" in capsys.readouterr().out
