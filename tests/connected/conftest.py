"""The connected layer: real ``fundflow`` processes against the embedded broker and Redis.
Every test here is marked ``connected`` (``-m "not connected"`` leaves them out); the ones that
run for many seconds are also marked ``slow`` in their module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.local.servers import Stack
from streams.settings import Settings
from tests.support.processes import Process

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.connected)


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A broker and a Redis of this test alone: the test may kill them."""
    with Stack(Settings(kafka_bootstrap=None, redis_url=None, var_dir=tmp_path / "stack")) as stack:
        yield stack


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """``Process`` es the test starts (append them): killed, with their sessions, at its end."""
    started: list[Process] = []
    yield started
    for process in started:
        process.close()
