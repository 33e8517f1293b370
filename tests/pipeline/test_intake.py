"""The worker's intake driven by Faust's own conductor (no broker), with a real Redis:
records in, state in Redis, bad input out to the dead-letter emitter, acks after."""

from __future__ import annotations

import asyncio
import gc
import json
from decimal import Decimal

from faust.types import TP
from faust.types.tuples import ConsumerMessage as Message  # what the consumer hands over

from streams.app import BatchReader, create_app, faust_app, parts_of, tune_gc
from streams.deadletter import RawRecord
from streams.rulestep import build_step
from streams.settings import Settings
from streams.storage.codec import decode_state
from streams.topics import DLQ, TRANSACTIONS
from tests.support.fakes import Sink

PRODUCED = 1_704_070_860.0  # the records' Kafka timestamp: a minute after the event time


async def test_records_through_faust_conductor_are_applied_dead_lettered_and_acked(redis_url: str) -> None:
    """Faust's own conductor callback (no broker) hands records to the worker's intake:
    state lands in Redis, bad input goes to the dead-letter emitter, and every record is
    acked to Faust's consumer only after its batch, so its offset can be committed."""
    settings = Settings(key_prefix="ffagent")
    sink = Sink()
    app = create_app(settings, "127.0.0.1:1", redis_url, build_step(settings), emitter=sink)
    reader, processor = parts_of(app).reader, parts_of(app).processor
    tp = TP(TRANSACTIONS, 0)
    conductor = app.topics
    await conductor._update_indices()
    await conductor.on_partitions_assigned({tp})
    on_message = conductor._compile_message_handler()  # what the consumer calls per fetched record
    app.flow_control.resume()  # as Faust does once partitions are assigned
    event = {
        "txn_id": "x1",
        "customer_id": "zz",
        "account_id": "a",
        "ts": "2024-01-01T09:00:00+08:00",
        "direction": "credit",
        "amount": "5.00",
    }
    values = [json.dumps(event).encode(), json.dumps(event).encode(), b"{broken"]  # a redelivery, then junk
    generation = app.consumer_generation_id
    messages = [
        Message(TRANSACTIONS, 0, i, PRODUCED, 0, [], b"zz", v, None, tp=tp, generation_id=generation)
        for i, v in enumerate(values)
    ]
    drain = asyncio.ensure_future(reader.run())
    try:
        for message in messages:
            await asyncio.wait_for(on_message(message), 5)
        for _ in range(200):
            if all(m.acked for m in messages):
                break
            await asyncio.sleep(0.02)
    finally:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    _, blob = await processor.store.stored("zz")
    await processor.store.redis.aclose()
    # never started, so the consumer thread's private loop is ours to close
    thread = getattr(app.consumer, "_thread", None)
    if thread is not None and not thread.thread_loop.is_closed():
        thread.thread_loop.close()
    state = decode_state(blob)
    assert state.balance == Decimal("5.00") and state.applied_total == 1
    assert [topic for topic, _, _ in sink.sent] == [DLQ]
    assert json.loads(sink.sent[0][2])["reason"] == "not_json"
    assert all(m.acked for m in messages)
    assert sorted(app.consumer._acked[tp]) == [0, 1, 2]  # Faust commits from these


async def test_a_rebalance_drops_buffered_records_unacked() -> None:
    """Faust's flow control clears the intake on a rebalance, as it clears a stream's
    buffer: records not yet in a batch are neither processed nor acked (redelivered)."""
    settings = Settings(key_prefix="ffagent", kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1")
    app = faust_app(settings, "127.0.0.1:1")
    handled: list[list[RawRecord]] = []

    async def handle(records: list[RawRecord]) -> None:
        handled.append(records)

    reader = BatchReader(app, settings, handle)
    tp = TP(TRANSACTIONS, 0)
    app.flow_control.resume()
    await reader.intake.put(Message(TRANSACTIONS, 0, 7, 1.7e9, 0, [], b"k", b"{}", None, tp=tp, generation_id=0))
    assert len(reader.batcher) == 1
    app.flow_control.clear()  # what App._on_partitions_revoked does
    assert len(reader.batcher) == 0 and not handled
    app.consumer._thread.thread_loop.close()  # never started: its private loop is ours to close


async def test_records_from_before_a_rebalance_are_dropped_and_admitted_ones_tracked() -> None:
    """As a Faust stream does: a record fetched in an older consumer generation, or handed
    over while flow control is suspended (a rebalance), is dropped unacked (Kafka redelivers
    it from the committed offset, in order); an admitted one is tracked as unacked, so a
    rebalance's wait_empty waits for its batch before handing the partition over."""
    settings = Settings(key_prefix="ffagent", kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1")
    app = faust_app(settings, "127.0.0.1:1")

    async def handle(records: list[RawRecord]) -> None:
        pass

    reader = BatchReader(app, settings, handle)
    tp = TP(TRANSACTIONS, 0)
    app.consumer_generation_id = 3

    def message(offset: int, generation: int) -> Message:
        return Message(TRANSACTIONS, 0, offset, 1.7e9, 0, [], b"k", b"{}", None, tp=tp, generation_id=generation)

    app.flow_control.suspend()  # a rebalance is under way
    await reader.intake.put(message(1, 3))
    reader.intake.queue.put_nowait_enhanced(message(2, 3), on_pressure_high=None, on_pressure_drop=None)
    app.flow_control.resume()
    stale = message(3, 2)  # fetched in the generation before the rebalance
    await reader.intake.put(stale)
    reader.intake.queue.put_nowait_enhanced(message(4, 2), on_pressure_high=None, on_pressure_drop=None)
    assert len(reader.batcher) == 0 and not stale.tracked
    current = message(5, 3)
    await reader.intake.put(current)
    assert reader.batcher.buffered() == [current]
    assert current.tracked and current in app.consumer._unacked_messages
    app.consumer._thread.thread_loop.close()


def test_the_worker_tunes_the_garbage_collector_from_its_settings() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(Settings(gc_threshold=(12_345, 7, 3)))
        assert gc.get_threshold() == (12_345, 7, 3)
        assert gc.get_freeze_count() > 0  # what start-up built is never scanned again
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_backlog_is_what_kafka_holds_beyond_the_buffered_records() -> None:
    from types import SimpleNamespace

    from streams.app import kafka_backlog

    high = {"t0": 1_000, "t1": 50, "t2": None}  # t2: no fetch answered yet

    def highwater(tp: str) -> int | None:
        if tp == "t3":
            raise AssertionError("Partition is not assigned")  # aiokafka, on a revoked partition
        return high[tp]

    app = SimpleNamespace(consumer=SimpleNamespace(highwater=highwater))

    def event(tp: str, offset: int) -> SimpleNamespace:
        return SimpleNamespace(tp=tp, offset=offset)  # a buffered faust Message

    backlog = kafka_backlog(app)  # type: ignore[arg-type]
    buffered = [event("t0", 10), event("t1", 40), event("t0", 11), event("t2", 5), event("t1", 49), event("t3", 7)]
    assert backlog(buffered) == (1_000 - 12) + 0  # t1 is drained to its end; t2 and t3 unknown
    assert backlog([]) == 0
