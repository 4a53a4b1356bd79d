"""The one event codec: typed events <-> Avro binary (fastavro), with schema name and version in
Kafka headers and the message key `<firm_id>/<call_id>`.

Every version of every schema stays in `schemas/<topic>/v<N>.avsc`; a message is decoded with the
version that wrote it (from its header) and resolved into the newest version this code knows.
"""

from __future__ import annotations

import dataclasses
import io
import json
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro

from calltime import topics
from calltime.events import CallEnded, CallMatched, DraftApproved, DraftCreated, EntryWritten

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA_HEADER = "calltime-schema"
VERSION_HEADER = "calltime-schema-version"
CALL_ID_HEADER = "calltime-call-id"

EVENT_TOPICS: dict[type, str] = {
    CallEnded: topics.CALL_ENDED,
    CallMatched: topics.CALL_MATCHED,
    DraftCreated: topics.DRAFT_CREATED,
    DraftApproved: topics.DRAFT_APPROVED,
    EntryWritten: topics.ENTRY_WRITTEN,
}
EVENT_TYPES: dict[str, type] = {cls.__name__: cls for cls in EVENT_TOPICS}


class UndecodableMessage(ValueError):
    """A message on a pipeline topic that is not a valid event of a known schema version."""


@dataclass(frozen=True)
class Encoded:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def schema_versions(topic: str) -> dict[int, dict]:
    folder = SCHEMA_DIR / topic
    return {int(path.stem[1:]): json.loads(path.read_text()) for path in folder.glob("v*.avsc")}


@lru_cache(maxsize=None)
def parsed_schema(topic: str, version: int) -> Any:
    return fastavro.parse_schema(schema_versions(topic)[version])


@lru_cache(maxsize=None)
def current_version(topic: str) -> int:
    return max(schema_versions(topic))


def message_key(firm_id: str, call_id: str) -> bytes:
    return f"{firm_id}/{call_id}".encode()


def encode(event: Any) -> Encoded:
    topic = EVENT_TOPICS[type(event)]
    version = current_version(topic)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed_schema(topic, version), to_record(event))
    call_id = event.call.call_id if isinstance(event, CallMatched) else event.call_id
    headers = [
        (SCHEMA_HEADER, type(event).__name__.encode()),
        (VERSION_HEADER, str(version).encode()),
        (CALL_ID_HEADER, call_id.encode()),
    ]
    return Encoded(message_key(event.firm_id, call_id), buffer.getvalue(), headers)


def decode(value: bytes, headers: typing.Iterable[tuple[str, bytes]]) -> Any:
    found = {name: raw or b"" for name, raw in headers}
    try:
        cls = EVENT_TYPES[found[SCHEMA_HEADER].decode()]
        topic = EVENT_TOPICS[cls]
        writer_version = int(found[VERSION_HEADER])
        stream = io.BytesIO(value)
        record = fastavro.schemaless_reader(
            stream,
            parsed_schema(topic, writer_version),
            parsed_schema(topic, current_version(topic)),
        )
        if stream.tell() != len(value):
            raise ValueError(f"{len(value) - stream.tell()} bytes left after the event")
        return from_record(cls, record)
    except Exception as exc:  # noqa: BLE001 - whatever the bytes did, they are not an event
        raise UndecodableMessage(f"cannot decode message: {exc!r}") from exc


def to_record(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: to_record(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [to_record(item) for item in value]
    return value


def from_record(cls: type, record: dict) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{name: _from_value(hints[name], record.get(name)) for name in hints
                  if name in {f.name for f in dataclasses.fields(cls)}})


def _from_value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _from_value(inner[0], value)
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        return tuple(_from_value(item_hint, item) for item in value)
    if dataclasses.is_dataclass(hint):
        return from_record(hint, value)
    return value
