"""``fundflow adapt debezium|canal``: a core table's change topic -> ``fundflow.transactions.v1``.

A Kafka consumer group reads the change topic in batches; each record is read
(``feeds.cdc``), checked against what this feed already processed, and turned into
TransactionEvents (key = customer_id) and dead letters (``fundflow.dlq.v1``, the
format of ``streams.deadletter``). Only once the broker acknowledged every one of them
are the rows' records and the partition's position stored in Redis and the offsets
committed: a crash anywhere re-reads the batch, and re-reading produces the same txn_ids
(deterministic), which the worker drops.

Duplicates: CDC is at-least-once (a connector that recovers re-sends changes it already
sent, as new Kafka records). Redis keeps, per feed and topic partition
(``streams.storage.keys.Keys.cdc``):

* ``pos:{topic}:{partition}``: the highest source position processed, where the source
  has a total order (Debezium MySQL binlog file/pos/row, Postgres ``sequence``): a record
  below it is a duplicate;
* ``seen:{topic}:{partition}``: the digests of the last ``SEEN_WINDOW`` records, for
  records at the same position and for sources without a total order (Canal: ``id`` is a
  batch number shared by the batch's messages and restarting from 1 with Canal, ``es`` is
  statement time, which goes back when a transaction commits after a later one began;
  Debezium Postgres without ``sequence``: the LSNs of concurrent transactions interleave).
  A digest leaves out what a redelivery changes (Debezium's top-level ts_ms, Canal's id
  and ts).

A snapshot row is never ordered by position (every row of a MySQL snapshot carries the
same binlog position): it is checked against the row's record instead, so a snapshot
read twice publishes nothing the second time.

What goes wrong: a bad record -> a dead letter with a reason, counted
(``fundflow_adapter_records_total{format,outcome}``, ``fundflow_dead_letters_total``);
the stream moves on. Redis or Kafka down -> the batch waits and retries with FundFlow's
outage policy (``streams.retry``); asked to stop meanwhile (SIGINT / SIGTERM, ``stop``),
the adapter leaves the batch uncommitted and stops within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError
from redis.exceptions import RedisError

from feeds.cdc import (
    Change,
    Context,
    Format,
    Refusal,
    RowChange,
    RowRecord,
    Skip,
    parse_canal,
    parse_debezium,
    translate,
)
from feeds.mapping import Mapping
from streams import telemetry
from streams.clients import connect, ensure_topics, kafka_client_kwargs, start_producer
from streams.deadletter import RawRecord, dead_letter, dead_letter_key, raw_records
from streams.errors import Abandoned
from streams.retry import Stop, outage_policy, retry, stop_requested
from streams.settings import Settings
from streams.storage.keys import Keys
from streams.topics import DLQ, TRANSACTIONS

log = logging.getLogger(__name__)

T = TypeVar("T")

# Records remembered per partition for duplicate detection: Canal re-sends at most its unacked
# batches, Debezium what followed its last flushed offset: thousands, not hundreds of thousands.
SEEN_WINDOW = 100_000
# A row's record outlives the worker's memory of its txn_ids: a reversal the adapter makes from
# it names a txn_id the worker can still recognise, and a version number is never given twice
# while the worker remembers the first.
ROW_TTL_EXTRA_DAYS = 30
PARSERS: dict[str, Callable[[bytes | None, Mapping], Change | Skip | Refusal]] = {
    "debezium": parse_debezium,
    "canal": parse_canal,
}


@dataclass(slots=True)
class BatchResult:
    """What one batch produces and what Redis keeps of it once the broker has acked."""

    messages: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)  # (topic, key, value)
    rows: dict[str, RowRecord] = field(default_factory=dict)  # row id -> its new record
    positions: dict[tuple[str, int], tuple[int, ...]] = field(default_factory=dict)
    seen: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)  # (topic, partition) -> digest -> offset
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


@dataclass(frozen=True, slots=True)
class _Known:
    """What Redis says about the batch: positions, which digests were seen, the rows' records."""

    positions: dict[tuple[str, int], tuple[int, ...]]
    seen: set[tuple[str, int, str]]
    rows: dict[str, RowRecord]


class Adapter:
    """Turns batches of change records into events; Kafka plumbing is ``run_adapter``'s."""

    def __init__(
        self, fmt: Format, mapping: Mapping, settings: Settings, redis: aioredis.Redis, *, stop: Stop = None
    ) -> None:
        self.format = fmt
        self.parse = PARSERS[fmt]
        self.mapping = mapping
        self.context = Context(mapping, mapping.tz(settings.bank_tz), str(getattr(settings, "currency", "CNY")))
        self.redis = redis
        self.keys = Keys(settings.key_prefix)
        self.row_ttl = (settings.dedup_horizon_days + ROW_TTL_EXTRA_DAYS) * 86_400
        self.policy = outage_policy(settings)
        self.stop = stop

    # --- keys ---
    def _row_key(self, row_id: str) -> str:
        return self.keys.cdc(self.mapping.name, f"row:{row_id}")

    def _pos_key(self, topic: str, partition: int) -> str:
        return self.keys.cdc(self.mapping.name, f"pos:{topic}:{partition}")

    def _seen_key(self, topic: str, partition: int) -> str:
        return self.keys.cdc(self.mapping.name, f"seen:{topic}:{partition}")

    async def handle(self, records: Sequence[RawRecord]) -> BatchResult:
        """The batch's events and dead letters, and the state to store once they are acked."""
        result = BatchResult()
        parsed = [(record, self.parse(record.value, self.mapping)) for record in records]
        known = await self._retrying("cdc_read", lambda: self._read(parsed))
        positions = dict(known.positions)
        rows: dict[str, RowRecord | None] = dict(known.rows)
        for record, item in parsed:
            if isinstance(item, Skip):
                result.count(item.outcome)
            elif isinstance(item, Refusal):
                self._dead(result, record, item)
                result.count("dead_letter")
            else:
                place = (record.topic, record.partition)
                seen = result.seen.setdefault(place, {})
                high = positions.get(place)
                at = item.position
                if (at is not None and high is not None and at < high) or (
                    (at is None or at == high) and ((*place, item.digest) in known.seen or item.digest in seen)
                ):
                    result.count("duplicate")
                    continue
                seen[item.digest] = record.offset
                if at is not None and (high is None or at > high):
                    positions[place] = result.positions[place] = at
                result.count(self._rows(result, record, item, rows))
        for outcome, n in result.outcomes.items():
            telemetry.ADAPTER_RECORDS.labels(self.format, outcome).inc(n)
        return result

    def _rows(self, result: BatchResult, record: RawRecord, change: Change, rows: dict[str, RowRecord | None]) -> str:
        """Translate a record's rows in order; the record's outcome for the counter."""
        outcomes = []
        for row in change.rows:
            if isinstance(row, Refusal):
                self._dead(result, record, row)
                outcomes.append("dead_letter")
                continue
            done = translate(row, rows.get(row.row_id), change, self.context)
            if isinstance(done, Refusal):
                self._dead(result, record, done if len(change.rows) == 1 else _in_row(done, change, row))
                outcomes.append("dead_letter")
                continue
            rows[row.row_id] = result.rows[row.row_id] = done.record
            for event in done.events:
                result.messages.append((TRANSACTIONS, event["customer_id"].encode(), orjson.dumps(event)))
            outcomes.append(done.outcome)
        for outcome in ("published", "dead_letter", "not_posted", "unchanged"):
            if outcome in outcomes:
                return outcome
        return "nothing"

    def _dead(self, result: BatchResult, record: RawRecord, refusal: Refusal) -> None:
        letter = dead_letter(record, refusal.reason, refusal.error, int(time.time() * 1000))
        result.messages.append((DLQ, dead_letter_key(record), letter))
        telemetry.DEAD_LETTERS.labels(refusal.reason).inc()

    async def _read(self, parsed: list[tuple[RawRecord, Change | Skip | Refusal]]) -> _Known:
        changes = [(r, c) for r, c in parsed if isinstance(c, Change)]
        places = sorted({(r.topic, r.partition) for r, _ in changes})
        row_ids = sorted({row.row_id for _, c in changes for row in c.rows if isinstance(row, RowChange)})
        if not changes:
            return _Known({}, set(), {})
        digests = {place: sorted({c.digest for r, c in changes if (r.topic, r.partition) == place}) for place in places}
        async with self.redis.pipeline(transaction=False) as pipe:
            for topic, partition in places:
                pipe.get(self._pos_key(topic, partition))
                pipe.zmscore(self._seen_key(topic, partition), digests[(topic, partition)])
            if row_ids:
                pipe.mget([self._row_key(r) for r in row_ids])
            replies = await pipe.execute()
        positions: dict[tuple[str, int], tuple[int, ...]] = {}
        seen: set[tuple[str, int, str]] = set()
        for i, place in enumerate(places):
            raw, scores = replies[2 * i], replies[2 * i + 1]
            if raw is not None:
                positions[place] = tuple(orjson.loads(raw))
            seen.update((*place, d) for d, score in zip(digests[place], scores, strict=True) if score is not None)
        rows = {}
        if row_ids:
            for row_id, raw in zip(row_ids, replies[-1], strict=True):
                if raw is not None:
                    rows[row_id] = RowRecord.from_json(raw)
        return _Known(positions, seen, rows)

    async def store(self, result: BatchResult) -> None:
        """Remember what the acked batch did: rows, positions, digests (one MULTI: one hash tag)."""
        if not (result.rows or result.positions or any(result.seen.values())):
            return

        async def write() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                for row_id, row in result.rows.items():
                    pipe.set(self._row_key(row_id), row.to_json(), ex=self.row_ttl)
                for (topic, partition), position in result.positions.items():
                    pipe.set(self._pos_key(topic, partition), orjson.dumps(position))
                for (topic, partition), digests in result.seen.items():
                    if digests:
                        key = self._seen_key(topic, partition)
                        pipe.zadd(key, {d: float(offset) for d, offset in digests.items()})
                        pipe.zremrangebyrank(key, 0, -SEEN_WINDOW - 1)
                await pipe.execute()

        await self._retrying("cdc_store", write)

    async def _retrying(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        def failed(attempt: int, delay: float, exc: Exception) -> None:
            telemetry.REDIS_ERRORS.labels(operation).inc()
            log.warning("Redis failed (%s); retrying in %.2fs", exc, delay)

        return await retry(call, self.policy, transient=(RedisError, OSError), stop=self.stop, on_failure=failed)


def _in_row(refusal: Refusal, change: Change, row: RowChange) -> Refusal:
    index = next(i for i, r in enumerate(change.rows) if r is row)
    return Refusal(refusal.reason, f"row {index}: {refusal.error}")


async def produce_all(
    producer: AIOKafkaProducer, messages: Sequence[tuple[str, bytes | None, bytes]], settings: Settings, stop: Stop
) -> None:
    """Send every message and wait for every ack; a Kafka failure resends the lot (the same
    txn_ids: a resent event is a duplicate the worker drops)."""

    async def send() -> None:
        futures = [await producer.send(topic, value, key=key) for topic, key, value in messages]
        await asyncio.gather(*futures)

    def failed(attempt: int, delay: float, exc: Exception) -> None:
        log.warning("Kafka produce failed (%s); retrying in %.2fs", exc, delay)

    if messages:
        await retry(send, outage_policy(settings), transient=(KafkaError, OSError), stop=stop, on_failure=failed)


def default_group(settings: Settings, mapping: Mapping) -> str:
    return f"{settings.app_id}-adapt-{mapping.name}"


async def run_adapter(
    fmt: Format,
    settings: Settings,
    bootstrap: str,
    redis_url: str,
    mapping: Mapping,
    source_topic: str,
    *,
    group: str | None = None,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[BatchResult], Any] | None = None,
) -> None:
    """Adapt until ``stop`` is set or a stop signal arrives (``streams.retry.stop_requested``)."""
    stop = stop or asyncio.Event()
    # The output topics with the deployment's partition count (the worker's co-partitioning),
    # not whatever a broker's auto-creation would give them.
    await ensure_topics(bootstrap, {TRANSACTIONS: settings.partitions, DLQ: settings.partitions}, settings)
    redis = connect(redis_url, settings.redis_cluster)
    adapter = Adapter(fmt, mapping, settings, redis, stop=stop)
    consumer = AIOKafkaConsumer(
        source_topic,
        bootstrap_servers=bootstrap,
        group_id=group or default_group(settings, mapping),
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a go-live starts from the table's history (the snapshot)
        session_timeout_ms=int(settings.broker_session_timeout * 1000),
        heartbeat_interval_ms=int(settings.broker_heartbeat_interval * 1000),
        rebalance_timeout_ms=int(settings.broker_rebalance_timeout * 1000),
        **kafka_client_kwargs(settings),
    )
    producer = await start_producer(settings, bootstrap)
    try:
        await consumer.start()
        while not stop_requested(stop):
            records = raw_records(await consumer.getmany(timeout_ms=500, max_records=500))
            if not records:
                continue
            try:
                result = await adapter.handle(records)
                await produce_all(producer, result.messages, settings, stop)
                await adapter.store(result)
            except Abandoned as exc:  # nothing stored or committed: the batch comes back after the restart
                log.warning("stopping with %d change records unfinished: %s", len(records), exc)
                break
            try:
                await consumer.commit()
            except CommitFailedError as exc:  # a rebalance took the partitions: their next owner skips them
                log.warning("offset commit refused (%s); the records are re-read as duplicates", exc)
            if on_batch is not None:
                on_batch(result)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        await producer.stop()
        await redis.aclose()
