"""Readiness checks shared by the workers and the API: is Redis answering, does
a Kafka bootstrap server accept connections. Each check returns ``"ok"`` or a
short reason, and sets ``fundflow_dependency_up{dependency}`` for Prometheus.

And a worker's pauses (``PauseMonitor``), measured and kept short. A pause is a
stretch in which the worker's event loop runs nothing else: a garbage collection, a
fold, a tier refresh slice, a batch's step. Two measures, both in
``fundflow_pause_seconds`` (``cause``: ``gc``, ``loop``, or ``rebalance`` for the
collection made on purpose when partitions are assigned) and the longest of each in
``fundflow_longest_pause_seconds``:

* ``gc``: every collection, timed from ``gc.callbacks``' start to its stop (one over
  ``NOTICED_SECONDS`` is also logged, with its generation);
* ``loop``: the loop's lag, a task that asks to wake every ``TICK_SECONDS`` and measures
  how late it woke (whatever held the loop, collections included).

Kept short: a full collection walks every tracked object the collector has not been told
to forget, and a worker's are mostly its cache of customer states, so its pause grew with
the cache (docs/performance.md, "Collections with a full state cache").
What survives a collection is long-lived by the collector's own measure, so after every
collection everything is frozen (``gc.freeze``: moved to the permanent generation, never
scanned again, still freed by reference counting when it is dropped). A collection then
walks only what came since, and no survivor is walked twice (the middle generation, which
walked those of several young collections, is never collected: a freeze zeroes its count).

Collections alone left the young generation unbounded. CPython counts a young generation
as the tracked objects allocated minus those freed, whatever their generation, and a worker
frees old objects all the time (the states it evicts from its cache, the records a commit
replaces in a frozen state): the count stays under the threshold while the objects in the
generation pile up, and the collection that finally comes walks them all. So what a batch
leaves alive is frozen too, once the batch is committed (``after_batch``): the young
generation then holds one batch's objects at most, and a collection within a batch walks
those only (docs/performance.md, "Young collections and the batch").

The price: a reference cycle frozen while alive and dead later, or dead but not yet
collected when frozen, is not collected. A batch's own objects make none (measured: the
same handful over tens of thousands of events whatever is frozen when; on a Redis Cluster
each commit's pipeline made one until ``patches.cluster_pipelines_free_by_refcount``, and
``tests/pipeline/test_redis_cluster.py`` holds a batch to none); an exception's
traceback does (its frames hold it), so a batch that retried or dead-lettered has its
young generation collected before it is frozen. And the collector is given its whole heap
back at a moment no batch waits, when partitions are assigned (the state cache was just
dropped: Redis is the truth); the worker's resident memory between rebalances is what
``make bench-scale`` watches for a leak (docs/scale.md).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from streams import telemetry

CHECK_TIMEOUT_SECONDS = 2.0


async def check_redis(redis: Any) -> str:
    try:
        await asyncio.wait_for(redis.ping(), timeout=CHECK_TIMEOUT_SECONDS)
    except (RedisError, OSError, TimeoutError) as exc:
        telemetry.DEPENDENCY_UP.labels("redis").set(0)
        return f"unreachable: {type(exc).__name__}"
    telemetry.DEPENDENCY_UP.labels("redis").set(1)
    return "ok"


async def check_kafka(bootstrap: str) -> str:
    """ok when any bootstrap server accepts a TCP connection in time."""
    if not bootstrap:
        return "not configured"
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            connecting = asyncio.open_connection(host or "localhost", int(port))
            _, writer = await asyncio.wait_for(connecting, timeout=CHECK_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, ValueError) as exc:
            errors.append(f"{server.strip()}: {type(exc).__name__}")
            continue
        writer.close()
        telemetry.DEPENDENCY_UP.labels("kafka").set(1)
        return "ok"
    telemetry.DEPENDENCY_UP.labels("kafka").set(0)
    return "unreachable: " + "; ".join(errors)


async def readiness(redis: Any, bootstrap: str) -> tuple[bool, dict[str, str]]:
    redis_check, kafka_check = await asyncio.gather(check_redis(redis), check_kafka(bootstrap))
    checks = {"redis": redis_check, "kafka": kafka_check}
    return all(v == "ok" for v in checks.values()), checks


# --- a worker's pauses -----------------------------------------------------------------

TICK_SECONDS = 0.01  # how often the loop-lag task asks to wake
NOTICED_SECONDS = 0.05  # a collection this long is logged with its generation (a customer notices it)

log = logging.getLogger(__name__)


class PauseMonitor:
    """Times every collection and the loop's lag; freezes survivors and what each committed
    batch left (``freeze``). A collection made on purpose where no batch waits
    (``collect_whole_heap``) is counted apart, as ``rebalance``."""

    def __init__(self, *, freeze: bool = True) -> None:
        self.freeze = freeze
        self.longest: dict[str, float] = {"gc": 0.0, "loop": 0.0, "rebalance": 0.0}
        self._gc_started = self._gc_cpu = 0.0
        self._on_purpose = False
        self._noticed: list[tuple[Any, float, float]] = []

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started, self._gc_cpu = time.perf_counter(), time.thread_time()
            return
        took = time.perf_counter() - self._gc_started
        self.note("rebalance" if self._on_purpose else "gc", took)
        if took > NOTICED_SECONDS and not self._on_purpose:  # (logged by watch_loop: not inside the collector)
            self._noticed.append((info.get("generation"), took, time.thread_time() - self._gc_cpu))
        if self.freeze:
            gc.freeze()  # (moves whole lists: constant time)

    def note(self, cause: str, seconds: float) -> None:
        telemetry.PAUSE_SECONDS.labels(cause).observe(seconds)
        if seconds > self.longest[cause]:
            self.longest[cause] = seconds
            telemetry.LONGEST_PAUSE.labels(cause).set(seconds)

    async def watch_loop(self) -> None:
        """For ever: how late the loop wakes a task that sleeps ``TICK_SECONDS``; collections
        are timed from here on (the worker's start-up collection is not a pause of its work)."""
        self.install()
        while True:
            started = time.perf_counter()
            await asyncio.sleep(TICK_SECONDS)
            self.note("loop", max(time.perf_counter() - started - TICK_SECONDS, 0.0))
            while self._noticed:
                generation, took, cpu = self._noticed.pop(0)
                log.warning(
                    "a garbage collection of generation %s held the worker %.0f ms (%.0f ms of CPU)",
                    generation,
                    took * 1e3,
                    cpu * 1e3,
                )

    def after_batch(self, clean: bool = True) -> None:
        """A batch is committed: what it left alive is frozen (the module's doc says why). Not
        ``clean`` (it retried, or dead-lettered a record: exceptions were raised and caught),
        its young generation is collected first, so that no dead cycle is frozen."""
        if not self.freeze or self._on_gc not in gc.callbacks:
            return  # (a process that only builds a worker, a test's, keeps its collector as it is)
        if clean:
            gc.freeze()  # (moves whole lists: constant time)
        else:
            gc.collect(1)  # (timed as any collection; ``_on_gc`` freezes what survives it)

    def collect_whole_heap(self) -> None:
        """Give the collector every frozen object back, collect, and freeze what is left: the
        cycles frozen while alive are freed here. Call it only where no batch waits."""
        self._on_purpose = True
        try:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        finally:
            self._on_purpose = False
