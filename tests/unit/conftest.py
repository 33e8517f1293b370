"""The unit layer: pure code, no servers. A test here that asks for a server fixture
(Redis, the broker) belongs to ``tests/pipeline`` or ``tests/connected``; collection says so."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
SERVERS = {"stack", "redis_server", "redis_url", "cluster_url"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE) and (used := SERVERS.intersection(getattr(item, "fixturenames", ()))):
            raise pytest.UsageError(f"{item.nodeid} uses {sorted(used)}: a unit test starts no server (move it)")
