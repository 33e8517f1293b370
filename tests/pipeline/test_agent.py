"""The Faust agent through ``agent.test_context()`` (no broker), with a real Redis:
records in, state in Redis, bad input out to the dead-letter emitter."""

from __future__ import annotations

import asyncio
import gc
import json
from decimal import Decimal

from streams.app import create_app, tune_gc
from streams.codec import decode_state
from streams.rulestep import build_step
from streams.settings import Settings
from streams.topics import DLQ
from tests.fakes import Sink


async def test_agent_applies_events_and_dead_letters_bad_ones(redis_url: str) -> None:
    settings = Settings(key_prefix="ffagent")
    sink = Sink()
    app = create_app(settings, "127.0.0.1:1", redis_url, build_step(settings), emitter=sink)
    agent = app.agents["fundflow-process"]
    processor = app.fundflow_processor  # type: ignore[attr-defined]
    event = {
        "txn_id": "x1",
        "customer_id": "zz",
        "account_id": "a",
        "ts": "2024-01-01T09:00:00+08:00",
        "direction": "credit",
        "amount": "5.00",
    }
    async with agent.test_context() as wrapped:
        await wrapped.put(json.dumps(event).encode(), key=b"zz")
        await wrapped.put(json.dumps(event).encode(), key=b"zz")  # redelivery
        await wrapped.put(b"{broken", key=b"zz")
        for _ in range(100):
            if sink.sent:
                break
            await asyncio.sleep(0.02)
    blob = await processor.store.redis.hget("ffagent:{zz}:state", "s")
    await processor.store.redis.aclose()
    # test_context never starts the consumer thread, so its private loop is never closed
    thread = getattr(app.consumer, "_thread", None)
    if thread is not None and not thread.thread_loop.is_closed():
        thread.thread_loop.close()
    state = decode_state(blob)
    assert state.balance == Decimal("5.00") and state.applied_total == 1
    assert [topic for topic, _, _ in sink.sent] == [DLQ]
    assert json.loads(sink.sent[0][2])["reason"] == "not_json"


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
        return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))

    backlog = kafka_backlog(app)  # type: ignore[arg-type]
    buffered = [event("t0", 10), event("t1", 40), event("t0", 11), event("t2", 5), event("t1", 49), event("t3", 7)]
    assert backlog(buffered) == (1_000 - 12) + 0  # t1 is drained to its end; t2 and t3 unknown
    assert backlog([]) == 0
