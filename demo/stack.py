"""The whole pipeline on one machine: the four services as their own processes, a private
database and topic set on the shared broker and PostgreSQL, and the fake Clio — used alike by the
demo, the end-to-end tests and the benchmarks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from calltime import db, onboarding
from calltime.credentials import CredentialStore, Sealer

SERVICES = {
    "ingest": "calltime.ingest",
    "matcher": "calltime.matcher",
    "drafts": "calltime.drafts",
    "billing-writer": "calltime.billing_writer",
}
SIGNING_KEY = "local-stack-signing-key-" + "x" * 16
# The stack's own key for sealing firms' credentials (base64 of 32 bytes; not the development key).
CREDENTIALS_KEY = base64.b64encode(b"local-stack-credentials-key-32by").decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass
class ServiceProcess:
    """One service, run exactly as production runs it: `python -m <module>`."""

    name: str
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", SERVICES[self.name]],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 90.0) -> float:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() - started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                                       f"see {self.log_path}")
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no clean-up, no leave-group, no last commit."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class LocalStack:
    admin_database_url: str
    kafka_bootstrap: str
    run_dir: Path
    name: str = field(default_factory=lambda: f"ct{int(time.time())}{secrets.token_hex(3)}")
    extra_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return with_database(self.admin_database_url, self.name)

    @property
    def topic_prefix(self) -> str:
        return f"{self.name}."

    async def create_database(self) -> None:
        conn = await asyncpg.connect(self.admin_database_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        await db.migrate_url(self.database_url)

    async def drop_database(self) -> None:
        conn = await asyncpg.connect(self.admin_database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()

    def service_env(self, name: str, port: int) -> dict[str, str]:
        drafts_port = self.services["drafts"].port if "drafts" in self.services else port
        return {
            **os.environ,
            "CALLTIME_ENVIRONMENT": "test",
            "CALLTIME_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CALLTIME_DATABASE_URL": self.database_url,
            "CALLTIME_TOPIC_PREFIX": self.topic_prefix,
            "CALLTIME_HTTP_PORT": str(port),
            "CALLTIME_APPROVAL_SIGNING_KEY": SIGNING_KEY,
            "CALLTIME_CREDENTIALS_KEY": CREDENTIALS_KEY,
            "CALLTIME_PUBLIC_BASE_URL": f"http://127.0.0.1:{drafts_port}",
            "CALLTIME_KAFKA_SESSION_TIMEOUT_SECONDS": "6",
            "CALLTIME_OUTBOX_POLL_SECONDS": "0.1",
            **self.extra_env,
        }

    def add_service(self, name: str) -> ServiceProcess:
        port = free_port()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        service = ServiceProcess(name, {}, port, self.run_dir / f"{name}.log")
        self.services[name] = service
        service.env = self.service_env(name, port)
        return service

    async def start_services(self, names: tuple[str, ...] = tuple(SERVICES)) -> dict[str, float]:
        """Start the services side by side; returns each one's seconds to ready."""
        started = [self.services.get(name) or self.add_service(name) for name in names]
        for service in started:
            service.start()
        times = await asyncio.gather(*(service.wait_ready() for service in started))
        return dict(zip(names, times, strict=False))

    async def restart(self, name: str) -> float:
        service = self.services[name]
        service.stop()
        service.start()
        return await service.wait_ready()

    def stop_services(self) -> None:
        for service in self.services.values():
            service.stop()

    def url(self, name: str) -> str:
        return self.services[name].url


@dataclass(frozen=True)
class FirmSetup:
    """What onboarding a firm records: its billing connection, its phone account, and who is who."""

    firm_id: str
    name: str
    clio_base_url: str
    clio_token: str
    ringcentral_account_id: str
    ringcentral_verification_token: str
    api_key: str
    extensions: dict[str, str]  # RingCentral extension id -> Clio user id
    rounding_rule: str = "nearest"
    default_time_zone: str = "America/New_York"

    @property
    def credential_ref(self) -> str:
        return f"clio-{self.firm_id}"

    @property
    def secret_variable(self) -> str:
        return "CALLTIME_SECRET_" + "".join(c if c.isalnum() else "_"
                                            for c in self.credential_ref.upper())


async def register_firm(stack: LocalStack, firm: FirmSetup) -> None:
    """Onboard a firm; its billing token goes to the services' environment, not to a table."""
    stack.extra_env[firm.secret_variable] = firm.clio_token
    conn = await asyncpg.connect(stack.database_url)
    try:
        async with conn.transaction():
            await onboarding.create_firm(
                conn, firm_id=firm.firm_id, name=firm.name, billing_system="clio",
                billing_base_url=firm.clio_base_url, billing_credential_ref=firm.credential_ref,
                api_key_sha256=digest(firm.api_key), rounding_rule=firm.rounding_rule,
                default_time_zone=firm.default_time_zone)
            await onboarding.connect_phone_provider(
                stack_credentials(conn), conn, firm_id=firm.firm_id, provider="ringcentral",
                account_id=firm.ringcentral_account_id,
                webhook_secret=firm.ringcentral_verification_token, users=firm.extensions)
    finally:
        await conn.close()


def stack_credentials(pool_or_conn) -> CredentialStore:
    """The credential store as the stack's services see it (same key)."""
    return CredentialStore(pool_or_conn, Sealer(CREDENTIALS_KEY))
