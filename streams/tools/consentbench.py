"""``make bench``'s consent stage: a bank's opt-out list imported, and what it costs in Redis.

Issue 32 asks that 1,000,000 consent records import in under a minute and cost at most
100 B each in Redis. This stage writes a CSV of that many records (ten-digit customer ids,
a mix of push, sms and all opt-outs, opt-ins and complaints over a year of dates), imports
it into a fresh key prefix of the bench's Redis the way ``fundflow consent import`` does
(``contact.model.parse_csv``, then ``ContactStore.import_records``: the Lua merge in batches),
imports it again (the idempotent re-run: nothing changes), and sums ``MEMORY USAGE`` over
every consent bucket. A measurement, not a test: nothing asserts a speed or a size here
(``--smoke`` runs it on a few thousand records so it cannot rot).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

from contact.model import Parsed, parse_csv, read_text_lines
from contact.store import ContactStore
from streams.clients import connect
from streams.storage.keys import Keys

RECORDS, RECORDS_SMOKE = 1_000_000, 5_000
PREFIX = "bench-consent"
ZONE = ZoneInfo("Asia/Shanghai")


def write_csv(path: Path, count: int, seed: int = 32) -> None:
    rng = random.Random(seed)
    kinds = ["opt_out"] * 8 + ["opt_in"]
    with path.open("w", encoding="utf-8") as out:
        out.write("customer_id,channel,status,recorded_at\n")
        for n in range(count):
            customer = f"{6_200_000_000 + n * 7:010d}"
            day = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            if rng.random() < 0.02:
                out.write(f"{customer},,complaint,{day}\n")
            else:
                out.write(f"{customer},{rng.choice(('push', 'sms', 'all'))},{rng.choice(kinds)},{day}\n")


async def _redis_cpu(store: ContactStore) -> float:
    info = await store.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _import(store: ContactStore, data: bytes) -> tuple[float, int, int, Parsed, float, float]:
    """Wall seconds, changed, unchanged, the parse's counts, and the CPU seconds of this process
    and of Redis (on a shared machine the wall time says more about the neighbours)."""
    parsed = Parsed()
    started, cpu, redis_cpu = time.perf_counter(), time.process_time(), await _redis_cpu(store)
    records = parse_csv(read_text_lines(data), ZONE, int(time.time()), parsed)
    changed, unchanged = await store.import_records(records, 1)
    seconds = time.perf_counter() - started
    return seconds, changed, unchanged, parsed, time.process_time() - cpu, await _redis_cpu(store) - redis_cpu


async def _memory(store: ContactStore) -> tuple[int, int, int, str]:
    """Bytes over every bucket key, the customers in them, the bucket count, one bucket's encoding."""
    names = [k async for k in store.redis.scan_iter(match=f"{PREFIX}:{{ct.*}}:consent", count=5_000)]
    total = customers = 0
    for start in range(0, len(names), 5_000):
        async with store.redis.pipeline(transaction=False) as pipe:
            for key in names[start : start + 5_000]:
                pipe.memory_usage(key, samples=0)
                pipe.hlen(key)
            answers = await pipe.execute()
        total += sum(int(n) for n in answers[0::2])
        customers += sum(int(n) for n in answers[1::2])
    encoding = cast(bytes, await store.redis.object("encoding", names[0])).decode() if names else ""
    return total, customers, len(names), encoding


async def consent_import_speed(redis_url: str, count: int, workdir: Path) -> dict[str, Any]:
    path = workdir / "consent.csv"
    write_csv(path, count)
    data = path.read_bytes()
    client = connect(redis_url, False)
    try:
        async for key in client.scan_iter(match=f"{PREFIX}:*", count=10_000):
            await client.delete(key)
        store = ContactStore(client, Keys(PREFIX))
        seconds, changed, unchanged, parsed, cpu, redis_cpu = await _import(store, data)
        again, changed_again, _, _, _, _ = await _import(store, data)
        total, customers, buckets, encoding = await _memory(store)
    finally:
        await client.aclose()
    return {
        "records": count,
        "file_bytes": len(data),
        "bad_rows": parsed.bad,
        "import_seconds": round(seconds, 2),
        "records_per_second": round(count / seconds) if seconds else None,
        "importer_cpu_seconds": round(cpu, 2),
        "redis_cpu_seconds": round(redis_cpu, 2),
        "changed": changed,
        "rerun_seconds": round(again, 2),
        "rerun_changed": changed_again,
        "customers_stored": customers,
        "buckets": buckets,
        "bucket_encoding": encoding,
        "redis_bytes": total,
        "bytes_per_record": round(total / customers, 1) if customers else None,
        "unchanged": unchanged,
    }


def consent_stage(redis_url: str, smoke: bool, workdir: Path) -> dict[str, Any]:
    return asyncio.run(consent_import_speed(redis_url, RECORDS_SMOKE if smoke else RECORDS, workdir))


def render(result: dict[str, Any]) -> list[str]:
    return [
        f"consent import: {result['records']:,} records ({result['file_bytes'] / 1e6:.1f} MB CSV) in "
        f"{result['import_seconds']} s ({result['records_per_second']:,}/s; CPU: importer "
        f"{result['importer_cpu_seconds']} s, Redis {result['redis_cpu_seconds']} s); the same file again in "
        f"{result['rerun_seconds']} s, {result['rerun_changed']} changed; in Redis "
        f"{result['bytes_per_record']} B per customer over {result['buckets']:,} buckets "
        f"({result['bucket_encoding']}, MEMORY USAGE)"
    ]
