"""Validates docker-compose.yml without a Docker engine: YAML anchors and merge keys resolved,
`${VAR:?…}` interpolation exercised with placeholder values, then the Compose Specification JSON
schema (deploy/compose-spec/compose_spec.json) and a few cross-references checked.

    python deploy/check_compose.py docker-compose.yml     # exit 1 with reasons when invalid
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parent / "compose-spec" / "compose_spec.json"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def interpolate(text: str) -> str:
    """Give every variable a placeholder: the check is about shape, not about secrets."""
    return VARIABLE.sub(lambda m: f"placeholder-{m.group(1).lower()}", text)


def problems(path: Path) -> list[str]:
    document = yaml.safe_load(interpolate(path.read_text()))
    schema = json.loads(SCHEMA.read_text())
    found = [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}"
             for e in jsonschema.Draft201909Validator(schema).iter_errors(document)]
    services = document.get("services", {})
    for name, service in services.items():
        for dependency in service.get("depends_on", {}) or {}:
            if dependency not in services:
                found.append(f"services/{name}: depends_on unknown service {dependency!r}")
        if "image" not in service and "build" not in service:
            found.append(f"services/{name}: needs an image or a build")
    declared = set(document.get("volumes", {}) or {})
    for name, service in services.items():
        for volume in service.get("volumes", []) or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/")) and source not in declared:
                found.append(f"services/{name}: volume {source!r} is not declared")
    return found


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "docker-compose.yml")
    found = problems(path)
    for problem in found:
        print(f"{path}: {problem}", file=sys.stderr)
    print(f"{path}: {'INVALID' if found else 'valid'} ({len(found)} problems)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
