"""The one settings object every service reads from its environment (prefix `CALLTIME_`)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_SIGNING_KEY = "development-only-approval-signing-key"
# 32 zero-ish bytes, base64: good enough to exercise encryption in development, refused elsewhere.
DEVELOPMENT_CREDENTIALS_KEY = "ZGV2ZWxvcG1lbnQtb25seS1jcmVkZW50aWFscy1rZXk="


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLTIME_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    kafka_bootstrap: str = "127.0.0.1:29092"
    database_url: str = "postgresql://calltime@127.0.0.1:25432/postgres"
    # Lets a test run or a demo own a private set of topics on a shared broker.
    topic_prefix: str = ""
    topic_partitions: int = 3
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    default_phone_region: str = "US"
    approval_signing_key: SecretStr = SecretStr(DEVELOPMENT_SIGNING_KEY)
    # Encrypts firms' credentials (OAuth tokens, webhook secrets) at rest: base64 of 32 bytes.
    credentials_key: SecretStr = SecretStr(DEVELOPMENT_CREDENTIALS_KEY)
    approval_link_ttl_seconds: int = 7 * 24 * 3600
    public_base_url: str = "http://127.0.0.1:8002"
    # Faust consumer-group timing; the defaults suit a small cluster, tests shorten them.
    kafka_session_timeout_seconds: float = 10.0
    kafka_heartbeat_seconds: float = 1.0
    outbox_poll_seconds: float = 0.2
    handler_max_attempts: int = 8
    directory_sync_seconds: float = 900.0
    # The matcher's public https address, where Clio delivers directory webhooks; empty: no
    # webhooks, and the periodic sync alone keeps the directory fresh.
    matcher_public_url: str = ""
    # Reconciliation: how often each firm's provider call log is swept, and how far back.
    reconcile_every_seconds: float = 600.0
    reconcile_window_seconds: float = 2 * 3600.0
    # Webhooks accepted per second from one (provider, firm, address), with this burst.
    webhook_rate_per_second: float = 2000.0
    webhook_burst: float = 4000.0

    @model_validator(mode="after")
    def refuse_unsafe_defaults(self) -> "Settings":
        if self.environment != "development" and (
            self.approval_signing_key.get_secret_value() == DEVELOPMENT_SIGNING_KEY
        ):
            raise ValueError("CALLTIME_APPROVAL_SIGNING_KEY must be set outside development")
        if self.environment != "development" and (
            self.credentials_key.get_secret_value() == DEVELOPMENT_CREDENTIALS_KEY
        ):
            raise ValueError("CALLTIME_CREDENTIALS_KEY must be set outside development")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
