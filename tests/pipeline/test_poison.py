"""Issue 20, the worker's side: a poison pill is a dead letter, never a stall.

On a real Redis: whatever one record does (too big, out of the calendar, makes the
step raise half-way, leaves a state that cannot be stored, carries the wrong key), it
becomes a bounded dead letter with a reason, every other record of its batch is
applied, and no half-applied state is ever committed or reused. Only Redis and
Kafka failures are retried, and a batch retried too long says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson
import pytest
from prometheus_client import REGISTRY

from rules.events import Event, TransactionEvent
from rules.state import CustomerState, Outcome, StateConfig, apply_loan, apply_transaction
from streams.clients import connect
from streams.deadletter import MAX_DEAD_LETTER_BYTES, RawRecord
from streams.decode import TimeBounds
from streams.errors import Abandoned
from streams.pipeline import BatchProcessor, Message, Step, outbox_entry, outbox_message
from streams.storage.codec import encode_state
from streams.storage.keys import Keys
from streams.storage.store import StateStore
from streams.topics import ALERTS, DLQ, TRANSACTIONS
from tests.support.fakes import Sink

CONFIG = StateConfig(ZoneInfo("Asia/Shanghai"))
PRODUCED_MS = 1_750_000_000_000  # 2025-06-15: after every event time below


def event(txn: str, customer: str, amount: str, ts: str = "2024-03-01T09:00:00+08:00", **extra: object) -> bytes:
    body = {
        "txn_id": txn,
        "customer_id": customer,
        "account_id": f"{customer}-acct",
        "ts": ts,
        "direction": "credit",
        "amount": amount,
        **extra,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def record(offset: int, value: bytes, key: bytes | None, partition: int = 0) -> RawRecord:
    return RawRecord(TRANSACTIONS, partition, offset, key, value, PRODUCED_MS)


def txn(offset: int, customer: str, amount: str, day: int = 1) -> RawRecord:
    ts = f"2024-03-{day:02d}T09:00:{offset % 60:02d}+08:00"
    return record(offset, event(f"t{offset}", customer, amount, ts), customer.encode())


def plain(state: CustomerState, ev: Event) -> tuple[Outcome, list[bytes]]:
    if isinstance(ev, TransactionEvent):
        return apply_transaction(state, ev, CONFIG), []
    return apply_loan(state, ev, CONFIG), []


def poisoned(txn_id: str, *, corrupt_rule_state: bool = False) -> Step:
    """The plain step, except that on ``txn_id`` it applies the event (changing the state
    half-way, as a rule that fails after the state step would) and then raises; or, with
    ``corrupt_rule_state``, leaves a value in the state that cannot be encoded."""

    def step(state: CustomerState, ev: Event) -> tuple[Outcome, list[bytes]]:
        outcome, found = plain(state, ev)
        if isinstance(ev, TransactionEvent) and ev.txn_id == txn_id:
            if corrupt_rule_state:
                state.rule_state["probe"] = object()
            else:
                raise OverflowError("date value out of range")
        return outcome, found

    return step


class NoBounds(TimeBounds):
    """Every event time passes (the edge's check off), so the state step meets it."""

    def check(self, event: Event, record_ms: int | None, now_ms: int) -> None:
        return None


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[StateStore]:
    client = connect(redis_url)
    keys = Keys(f"poison{hashlib.sha256(str(id(client)).encode()).hexdigest()[:8]}")
    yield StateStore(client, keys)
    await client.aclose()


def processor(store: StateStore, sink: Sink, step: Step = plain, **options: object) -> BatchProcessor:
    return BatchProcessor(store, step, sink, retry_initial=0.001, retry_max=0.01, **options)  # type: ignore[arg-type]


def letters(sink: Sink) -> list[dict[str, object]]:
    return [orjson.loads(value) for topic, _, value in sink.sent if topic == DLQ]


def reference(records: Sequence[RawRecord]) -> dict[str, CustomerState]:
    """The states the events of ``records`` make when applied alone, in order."""
    states: dict[str, CustomerState] = {}
    for r in records:
        ev = TransactionEvent.model_validate_json(r.value or b"")
        plain(states.setdefault(ev.customer_id, CustomerState(ev.customer_id)), ev)
    return states


def comparable(state: CustomerState) -> bytes:
    """The state's blob without the pipeline's partition positions (the reference has none)."""
    offsets, state.offsets = state.offsets, {}
    try:
        return encode_state(state)
    finally:
        state.offsets = offsets


async def stored(store: StateStore, customer: str) -> bytes:
    state = await store.read(customer)
    assert state is not None
    return comparable(state)


async def test_a_step_that_raises_half_way_dead_letters_its_record_and_commits_nothing_of_it(
    store: StateStore,
) -> None:
    worker = processor(store, Sink(), poisoned("t3"))
    await worker.process([txn(1, "ann", "10.00")])  # ann is cached by this worker now
    sink = Sink()
    worker.emitter = sink
    good = [txn(2, "ann", "20.00", day=2), txn(4, "ann", "40.00", day=4), txn(5, "ben", "5.00")]
    batch = [good[0], txn(3, "ann", "30.00", day=3), *good[1:]]
    report = await worker.process(batch)
    assert report.applied == 3 and report.dead_letters == {"step_failed": 1}
    (letter,) = letters(sink)
    assert (letter["reason"], letter["offset"], letter["partition"]) == ("step_failed", 3, 0)
    assert letter["error"] == "the rules step raised OverflowError"
    expected = reference([txn(1, "ann", "10.00"), *good])
    assert await stored(store, "ann") == comparable(expected["ann"])  # nothing of t3
    assert await stored(store, "ben") == comparable(expected["ben"])
    cached = worker.cached_state("ann")
    assert cached is not None and comparable(cached) == comparable(expected["ann"])
    # the next valid event of that customer commits a sound state
    worker.emitter = Sink()
    assert (await worker.process([txn(6, "ann", "1.00", day=5)])).applied == 1
    ann = await store.read("ann")
    assert ann is not None and ann.balance == Decimal("71.00") and "t3" not in ann.seen


async def test_the_year_one_event_is_a_dead_letter_even_with_the_time_bounds_off(store: StateStore) -> None:
    """The real state step raises OverflowError (astimezone) on 0001-01-01T00:00:00+08:00:
    with no time bounds at all it is still confined to its record."""
    sink = Sink()
    worker = processor(store, sink, bounds=NoBounds())
    year_one = record(2, event("y1", "cid", "1.00", "0001-01-01T00:00:00+08:00"), b"cid")
    year_9999 = record(3, event("y9", "cid", "1.00", "9999-12-31T16:00:00Z"), b"cid")
    report = await worker.process([year_one, txn(1, "cid", "10.00"), year_9999, txn(4, "cid", "2.00")])
    assert report.applied == 2 and report.dead_letters == {"step_failed": 2}
    state = await store.read("cid")
    assert state is not None and state.balance == Decimal("12.00") and set(state.seen) == {"t1", "t4"}


async def test_with_the_default_bounds_calendar_edges_are_implausible_and_the_clock_stays(store: StateStore) -> None:
    sink = Sink()
    worker = processor(store, sink)
    edges = [
        record(2, event("y1", "dora", "1.00", "0001-01-01T00:00:00+08:00"), b"dora"),
        record(3, event("y9", "dora", "1.00", "9999-12-31T16:00:00Z"), b"dora"),
        record(4, event("ahead", "dora", "1.00", "2025-06-17T00:00:00Z"), b"dora"),  # 2 days past its record
    ]
    report = await worker.process([txn(1, "dora", "10.00"), *edges, txn(5, "dora", "2.00", day=2)])
    assert report.applied == 2 and report.dead_letters == {"implausible_timestamp": 3}
    state = await store.read("dora")
    assert state is not None and state.last_us is not None
    assert dt.datetime(2024, 3, 3, tzinfo=dt.UTC) > dt.datetime.fromtimestamp(state.last_us / 1e6, dt.UTC)
    # a later real event is applied, not too late to deduplicate
    assert (await worker.process([txn(6, "dora", "3.00", day=20)])).applied == 1


async def test_a_record_that_makes_the_state_unencodable_in_a_logged_commit_is_dead_lettered(
    store: StateStore,
) -> None:
    """With the changelog (``streams.storage.changelog``) a commit that appends does not encode the
    state; the rules' free-form memory is serialised after each record instead, so the
    record that breaks it is still the one dead-lettered, as ``encode_failed``."""
    sink = Sink()
    worker = processor(store, sink, poisoned("t3", corrupt_rule_state=True), snapshot_every=8)
    first = [txn(1, "eve", "1.00"), txn(2, "fay", "2.00")]
    await worker.process(first)  # (a first commit writes the whole state: the next ones append)
    later = [txn(4, "eve", "4.00", day=4)]
    report = await worker.process([txn(3, "eve", "3.00", day=3), *later])
    assert await store.redis.llen(store.keys.log("eve")) == 1
    assert report.applied == 1 and report.dead_letters == {"encode_failed": 1}
    (letter,) = letters(sink)
    assert letter["offset"] == 3 and "TypeError" in str(letter["error"])
    expected = reference([*first, *later])
    assert await stored(store, "eve") == comparable(expected["eve"])


async def test_a_state_that_cannot_be_encoded_dead_letters_the_record_that_made_it(store: StateStore) -> None:
    sink = Sink()
    worker = processor(store, sink, poisoned("t3", corrupt_rule_state=True))
    good = [txn(1, "eve", "1.00"), txn(2, "fay", "2.00"), txn(4, "eve", "4.00", day=4)]
    report = await worker.process([*good[:2], txn(3, "eve", "3.00", day=3), good[2]])
    assert report.applied == 3 and report.dead_letters == {"encode_failed": 1}
    (letter,) = letters(sink)
    assert letter["offset"] == 3 and "TypeError" in str(letter["error"])
    expected = reference(good)
    assert await stored(store, "eve") == comparable(expected["eve"])
    assert await stored(store, "fay") == comparable(expected["fay"])


async def test_an_oversized_record_makes_a_bounded_dead_letter_and_the_batch_goes_on(store: StateStore) -> None:
    sink = Sink()
    pad = "x" * 1_000_000
    huge = record(2, event("big", "gus", "1.00", pad=pad), b"gus")
    assert len(huge.value or b"") > 1_000_000
    report = await processor(store, sink).process([txn(1, "gus", "10.00"), huge, txn(3, "gus", "1.00")])
    assert report.applied == 2 and report.dead_letters == {"too_large": 1}
    (message,) = [m for m in sink.sent if m[0] == DLQ]
    assert len(message[2]) <= MAX_DEAD_LETTER_BYTES < 1024 * 1024 // 4  # publishable on any topic
    letter = orjson.loads(message[2])
    assert letter["value_bytes"] == len(huge.value or b"") and letter["value_truncated"] is True
    assert letter["value_sha256"] == hashlib.sha256(huge.value or b"").hexdigest()
    # a record whose key is what is huge: its dead letter's Kafka key is bounded too
    sink = Sink()
    big_key = record(4, event("k", "gus", "1.00"), b"g" * 900_000)
    report = await processor(store, sink).process([big_key])
    assert report.dead_letters == {"key_mismatch": 1}
    ((_, key, value),) = sink.sent
    assert key is not None and len(key) + len(value) <= MAX_DEAD_LETTER_BYTES + 1024


async def test_a_mis_keyed_record_is_a_dead_letter_not_a_silent_apply(store: StateStore) -> None:
    sink = Sink()
    value = event("k1", "hal", "5.00")
    batch = [txn(1, "hal", "1.00"), record(2, value, None), record(3, value, b"someone"), txn(4, "hal", "2.00")]
    report = await processor(store, sink).process(batch)
    assert report.applied == 2 and report.dead_letters == {"key_mismatch": 2}
    hal = await store.read("hal")
    assert hal is not None and hal.balance == Decimal("3.00")


async def test_strict_amounts_and_repeated_keys_are_dead_letters(store: StateStore) -> None:
    sink = Sink()
    amounts = ["1_000", "１００", " 100 "]
    bad = [record(10 + i, event(f"a{i}", "ida", amount), b"ida") for i, amount in enumerate(amounts)]
    twice = event("dup", "ida", "1.00")[:-1] + b',"amount":"900.00"}'
    report = await processor(store, sink).process([*bad, record(20, twice, b"ida"), txn(1, "ida", "1.00")])
    assert report.applied == 1
    assert report.dead_letters == {"invalid_amount": 3, "duplicate_key": 1}
    ida = await store.read("ida")
    assert ida is not None and ida.balance == Decimal("1.00")


async def test_a_newline_in_a_key_cannot_split_an_outbox_entry(store: StateStore) -> None:
    key = "pro\nbe\n{}"
    value = orjson.dumps({"id": "F1", "rule": "probe", "note": "a\nb"})
    entry = outbox_entry(ALERTS, key, value)
    assert outbox_message(entry) == (ALERTS, key.encode(), value)
    assert outbox_message(b"%s\nlegacy-key\n%s" % (ALERTS.encode(), value)) == (ALERTS, b"legacy-key", value)

    def finding_step(state: CustomerState, ev: Event) -> tuple[Outcome, list[bytes]]:
        outcome, _ = plain(state, ev)
        return outcome, [outbox_entry(ALERTS, key, value)]

    sink = Sink()
    await processor(store, sink, finding_step).process([txn(1, "jon", "1.00")])
    assert sink.sent == [(ALERTS, key.encode(), value)]
    feed = await store.redis.xrange(store.keys.feed)
    assert [(f[b"t"], f[b"v"]) for _, f in feed] == [(ALERTS.encode(), value)]  # the API's feed reads it right
    assert await store.recent_findings("jon") == [entry]


class FlakyBroker(Sink):
    """Fails ``times`` publishes (a Kafka outage), noting what the worker says meanwhile."""

    def __init__(self, times: int) -> None:
        super().__init__(fail_times=times)
        self.worker: BatchProcessor | None = None
        self.seen: list[list[str]] = []

    async def send_all(self, messages: Sequence[Message]) -> None:
        assert self.worker is not None
        self.seen.append(self.worker.stalled_partitions())
        await super().send_all(messages)


def stalled_gauge(partition: int) -> float | None:
    return REGISTRY.get_sample_value("fundflow_partition_stalled", {"topic": TRANSACTIONS, "partition": str(partition)})


async def test_a_batch_retried_too_long_marks_its_partitions_stalled_until_it_succeeds(store: StateStore) -> None:
    broker = FlakyBroker(times=3)
    worker = processor(store, broker, stalled_after_seconds=0.0)
    broker.worker = worker
    batch = [txn(1, "kim", "1.00"), record(2, event("t2", "lee", "2.00"), b"lee", partition=3), record(3, b"?", None)]
    report = await worker.process(batch)  # (the dead letter of the last one is what meets the outage)
    assert report.retries == 3 and report.applied == 2
    stalled = [f"{TRANSACTIONS}:0", f"{TRANSACTIONS}:3"]
    assert broker.seen == [[], stalled, stalled, stalled]
    assert worker.stalled_partitions() == [] and stalled_gauge(0) == 0.0 and stalled_gauge(3) == 0.0
    patient = processor(store, FlakyBroker(times=0), stalled_after_seconds=3600)
    assert patient.stalled_partitions() == []


async def test_the_gauge_shows_a_stall_while_it_lasts(store: StateStore) -> None:
    gauge_values: list[float | None] = []

    class Watching(FlakyBroker):
        async def send_all(self, messages: Sequence[Message]) -> None:
            gauge_values.append(stalled_gauge(5))
            await super().send_all(messages)

    broker = Watching(times=2)
    worker = processor(store, broker, stalled_after_seconds=0.0)
    broker.worker = worker
    await worker.process([record(1, event("t1", "max", "1.00"), b"max", partition=5), record(2, b"?", None, 5)])
    assert gauge_values[1:] == [1.0, 1.0] and stalled_gauge(5) == 0.0


async def test_a_stopping_worker_gives_up_a_batch_it_cannot_finish(store: StateStore) -> None:
    """Kafka down and the worker asked to stop: the retries end (Abandoned) instead of
    holding the shutdown until Kafka is back; nothing was acked, so the batch comes back."""
    stopping = False
    broker = FlakyBroker(times=1_000_000)
    worker = processor(store, broker, should_stop=lambda: stopping)
    broker.worker = worker
    task = asyncio.create_task(worker.process([txn(1, "ned", "1.00"), record(2, b"?", None)]))
    await asyncio.sleep(0.2)
    assert not task.done()  # retrying
    stopping = True
    with pytest.raises(Abandoned):
        await asyncio.wait_for(task, timeout=2)
    assert worker.stalled_partitions() == []
    again = await processor(store, Sink()).process([txn(1, "ned", "1.00"), record(2, b"?", None)])
    assert again.applied + again.duplicates == 1 and again.dead_letters == {"not_json": 1}


async def test_an_unreadable_stored_state_is_a_visible_stall_not_a_crash(store: StateStore) -> None:
    """A state blob this version cannot read (newer format, damaged): the batch is retried
    and reported stalled (never a crash of the agent that would leave a silent stall)."""
    await store.redis.hset(store.keys.state("ola"), mapping={"v": 1, "s": b"\x00 not a state"})
    stopping = False
    worker = processor(store, Sink(), stalled_after_seconds=0.0, should_stop=lambda: stopping)
    task = asyncio.create_task(worker.process([txn(1, "ola", "1.00"), txn(2, "pia", "2.00")]))
    await asyncio.sleep(0.2)
    assert not task.done() and worker.stalled_partitions() == [f"{TRANSACTIONS}:0"]
    stopping = True
    with pytest.raises(Abandoned):
        await asyncio.wait_for(task, timeout=2)
    await store.redis.delete(store.keys.state("ola"))  # the operator repairs it
    assert (await processor(store, Sink()).process([txn(1, "ola", "1.00")])).applied == 1
