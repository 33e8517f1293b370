"""Session-wide fixtures: real servers, never mocks.

The folder is the test layer: ``unit`` (pure code), ``pipeline`` (our code in this process on a
real Redis), ``connected`` (real ``fundflow`` processes, broker and Redis; marked ``connected``),
``browser`` (headless Chromium; marked ``browser``). Each layer's ``conftest.py`` holds its own
fixtures; shared helpers live in ``tests/support`` (no test module imports another).

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

# A worker a test kills -9 (or that dies in a crash test) holds its partitions until the
# broker gives up on its heartbeats; the next worker's join waits for that. 4 s instead of
# the product's 10 s (the embedded broker accepts it; Apache Kafka's default floor,
# group.min.session.timeout.ms, is 6 s, so configured servers keep the product's value).
# Workers heartbeat every second. Saves tens of seconds per kill -9 scenario.
TEST_SESSION_TIMEOUT_SECONDS = "4"


@pytest.fixture(scope="session", autouse=True)
def short_group_session() -> Iterator[None]:
    """Every worker the tests start (they inherit this environment) leaves its group faster."""
    if os.environ.get("FUNDFLOW_TEST_KAFKA_BOOTSTRAP"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FUNDFLOW_BROKER_SESSION_TIMEOUT", TEST_SESSION_TIMEOUT_SECONDS)
        yield


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


# The files that take longest start first: pytest-xdist hands out whole files in collection
# order, so a long file collected last runs alone at the end while the other process idles.
RUN_FIRST = (
    "test_bench_smoke.py",
    "test_soak_smoke.py",
    "test_demo.py",
    "test_prometheus_alerts.py",
    "test_bench_scale_smoke.py",
    "test_reliability.py",
    "test_signals.py",
    "test_shadow_history.py",
    "test_shadow_connected.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in RUN_FIRST:
            return 0, RUN_FIRST.index(name)
        return (1, 0) if item.get_closest_marker("slow") else (2, 0)

    items.sort(key=rank)  # (stable: each file's tests keep their order, and stay together)
