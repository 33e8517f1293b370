"""Shared fixtures: real servers, never mocks.

``stack`` starts the embedded Kafka-protocol broker and Redis once per test
session. To run the suite against other servers instead, set
``FUNDFLOW_TEST_KAFKA_BOOTSTRAP`` / ``FUNDFLOW_TEST_REDIS_URL`` (deliberately
not the ``FUNDFLOW_`` production variables: the tests flush the Redis
database they are given).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from streams.local.servers import Stack
from streams.settings import Settings

# Property tests check values, not speed: hypothesis' default 200 ms deadline per example
# fails them on a loaded CI machine (seen: 264 ms once), which says nothing about the code.
hypothesis_settings.register_profile("fundflow", deadline=None)
hypothesis_settings.load_profile("fundflow")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(
        kafka_bootstrap=os.environ.get("FUNDFLOW_TEST_KAFKA_BOOTSTRAP") or None,
        redis_url=os.environ.get("FUNDFLOW_TEST_REDIS_URL") or None,
        var_dir=Path(tmp_path_factory.mktemp("stack")),
    )
    with Stack(settings) as running:
        yield running


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Only a Redis (no broker): for tests that never touch Kafka."""
    configured = os.environ.get("FUNDFLOW_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    settings = Settings(kafka_bootstrap="unused:9092", redis_url=None, var_dir=Path(tmp_path_factory.mktemp("redis")))
    with Stack(settings) as running:
        yield running.redis_url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A Redis database emptied for this test."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server
