"""``streams.health``: the worker's pause monitor times collections and the loop's lag, and
freezes what survives a collection of the middle or oldest generation (so a full
collection does not walk the state cache)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from streams.health import TICK_SECONDS, PauseMonitor


@pytest.fixture
def monitor() -> Iterator[PauseMonitor]:
    """The monitor installed, and no automatic collection meanwhile: threads an earlier test
    of this process left (a client's, a server's) allocate and would trigger collections the
    counts below do not expect. A test's own ``gc.collect`` still runs the callbacks."""
    watching = PauseMonitor()
    enabled = gc.isenabled()
    gc.disable()
    watching.install()
    try:
        yield watching
    finally:
        watching.uninstall()
        gc.unfreeze()  # (give the test process its heap back)
        if enabled:
            gc.enable()


def sample(name: str, cause: str) -> float:
    return float(REGISTRY.get_sample_value(name, {"cause": cause}) or 0.0)


def test_a_middle_collection_is_timed_and_what_survived_it_is_frozen(monitor: PauseMonitor) -> None:
    kept = [[i] for i in range(10_000)]  # tracked, alive: survives the collection
    before = sample("fundflow_pause_seconds_count", "gc")
    gc.collect(1)
    assert sample("fundflow_pause_seconds_count", "gc") == before + 1
    assert monitor.longest["gc"] > 0
    scanned = {id(x) for x in gc.get_objects()}  # (every generation the collector scans)
    assert all(gc.is_tracked(x) and id(x) not in scanned for x in kept)  # frozen: never scanned again


def test_a_young_collection_freezes_nothing(monitor: PauseMonitor) -> None:
    gc.collect(1)
    frozen = gc.get_freeze_count()
    _young = [[i] for i in range(100)]
    gc.collect(0)
    assert gc.get_freeze_count() == frozen


def test_the_collection_made_on_purpose_counts_as_rebalance(monitor: PauseMonitor) -> None:
    gc_before = sample("fundflow_pause_seconds_count", "gc")
    before = sample("fundflow_pause_seconds_count", "rebalance")
    monitor.collect_whole_heap()
    assert sample("fundflow_pause_seconds_count", "rebalance") == before + 1
    assert sample("fundflow_pause_seconds_count", "gc") == gc_before
    assert gc.get_freeze_count() > 0  # what is left is frozen again


async def test_the_loop_lag_is_what_held_the_loop() -> None:
    watching = PauseMonitor(freeze=False)
    task = asyncio.create_task(watching.watch_loop())
    try:
        await asyncio.sleep(3 * TICK_SECONDS)
        time.sleep(0.08)  # the loop held, as a long collection or step would
        await asyncio.sleep(3 * TICK_SECONDS)
        assert watching.longest["loop"] >= 0.07
        assert sample("fundflow_longest_pause_seconds", "loop") >= 0.07
    finally:
        task.cancel()
        watching.uninstall()
