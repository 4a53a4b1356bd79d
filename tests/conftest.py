"""Shared fixtures: the real broker and database (started by deploy/devstack.py unless the
environment names existing ones), and a private database and topic set per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def infrastructure() -> dict[str, str]:
    """Kafka bootstrap address and an admin database URL on real servers."""
    kafka = os.environ.get("CALLTIME_KAFKA_BOOTSTRAP")
    database = os.environ.get("CALLTIME_DATABASE_URL")
    if not (kafka and database):
        out = subprocess.run([sys.executable, str(ROOT / "deploy/devstack.py"), "up"],
                             check=True, capture_output=True, text=True).stdout
        found = dict(line.split("=", 1) for line in out.split() if "=" in line)
        kafka = kafka or found["CALLTIME_KAFKA_BOOTSTRAP"]
        database = database or found["CALLTIME_DATABASE_URL"]
    return {"kafka": kafka, "database": database}
