"""The one Kafka wiring: topic creation, the producer every service publishes with, the Faust app
factory for the streaming agents, and the acknowledgement policy shared by every consumer.

Acknowledgement policy (explicit, the same in every service): a message is acknowledged only
after its effect is durable. A handler that raises `PermanentFailure` (or a message that cannot be
decoded) goes to the topic's dead-letter topic with the reason in a header; any other exception
is retried with backoff and, after `handler_max_attempts` tries, dead-lettered too. Nothing is
dropped silently, and Faust's habit of acking a message whose agent raised never comes into play
because handlers never raise out of `handle_with_policy`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Awaitable, Callable, Iterable

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from calltime import codec, metrics, topics
from calltime.logs import bound
from calltime.settings import Settings

log = logging.getLogger(__name__)

REASON_HEADER = "calltime-dead-letter-reason"
SOURCE_HEADER = "calltime-dead-letter-source"


class PermanentFailure(Exception):
    """Retrying cannot help (bad data, a rule the input breaks): dead-letter it with this reason."""


async def ensure_topics(settings: Settings) -> None:
    """Create every pipeline and dead-letter topic explicitly, so consumer groups can scale."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [topics.qualified(settings.topic_prefix, t) for t in topics.all_topics()]
        missing = [NewTopic(name, settings.topic_partitions, 1) for name in wanted
                   if name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another service created them first
    finally:
        await admin.close()


class Publisher:
    """Publishes encoded events; `acks=all` with idempotence, and every send awaited."""

    def __init__(self, settings: Settings, service: str) -> None:
        self.settings = settings
        self.service = service
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                         enable_idempotence=True, linger_ms=2)

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    def topic(self, base: str) -> str:
        return topics.qualified(self.settings.topic_prefix, base)

    async def publish(self, event: Any) -> None:
        encoded = codec.encode(event)
        await self.send_raw(codec.EVENT_TOPICS[type(event)], encoded.key, encoded.value,
                            encoded.headers)

    async def send_raw(self, base_topic: str, key: bytes | None, value: bytes,
                       headers: Iterable[tuple[str, bytes]]) -> None:
        await self.producer.send_and_wait(self.topic(base_topic), value, key=key,
                                          headers=list(headers))
        metrics.EVENTS_PUBLISHED.labels(self.service, base_topic).inc()

    async def send_batch(self, messages: Iterable[tuple[str, bytes | None, bytes,
                                                         list[tuple[str, bytes]]]]) -> None:
        """Send many, then wait for all: one round trip instead of one per message."""
        pending = []
        for base_topic, key, value, headers in messages:
            pending.append(await self.producer.send(self.topic(base_topic), value, key=key,
                                                    headers=headers))
            metrics.EVENTS_PUBLISHED.labels(self.service, base_topic).inc()
        await asyncio.gather(*pending)

    async def dead_letter(self, base_topic: str, key: bytes | None, value: bytes,
                          headers: Iterable[tuple[str, bytes]], reason: str) -> None:
        """Park a message; keeps trying until the broker takes it, because the caller
        acknowledges the original as soon as this returns."""
        extra = [(REASON_HEADER, reason[:1000].encode()), (SOURCE_HEADER, self.service.encode())]
        delay = 0.5
        while True:
            try:
                await self.send_raw(topics.dead_letter(base_topic), key, value,
                                    [*headers, *extra])
                break
            except Exception as exc:  # noqa: BLE001 - the broker is away: wait for it
                log.warning("dead-letter topic unavailable, retrying",
                            extra={"topic": base_topic, "error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        metrics.DEAD_LETTERS.labels(self.service, base_topic, reason.split(":")[0][:60]).inc()
        log.error("message dead-lettered", extra={"topic": base_topic, "reason": reason})


async def handle_with_policy(
    publisher: Publisher,
    base_topic: str,
    key: bytes | None,
    value: bytes,
    headers: list[tuple[str, bytes]],
    handler: Callable[[Any], Awaitable[None]],
) -> None:
    """Decode one message and run its handler under the acknowledgement policy above."""
    metrics.EVENTS_CONSUMED.labels(publisher.service, base_topic).inc()
    headers = [(name, raw or b"") for name, raw in headers]
    call_id = dict(headers).get(codec.CALL_ID_HEADER, b"").decode(errors="replace") or None
    with bound(call_id=call_id):
        try:
            event = codec.decode(value, headers)
        except codec.UndecodableMessage as exc:
            await publisher.dead_letter(base_topic, key, value, headers, f"undecodable: {exc}")
            return
        with bound(firm_id=event.firm_id):
            await _run_with_retries(publisher, base_topic, key, value, headers, handler, event)


async def _run_with_retries(publisher, base_topic, key, value, headers, handler, event) -> None:
    attempts = publisher.settings.handler_max_attempts
    for attempt in range(1, attempts + 1):
        try:
            with metrics.STAGE_SECONDS.labels(publisher.service, base_topic).time():
                await handler(event)
            return
        except PermanentFailure as exc:
            await publisher.dead_letter(base_topic, key, value, headers, f"permanent: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - anything else is presumed transient
            if attempt == attempts:
                await publisher.dead_letter(base_topic, key, value, headers,
                                            f"gave up after {attempts} attempts: {exc!r}")
                return
            delay = min(30.0, 0.2 * 2 ** attempt) * random.uniform(0.5, 1.5)
            log.warning("handler failed, will retry",
                        extra={"attempt": attempt, "delay_s": round(delay, 2), "error": repr(exc)})
            await asyncio.sleep(delay)


def faust_app(settings: Settings, service: str) -> faust.App:
    """A Faust app tuned for prompt group joins; its id is the service's consumer group."""
    return faust.App(
        f"{settings.topic_prefix}calltime-{service}",
        broker=f"kafka://{settings.kafka_bootstrap}",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka_heartbeat_seconds,
        broker_rebalance_timeout=max(10.0, settings.kafka_session_timeout_seconds),
        broker_commit_interval=1.0,
        store="memory://",
        table_standby_replicas=0,
        producer_acks=-1,
    )


def faust_topic(app: faust.App, settings: Settings, base_topic: str) -> faust.TopicT:
    return app.topic(topics.qualified(settings.topic_prefix, base_topic), key_type=bytes,
                     value_type=bytes, key_serializer="raw", value_serializer="raw")


def policy_agent(stream_app: faust.App, settings: Settings, base_topic: str,
                 publisher: Callable[[], Publisher],
                 handler: Callable[[Any], Awaitable[None]]) -> None:
    """Declare the service's one Faust agent over `base_topic`: concurrency 1, every message
    run through `handle_with_policy` (the publisher exists only once the app has started)."""
    topic = faust_topic(stream_app, settings, base_topic)

    @stream_app.agent(topic, concurrency=1, name=f"{base_topic}-agent")
    async def agent(stream):
        async for message in stream.events():
            await handle_with_policy(publisher(), base_topic, message.key, message.value,
                                     faust_headers(message), handler)


def faust_headers(event: Any) -> list[tuple[str, bytes]]:
    """Faust hands headers over as a list of pairs or a mapping, depending on the driver path."""
    headers = event.headers or []
    items = headers.items() if hasattr(headers, "items") else headers
    return [(name, raw if isinstance(raw, bytes) else str(raw).encode()) for name, raw in items]


async def consume(settings: Settings, publisher: Publisher, base_topic: str, group: str,
                  handler: Callable[[Any], Awaitable[None]]) -> None:
    """A plain aiokafka consumer under the same policy: handle, then commit, one by one. If the
    consumer itself fails (a rebalance mid-commit, a lost broker) it is rebuilt; uncommitted
    messages are then delivered again, which every handler tolerates."""
    while True:
        try:
            await _consume_until_error(settings, publisher, base_topic, group, handler)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - log, rebuild, carry on
            log.error("consumer failed; rebuilding it", extra={"topic": base_topic,
                                                               "error": repr(exc)})
            await asyncio.sleep(1.0)


async def _consume_until_error(settings, publisher, base_topic, group, handler) -> None:
    consumer = AIOKafkaConsumer(
        topics.qualified(settings.topic_prefix, base_topic),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}calltime-{group}",
        enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=int(settings.kafka_session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(settings.kafka_heartbeat_seconds * 1000))
    await consumer.start()
    try:
        async for message in consumer:
            await handle_with_policy(publisher, base_topic, message.key, message.value,
                                     list(message.headers or []), handler)
            await consumer.commit()
    finally:
        await consumer.stop()
