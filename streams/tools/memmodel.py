"""``python -m streams.tools.memmodel``: the coefficients of the memory model (``streams.tools.scale``,
docs/scale.md), measured.

Berka's customers (``loops`` copies, each with fresh customer ids over the same days) go
through the worker's batch processor and its real commit into a Valkey of its own; the
changelogs are folded (a quiet customer's rest state), the tiers rebuilt, the 看板 pruned and
its closed days cut as the worker does. Then ``MEMORY USAGE`` of every key, grouped by what
it holds, gives bytes per customer, per finding kept, per feed entry, per net-outflow entry
and per cell; a small sorted set of the same members gives the compact encoding a cluster
shard's sets have. It prints the coefficients (JSON) and the model's prediction beside the
measured total.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis

from streams import board
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.local.servers import EmbeddedRedis, free_port
from streams.pipeline import BatchProcessor
from streams.rulestep import build_step
from streams.settings import Settings, rates, state_config, thresholds
from streams.storage.keys import BOARD, Keys
from streams.storage.store import LATENCY_SAMPLES_KEPT, StateStore
from streams.tiers import TierBook, rebuild, tier_keys
from streams.tools import scale
from streams.tools.berka import berka_lines
from streams.tools.replay import route, with_fresh_ids

PREFIX = "mm"
PROBE_MEMBERS = 10_000  # members of the probe keys of a large encoding
BATCH = 1000


async def key_sizes(client: aioredis.Redis, names: Sequence[str]) -> list[int]:
    """``MEMORY USAGE`` of each key (0: none), pipelined a thousand at a time."""
    sizes: list[int] = []
    for start in range(0, len(names), 1000):
        async with client.pipeline(transaction=False) as pipe:
            for name in names[start : start + 1000]:
                pipe.memory_usage(name, samples=0)
            sizes += [int(n or 0) for n in await pipe.execute()]
    return sizes


async def load(settings: Settings, url: str, lines: list[bytes], loops: int) -> tuple[int, tuple[float, float]]:
    """Berka ``loops`` times over, fresh customers each time, through the real commit path;
    then folded, tiers rebuilt, the 看板 pruned and cut. Returns how many events were sent."""
    client = connect(url)
    keys = Keys(PREFIX)
    store = StateStore(client, keys, compress=settings.compress_state, config=state_config(settings))
    processor = BatchProcessor(
        store,
        build_step(settings),
        scale.DiscardingEmitter(),
        currency=settings.currency,
        cache_size=10_000_000,
        zone=settings.zone,
        snapshot_every=settings.snapshot_every,
    )
    sent = 0
    try:
        for loop in range(loops):
            copy = list(with_fresh_ids(lines, loop, shift_days=0, fresh_customers=True))
            for start in range(0, len(copy), BATCH):
                records = []
                for offset, line in enumerate(copy[start : start + BATCH], start=sent + start):
                    topic, key, _ = route(line)
                    records.append(RawRecord(topic, 0, offset, key, line, 0))
                await processor.process(records)
            sent += len(copy)
        await store.fold_all()
        book = TierBook(client, keys, state_config(settings), thresholds(settings), rates(settings))
        await rebuild(client, keys, [s async for s in store.scan_states()], book)
        days = settings.board_days_kept
        await board.prune(client, keys, settings.zone, days)
        shares = await _day_shares(client, keys)  # (before the cut: every customer of every day)
        await board.trim(
            client,
            keys,
            settings.zone,
            kept=settings.board_top_kept,
            open_days=settings.board_open_days,
            keep_days=days,
        )
    finally:
        await client.aclose()
    return sent, shares


async def _day_shares(client: aioredis.Redis, keys: Keys) -> tuple[float, float]:
    """Mean over the 看板's days of the customers with a net-outflow entry, and of those with a
    positive one, each over all customers."""
    customers = 0
    async for _ in client.scan_iter(match=keys.state_pattern, count=1000):
        customers += 1
    active: list[int] = []
    positive: list[int] = []
    async for raw in client.scan_iter(match=keys.board(BOARD, "net:*"), count=1000):
        active.append(int(await client.zcard(raw)))
        positive.append(int(await client.zcount(raw, 1, "+inf")))
    if not active or not customers:
        return 0.0, 0.0
    return statistics.mean(active) / customers, statistics.mean(positive) / customers


def cells_per_customer_day(lines: Sequence[bytes], zone: ZoneInfo) -> float:
    """The flow cells one customer's day adds (hour, direction, kind, external), on average: what
    a 看板 shard of its own holds for it (from the events, as ``rules.board`` counts them)."""
    cells: dict[tuple[str, str], set[tuple[int, str, str, bool]]] = {}
    for line in lines:
        _, _, obj = route(line)
        if obj is None or "direction" not in obj or obj.get("reverses"):
            continue
        when = dt.datetime.fromisoformat(obj["ts"]).astimezone(zone)
        cell = (when.hour, obj["direction"], obj.get("kind", "other"), bool(obj.get("external")))
        cells.setdefault((str(obj["customer_id"]), when.date().isoformat()), set()).add(cell)
    return statistics.mean(len(v) for v in cells.values()) if cells else 0.0


async def coefficients(
    settings: Settings, url: str, shares: tuple[float, float], per_customer_day: float, empty: int
) -> tuple[scale.Coefficients, dict[str, Any]]:
    """The model's coefficients from what ``load`` left in Redis, and the measured parts."""
    client = connect(url)
    keys = Keys(PREFIX)
    try:
        states = [k.decode() async for k in client.scan_iter(match=keys.state_pattern, count=1000)]
        bases = [s[: -len(":state")] for s in states]
        customers = len(bases)
        own = await key_sizes(client, [b + suffix for b in bases for suffix in (":state", ":log", ":outbox")])
        alerts = await key_sizes(client, [b + ":alerts" for b in bases])
        async with client.pipeline(transaction=False) as pipe:
            for b in bases:
                pipe.llen(b + ":alerts")
            findings = sum(int(n) for n in await pipe.execute())
        tiers = sum(await key_sizes(client, await tier_keys(client, keys)))
        feed = (await key_sizes(client, [keys.feed]))[0]
        feed_entries = int(await client.xlen(keys.feed))
        closed, through = await board.floors(client, keys)
        net_bytes: dict[str, int] = {}
        net_members: dict[str, int] = {}
        hash_bytes, cells = 0, dict[str, int]()
        async for raw in client.scan_iter(match=keys.board(BOARD, "*:*-*-*"), count=1000):
            name = raw.decode()
            kind, day = name.rsplit(":", 2)[-2:]
            size = (await key_sizes(client, [name]))[0]
            if kind == "net":
                net_bytes[day], net_members[day] = size, int(await client.zcard(name))
            else:
                hash_bytes += size
                cells[day] = cells.get(day, 0) + int(await client.hlen(name))
        opened = [d for d in net_bytes if d not in closed and (through is None or d > through)]
        small_entry, big_entry, tier_big, zset_key, hash_key, cell = await _encodings(client, bases, opened, keys)
        latency = (await key_sizes(client, [keys.latency]))[0]
        samples = max(1, int(await client.llen(keys.latency)))
        stats = (await key_sizes(client, [keys.stats]))[0]
        used = await _quiet_used_memory(client)
        dbsize = int(await client.dbsize())
        async with client.pipeline(transaction=False) as pipe:
            for b in bases:
                pipe.exists(b + ":state", b + ":log", b + ":outbox", b + ":alerts")
            own_keys = sum(int(n) for n in await pipe.execute())
        per_key = await _per_key(client)
        shard_key = sum(await key_sizes(client, [keys.board(BOARD, n) for n in ("latest", "collection", "trim")]))
    finally:
        await client.aclose()
    parts = {
        "customers (state, changelog, outbox)": sum(own),
        "recent-alerts lists": sum(alerts),
        "tiers": tiers,
        "feed": feed,
        "看板 net-outflow sets": sum(net_bytes.values()),
        "看板 flow and findings cells": hash_bytes,
        "latency samples and statistics": latency + stats,
    }
    active = statistics.mean(net_members[d] for d in opened) if opened else 0.0
    c = scale.Coefficients(
        customer=sum(own) / customers,
        tier=tiers / customers,
        tier_big=tier_big,
        finding=sum(alerts) / max(1, findings),
        feed_entry=feed / max(1, feed_entries),
        net_entry=big_entry,
        net_entry_small=small_entry,
        zset_key=zset_key,
        cell=cell,
        hash_key=hash_key,
        cells_per_day=statistics.mean(cells.values()) if cells else 0.0,
        cells_per_active=per_customer_day,
        active_share=shares[0],
        positive_share=shares[1],
        findings_per_customer=findings / customers,
        shard_key=shard_key,
        fixed=latency * LATENCY_SAMPLES_KEPT / samples + stats,
        per_key=per_key,
        keys_per_customer=own_keys / customers,
        overhead=used - empty - sum(parts.values()) - per_key * dbsize,
        overhead_per_customer=0.0,
        empty=empty,
    )
    measured: dict[str, Any] = {
        "customers": customers,
        "findings_kept": findings,
        "feed_entries": feed_entries,
        "days": len(net_bytes),
        "open_days": len(opened),
        "closed_days": len(net_bytes) - len(opened),
        "active_per_open_day": round(active, 1),
        "by_part": parts,
        "keys_total": sum(parts.values()),
        "used_memory": used,
        "overhead": used - empty - sum(parts.values()) - per_key * dbsize,
        "dbsize": dbsize,
    }
    return c, measured


async def _encodings(
    client: aioredis.Redis, bases: Sequence[str], days: Sequence[str], keys: Keys
) -> tuple[float, float, float, float, float, float]:
    """Per member of a small (listpack) and of a large (skiplist) sorted set, per customer of a
    large tier shard, a sorted set's and a hash's own overhead, and per cell of a hash: from
    keys of the real shapes (customer ids, cent scores, cell names) written beside the
    measured ones."""
    members = [b.split("{", 1)[1].rstrip("}") for b in bases[:100]]
    probe = f"{PREFIX}:probe"
    sizes: list[int] = []
    for n in (1, len(members)):
        await client.delete(probe)
        await client.zadd(probe, {m: 12345 + 997 * i for i, m in enumerate(members[:n])})
        sizes.append((await key_sizes(client, [probe]))[0])
    small_entry = (sizes[1] - sizes[0]) / max(1, len(members) - 1)
    zset_key = sizes[0] - small_entry
    many = [f"{m}~{n}" for n in range(PROBE_MEMBERS // len(members) + 1) for m in members][:PROBE_MEMBERS]
    await client.delete(probe)
    for start in range(0, len(many), 1000):
        await client.zadd(probe, {m: 12345 + 997 * i for i, m in enumerate(many[start : start + 1000], start)})
    big_entry = ((await key_sizes(client, [probe]))[0] - zset_key) / len(many)
    tier_big = big_entry  # a customer's whole share of a large tier shard: its sorted-set entry
    sample = keys.board(BOARD, f"flow:{days[0]}") if days else None
    stored = cast(dict[bytes, bytes], await client.hgetall(sample)) if sample else {}
    row = {k.decode(): v for k, v in stored.items()} or {"00|in|x|int": b"1"}
    hsizes: list[int] = []
    for n in (1, len(row)):
        await client.delete(probe)
        await client.hset(probe, mapping=dict(list(row.items())[:n]))
        hsizes.append((await key_sizes(client, [probe]))[0])
    await client.delete(probe)
    cell = (hsizes[1] - hsizes[0]) / max(1, len(row) - 1)
    return small_entry, big_entry, tier_big, zset_key, hsizes[0] - cell, cell


async def _per_key(client: aioredis.Redis) -> float:
    """What one more key costs ``used_memory`` beyond its ``MEMORY USAGE`` (its keyspace entry):
    probe keys shaped like states, written and deleted again."""
    before = int((await client.info("memory"))["used_memory"])
    names = [f"{PREFIX}:probe:{{C{n:07d}}}:state" for n in range(PROBE_MEMBERS)]
    value = "7:3:" + "x" * 560
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.set(name, value)
        await pipe.execute()
    grown = int((await client.info("memory"))["used_memory"]) - before
    usage = sum(await key_sizes(client, names))
    for start in range(0, len(names), 1000):
        await client.delete(*names[start : start + 1000])
    return (grown - usage) / len(names)


async def _quiet_used_memory(client: aioredis.Redis) -> int:
    """``used_memory`` without the server's own statistics: the per-command latency
    histograms (``latency-tracking``, ~25 KB per command ever run) and the slowlog, fixed
    and not the data's (docs/scale.md, "The coefficients, measured")."""
    await client.config_resetstat()
    await client.slowlog_reset()
    return int((await client.info("memory"))["used_memory"])


async def _used_memory(url: str) -> int:
    client = connect(url)
    try:
        return await _quiet_used_memory(client)
    finally:
        await client.aclose()


def _run(settings: Settings, lines: list[bytes], loops: int) -> tuple[int, scale.Coefficients, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="fundflow-memmodel-") as tmp:
        server = EmbeddedRedis(free_port(), Path(tmp))
        server.start()
        try:
            empty = asyncio.run(_used_memory(server.url))
            sent, shares = asyncio.run(load(settings, server.url, lines, loops))
            per_day = cells_per_customer_day(lines, settings.zone)
            c, measured = asyncio.run(coefficients(settings, server.url, shares, per_day, empty))
        finally:
            server.stop()
    return sent, c, measured


def main(argv: Sequence[str] = ()) -> int:
    """``loops`` (default 3) copies of Berka, and one: the overhead that is not in any key's
    ``MEMORY USAGE`` is fitted to the customers of the two runs."""
    loops = int(argv[0]) if argv else 3
    settings = Settings()
    lines = berka_lines(None, settings.zone)
    _, _, small = _run(settings, lines, 1)
    sent, c, measured = _run(settings, lines, loops)
    grown = (c.overhead - small["overhead"]) / max(1, measured["customers"] - small["customers"])
    slope = max(0.0, grown)
    c = dataclasses.replace(c, overhead=c.overhead - slope * measured["customers"], overhead_per_customer=slope)
    predicted = scale.predicted_bytes(
        measured["customers"],
        settings.board_days_kept,
        measured["findings_kept"],
        active_per_day=c.active_share * measured["customers"],
        open_days=settings.board_open_days,
        top_kept=settings.board_top_kept,
        feed_entries=measured["feed_entries"],
        c=c,
    )
    out = {"events": sent, "coefficients": dataclasses.asdict(c), "measured": measured, "predicted": predicted}
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
