"""Adaptive batching between Faust's consumer and the batch processor.

Faust's ``take_events`` waits up to ``within`` for a batch to fill, whatever
the load: at light load every record pays that wait; and while its body runs,
its buffer takes nothing, so Faust's own per-record work (the larger part of a
worker's CPU) never overlaps the body's waits on Redis and Kafka.

Here Faust's conductor puts each fetched record straight into a bounded buffer
(``streams.patches.BatchIntake``: no stream, no event object per record); one drain
task takes the next batch the moment it is free. An
idle worker takes the first record that arrives at once: at light load a batch
is one record and waits for nothing. A busy one (records were already queued
when it came back) lets the batch fill for up to ``linger`` or ``max_events``
while Faust keeps delivering, so the per-batch cost is spread over many
records exactly when throughput matters. A worker that is behind (``backlog``:
the consumer's latest fetches say Kafka already holds more records of these
partitions) waits, up to ``busy_linger``, until those are in the batch too (at
most ``max_events``): Faust hands records over on this same thread, only a few
in a short linger, so a worker catching up with the short linger ran small
batches and paid the per-batch costs (round trips, the commit call, Faust's
bookkeeping) many times as often (docs/performance.md, "Batch size of a worker
catching up"). A batch of what is already there is
what group commit does: no record waits for one that has not arrived, and at
light load (nothing more in Kafka) nothing changes. Records are acked, in order, only
after their batch is processed (state committed, findings published), so
offsets are committed after the effects, exactly as before.

Two stages overlap (``drain``): while batch N completes (its commit waits on Redis, its
findings on Kafka's acks), batch N+1 is taken and prepared (decoded, and stepped for the
customers N does not hold: ``streams.pipeline.BatchProcessor.prepare``); N+1 completes
and is acked only after N is. A worker waited on each batch's round trips with nothing
else to do but take records in.

What can go wrong: the drain fails (a bug; transient Redis/Kafka errors are
retried inside the processor) -> ``drain`` raises and the worker crashes (an
orchestrator restarts it); nothing unprocessed was acked, so it is redelivered.
The buffer is full -> the conductor waits (backpressure; Kafka holds the rest).
A rebalance -> Faust's flow control clears the buffer (``clear``): those records
were neither processed nor acked, and Kafka redelivers them to the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
P = TypeVar("P")


class Batcher(Generic[T]):
    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._items: list[T] = []
        self._ready = asyncio.Event()  # something is buffered
        self._room = asyncio.Event()  # the buffer is below max_events
        self._room.set()
        self._full = asyncio.Event()  # the buffer holds what the waiting take() wants
        self._want = max_events
        self.failure: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    def buffered(self) -> Sequence[T]:
        """The items waiting for the next batch (a view: do not change it)."""
        return self._items

    def full(self) -> bool:
        return len(self._items) >= self.max_events

    def put_nowait(self, item: T) -> None:
        """Buffer ``item`` at once (the caller checked ``full()``: Faust's conductor does)."""
        self._raise_if_failed()
        self._items.append(item)
        self._ready.set()
        if len(self._items) >= self._want:
            self._full.set()

    def clear(self) -> None:
        """Drop what is buffered (a rebalance: Kafka redelivers it from the committed offsets
        to whoever owns the partition next; nothing of it was processed or acked)."""
        self._items.clear()
        self._ready.clear()
        self._full.clear()
        self._room.set()

    async def wait_for_room(self) -> None:
        while len(self._items) >= self.max_events:
            self._raise_if_failed()
            self._room.clear()
            await self._room.wait()

    async def wait_for_items(self) -> None:
        """Until something is buffered."""
        while not self._items:
            await self._ready.wait()

    async def put(self, item: T) -> None:
        await self.wait_for_room()
        self.put_nowait(item)

    async def take(self, linger: float = 0.0, want: int | None = None) -> list[T]:
        """The next batch (at most ``max_events``): at once when the buffer was empty
        (idle: the first record goes alone), else once it holds ``want`` items (default:
        ``max_events``) or ``linger`` passed."""
        want = self.max_events if want is None else max(1, min(want, self.max_events))
        if not self._items:
            await self._ready.wait()
        elif linger > 0 and len(self._items) < want:
            self._want = want
            self._full.clear()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), linger)
            finally:
                self._want = self.max_events
        batch = self._items[: self.max_events]
        del self._items[: self.max_events]
        if not self._items:
            self._ready.clear()
        if len(self._items) < self.max_events:
            self._full.clear()
        self._room.set()
        return batch

    def fail(self, exc: BaseException) -> None:
        self.failure = exc
        self._room.set()  # wake a put() waiting for room

    def _raise_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure


Backlog = Callable[[Sequence[T]], int]  # given the buffered items: records known to wait beyond them


async def _next_batch(
    batcher: Batcher[T],
    linger: float,
    backlog: Backlog[T] | None,
    busy_linger: float,
    behind: asyncio.Task[None] | None,
) -> list[T]:
    """The next batch: while ``backlog`` says more records are already in Kafka, it may
    fill with them (up to ``max_events``) for ``busy_linger``. While ``behind`` (the batch
    before) still completes, the first record to arrive does not go alone: the batch fills
    as a busy worker's does (as it would have, had the drain waited for that batch); and
    if ``behind`` fails meanwhile, its error is raised at once."""
    if behind is not None and not behind.done() and not len(batcher):
        arrived = asyncio.ensure_future(batcher.wait_for_items())
        try:
            await asyncio.wait((arrived, behind), return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()
        if behind.done():
            behind.result()  # (raises its error)
    buffered = len(batcher)
    waiting = backlog(batcher.buffered()) if backlog is not None and busy_linger > 0 and buffered else 0
    if waiting:
        return await batcher.take(max(busy_linger, linger), buffered + waiting)
    return await batcher.take(linger)


async def drain(
    batcher: Batcher[T],
    prepare: Callable[[list[T]], Awaitable[P]],
    complete: Callable[[P], Awaitable[None]],
    ack: Callable[[list[T]], Any],
    linger: float,
    backlog: Backlog[T] | None = None,
    busy_linger: float = 0.0,
) -> None:
    """Take batches for ever, in two stages that overlap: batch N+1 is taken and
    ``prepare``d while batch N's ``complete`` and then its ack (``ack(batch)``) run; N+1's
    ``complete`` starts only after N's ack, so batches complete and are acked one at a time,
    in order, each only after its effects. What ``prepare`` may do while
    the batch before completes is the caller's contract (``BatchProcessor.prepare``: only
    what no customer of that batch touches). A ``complete`` that fails ends the drain with
    its error, also while the drain waits for records."""
    behind: asyncio.Task[None] | None = None

    async def finish(prepared: P, batch: list[T]) -> None:
        await complete(prepared)
        acked = ack(batch)
        if asyncio.iscoroutine(acked):
            await acked

    try:
        while True:
            batch = await _next_batch(batcher, linger, backlog, busy_linger, behind)
            prepared = await prepare(batch)
            if behind is not None:
                await behind
            behind = asyncio.create_task(finish(prepared, batch))
    finally:
        if behind is not None and not behind.done():
            behind.cancel()  # (the worker stops or crashed: unacked, so redelivered)
            with contextlib.suppress(BaseException):
                await behind
