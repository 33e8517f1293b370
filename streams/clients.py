"""The Kafka and Redis clients of every process: TLS/SASL from ``FUNDFLOW_KAFKA_*``,
topic creation, the producer the tools and the relay use, and the Redis client
(one server or a cluster) with commands packed by hiredis (``streams.patches``).

What goes wrong here: a broker that does not answer (``ConfigError`` naming it, never a
hang: every call has a timeout), or a topic another worker creates at the same moment
(ignored: creation is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from redis.asyncio.cluster import RedisCluster

from streams import patches
from streams.errors import ConfigError
from streams.settings import Settings

# Connections one process keeps to one Redis. Beyond them a command waits for a free one (up
# to the socket timeout) instead of failing: redis-py's default pool refuses the 101st
# concurrent command outright, which turned a burst of 200 comments into 503s.
REDIS_CONNECTIONS = 100


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """TLS/SASL keyword arguments for aiokafka clients, from ``FUNDFLOW_KAFKA_*``."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        kwargs["ssl_context"] = create_ssl_context(cafile=cafile)
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        kwargs.update(
            sasl_mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password,
        )
    return kwargs


async def ensure_topics(bootstrap: str, topics: Mapping[str, int], settings: Settings) -> None:
    """Create the topics that do not exist yet (name, partitions); existing ones are left alone."""
    wanted = dict(topics)  # name -> partitions
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **kafka_client_kwargs(settings))
    await asyncio.wait_for(admin.start(), timeout=15)
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=count, replication_factor=settings.replication_factor)
            for name, count in wanted.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker raced us
                await admin.create_topics(missing)
        deadline = time.monotonic() + 15
        while set(wanted) - set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise ConfigError(f"topics not visible on {bootstrap} after creation: {sorted(wanted)}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def producer_options(settings: Settings) -> dict[str, Any]:
    """How the replay and tool producers batch: ``producer_linger_ms`` (on the embedded
    broker every batch is a stored object that later fetches pay for: docs/demo.md)."""
    return {"linger_ms": settings.producer_linger_ms, "max_batch_size": 256 * 1024, "acks": "all"}


def kafka_producer(settings: Settings, bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **producer_options(settings), **kafka_client_kwargs(settings))


async def start_producer(settings: Settings, bootstrap: str) -> AIOKafkaProducer:
    """A started producer, or ConfigError naming the broker that does not answer."""
    producer = kafka_producer(settings, bootstrap)
    try:
        await producer.start()
    except Exception as exc:
        await producer.stop()
        raise ConfigError(f"Kafka at {bootstrap} does not answer: {exc}") from None
    return producer


def connect(url: str, cluster: bool = False) -> aioredis.Redis:
    """A client for ``url``: one Redis, or with ``cluster`` (``FUNDFLOW_REDIS_CLUSTER``) a
    Redis Cluster client that finds the other nodes from this one and routes every
    command, pipelined ones included, to the node of its keys' slot."""
    if cluster:
        patches.cluster_pipelines_free_by_refcount()
        # the cluster client speaks the same commands; callers use only single-slot ones
        return cast(
            aioredis.Redis,
            RedisCluster.from_url(url, decode_responses=False, socket_timeout=5, socket_connect_timeout=5),
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_CONNECTIONS,
        timeout=5,
        decode_responses=False,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=10,
    )
    client = aioredis.Redis.from_pool(pool)
    patches.pack_commands_in_c(client)
    return client
