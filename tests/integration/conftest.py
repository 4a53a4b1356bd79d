"""A private, migrated database (and topic prefix) per integration test module."""

from __future__ import annotations

import pytest

from calltime.demo.stack import CREDENTIALS_KEY, LocalStack
from calltime.settings import Settings


@pytest.fixture(scope="module")
async def stack(infrastructure, tmp_path_factory):
    stack = LocalStack(infrastructure["database"], infrastructure["kafka"],
                       tmp_path_factory.mktemp("integration"))
    await stack.create_database()
    try:
        yield stack
    finally:
        await stack.drop_database()


@pytest.fixture(scope="module")
def settings(stack) -> Settings:
    return Settings(environment="test", kafka_bootstrap=stack.kafka_bootstrap,
                    database_url=stack.database_url, topic_prefix=stack.topic_prefix,
                    approval_signing_key="integration-signing-key", outbox_poll_seconds=0.05,
                    credentials_key=CREDENTIALS_KEY)
