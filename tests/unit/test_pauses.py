"""``streams.health``: the worker's pause monitor times collections and the loop's lag, and
freezes what survives a collection (so no collection walks the state cache) and what a
committed batch left (so a young collection walks one batch's objects at most). Counts of objects, never timings."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
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


def young() -> set[int]:
    """The ids of the objects in the youngest generation."""
    return {id(x) for x in gc.get_objects(0)}


def test_a_middle_collection_is_timed_and_what_survived_it_is_frozen(monitor: PauseMonitor) -> None:
    kept = [[i] for i in range(10_000)]  # tracked, alive: survives the collection
    before = sample("fundflow_pause_seconds_count", "gc")
    gc.collect(1)
    assert sample("fundflow_pause_seconds_count", "gc") == before + 1
    assert monitor.longest["gc"] > 0
    scanned = {id(x) for x in gc.get_objects()}  # (every generation the collector scans)
    assert all(gc.is_tracked(x) and id(x) not in scanned for x in kept)  # frozen: never scanned again


def test_a_young_collection_freezes_what_survived_it(monitor: PauseMonitor) -> None:
    gc.collect(1)
    frozen = gc.get_freeze_count()
    kept = [[i] for i in range(100)]
    gc.collect(0)
    assert gc.get_count()[1:] == (0, 0)  # (so the middle generation is never collected: nothing in it)
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert young().isdisjoint(id(x) for x in kept)


def test_freed_old_objects_hide_young_ones_from_the_collector_count(monitor: PauseMonitor) -> None:
    """Why a worker freezes after every batch: each old object freed (an evicted state, a
    record a commit replaced) takes one off the young generation's count, so the count stays
    low while the generation fills, and the collection that comes walks all of it."""
    old = [[i] for i in range(5_000)]
    gc.collect(1)  # (frozen by the monitor: the cache as it was)
    new = []
    for i in range(5_000):
        old.pop()  # an old object freed ...
        new.append([i])  # ... and a young one kept
    assert gc.get_count()[0] < 100  # what decides when the young generation is collected
    assert len(young() & {id(x) for x in new}) == 5_000  # what its collection walks
    monitor.after_batch()
    assert young().isdisjoint(id(x) for x in new)


def test_what_a_committed_batch_left_is_frozen(monitor: PauseMonitor) -> None:
    gc.collect(1)
    frozen = gc.get_freeze_count()
    left = [[i] for i in range(1_000)]  # a batch's survivors: records, states loaded
    monitor.after_batch()
    assert gc.get_freeze_count() >= frozen + len(left)
    scanned = {id(x) for x in gc.get_objects()}  # (every generation the collector scans)
    assert all(gc.is_tracked(x) and id(x) not in scanned for x in left)


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle, as an exception's traceback and its frames make


def dead_cycle() -> weakref.ref[Node]:
    return weakref.ref(Node())


def test_a_batch_that_raised_has_its_dead_cycles_collected_before_the_freeze(monitor: PauseMonitor) -> None:
    gc.collect(1)
    before = sample("fundflow_pause_seconds_count", "gc")
    gone, left = dead_cycle(), [[i] for i in range(100)]
    monitor.after_batch(clean=False)
    assert gone() is None  # collected, not frozen
    assert sample("fundflow_pause_seconds_count", "gc") == before + 1  # (timed as a collection)
    assert young().isdisjoint(id(x) for x in left)  # what survived it is frozen


def test_a_clean_batch_freezes_a_dead_cycle_until_the_whole_heap_is_collected(monitor: PauseMonitor) -> None:
    """The price of freezing without collecting (a clean batch's own objects make no cycle)."""
    gc.collect(1)
    kept = dead_cycle()
    monitor.after_batch()
    gc.collect()
    assert kept() is not None  # frozen: no collection walks it
    monitor.collect_whole_heap()  # (as when partitions are assigned)
    assert kept() is None


def test_nothing_is_frozen_after_a_batch_when_freezing_is_off() -> None:
    watching = PauseMonitor(freeze=False)
    frozen = gc.get_freeze_count()
    _left = [[i] for i in range(100)]
    watching.after_batch()
    watching.after_batch(clean=False)
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
