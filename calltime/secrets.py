"""The secrets store port. Firms' billing tokens are referred to by name in the database and
resolved here, so no secret sits in code, in a table or in a log line.

The adapter used today reads `CALLTIME_SECRET_<NAME>` from the environment (how Kubernetes and
docker-compose inject secrets); a vault adapter would implement the same `get`.
"""

from __future__ import annotations

import os
import re


class MissingSecret(LookupError):
    pass


class EnvironmentSecrets:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def get(self, name: str) -> str:
        variable = "CALLTIME_SECRET_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
        value = self.environ.get(variable)
        if not value:
            raise MissingSecret(f"secret {name!r} is not set (expected in ${variable})")
        return value
