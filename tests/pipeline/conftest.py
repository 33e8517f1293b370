"""The pipeline layer: our code run in the test process against a real Redis (the session's, or
a one-node Redis Cluster) and real local HTTP servers. This layer's fixtures: the case desk's API
client and the cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.api.server import create_api
from streams.local.servers import EmbeddedRedis, free_port
from tests.support.desk import SETTINGS, Client


@pytest.fixture
async def desk(redis_url: str) -> AsyncIterator[Client]:
    """The case desk's API (``tests.support.desk.SETTINGS``: its people and tokens) on an emptied Redis."""
    app = create_api(SETTINGS, redis_url, f"127.0.0.1:{free_port()}")
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-node Redis Cluster (Valkey in cluster mode, all 16,384 slots) for the module."""
    server = EmbeddedRedis(free_port(), Path(tmp_path_factory.mktemp("cluster")), cluster=True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
