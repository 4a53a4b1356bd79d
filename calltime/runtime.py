"""A service process's shared start-up: logs, the database pool and migrations, the topics, and
the Kafka publisher — built once, in this order, by every service's lifespan."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import AsyncIterator

import asyncpg

from calltime import db, logs
from calltime.credentials import CredentialStore, Sealer
from calltime.kafka import Publisher, ensure_topics
from calltime.settings import Settings
from calltime.web import ReadinessCheck


@dataclass
class Runtime:
    settings: Settings
    service: str
    pool: asyncpg.Pool
    publisher: Publisher
    credentials: CredentialStore

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        async def database() -> bool:
            return await self.pool.fetchval("SELECT 1") == 1

        async def kafka() -> bool:
            # the producer has fetched cluster metadata, so it can reach a broker
            return bool(self.publisher.producer.client.cluster.brokers())

        return {"database": database, "kafka": kafka}


@contextlib.asynccontextmanager
async def service_runtime(settings: Settings, service: str) -> AsyncIterator[Runtime]:
    logs.configure(service, settings.log_level)
    pool = await db.create_pool(settings.database_url)
    # Credentials get their own small pool: a billing write holds a connection from the main
    # pool while its token may need refreshing, which must never wait on that same pool.
    credentials_pool = await db.create_pool(settings.database_url, min_size=1, max_size=3)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
        await ensure_topics(settings)
        publisher = Publisher(settings, service)
        await publisher.start()
        try:
            yield Runtime(settings, service, pool, publisher, credential_store(settings, credentials_pool))
        finally:
            await publisher.stop()
    finally:
        await credentials_pool.close()
        await pool.close()


def credential_store(settings: Settings, pool: asyncpg.Pool) -> CredentialStore:
    return CredentialStore(pool, Sealer(settings.credentials_key.get_secret_value()))
