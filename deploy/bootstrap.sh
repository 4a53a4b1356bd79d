#!/usr/bin/env bash
# Installs what calltime needs on a fresh Debian machine of this kind, idempotently:
# PostgreSQL server binaries (Debian package), a Python 3.11 virtualenv with the pinned
# dependencies, and (on first `devstack up`) the Kafka jars through Maven.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "bootstrap: $*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    say "PostgreSQL server binaries are missing; install Debian's 'postgresql' package"; exit 1
  fi
  say "installing PostgreSQL from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null || { say "$tool is required (Java 17+ and Maven)"; exit 1; }
done

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.calltime-installed
if [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing pinned Python dependencies"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e . 2>/dev/null
  touch "$stamp"
fi
