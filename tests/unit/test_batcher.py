"""The adaptive batcher between the Faust stream and the processor: an idle worker
goes at once, a busy one lets batches fill; acks follow the effects, in order; a
failing drain stops the agent (also while the stream is idle) and acks nothing
it did not finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from streams.batcher import Batcher, run_batched


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
    """An async iterator of items that can be fed while it runs (a Faust stream stand-in)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[int]:
        while (item := await self.queue.get()) is not None:
            yield item


async def test_items_are_acked_in_order_only_after_their_batch_is_handled() -> None:
    stream = Stream()
    handled: list[list[int]] = []
    acked: list[int] = []
    release = asyncio.Event()

    async def handle(batch: list[int]) -> None:
        handled.append(batch)
        await release.wait()

    async def ack(item: int) -> None:
        assert any(item in batch for batch in handled)
        acked.append(item)

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


async def test_a_failing_drain_stops_the_agent_even_while_the_stream_is_idle() -> None:
    stream = Stream()
    acked: list[int] = []

    async def handle(batch: list[int]) -> None:
        if 2 in batch:
            raise RuntimeError("a bug in the processor")

    async def ack(item: int) -> None:
        acked.append(item)

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

        async def ack(item: int) -> None:
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
