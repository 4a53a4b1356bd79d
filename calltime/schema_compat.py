"""Checks that every new Avro schema version can still read what older versions wrote.

The codec decodes a message with the schema version that wrote it and resolves it into the
newest version (`calltime.codec`), so a new version must be able to *read* data written by the
older ones: that is Avro schema resolution with the new version as reader and the old one as
writer (https://avro.apache.org/docs/1.11.1/specification/#schema-resolution).

`backward_problems(reader, writer)` is a pure function over two parsed `.avsc` documents.
`check_repository(schema_dir)` applies it to `schemas/<topic>/v<N>.avsc` and also enforces the
release lock: a released version's content never changes, it is evolved by adding v<N+1>.

    python -m calltime.schema_compat            # print problems, exit 1 if any
    python -m calltime.schema_compat --release  # additionally lock the new versions' hashes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
LOCK_NAME = "released.lock.json"

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})

# Writer type -> reader types it may be read as (the spec's promotions).
PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}

# Attributes that change how a logical value is encoded or interpreted; `doc` and the like do not.
LOGICAL_ATTRIBUTES = ("logicalType", "precision", "scale")


# --- named types -----------------------------------------------------------------------------

@dataclass
class _Schema:
    """One schema with its named-type references replaced by full names and a registry of them."""

    root: Any
    names: dict[str, dict] = field(default_factory=dict)

    def resolve(self, node: Any) -> Any:
        """The definition behind a named-type reference; anything else unchanged."""
        if isinstance(node, str) and node not in PRIMITIVES:
            return self.names.get(node, node)
        return node


def _full_name(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _namespace_of(full_name: str) -> str | None:
    return full_name.rpartition(".")[0] or None


def _index(schema: Any) -> _Schema:
    indexed = _Schema(root=None)
    indexed.root = _normalise(schema, None, indexed.names)
    return indexed


def _normalise(node: Any, namespace: str | None, names: dict[str, dict]) -> Any:
    """Copy of `node` where named types carry full names and references point at full names."""
    if isinstance(node, str):
        return _reference(node, namespace, names)
    if isinstance(node, list):
        return [_normalise(branch, namespace, names) for branch in node]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    if kind in NAMED:
        return _normalise_named(node, namespace, names)
    if kind == "array":
        return {**node, "items": _normalise(node.get("items"), namespace, names)}
    if kind == "map":
        return {**node, "values": _normalise(node.get("values"), namespace, names)}
    if isinstance(kind, str) and kind in PRIMITIVES:
        return dict(node)
    # {"type": <reference or nested schema>}: the wrapper adds nothing to resolution.
    return _normalise(kind, namespace, names)


def _reference(name: str, namespace: str | None, names: dict[str, dict]) -> str:
    if name in PRIMITIVES or "." in name:
        return name
    qualified = _full_name(name, namespace)
    # An unqualified name is looked up in the enclosing namespace first, then the null namespace.
    return qualified if qualified in names or name not in names else name


def _normalise_named(node: dict, namespace: str | None, names: dict[str, dict]) -> dict:
    full = _full_name(node["name"], node.get("namespace", namespace))
    copy = {**node, "type": "record" if node["type"] == "error" else node["type"], "name": full}
    # Registered before the fields are walked so that a record may refer to itself.
    names[full] = copy
    if copy["type"] == "record":
        inner = _namespace_of(full)
        copy["fields"] = [{**f, "type": _normalise(f["type"], inner, names)}
                          for f in node.get("fields", [])]
    return copy


# --- describing types for messages -----------------------------------------------------------

def _kind(node: Any) -> str:
    """The physical kind of a resolved node: a primitive name, record, enum, fixed, array, map,
    union, or the unresolved reference itself."""
    if isinstance(node, list):
        return "union"
    if isinstance(node, dict):
        return node.get("type")
    return node


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _describe(node: Any) -> str:
    kind = _kind(node)
    if kind == "union":
        return "[" + ", ".join(_describe(branch) for branch in node) + "]"
    if kind in NAMED:
        return f"{kind} {_short(node['name'])}"
    if kind == "array":
        return f"array<{_describe(node['items'])}>"
    if kind == "map":
        return f"map<{_describe(node['values'])}>"
    logical = _logical(node)
    if logical:
        return f"{kind}({_describe_logical(logical)})"
    return str(kind)


def _logical(node: Any) -> dict[str, Any]:
    if not isinstance(node, dict) or "logicalType" not in node:
        return {}
    logical = {key: node[key] for key in LOGICAL_ATTRIBUTES if key in node}
    if logical["logicalType"] == "decimal":
        logical.setdefault("scale", 0)  # the spec's default: an absent scale is no change
    return logical


def _describe_logical(logical: dict[str, Any]) -> str:
    if logical.get("logicalType") == "decimal":
        return f"decimal precision {logical.get('precision')} scale {logical.get('scale', 0)}"
    return str(logical.get("logicalType"))


def _where(path: str) -> str:
    return f"field '{path}'" if path else "top-level schema"


# --- resolution ------------------------------------------------------------------------------

@dataclass
class _Resolution:
    reader: _Schema
    writer: _Schema
    # Record pairs being compared further up the current path: a recursive type would
    # otherwise never terminate. (A record shared by two fields is still checked at both.)
    open_records: set[tuple[str, str]] = field(default_factory=set)


def backward_problems(reader: dict, writer: dict) -> list[str]:
    """Why data written with `writer` could not be read with `reader`; empty when it can.

    Both arguments are `.avsc` documents as parsed JSON. Each problem names the field path
    (`call.duration_seconds`, `candidates[].status`, `labels{}`) and what is wrong with it.
    """
    resolution = _Resolution(_index(reader), _index(writer))
    return list(_compare(resolution, resolution.reader.root, resolution.writer.root, ""))


def _compare(res: _Resolution, reader: Any, writer: Any, path: str) -> Iterator[str]:
    reader, writer = res.reader.resolve(reader), res.writer.resolve(writer)
    for side, node in (("reader", reader), ("writer", writer)):
        if isinstance(node, str) and node not in PRIMITIVES:
            yield f"{_where(path)}: {side} refers to unknown type '{node}'"
            return
    if _kind(writer) == "union":
        yield from _compare_writer_union(res, reader, writer, path)
    elif _kind(reader) == "union":
        yield from _compare_reader_union(res, reader, writer, path)
    else:
        yield from _compare_single(res, reader, writer, path)


def _compare_writer_union(res: _Resolution, reader: Any, writer: list, path: str) -> Iterator[str]:
    # Any branch may have been written, so every one of them must be readable.
    for branch in writer:
        branch = res.writer.resolve(branch)
        if _kind(reader) == "union":
            yield from _compare_reader_union(res, reader, branch, path)
        elif _matches(reader, branch):
            yield from _compare(res, reader, branch, path)
        else:
            yield (f"{_where(path)}: writer union branch {_describe(branch)} cannot be read as "
                   f"{_describe(reader)}")


def _compare_reader_union(res: _Resolution, reader: list, writer: Any, path: str) -> Iterator[str]:
    branch = _select_branch(res, reader, writer)
    if branch is None:
        yield (f"{_where(path)}: {_describe(writer)} -> {_describe(reader)}: no branch of the "
               f"reader union accepts it")
    else:
        yield from _compare(res, branch, writer, path)


def _select_branch(res: _Resolution, reader: list, writer: Any) -> Any:
    """The reader union branch a writer value resolves into: the first of the same type, else
    the first the writer's type promotes to (as the reference implementation chooses)."""
    branches = [res.reader.resolve(branch) for branch in reader]
    for branch in branches:
        if _same_type(branch, writer):
            return branch
    for branch in branches:
        if _matches(branch, writer):
            return branch
    return None


def _same_type(reader: Any, writer: Any) -> bool:
    kind = _kind(writer)
    if _kind(reader) != kind:
        return False
    if kind in NAMED:
        return _short(reader["name"]) == _short(writer["name"])
    return True


def _matches(reader: Any, writer: Any) -> bool:
    """Whether the spec would pick `reader` for `writer` at all (problems inside come later)."""
    reader_kind, writer_kind = _kind(reader), _kind(writer)
    if reader_kind in NAMED and reader_kind == writer_kind:
        return _names_match(reader, writer)
    return reader_kind == writer_kind or reader_kind in PROMOTIONS.get(writer_kind, ())


def _names_match(reader: dict, writer: dict) -> bool:
    # The spec matches unqualified names; a reader alias may name the writer's type.
    aliases = {_short(alias) for alias in reader.get("aliases", [])}
    return _short(writer["name"]) in aliases | {_short(reader["name"])}


def _compare_single(res: _Resolution, reader: Any, writer: Any, path: str) -> Iterator[str]:
    reader_kind, writer_kind = _kind(reader), _kind(writer)
    if not _matches(reader, writer):
        yield _mismatch(reader, writer, path)
        return
    yield from _compare_logical(reader, writer, path)
    if reader_kind != writer_kind:
        return  # a promotion between primitives: nothing further to resolve
    if reader_kind == "record":
        yield from _compare_records(res, reader, writer, path)
    elif reader_kind == "enum":
        yield from _compare_enums(reader, writer, path)
    elif reader_kind == "fixed" and reader.get("size") != writer.get("size"):
        yield f"{_where(path)}: fixed size {writer.get('size')} -> {reader.get('size')}"
    elif reader_kind == "array":
        yield from _compare(res, reader["items"], writer["items"], f"{path}[]")
    elif reader_kind == "map":
        yield from _compare(res, reader["values"], writer["values"], f"{path}{{}}")


def _mismatch(reader: Any, writer: Any, path: str) -> str:
    reader_kind, writer_kind = _kind(reader), _kind(writer)
    if reader_kind == writer_kind:  # named types under different names
        return f"{_where(path)}: {_describe(writer)} -> {_describe(reader)}: names differ"
    if writer_kind in PRIMITIVES and reader_kind in PRIMITIVES:
        return f"{_where(path)} {_describe(writer)} -> {_describe(reader)} is not a promotion"
    return f"{_where(path)}: {_describe(writer)} -> {_describe(reader)} is not readable"


def _compare_logical(reader: Any, writer: Any, path: str) -> Iterator[str]:
    # Same bytes under another logical type mean another value (a decimal's scale moves the
    # point; a date is not a count of days), so any change is treated as breaking.
    if _logical(reader) != _logical(writer):
        yield (f"{_where(path)}: logical type {_describe(writer)} -> {_describe(reader)} "
               f"changes the meaning of written data")


def _compare_records(res: _Resolution, reader: dict, writer: dict, path: str) -> Iterator[str]:
    pair = (reader["name"], writer["name"])
    if pair in res.open_records:
        return
    res.open_records.add(pair)
    try:
        yield from _compare_fields(res, reader, writer, path)
    finally:
        res.open_records.discard(pair)


def _compare_fields(res: _Resolution, reader: dict, writer: dict, path: str) -> Iterator[str]:
    written = {f["name"]: f for f in writer.get("fields", [])}
    for reader_field in reader.get("fields", []):
        field_path = f"{path}.{reader_field['name']}" if path else reader_field["name"]
        writer_field = _writer_field(reader_field, written)
        if writer_field is not None:
            yield from _compare(res, reader_field["type"], writer_field["type"], field_path)
        elif "default" not in reader_field:
            yield f"{_where(field_path)} added without a default: data written before has no value"
        else:
            yield from _check_default(res.reader, reader_field, field_path)


def _writer_field(reader_field: dict, written: dict[str, dict]) -> dict | None:
    for name in [reader_field["name"], *reader_field.get("aliases", [])]:
        if name in written:
            return written[name]
    return None


def _compare_enums(reader: dict, writer: dict, path: str) -> Iterator[str]:
    missing = [s for s in writer.get("symbols", []) if s not in reader.get("symbols", [])]
    if missing and "default" not in reader:
        yield (f"{_where(path)}: enum {_short(reader['name'])} lost symbol(s) "
               f"{', '.join(missing)} and has no default")


# --- defaults --------------------------------------------------------------------------------

def _check_default(schema: _Schema, reader_field: dict, path: str) -> Iterator[str]:
    # A default only ever fills in data written without the field, so it must be a valid value.
    if not _valid_default(schema, reader_field["type"], reader_field["default"]):
        yield (f"{_where(path)}: default {json.dumps(reader_field['default'])} is not a valid "
               f"{_describe(schema.resolve(reader_field['type']))} (a union's default must "
               f"match its first branch)")


def _valid_default(schema: _Schema, node: Any, value: Any) -> bool:
    node = schema.resolve(node)
    kind = _kind(node)
    if kind == "union":
        return bool(node) and _valid_default(schema, node[0], value)
    checks = {
        "null": lambda: value is None,
        "boolean": lambda: isinstance(value, bool),
        "int": lambda: _is_int(value),
        "long": lambda: _is_int(value),
        "float": lambda: _is_number(value),
        "double": lambda: _is_number(value),
        "bytes": lambda: isinstance(value, str),
        "string": lambda: isinstance(value, str),
        "fixed": lambda: isinstance(value, str),
        "enum": lambda: value in node.get("symbols", []),
        "array": lambda: isinstance(value, list)
        and all(_valid_default(schema, node["items"], item) for item in value),
        "map": lambda: isinstance(value, dict)
        and all(_valid_default(schema, node["values"], item) for item in value.values()),
        "record": lambda: isinstance(value, dict) and all(
            _valid_default(schema, f["type"], value[f["name"]]) if f["name"] in value
            else "default" in f for f in node.get("fields", [])),
    }
    return checks.get(kind, lambda: False)()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- the repository --------------------------------------------------------------------------

def canonical_hash(schema: Any) -> str:
    """sha256 of the schema's canonical JSON: key order and whitespace do not count."""
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def lock_key(topic: str, version: int) -> str:
    return f"{topic}/v{version}"


def read_lock(schema_dir: Path = SCHEMA_DIR) -> dict[str, str]:
    path = Path(schema_dir) / LOCK_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def write_lock(lock: dict[str, str], schema_dir: Path = SCHEMA_DIR) -> None:
    text = json.dumps(dict(sorted(lock.items())), indent=2) + "\n"
    (Path(schema_dir) / LOCK_NAME).write_text(text)


def released_versions(schema_dir: Path = SCHEMA_DIR) -> dict[str, list[int]]:
    """Topic -> the schema versions recorded in the release lock, ascending."""
    released: dict[str, list[int]] = {}
    for key in read_lock(schema_dir):
        topic, _, version = key.rpartition("/v")
        released.setdefault(topic, []).append(int(version))
    return {topic: sorted(versions) for topic, versions in sorted(released.items())}


def schema_files(schema_dir: Path = SCHEMA_DIR) -> dict[str, dict[int, Path]]:
    """Topic -> version -> file, for every `<topic>/v<N>.avsc` under `schema_dir`."""
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(Path(schema_dir).glob("*/v*.avsc")):
        if path.stem[1:].isdigit():
            found.setdefault(path.parent.name, {})[int(path.stem[1:])] = path
    return found


def check_repository(schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Every problem with the schemas under `schema_dir`: unparseable files, version gaps,
    versions that cannot read their predecessors, and released versions changed in place."""
    problems: list[str] = []
    loaded: dict[str, dict[int, Any]] = {}
    for topic, versions in schema_files(schema_dir).items():
        loaded[topic] = {}
        for version, path in sorted(versions.items()):
            schema, problem = _load(path)
            if problem:
                problems.append(f"{lock_key(topic, version)}: {problem}")
            else:
                loaded[topic][version] = schema
        problems += _version_gaps(topic, sorted(versions))
        problems += _topic_problems(topic, loaded[topic])
    problems += _lock_problems(schema_dir, loaded)
    return problems


def _load(path: Path) -> tuple[Any, str | None]:
    try:
        schema = json.loads(path.read_text())
        fastavro.parse_schema(schema)
    except Exception as exc:  # any reason the file is not a schema is reported, not raised
        return None, f"not a valid Avro schema: {exc}"
    return schema, None


def _version_gaps(topic: str, versions: list[int]) -> list[str]:
    expected = list(range(1, len(versions) + 1))
    if versions == expected:
        return []
    return [f"{topic}: versions {versions} should be v1..v{len(versions)} without gaps"]


def _topic_problems(topic: str, versions: dict[int, Any]) -> list[str]:
    """Each version against the one before it, and the newest against every older one: the
    codec resolves any historical writer straight into the newest reader, and two compatible
    steps need not make a compatible pair (a default added in v2 and dropped in v3)."""
    numbers = sorted(versions)
    steps = [(new, old) for old, new in zip(numbers, numbers[1:], strict=False)]
    newest_against_older = [(numbers[-1], old) for old in numbers[:-2]]  # [:-2]: not the step
    problems: list[str] = []
    for new, old in steps + newest_against_older:
        for problem in backward_problems(versions[new], versions[old]):
            problems.append(f"{topic}: v{new} cannot read v{old}: {problem}")
    return problems


def _lock_problems(schema_dir: Path, loaded: dict[str, dict[int, Any]]) -> list[str]:
    problems = []
    for key, expected in sorted(read_lock(schema_dir).items()):
        topic, _, version = key.rpartition("/v")
        schema = loaded.get(topic, {}).get(int(version))
        if schema is None:
            problems.append(f"{key}: released but its file is missing or unreadable")
        elif canonical_hash(schema) != expected:
            problems.append(f"{key}: released schema was changed in place; released versions are "
                            f"immutable, add v{int(version) + 1} instead")
    return problems


def release(schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Lock every version not yet released; returns the keys it added."""
    lock = read_lock(schema_dir)
    added = []
    for topic, versions in schema_files(schema_dir).items():
        for version, path in sorted(versions.items()):
            key = lock_key(topic, version)
            if key not in lock:
                lock[key] = canonical_hash(json.loads(path.read_text()))
                added.append(key)
    if added:
        write_lock(lock, schema_dir)
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calltime.schema_compat",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--release", action="store_true",
                        help="add the hashes of versions not yet released to the lock")
    parser.add_argument("--schema-dir", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    problems = check_repository(args.schema_dir)
    for problem in problems:
        print(problem)
    if problems:
        if args.release:
            print("nothing released: fix the problems first", file=sys.stderr)
        return 1
    if args.release:
        for key in release(args.schema_dir):
            print(f"released {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
