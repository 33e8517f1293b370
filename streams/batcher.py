"""Adaptive batching between the Faust stream and the batch processor.

Faust's ``take_events`` waits up to ``within`` for a batch to fill, whatever
the load: at light load every record pays that wait; and while its body runs,
its buffer takes nothing, so Faust's own per-record work (the larger part of a
worker's CPU) never overlaps the body's waits on Redis and Kafka.

Here the agent reads records one at a time with manual acks and puts them in a
bounded buffer; one drain task takes the next batch the moment it is free. An
idle worker takes the first record that arrives at once: at light load a batch
is one record and waits for nothing. A busy one (records were already queued
when it came back) lets the batch fill for up to ``linger`` or ``max_events``
while Faust keeps delivering, so the per-batch cost is spread over many
records exactly when throughput matters. Records are acked, in order, only
after their batch is processed (state committed, findings published), so
offsets are committed after the effects, exactly as before.

What can go wrong: the drain fails (a bug; transient Redis/Kafka errors are
retried inside the processor) -> the failure is raised in the agent, which
stops like any crashed agent; nothing unprocessed was acked, so it is
redelivered. The buffer is full -> the agent waits (backpressure; Kafka holds
the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._items: list[T] = []
        self._ready = asyncio.Event()  # something is buffered
        self._room = asyncio.Event()  # the buffer is below max_events
        self._room.set()
        self._full = asyncio.Event()  # the buffer holds max_events
        self.failure: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        while len(self._items) >= self.max_events:
            self._raise_if_failed()
            self._room.clear()
            await self._room.wait()
        self._raise_if_failed()
        self._items.append(item)
        self._ready.set()
        if len(self._items) >= self.max_events:
            self._full.set()

    async def take(self, linger: float = 0.0) -> list[T]:
        """The next batch (at most ``max_events``): at once when the buffer was empty
        (idle: the first record goes alone), else once it is full or ``linger`` passed."""
        if not self._items:
            await self._ready.wait()
        elif linger > 0 and len(self._items) < self.max_events:
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), linger)
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


async def drain(
    batcher: Batcher[T],
    handle: Callable[[list[T]], Awaitable[None]],
    ack: Callable[[T], Awaitable[Any]],
    linger: float,
) -> None:
    """Take batches for ever: handle each, then ack its items in order."""
    while True:
        batch = await batcher.take(linger)
        await handle(batch)
        for item in batch:
            await ack(item)


async def run_batched(
    items: Any,  # an async iterator of records (a Faust stream's events())
    max_events: int,
    linger: float,
    handle: Callable[[list[T]], Awaitable[None]],
    ack: Callable[[T], Awaitable[Any]],
) -> None:
    """Feed ``items`` through a Batcher to one drain task; a drain failure is raised here,
    also while the stream is idle (the drain cancels this task to deliver it)."""
    batcher: Batcher[T] = Batcher(max_events)
    me = asyncio.current_task()

    async def guarded() -> None:
        try:
            await drain(batcher, handle, ack, linger)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            batcher.fail(exc)
            if me is not None:
                me.cancel()
            raise

    task = asyncio.ensure_future(guarded())
    try:
        async for item in items:
            await batcher.put(item)
    except asyncio.CancelledError:
        if batcher.failure is not None:
            raise batcher.failure from None
        raise
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
