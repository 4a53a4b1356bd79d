"""docker-compose.yml stays a valid Compose file, checked without a Docker engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("check_compose", ROOT / "deploy/check_compose.py")
check_compose = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_compose)


def test_repository_compose_file_is_valid():
    assert check_compose.problems(ROOT / "docker-compose.yml") == []


def test_compose_file_runs_every_service_from_the_repo_image():
    import yaml

    document = yaml.safe_load(check_compose.interpolate((ROOT / "docker-compose.yml").read_text()))
    commands = {name: s.get("command") for name, s in document["services"].items()}
    for service, module in [("ingest", "calltime.ingest"), ("matcher", "calltime.matcher"),
                            ("drafts", "calltime.drafts"),
                            ("billing-writer", "calltime.billing_writer")]:
        assert commands[service] == ["python", "-m", module]
    assert document["services"]["kafka"]["image"].startswith("apache/kafka:4.")


def test_checker_rejects_a_misspelt_key_and_a_dangling_dependency(tmp_path):
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  app:\n    image: x\n    restrat: always\n"
                      "    depends_on: [db]\n")
    found = check_compose.problems(broken)
    assert any("restrat" in p for p in found)
    assert any("unknown service 'db'" in p for p in found)
