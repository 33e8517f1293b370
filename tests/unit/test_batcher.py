"""The adaptive batcher between Faust's consumer and the processor: an idle worker
goes at once, a busy one lets batches fill; acks follow the effects, in order; a
failing drain raises (the worker then crashes) and acks nothing it did not finish."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from streams.batcher import Backlog, Batcher, drain


async def test_an_idle_batcher_hands_over_the_first_item_at_once() -> None:
    batcher: Batcher[int] = Batcher(max_events=100)
    taker = asyncio.ensure_future(batcher.take(linger=10.0))
    await asyncio.sleep(0)
    await batcher.put(1)
    assert await asyncio.wait_for(taker, 1.0) == [1]  # no 10 s linger: nothing was queued


async def test_a_busy_batcher_fills_the_batch_up_to_max_or_linger() -> None:
    batcher: Batcher[int] = Batcher(max_events=5)
    await batcher.put(0)  # queued before the drain came back: busy
    taker = asyncio.ensure_future(batcher.take(linger=10.0))
    for i in range(1, 5):
        await asyncio.sleep(0)
        await batcher.put(i)
    assert await asyncio.wait_for(taker, 1.0) == [0, 1, 2, 3, 4]  # full: no need to wait 10 s
    await batcher.put(5)
    await batcher.put(6)
    started = asyncio.get_running_loop().time()
    assert await batcher.take(linger=0.05) == [5, 6]  # not full: waited for the linger
    assert asyncio.get_running_loop().time() - started >= 0.04


async def test_put_waits_for_room() -> None:
    batcher: Batcher[int] = Batcher(max_events=2)
    await batcher.put(1)
    await batcher.put(2)
    third = asyncio.ensure_future(batcher.put(3))
    await asyncio.sleep(0.01)
    assert not third.done() and len(batcher) == 2
    assert await batcher.take() == [1, 2]
    await asyncio.wait_for(third, 1.0)
    assert await batcher.take() == [3]


class Stream:
    """Records arriving while the drain runs, put into the batcher as Faust's conductor
    puts them (``put_nowait`` unless full, else ``put``)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def feed(self, batcher: Batcher[int]) -> None:
        while (item := await self.queue.get()) is not None:
            if batcher.full():
                await batcher.put(item)
            else:
                batcher.put_nowait(item)


async def as_is(batch: list[int]) -> list[int]:
    return batch


async def run_batched(
    stream: Stream,
    max_events: int,
    linger: float,
    handle: Callable[[list[int]], Awaitable[None]],
    ack: Callable[[list[int]], object],
    backlog: Backlog[int] | None = None,
    busy_linger: float = 0.0,
) -> None:
    """The drain beside a feeder; returns when the feed ends (after the last batch), or
    raises what the drain raised."""
    batcher: Batcher[int] = Batcher(max_events)
    drainer = asyncio.ensure_future(drain(batcher, as_is, handle, ack, linger, backlog, busy_linger))
    feeder = asyncio.ensure_future(stream.feed(batcher))
    try:
        await asyncio.wait([drainer, feeder], return_when=asyncio.FIRST_COMPLETED)
        if drainer.done():
            drainer.result()  # raises the drain's failure
        while len(batcher):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)  # the last batch's handle and ack
    finally:
        for task in (drainer, feeder):
            task.cancel()
        await asyncio.gather(drainer, feeder, return_exceptions=True)


async def test_items_are_acked_in_order_only_after_their_batch_is_handled() -> None:
    stream = Stream()
    handled: list[list[int]] = []
    acked: list[int] = []
    release = asyncio.Event()

    async def handle(batch: list[int]) -> None:
        handled.append(batch)
        await release.wait()

    def ack(batch: list[int]) -> None:
        assert batch in handled
        acked.extend(batch)

    runner = asyncio.ensure_future(run_batched(stream, 10, 0.001, handle, ack))
    for i in range(5):
        stream.queue.put_nowait(i)
    await asyncio.sleep(0.05)
    assert acked == []  # the first batch is still being handled
    release.set()
    for _ in range(100):
        if len(acked) == 5:
            break
        await asyncio.sleep(0.01)
    assert acked == [0, 1, 2, 3, 4]
    assert sorted(i for batch in handled for i in batch) == [0, 1, 2, 3, 4]
    stream.queue.put_nowait(None)
    await asyncio.wait_for(runner, 1.0)


async def test_a_failing_drain_raises_even_while_nothing_arrives() -> None:
    stream = Stream()
    acked: list[int] = []

    async def handle(batch: list[int]) -> None:
        if 2 in batch:
            raise RuntimeError("a bug in the processor")

    def ack(batch: list[int]) -> None:
        acked.extend(batch)

    runner = asyncio.ensure_future(run_batched(stream, 10, 0.0, handle, ack))
    stream.queue.put_nowait(1)
    await asyncio.sleep(0.02)
    stream.queue.put_nowait(2)  # then nothing more arrives
    with pytest.raises(RuntimeError, match="a bug in the processor"):
        await asyncio.wait_for(runner, 1.0)
    assert acked == [1]  # 2 was not processed, so it is not acked: Kafka redelivers it


async def test_a_batch_can_wait_for_a_given_number_of_items() -> None:
    batcher: Batcher[int] = Batcher(max_events=10)
    await batcher.put(0)
    taker = asyncio.ensure_future(batcher.take(linger=5.0, want=3))
    for i in (1, 2):
        await asyncio.sleep(0.01)
        assert not taker.done()
        await batcher.put(i)
    assert await asyncio.wait_for(taker, 1.0) == [0, 1, 2]  # three were wanted: no 5 s linger
    await batcher.put(3)
    assert await asyncio.wait_for(batcher.take(linger=5.0, want=1), 1.0) == [3]


async def test_a_worker_that_is_behind_takes_what_kafka_already_holds_in_one_batch() -> None:
    """Records already in Kafka are waited for (up to busy_linger) and go in one batch,
    instead of the few that arrived within the short linger."""
    in_kafka: list[int] = []

    def backlog(buffered: Sequence[int]) -> int:
        assert buffered  # asked only when something is buffered (an idle worker goes at once)
        return len(in_kafka)

    async def batches(with_backlog: bool) -> list[list[int]]:
        stream = Stream()
        handled: list[list[int]] = []
        first = asyncio.Event()

        async def handle(batch: list[int]) -> None:
            handled.append(batch)
            if len(handled) == 1:
                first.set()
                await asyncio.sleep(0.02)  # records queue up meanwhile: the worker is busy

        def ack(batch: list[int]) -> None:
            pass

        runner = asyncio.ensure_future(
            run_batched(stream, 50, 0.005, handle, ack, backlog if with_backlog else None, 2.0)
        )
        stream.queue.put_nowait(0)
        await first.wait()
        in_kafka[:] = list(range(1, 11))  # ten records are in Kafka; Faust delivers one per 15 ms
        while in_kafka:
            stream.queue.put_nowait(in_kafka.pop(0))
            await asyncio.sleep(0.015)
        stream.queue.put_nowait(None)
        await asyncio.wait_for(runner, 5.0)
        return handled

    assert (await batches(with_backlog=True))[:2] == [[0], list(range(1, 11))]
    short = await batches(with_backlog=False)  # only the 5 ms linger: small batches
    assert short[0] == [0] and len(short) >= 4


async def test_a_cleared_batcher_drops_what_it_buffered_and_has_room() -> None:
    """A rebalance: buffered records are dropped (never handled, never acked)."""
    batcher: Batcher[int] = Batcher(max_events=2)
    batcher.put_nowait(1)
    batcher.put_nowait(2)
    assert batcher.full()
    waiting = asyncio.ensure_future(batcher.put(3))
    await asyncio.sleep(0.01)
    batcher.clear()
    await asyncio.wait_for(waiting, 1.0)
    assert await batcher.take() == [3]


async def test_the_next_batch_is_prepared_while_one_completes_and_completes_only_after_its_ack() -> None:
    """The overlap: batch 2's prepare runs while batch 1's complete waits (on Redis, in the
    worker); batch 2's complete starts only once batch 1 is acked, so effects and acks
    stay one batch at a time, in order."""
    events: list[str] = []
    release = asyncio.Event()
    batcher: Batcher[int] = Batcher(max_events=10)

    async def prepare(batch: list[int]) -> list[int]:
        events.append(f"prepare {batch}")
        return batch

    async def complete(batch: list[int]) -> None:
        events.append(f"complete {batch}")
        if batch == [1]:
            await release.wait()
        events.append(f"completed {batch}")

    def ack(batch: list[int]) -> None:
        events.append(f"ack {batch}")

    drainer = asyncio.ensure_future(drain(batcher, prepare, complete, ack, 0.001))
    try:
        await batcher.put(1)
        await asyncio.sleep(0.01)
        await batcher.put(2)
        await asyncio.sleep(0.01)
        assert events == ["prepare [1]", "complete [1]", "prepare [2]"]  # 2 waits for 1
        release.set()
        await asyncio.sleep(0.01)
        assert events[3:] == ["completed [1]", "ack [1]", "complete [2]", "completed [2]", "ack [2]"]
    finally:
        drainer.cancel()
        await asyncio.gather(drainer, return_exceptions=True)
