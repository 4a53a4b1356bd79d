"""The one settings object: environment in, unsafe defaults refused outside development."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from calltime.secrets import EnvironmentSecrets, MissingSecret
from calltime.settings import Settings

REAL_CREDENTIALS_KEY = "cmVhbC1rZXktZnJvbS10aGUtc2VjcmV0cy1zdG9yZSE="


def test_settings_come_from_calltime_environment_variables(monkeypatch):
    monkeypatch.setenv("CALLTIME_KAFKA_BOOTSTRAP", "broker.internal:9092")
    monkeypatch.setenv("CALLTIME_TOPIC_PREFIX", "staging.")
    settings = Settings()
    assert settings.kafka_bootstrap == "broker.internal:9092"
    assert settings.topic_prefix == "staging."


@pytest.mark.parametrize("environment", ["test", "production"])
def test_outside_development_the_built_in_signing_key_is_refused(monkeypatch, environment):
    monkeypatch.setenv("CALLTIME_ENVIRONMENT", environment)
    monkeypatch.delenv("CALLTIME_APPROVAL_SIGNING_KEY", raising=False)
    monkeypatch.setenv("CALLTIME_CREDENTIALS_KEY", REAL_CREDENTIALS_KEY)
    with pytest.raises(ValidationError, match="CALLTIME_APPROVAL_SIGNING_KEY"):
        Settings()
    monkeypatch.setenv("CALLTIME_APPROVAL_SIGNING_KEY", "a-real-key-from-the-secrets-store")
    assert Settings().environment == environment


@pytest.mark.parametrize("environment", ["test", "production"])
def test_outside_development_the_built_in_credentials_key_is_refused(monkeypatch, environment):
    monkeypatch.setenv("CALLTIME_ENVIRONMENT", environment)
    monkeypatch.setenv("CALLTIME_APPROVAL_SIGNING_KEY", "a-real-key-from-the-secrets-store")
    monkeypatch.delenv("CALLTIME_CREDENTIALS_KEY", raising=False)
    with pytest.raises(ValidationError, match="CALLTIME_CREDENTIALS_KEY"):
        Settings()
    monkeypatch.setenv("CALLTIME_CREDENTIALS_KEY", REAL_CREDENTIALS_KEY)
    assert Settings().environment == environment


def test_secrets_resolve_by_name_and_a_missing_one_says_which_variable():
    secrets = EnvironmentSecrets({"CALLTIME_SECRET_CLIO_HARBOR_VALE": "tok"})
    assert secrets.get("clio-harbor-vale") == "tok"
    with pytest.raises(MissingSecret, match="CALLTIME_SECRET_CLIO_OTHER"):
        secrets.get("clio-other")
