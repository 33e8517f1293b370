"""``make bench-scale``: a bank's customer count on a Redis Cluster, measured.

One run, on this machine, started and stopped here: a Redis Cluster of three masters
(Valkey in cluster mode, each owning a third of the slots), one plain Redis beside it
for the comparison, and the embedded broker.

1. **Templates.** The Berka data (1,229 customers) in ``VARIANTS`` copies, each with fresh
   ids and its event time moved on by ``VARIANT_SHIFT_DAYS`` more, run in this process
   through the worker's own ``BatchProcessor`` (decode, the rules, the Lua commit) on a
   scratch prefix. What each customer's commits carried is kept: the final state, the
   findings, the 看板 cells (of the days the 看板 keeps), the 归集率 bucket.
2. **Bulk load.** ``N`` customers, each a template's history under a fresh id, committed
   through ``StateStore.commit`` (the same Lua commit the worker runs: state, outbox and
   recent findings, 看板 cells) by several processes, slot by slot; the outboxes are
   confirmed as a worker confirms them (the feed gets the findings); the tier index
   gets each customer's contribution (the template's, at the same instant: the states
   are the same) and its cut points once. Kafka is not needed for that.
3. **Live traffic.** Each customer's next events (its template's next loop of the data)
   through the broker to two ``fundflow worker`` processes: events/s on the cluster
   (all of them) and on the plain Redis (the first ``COMPARED_EVENTS``); then 50% of
   the cluster's rate for ``HALF_LOAD_SECONDS`` (committed p99, the longest pauses in
   that window); tier agreement; the 看板 read; memory and commands per shard, right after
   the traffic and once the workers folded its changelogs; and one worker killed while the
   other takes over its partitions. Bytes per customer on the last line: the larger of the
   memory at rest after the load and after the traffic once folded (``steady_bytes``).

Pauses come from the workers' ``/metrics`` (``streams.health``): the longest garbage
collection over the whole run (their caches fill up to ``FUNDFLOW_CACHE_CUSTOMERS``), and
the longest loop lag at 50% load (at catch-up a batch's step holds the loop by design).
A measurement, not a test: nothing here asserts a figure. ``--smoke`` runs every stage
on a few thousand customers. The last line is the summary the issue asks for.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import gc
import json
import logging
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka.partitioner import DefaultPartitioner
from redis.crc import key_slot

from rules.board import BoardDelta
from rules.contribution import tier_of
from rules.state import CustomerState
from streams import board
from streams.board import read_board
from streams.clients import connect, start_producer
from streams.deadletter import RawRecord
from streams.decode import TimeBounds
from streams.errors import ConfigError
from streams.local.orchestra import LocalRun
from streams.local.servers import EmbeddedRedis, free_port
from streams.pipeline import BatchProcessor
from streams.rulestep import build_step
from streams.settings import Settings, rates, state_config, thresholds
from streams.storage.codec import decode_state, encode_state
from streams.storage.keys import BOARD, Keys
from streams.storage.store import RECENT_ALERTS_KEPT, Commit, StateStore, Tally
from streams.tiers import (
    TierBook,
    all_contributions,
    cut_positions,
    fit_layout,
    interpolate,
    read_cuts,
    recompute_cuts,
    tier_keys,
    write_contributions,
)
from streams.tools import scale
from streams.tools.bench import SUFFIXES, machine, paced_send
from streams.tools.berka import SHIPPED_BERKA, berka_lines
from streams.tools.measure import percentiles
from streams.tools.memmodel import key_sizes
from streams.tools.replay import SYNTHETIC_SKEW_SECONDS, loop_shift_days, net_flows, replay, route, with_fresh_ids

DEFAULT_CUSTOMERS = 1_000_000
SMOKE_CUSTOMERS = 2_000
SHARDS = 3  # masters of the cluster
VARIANTS = 4  # Berka copies the customers are drawn from (4 x 1,229 = 4,916 templates)
VARIANT_SHIFT_DAYS = 9  # each copy's event time this many days after the one before
LOAD_CHUNK = 1_000  # customers per StateStore.commit in the bulk load (a call's time in Redis: the client's timeout)
LOADERS = 3  # bulk-load processes (one per shard: the customers are loaded in slot order)
COMPARED_EVENTS = 100_000  # the cluster / single Redis comparison: events/s over this many
HALF_LOAD_SECONDS = 30.0
COUNTED_SAMPLE = 20_000  # customers whose keys are measured one by one, as make bench measures its own
FOLD_DRAIN_SECONDS = 300.0  # at most this long for the workers to fold the catch-up's changelogs
TIER_REFRESH_SECONDS = 10.0  # the workers' FUNDFLOW_TIER_REFRESH_SECONDS here (the bench waits for one)
TAKEOVER_TIMEOUT_SECONDS = 120.0
PREFIX = "scale"
TEMPLATE_PREFIX = "scale-tpl"
PAUSE_TARGET_MS = 50
BOARD_READ_BUDGET_MS = 120_000  # the 看板 reads stop once they took this long together (one read: given up)
SMOKE_TEMPLATE_CUSTOMERS = 30  # Berka customers per copy in --smoke (two copies)


_STARTED = time.perf_counter()


def step(what: str) -> None:
    print(f"bench-scale [{time.perf_counter() - _STARTED:5.0f} s]: {what} ...", file=sys.stderr, flush=True)


# --- servers -------------------------------------------------------------------------


class ClusterNode(EmbeddedRedis):
    """One master of a many-node cluster: it owns only the slots ``LocalCluster`` gives it."""

    def __init__(self, port: int, log_dir: Path) -> None:
        super().__init__(port, log_dir, cluster=True)
        self.name = f"valkey-{port}"

    def _own_all_slots(self, timeout: float) -> None:
        return None


class LocalCluster:
    """``shards`` Valkey masters in cluster mode, the 16,384 slots split evenly, met."""

    def __init__(self, log_dir: Path, shards: int = SHARDS) -> None:
        self.nodes = [ClusterNode(free_port(), log_dir / f"shard-{i}") for i in range(shards)]

    def __enter__(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            clients = [redis.Redis(host="127.0.0.1", port=node.port) for node in self.nodes]
            per = 16384 // len(self.nodes)
            for i, client in enumerate(clients):
                last = 16383 if i == len(clients) - 1 else (i + 1) * per - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", i * per, last)  # type: ignore[no-untyped-call]
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port, node.bus_port)  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + 30
            while not all(c.cluster("INFO").get("cluster_state") == "ok" for c in clients):
                if time.monotonic() > deadline:
                    raise ConfigError("the local Redis Cluster did not become ready within 30 s")
                time.sleep(0.1)
            while not all(len(c.cluster("NODES")) == len(clients) for c in clients):
                if time.monotonic() > deadline:
                    raise ConfigError("the local Redis Cluster's nodes did not meet within 30 s")
                time.sleep(0.1)
            for c in clients:
                c.close()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def url(self) -> str:
        return self.nodes[0].url


def shard_info(ports: Sequence[int]) -> list[dict[str, int]]:
    """Per node: used memory, keys, commands processed so far."""
    out = []
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            memory, stats, keyspace = client.info("memory"), client.info("stats"), client.info("keyspace")
            keys = int(keyspace.get("db0", {}).get("keys", 0)) if isinstance(keyspace.get("db0"), dict) else 0
            out.append(
                {
                    "used_memory": int(memory["used_memory"]),
                    "dataset": int(memory.get("used_memory_dataset", 0)),
                    "keys": keys,
                    "commands": int(stats["total_commands_processed"]),
                }
            )
        finally:
            client.close()
    return out


# --- templates -----------------------------------------------------------------------


class RecordingStore(StateStore):
    """The real store; what each commit carried is kept beside it, per customer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.boards: dict[str, BoardDelta] = {}
        self.findings: dict[str, list[bytes]] = {}
        self.buckets: dict[str, str] = {}

    async def commit(self, commits: Sequence[Commit], tally: Tally | None = None) -> set[str]:
        failed = await super().commit(commits, tally)
        for c in commits:
            if c.customer_id in failed:
                continue
            if c.board:
                merge(self.boards.setdefault(c.customer_id, BoardDelta()), c.board)
            if c.findings:
                self.findings.setdefault(c.customer_id, []).extend(c.findings)
            if c.bucket:
                self.buckets[c.customer_id] = c.bucket
        return failed


def merge(into: BoardDelta, delta: BoardDelta) -> None:
    for mine, theirs in ((into.flows, delta.flows), (into.findings, delta.findings)):
        for day, row in theirs.items():
            cells = mine.setdefault(day, {})
            for cell, value in row.items():
                cells[cell] = cells.get(cell, 0) + value
    for day, value in delta.net.items():
        into.net[day] = into.net.get(day, 0) + value
    if delta.latest_us is not None and (into.latest_us is None or delta.latest_us > into.latest_us):
        into.latest_us = delta.latest_us


@dataclass(slots=True)
class Template:
    customer_id: str
    state: CustomerState
    board: BoardDelta
    bucket: str
    findings: list[bytes]
    contribution: Decimal
    live: list[dict[str, Any]]  # the customer's next events (its next loop of the data)


def variant_lines(lines: list[bytes], variant: int) -> list[bytes]:
    return list(with_fresh_ids(lines, variant, shift_days=VARIANT_SHIFT_DAYS, fresh_customers=True))


def some_customers(lines: list[bytes], customers: int) -> list[bytes]:
    """The lines of the first ``customers`` customers (in the data's order)."""
    kept: set[bytes] = set()
    out = []
    for line in lines:
        key = route(line)[1]
        if key is not None and (key in kept or len(kept) < customers):
            kept.add(key)
            out.append(line)
    return out


def _templates_of(args: tuple[Settings, str, list[bytes], int]) -> list[tuple[Template, bytes]]:
    """One copy's templates, each with its state as a blob (a state holds what pickle cannot)."""
    settings, url, lines, variant = args
    templates = asyncio.run(
        build_templates(settings, url, variant_lines(lines, variant), f"{TEMPLATE_PREFIX}{variant}")
    )
    out = []
    for template in templates:
        blob = encode_state(template.state, compress=False)
        template.state = CustomerState(template.customer_id)
        out.append((template, blob))
    return out


def all_templates(settings: Settings, url: str, lines: list[bytes], variants: int) -> list[Template]:
    """The templates of every copy, one process per copy (the step is CPU-bound)."""
    context = multiprocessing.get_context("fork")
    with context.Pool(min(variants, os.cpu_count() or 1)) as pool:
        parts = pool.map(_templates_of, [(settings, url, lines, v) for v in range(variants)])
    templates = []
    for template, blob in (one for part in parts for one in part):
        template.state = decode_state(blob)
        templates.append(template)
    return templates


async def build_templates(settings: Settings, redis_url: str, lines: list[bytes], prefix: str) -> list[Template]:
    """Every customer of ``lines`` through the worker's batch processor (in this process)."""
    client = connect(redis_url)
    keys = Keys(prefix)
    store = RecordingStore(client, keys, compress=settings.compress_state, config=state_config(settings))
    processor = BatchProcessor(
        store,
        build_step(settings),
        scale.DiscardingEmitter(),
        bounds=TimeBounds(settings.event_time_earliest, SYNTHETIC_SKEW_SECONDS),
        currency=settings.currency,
        cache_size=10_000_000,
        zone=settings.zone,
        snapshot_every=settings.snapshot_every,
    )
    now_ms = int(time.time() * 1000)
    records = []
    for offset, line in enumerate(lines):
        topic, key, _ = route(line)
        records.append(RawRecord(topic, 0, offset, key, line, now_ms))
    try:
        for i in range(0, len(records), 1000):
            await processor.process(records[i : i + 1000])
        states = {cid: entry[1] for cid, entry in processor.cache.items()}
        book = TierBook(client, keys, state_config(settings), thresholds(settings), rates(settings))
        as_of = max(s.last_us for s in states.values() if s.last_us is not None)
        kept_from = (dt.datetime.fromtimestamp(as_of / 1e6, settings.zone).date()
                     - dt.timedelta(days=settings.board_days_kept)).isoformat()  # fmt: skip
        by_customer: dict[str, list[bytes]] = {}
        for line in lines:
            _, key, obj = route(line)
            if key is not None and obj is not None:
                by_customer.setdefault(key.decode(), []).append(line)
        shift = loop_shift_days(lines)
        templates = []
        for cid, state in sorted(states.items()):
            if state.last_us is None:
                continue
            board = store.boards.get(cid, BoardDelta())
            kept = BoardDelta(
                {d: r for d, r in board.flows.items() if d >= kept_from},
                {d: r for d, r in board.findings.items() if d >= kept_from},
                {d: v for d, v in board.net.items() if d >= kept_from},
                board.latest_us,
            )
            own = by_customer.get(cid, [])
            live = [orjson.loads(x) for x in with_fresh_ids(own, 1, shift, ledger_shift=net_flows(own))]
            templates.append(
                Template(
                    cid,
                    state,
                    kept,
                    store.buckets.get(cid, ""),
                    store.findings.get(cid, []),
                    book.contribution_of(state, as_of),
                    live,
                )
            )
        return templates
    finally:
        await clear_prefix(client, prefix)
        await client.aclose()


async def clear_prefix(client: Any, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.delete(*batch)
            batch = []
    if batch:
        await client.delete(*batch)


# --- the bulk load --------------------------------------------------------------------

_TEMPLATES: list[Template] = []  # (inherited by the forked loaders)


def customer_ids(n: int) -> list[str]:
    return [f"c{i:09d}" for i in range(n)]


def template_of(cid: str) -> Template:
    return _TEMPLATES[int(cid[1:]) % len(_TEMPLATES)]


def clone(template: Template, cid: str) -> tuple[CustomerState, list[bytes], BoardDelta]:
    """The template's state, findings and 看板 cells under ``cid`` (the state's inner
    records are shared, read only: the commit encodes them)."""
    state = copy.copy(template.state)
    state.customer_id = cid
    old, new = template.customer_id.encode(), cid.encode()
    findings = [f.replace(b'"' + old + b'"', b'"' + new + b'"') for f in template.findings]
    board = BoardDelta(template.board.flows, template.board.findings, template.board.net, template.board.latest_us)
    return state, findings, board


def slot_order(ids: list[str], keys: Keys) -> list[str]:
    return sorted(ids, key=lambda cid: key_slot(keys.state(cid).encode()))


async def load_customers(url: str, cluster: bool, ids: Sequence[str], compress: bool) -> int:
    client = connect(url, cluster)
    keys = Keys(PREFIX)
    store = StateStore(client, keys, compress=compress, cluster=cluster)
    loaded = 0
    try:
        for i in range(0, len(ids), LOAD_CHUNK):
            commits, published = [], {}
            values: dict[str, Decimal] = {}
            for cid in ids[i : i + LOAD_CHUNK]:
                template = template_of(cid)
                state, findings, delta = clone(template, cid)
                commits.append(Commit(cid, 0, state, findings, delta, template.bucket))
                if findings:
                    published[cid] = findings
                values[cid] = template.contribution
            # (a customer whose version check failed was written by this call's first try: the
            # cluster client retries a call that timed out, and the cluster was empty)
            await store.commit(commits)
            await store.confirm_published(published)
            await write_contributions(client, keys, values)
            if store.dirty:  # (as a worker's fold timer does: the slots' cells into the bank-wide keys)
                await board.fold(client, keys, sorted(store.dirty))
                store.dirty.clear()
            loaded += len(commits)
    finally:
        await client.aclose()
    return loaded


def _load_part(args: tuple[str, bool, list[str], bool]) -> int:
    return asyncio.run(load_customers(*args))


async def _fit(url: str, cluster: bool, customers: int) -> None:
    """The tier shards split for ``customers``, as a bank's refreshes would have split them
    while it grew (``streams.tiers.fit_layout``), before the load writes them."""
    client = connect(url, cluster=cluster)
    try:
        await fit_layout(client, Keys(PREFIX), customers)
    finally:
        await client.aclose()


def bulk_load(url: str, cluster: bool, ids: list[str], compress: bool, processes: int) -> float:
    """customers/s: ``ids`` (in slot order) in ``processes`` contiguous parts, one process each."""
    started = time.perf_counter()
    asyncio.run(_fit(url, cluster, len(ids)))
    size = -(-len(ids) // processes)
    parts = [(url, cluster, ids[i : i + size], compress) for i in range(0, len(ids), size)]
    context = multiprocessing.get_context("fork")
    with context.Pool(len(parts)) as pool:
        loaded = sum(pool.map(_load_part, parts))
    return loaded / (time.perf_counter() - started)


# --- live traffic ---------------------------------------------------------------------


def live_lines(ids: Sequence[str], first_round: int = 0) -> Iterator[bytes]:
    """Round r: the r-th next event of every customer in ``ids`` that has one."""
    rnd = first_round
    while True:
        sent = False
        for cid in ids:
            events = template_of(cid).live
            if rnd < len(events):
                sent = True
                yield orjson.dumps({**events[rnd], "customer_id": cid})
        if not sent:
            return
        rnd += 1


async def applied(client: Any) -> int:
    return int(await client.hget(f"{PREFIX}:stats", "applied") or 0)


async def rate_of(
    run: LocalRun, url: str, cluster: bool, until: int, timeout: float, started: float
) -> dict[str, float]:
    """events/s of the workers on ``url``: from the last moment nothing was applied (joins and
    start-up excluded; ``started``, when they were started, if they were at work before the
    first look) to ``until`` applied; also the rate over the first ``COMPARED_EVENTS``."""
    client = connect(url, cluster)
    samples: list[tuple[float, int]] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            run.check_workers()
            n = await applied(client)
            samples.append((time.perf_counter(), n))
            if n >= until:
                break
            if time.monotonic() > deadline:
                raise ConfigError(f"the workers applied {n} of {until} in {timeout:.0f}s")
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    start = max((t for t, n in samples if n == 0), default=started)
    end, n = samples[-1]
    first = next(((t, k) for t, k in samples if k >= min(COMPARED_EVENTS, until)), samples[-1])
    return {"events_per_second": n / (end - start), "first_events_per_second": first[1] / (first[0] - start)}


def scrape(port: int) -> dict[str, float]:
    """The pause samples and changelog counts of one worker's /metrics (name{labels} -> value)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith(("fundflow_pause_seconds_bucket", "fundflow_longest_pause_seconds", "fundflow_changelog_")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def summed(scrapes: Sequence[dict[str, float]], name: str) -> float:
    """A metric without labels, added over the workers' scrapes."""
    return sum(s.get(name, 0.0) for s in scrapes)


def used_beyond(infos: Sequence[dict[str, int]], empty: Sequence[dict[str, int]]) -> int:
    """``used_memory`` over the shards, beyond what each held empty."""
    return sum(i["used_memory"] - e["used_memory"] for i, e in zip(infos, empty, strict=True))


def longest(samples: dict[str, float], cause: str) -> float:
    return samples.get(f'fundflow_longest_pause_seconds{{cause="{cause}"}}', 0.0)


def longest_in_window(before: dict[str, float], after: dict[str, float], cause: str) -> float:
    """Between two scrapes of one worker: the smallest histogram bound that every pause of
    ``cause`` observed meanwhile stays under (inf: one was above the largest bound)."""
    pattern = re.compile(r'fundflow_pause_seconds_bucket\{cause="' + cause + r'",le="([^"]+)"\}')
    grown: list[tuple[float, float]] = []
    for name, value in after.items():
        match = pattern.match(name)
        if match:
            grown.append((float(match.group(1)), value - before.get(name, 0.0)))
    grown.sort()
    if not grown or grown[-1][1] <= 0:
        return 0.0
    total = grown[-1][1]  # (the +Inf bucket: every observation)
    return next(bound for bound, count in grown if count >= total)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- the collector with a full cache ---------------------------------------------------


def gc_probe(cached: int) -> dict[str, Any]:
    """In this process: ``cached`` customer states (the templates', decoded as a worker's cache
    holds them), then each generation's collection timed (wall and this thread's CPU), as the
    collector would run it in a worker without and with ``streams.health``'s freezing."""

    def timed(generation: int) -> dict[str, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        gc.collect(generation)
        return {"wall_ms": (time.perf_counter() - wall) * 1000, "cpu_ms": (time.thread_time() - cpu) * 1000}

    blobs = [encode_state(t.state) for t in _TEMPLATES]
    gc.collect()
    gc.freeze()  # (what the process holds already: as a worker's start-up does)
    try:
        cache = [decode_state(blobs[i % len(blobs)]) for i in range(cached)]
        tracked = len(gc.get_objects())
        before = {f"generation {g}": timed(g) for g in (0, 1, 2)}
        gc.freeze()  # what PauseMonitor does after every collection and every committed batch
        after = {f"generation {g}": timed(g) for g in (0, 1, 2)}
        del cache
    finally:
        gc.unfreeze()
        gc.collect()
    return {"cached": cached, "tracked_objects": tracked, "not_frozen": before, "frozen": after}


# --- tiers ----------------------------------------------------------------------------


async def tier_agreement(url: str, cluster: bool) -> dict[str, Any]:
    """Each customer's tier from the live cut points against an exact computation: every
    contribution in the index, sorted, the quartiles by ``streams.tiers``' own definition."""
    client = connect(url, cluster)
    keys = Keys(PREFIX)
    try:
        cuts, info = await read_cuts(client, keys)
        values = list((await all_contributions(client, keys)).values())
    finally:
        await client.aclose()
    if cuts is None or len(values) < 2:
        return {"customers": len(values), "agreement": None}
    ordered = sorted(values)
    ranks = {r for lo, hi, _ in cut_positions(len(ordered)) for r in (lo, hi)}
    exact = interpolate({r: ordered[r] for r in ranks}, len(ordered))
    assert exact is not None
    same = sum(1 for v in values if tier_of(v, cuts) == tier_of(v, exact))
    return {
        "customers": len(values),
        "indexed_when_cut": int(info.get("n", 0)),
        "agreement": same / len(values),
        "live_cuts": [str(c) for c in cuts],
        "exact_cuts": [str(c) for c in exact],
    }


# --- the run --------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    customers: int
    templates: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    load_per_second: dict[str, float] = field(default_factory=dict)
    events: dict[str, Any] = field(default_factory=dict)
    shards: list[dict[str, int]] = field(default_factory=list)
    single: dict[str, int] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    pauses: dict[str, Any] = field(default_factory=dict)
    takeover: dict[str, Any] = field(default_factory=dict)
    tiers: dict[str, Any] = field(default_factory=dict)
    board: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def partition_of(cid: str, partitions: int) -> int:
    return int(DefaultPartitioner()(cid.encode(), list(range(partitions)), list(range(partitions))))


async def produce(settings: Settings, bootstrap: str, lines: list[bytes]) -> float:
    producer = await start_producer(settings, bootstrap)
    try:
        return (await replay(lines, producer)).rate
    finally:
        await producer.stop()


async def half_load(run: LocalRun, settings: Settings, url: str, lines: list[bytes], rate: float) -> dict[str, Any]:
    client = connect(url, cluster=True)
    latency_key = f"{PREFIX}:stats:latency_ms"
    try:
        await client.delete(latency_key)
        before = await applied(client)
        producer = await start_producer(settings.model_copy(update={"producer_linger_ms": 0}), run.bootstrap)
        try:
            await paced_send(lines, producer, rate, 0.05)
        finally:
            await producer.stop()
        deadline = time.monotonic() + 120
        while await applied(client) < before + len(lines):
            if time.monotonic() > deadline:
                raise ConfigError("50% load: the workers did not catch up")
            await asyncio.sleep(0.1)
        committed = [int(x) for x in await client.lrange(latency_key, 0, -1)]
    finally:
        await client.aclose()
    return {"rate": round(rate), "events": len(lines), "committed_ms": percentiles(committed)}


async def takeover(run: LocalRun, settings: Settings, url: str, victim: Any, lines: list[bytes]) -> dict[str, Any]:
    """Kill one worker (SIGKILL); one event for a customer of every partition right after;
    the seconds until the survivor has committed all of them."""
    client = connect(url, cluster=True)
    try:
        before = await applied(client)
        killed = time.perf_counter()
        run.stop_worker(victim, kill=True)
        await produce(settings, run.bootstrap, lines)
        deadline = time.monotonic() + TAKEOVER_TIMEOUT_SECONDS
        while await applied(client) < before + len(lines):
            if time.monotonic() > deadline:
                return {"seconds": None, "events": len(lines)}
            await asyncio.sleep(0.05)
        return {"seconds": time.perf_counter() - killed, "events": len(lines)}
    finally:
        await client.aclose()


async def board_read(url: str, settings: Settings, reads: int) -> dict[str, Any]:
    client = connect(url, cluster=True)
    took: list[float] = []
    try:
        for _ in range(reads):
            started = time.perf_counter()
            try:
                await asyncio.wait_for(
                    read_board(client, Keys(PREFIX), settings.zone, cluster=True), BOARD_READ_BUDGET_MS / 1000
                )
            except TimeoutError:
                return {"reads": len(took), "timed_out_after_ms": BOARD_READ_BUDGET_MS}
            took.append((time.perf_counter() - started) * 1000)
            if sum(took) > BOARD_READ_BUDGET_MS:
                break
    finally:
        await client.aclose()
    return {"reads": len(took), "p50_ms": round(statistics.median(took), 1), "max_ms": round(max(took), 1)}


async def largest_shared_key(url: str) -> dict[str, Any]:
    """The largest of the keys without a customer's hash tag whose size grows with customers
    or time: the tier shards, the feed, the statistics, and the 看板's latest day's net
    outflow set in a sample of its shards (each shard holds one slot's customers)."""
    client = connect(url, cluster=True)
    keys = Keys(PREFIX)
    try:
        names = [*await tier_keys(client, keys), keys.feed, keys.stats, keys.latency, keys.tier_cuts]
        found = sorted(m.decode() if isinstance(m, bytes) else m for m in await client.smembers(keys.board_shards))
        latest = await board_latest_day(client, keys, found)
        if latest:
            names += [keys.board(shard, f"net:{latest}") for shard in found[:: max(len(found) // 64, 1)]]
            names += [keys.board(BOARD, f"{name}:{latest}") for name in ("flow", "findings", "hist")]
        names.append(keys.board(BOARD, "applied"))
        sizes = dict(zip(names, await key_sizes(client, names), strict=True))
    finally:
        await client.aclose()
    name = max(sizes, key=lambda k: sizes[k])
    return {"key": name, "bytes": sizes[name], "board_shards": len(found)}


async def as_make_bench_counts(url: str, ids: Sequence[str], sample: int = COUNTED_SAMPLE) -> dict[str, float]:
    """Bytes per customer as ``make bench`` counts them (``streams.tools.bench.redis_memory``):
    ``MEMORY USAGE`` of a customer's own keys (state, changelog, outbox, recent findings; the
    mean over every ``len(ids) // sample``-th customer) plus its share of the tier index. The
    same measure at both scales: what grows with the customer count shows apart from the
    bank-level keys and Redis's own keyspace, which ``make bench`` leaves out."""
    client = connect(url, cluster=True)
    keys = Keys(PREFIX)
    bases = [keys.state(cid).removesuffix(":state") for cid in ids[:: max(len(ids) // sample, 1)]]
    try:
        replies = await key_sizes(client, [base + suffix for base in bases for suffix in SUFFIXES])
        index = sum(await key_sizes(client, await tier_keys(client, keys)))
    finally:
        await client.aclose()
    n = len(SUFFIXES)
    sizes = [sum(replies[i : i + n]) for i in range(0, len(replies), n)]
    own = statistics.mean(sizes) if sizes else 0.0
    return {"customer_keys": own, "tier_index": index / len(ids), "sampled": len(sizes)}


async def board_latest_day(client: Any, keys: Keys, shards: list[str]) -> str | None:
    latest = await asyncio.gather(*(client.get(keys.board(shard, "latest")) for shard in shards[:64]))
    known = [int(x) for x in latest if x]
    if not known:
        return None
    return dt.datetime.fromtimestamp(max(known) / 1e6, Settings().zone).date().isoformat()


def predicted(customers: int, findings: int, feed_entries: int, settings: Settings) -> int:
    """The memory model of docs/scale.md (``streams.tools.scale``) for this cluster: ``INFO memory``'s
    used memory summed over the masters."""
    return scale.predicted_bytes(
        customers,
        settings.board_days_kept,
        findings,
        open_days=settings.board_open_days,
        top_kept=settings.board_top_kept,
        feed_entries=feed_entries,
        cluster=True,
        masters=SHARDS,
    )


async def cut_board(url: str, settings: Settings, keep_days: int) -> float:
    """What a worker's 看板 timer does (``streams.app.prune_board``): the days past the
    retention dropped, the closed days cut to their top customers. Returns seconds."""
    client = connect(url, cluster=True)
    keys = Keys(PREFIX)
    started = time.perf_counter()
    try:
        await board.prune(client, keys, settings.zone, settings.board_days_kept, cluster=True)
        await board.trim(
            client,
            keys,
            settings.zone,
            kept=settings.board_top_kept,
            open_days=settings.board_open_days,
            keep_days=keep_days,
            cluster=True,
        )
    finally:
        await client.aclose()
    return time.perf_counter() - started


async def feed_length(url: str) -> int:
    client = connect(url, cluster=True)
    try:
        return int(await client.xlen(Keys(PREFIX).feed))
    finally:
        await client.aclose()


def run_scale(
    settings: Settings, berka: Path, customers: int, smoke: bool, out: Path | None, variants: int = VARIANTS
) -> Results:
    results = Results(customers)
    began = time.perf_counter()
    logging.basicConfig(level=logging.CRITICAL)
    settings = settings.model_copy(update={"event_time_max_skew_seconds": SYNTHETIC_SKEW_SECONDS})
    log_dir = Path(tempfile.mkdtemp(prefix="fundflow-bench-scale-"))
    try:
        with LocalCluster(log_dir) as cluster:
            single = EmbeddedRedis(free_port(), log_dir / "single")
            single.start()
            try:
                run_settings = settings.model_copy(
                    update={"redis_url": cluster.url, "app_id": "scale-cluster", "key_prefix": PREFIX}
                )
                with LocalRun(run_settings, log_dir) as run:
                    _run(results, run, run_settings, cluster, single, berka, customers, smoke, variants)
            finally:
                single.stop()
    except BaseException:
        # (a run that failed keeps what its servers and workers logged, for whoever looks into it)
        print(f"bench-scale: the logs of this run are kept in {log_dir}", file=sys.stderr)
        raise
    shutil.rmtree(log_dir, ignore_errors=True)
    results.seconds["total"] = time.perf_counter() - began
    results.notes.append(machine())
    results.notes.append(f"load average at the end (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(render(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results_dict(results), indent=2, default=str))
    return results


def _run(
    results: Results,
    run: LocalRun,
    settings: Settings,
    cluster: LocalCluster,
    single: EmbeddedRedis,
    berka: Path,
    customers: int,
    smoke: bool,
    variants: int,
) -> None:
    global _TEMPLATES
    timed = results.seconds
    ports = [node.port for node in cluster.nodes]
    empty = shard_info(ports)
    empty_single = shard_info([single.port])[0]

    source = berka_lines(berka, settings.zone)
    if smoke:
        source, variants = some_customers(source, SMOKE_TEMPLATE_CUSTOMERS), min(variants, 2)
    step(f"templates: the Berka data x {variants} through the batch processor")
    t = time.perf_counter()
    _TEMPLATES = all_templates(settings, single.url, source, variants)
    results.templates = len(_TEMPLATES)
    timed["templates"] = time.perf_counter() - t

    cached = min(settings.cache_customers, customers) if not smoke else 2_000
    step(f"the collector with {cached:,} states cached (in this process)")
    results.pauses["gc_probe"] = gc_probe(cached)

    keys = Keys(PREFIX)
    ids = slot_order(customer_ids(customers), keys)
    step(f"bulk load: {customers:,} customers into the {SHARDS}-master cluster")
    t = time.perf_counter()
    results.load_per_second["cluster"] = bulk_load(cluster.url, True, ids, settings.compress_state, LOADERS)
    as_of = max(tpl.state.last_us or 0 for tpl in _TEMPLATES)
    asyncio.run(_cuts(cluster.url, True, as_of))
    timed["load_cluster"] = time.perf_counter() - t
    step("看板: the days past the retention dropped, the closed days cut (as a worker's timer does)")
    lookback = settings.board_days_kept if not smoke else settings.board_open_days + 30  # (--smoke: a month)
    timed["board_cut"] = asyncio.run(cut_board(cluster.url, settings, lookback))
    # the comparison on one Redis takes the first COMPARED_EVENTS live events: round 0, one
    # event for each of the first customers in the live order, so only they are loaded there
    order = customer_ids(customers)
    compared = min(COMPARED_EVENTS, customers)
    step(f"bulk load: the {compared:,} customers of the comparison into one Redis")
    t = time.perf_counter()
    results.load_per_second["single"] = bulk_load(single.url, False, order[:compared], settings.compress_state, 2)
    asyncio.run(_cuts(single.url, False, as_of))
    timed["load_single"] = time.perf_counter() - t
    loaded = shard_info(ports)
    loaded_single = shard_info([single.port])[0]
    results.memory["as_make_bench_counts"] = asyncio.run(as_make_bench_counts(cluster.url, ids))

    # live traffic: customers in an order unrelated to their slots; round 0 first
    cache = settings.cache_customers
    live_count = min(customers, 2 * cache + cache // 4) if not smoke else customers
    lines = []
    for line in live_lines(order):
        lines.append(line)
        if len(lines) >= live_count:
            break
    spare = iter(live_lines(order, first_round=1))
    step(f"producing {len(lines):,} live events")
    t = time.perf_counter()
    results.events["produce_per_second"] = asyncio.run(produce(settings, run.bootstrap, lines))
    timed["produce"] = time.perf_counter() - t
    compared = min(compared, len(lines))
    timeout = 120.0 if smoke else 1500.0

    refresh = 2.0 if smoke else TIER_REFRESH_SECONDS
    env_cluster = {"FUNDFLOW_REDIS_CLUSTER": "true", "FUNDFLOW_TIER_REFRESH_SECONDS": str(refresh)}
    if smoke:  # (the takeover waits for the session timeout: a short one, the smoke's figures mean nothing)
        env_cluster["FUNDFLOW_BROKER_SESSION_TIMEOUT"] = "3"
    env_single = {
        "FUNDFLOW_APP_ID": "scale-single",
        "FUNDFLOW_REDIS_URL": single.url,
        "FUNDFLOW_REDIS_CLUSTER": "false",
    }
    step(f"single Redis: 2 workers, the first {compared:,} events")
    t = early = time.perf_counter()
    first = [run.start_worker(**env_single) for _ in range(2)]
    workers = [run.start_worker(**env_cluster) for _ in range(2)] if smoke else []  # (--smoke: joins overlap)
    results.events["single"] = asyncio.run(rate_of(run, single.url, False, compared, timeout, t))
    for worker in first:
        run.stop_worker(worker)
    timed["single_run"] = time.perf_counter() - t

    step(f"cluster: 2 workers, all {len(lines):,} events")
    t = time.perf_counter()
    commands_before = shard_info(ports)
    cluster_started = early if smoke else time.perf_counter()
    workers = workers or [run.start_worker(**env_cluster) for _ in range(2)]
    ports_web = [run.web_ports[run.workers.index(w)] for w in workers]
    results.events["cluster"] = asyncio.run(rate_of(run, cluster.url, True, len(lines), timeout, cluster_started))
    commands_after = shard_info(ports)
    timed["cluster_run"] = time.perf_counter() - t
    results.workers["rss_mb_after_catch_up"] = [round(rss_mb(w.pid)) for w in workers]

    rate = results.events["cluster"]["events_per_second"]
    seconds = 3.0 if smoke else HALF_LOAD_SECONDS
    # the tier refresh after the catch-up evaluates and writes every customer it committed:
    # the 50% stage starts after it (and after the folds of the catch-up's quiet changelogs)
    time.sleep(refresh + settings.fold_after_seconds if not smoke else 0.0)
    half = [line for _, line in zip(range(max(int(rate * 0.5 * seconds), 1)), spare, strict=False)]
    step(f"50% load: {rate * 0.5:,.0f}/s for {seconds:.0f} s")
    before = [scrape(p) for p in ports_web]
    results.latency["50%"] = asyncio.run(half_load(run, settings, cluster.url, half, rate * 0.5))
    after = [scrape(p) for p in ports_web]
    results.workers["rss_mb_after_half_load"] = [round(rss_mb(w.pid)) for w in workers]
    results.pauses |= {
        "gc_longest_ms": max(longest(a, "gc") for a in after) * 1000,
        "loop_longest_ms_at_half_load": max(longest_in_window(b, a, "loop") for b, a in zip(before, after, strict=True))
        * 1000,
        "loop_longest_ms_whole_run": max(longest(a, "loop") for a in after) * 1000,
    }

    step("tiers: waiting for a refresh after the traffic")
    time.sleep(refresh * 1.5)
    # a refresh of every customer the catch-up changed may still be under way (its evaluations
    # are paced): the agreement is read until it is whole, for a few more refreshes at most
    waited = time.perf_counter()
    results.tiers = asyncio.run(tier_agreement(cluster.url, True))
    while results.tiers.get("agreement", 1.0) not in (None, 1.0) and time.perf_counter() - waited < 3 * refresh:
        time.sleep(min(5.0, refresh))
        results.tiers = asyncio.run(tier_agreement(cluster.url, True))
    results.tiers["seconds_after_the_wait"] = round(time.perf_counter() - waited, 1)
    step("看板 read")
    results.board = asyncio.run(board_read(cluster.url, settings, 1 if smoke else 10))

    step("memory per shard, right after the traffic")
    unfolded = shard_info(ports)
    held = [scrape(p) for p in ports_web]
    # a bank's steady state: the catch-up's changelogs folded by the workers, as they do once
    # a customer has been quiet for FUNDFLOW_FOLD_AFTER_SECONDS (its backlog is the catch-up's)
    step("memory per shard, once the workers folded the catch-up's changelogs")
    waited = time.perf_counter()
    while summed(
        [scrape(p) for p in ports_web], "fundflow_changelog_customers"
    ) > 0 and time.perf_counter() - waited < (5.0 if smoke else FOLD_DRAIN_SECONDS):
        time.sleep(2.0)
    drained = time.perf_counter() - waited
    timed["fold_drain"] = drained
    final = shard_info(ports)
    left = [scrape(p) for p in ports_web]
    results.shards = [
        {
            "used_memory": f["used_memory"] - e["used_memory"],
            "keys": f["keys"],
            "commands": c1["commands"] - c0["commands"],
        }
        for f, e, c0, c1 in zip(final, empty, commands_before, commands_after, strict=True)
    ]
    memory = [s["used_memory"] for s in results.shards]
    commands = [s["commands"] for s in results.shards]
    results.memory |= {
        "bytes_per_customer_loaded": used_beyond(loaded, empty) / customers,
        "bytes_per_customer": sum(memory) / customers,
        "bytes_per_customer_unfolded": used_beyond(unfolded, empty) / customers,
        "fold_drain_seconds": drained,
        "changelogs_still_held": round(summed(left, "fundflow_changelog_customers")),
        "single_bytes_per_customer": (loaded_single["used_memory"] - empty_single["used_memory"]) / compared,
        "balance": max(memory) / statistics.mean(memory) if statistics.mean(memory) else None,
        "largest_shared_key": asyncio.run(largest_shared_key(cluster.url)),
        # customers whose changelog the workers had not folded yet, and those the cache let go
        # with theirs unfolded (left in Redis until their next commits)
        "changelogs_held": round(summed(held, "fundflow_changelog_customers")),
        "changelogs_left": round(summed(left, "fundflow_changelog_left_total")),
    }
    results.commands = {"balance": max(commands) / statistics.mean(commands) if statistics.mean(commands) else None}
    findings = sum(min(len(template_of(cid).findings), RECENT_ALERTS_KEPT) for cid in order)
    feed_entries = asyncio.run(feed_length(cluster.url))
    results.model = {
        "predicted_bytes": predicted(customers, findings, feed_entries, settings),
        # (used memory, as the model counts it: at rest, after the load and the 看板's cut; after
        # the traffic the catch-up's changelogs wait to be folded, which the model leaves out)
        "measured_bytes": sum(x["used_memory"] for x in loaded),
        "findings_loaded": findings,
        "feed_entries": feed_entries,
    }

    step("takeover: one worker killed")
    partitions = settings.partitions
    markers: dict[int, bytes] = {}
    for line in spare:
        cid = orjson.loads(line)["customer_id"]
        markers.setdefault(partition_of(cid, partitions), line)
        if len(markers) == partitions:
            break
    results.takeover = asyncio.run(takeover(run, settings, cluster.url, workers[1], list(markers.values())))
    results.workers["cache_customers"] = cache
    results.pauses["gc_noticed"] = noticed_collections(run.log_dir)


def noticed_collections(log_dir: Path) -> dict[str, Any]:
    """The collections the workers logged as noticeable (``streams.health.NOTICED_SECONDS``):
    how many, and the longest, per generation, in wall clock and in the collector's own CPU
    time (a worker waiting for a core mid-collection counts in the first only)."""
    found: dict[str, list[tuple[float, float]]] = {}
    pattern = r"garbage collection of generation (\S+) held the worker (\d+) ms \((\d+) ms of CPU\)"
    for path in log_dir.glob("worker-*.log"):
        for match in re.finditer(pattern, path.read_text()):
            found.setdefault(match.group(1), []).append((float(match.group(2)), float(match.group(3))))
    return {
        g: {"count": len(ms), "longest_ms": max(w for w, _ in ms), "longest_cpu_ms": max(c for _, c in ms)}
        for g, ms in sorted(found.items())
    }


async def _cuts(url: str, cluster: bool, as_of: int) -> None:
    client = connect(url, cluster)
    try:
        await recompute_cuts(client, Keys(PREFIX), as_of)
    finally:
        await client.aclose()


def steady_bytes(mem: dict[str, Any]) -> float:
    """Redis bytes per customer at a bank's steady state: the larger of the two measures with
    every changelog folded. At rest after the load the 看板 holds its 400 days; after the
    traffic (its event time a loop of the data later) the prune has left it only the new days."""
    return float(max(mem.get("bytes_per_customer_loaded", 0.0), mem.get("bytes_per_customer", 0.0)))


def summary(results: Results) -> str:
    mem, tiers, pauses = results.memory, results.tiers, results.pauses
    agreement = tiers.get("agreement")
    worst = max(pauses.get("gc_longest_ms", 0.0), pauses.get("loop_longest_ms_at_half_load", 0.0))
    return (
        f"scale: customers={results.customers} bytes/customer={steady_bytes(mem):.0f}"
        f" shard-balance={mem.get('balance') or 0:.2f}"
        f" tier-agreement={'n/a' if agreement is None else f'{agreement * 100:.2f}'}"
        f" max-pause-ms={worst:.0f}"
    )


def render(results: Results) -> str:
    out = [f"FundFlow scale benchmark: {results.customers:,} customers ({results.templates:,} Berka templates),"
           f" {SHARDS}-master Redis Cluster; {results.notes[0] if results.notes else ''}", ""]  # fmt: skip
    s = results.seconds
    out.append("time: " + ", ".join(f"{k} {v:,.0f} s" for k, v in s.items()))
    out.append(
        "bulk load (StateStore.commit): "
        + ", ".join(f"{k} {v:,.0f} customers/s" for k, v in results.load_per_second.items())
    )
    mem = results.memory
    out.append(
        f"Redis bytes per customer, everything included: {steady_bytes(mem):,.0f} B, the larger of: at rest after the"
        f" load {mem.get('bytes_per_customer_loaded', 0):,.0f} B (the 看板's days all kept); after the traffic with its"
        f" changelogs folded {mem.get('bytes_per_customer', 0):,.0f} B (the traffic's event time is a loop of the data"
        f" later: the 看板 keeps only its new days). One Redis: {mem.get('single_bytes_per_customer', 0):,.0f} B"
    )
    if "changelogs_held" in mem:
        out.append(
            f"  right after the traffic: {mem['bytes_per_customer_unfolded']:,.0f} B, with {mem['changelogs_held']:,}"
            f" customers' changelogs not folded yet; the workers folded them in {mem['fold_drain_seconds']:,.0f} s"
            f" ({mem['changelogs_still_held']:,} left then; {mem['changelogs_left']:,} let go unfolded by the caches)"
        )
    if counted := mem.get("as_make_bench_counts"):
        own, index = counted["customer_keys"], counted["tier_index"]
        rest = mem.get("bytes_per_customer_loaded", 0.0) - own - index
        out.append(
            f"  as make bench counts, at rest after the load: {own + index:,.0f} B = a customer's keys {own:,.0f} B"
            f" (mean of {counted['sampled']:,}) + its share of the tier index {index:,.0f} B; the other {rest:,.0f} B"
            " are the bank-level keys (看板, feed, statistics) and Redis's keyspace, which make bench leaves out"
        )
    for i, shard in enumerate(results.shards):
        out.append(
            f"  shard {i}: {shard['used_memory'] / 2**20:,.1f} MiB, {shard['keys']:,} keys,"
            f" {shard['commands']:,} commands in the cluster run"
        )
    out.append(
        f"  max/mean: memory {mem.get('balance') or 0:.2f}, commands {results.commands.get('balance') or 0:.2f}"
        "   target memory <= 1.5"
    )
    big = mem.get("largest_shared_key") or {}
    if big:
        share = big["bytes"] / max(sum(sh["used_memory"] for sh in results.shards), 1)
        out.append(f"  largest shared key: {big['key']} {big['bytes']:,} B ({share:.2%} of the data)   target <= 1%")
        out.append(f"  看板 shards (one per slot written): {big['board_shards']:,}")
    model = results.model
    if model.get("predicted_bytes"):
        ratio = model["measured_bytes"] / model["predicted_bytes"]
        predicted_bytes = model["predicted_bytes"]
        out.append(
            f"  memory model (docs/scale.md), at rest after the load: predicted {predicted_bytes:,} B,"
            f" measured/predicted {ratio:.2f}"
        )
        out[-1] += "   target 0.8-1.2"
    else:
        out.append("  memory model: no predicted_bytes found (docs/scale.md)")
    ev = results.events
    if ev.get("cluster") and ev.get("single"):
        c, one = ev["cluster"], ev["single"]
        out.append(
            f"events/s, 2 workers: cluster {c['events_per_second']:,.0f} (first {COMPARED_EVENTS:,}:"
            f" {c['first_events_per_second']:,.0f}) | one Redis {one['events_per_second']:,.0f}"
        )
    lat = results.latency.get("50%")
    if lat:
        com = lat["committed_ms"]
        out.append(
            f"latency at 50% ({lat['rate']:,}/s, {lat['events']:,} events): committed p50 {com['p50']} p99 {com['p99']}"
            f" max {com['max']} ms"
        )
    p = results.pauses
    if "gc_longest_ms" in p:
        out.append(
            f"longest pause: GC {p['gc_longest_ms']:.1f} ms (whole run, caches up to"
            f" {results.workers.get('cache_customers', 0):,}); loop lag at 50% load"
            f" <= {p['loop_longest_ms_at_half_load']:.0f} ms"
            f" (histogram bound); loop lag whole run {p['loop_longest_ms_whole_run']:.0f} ms (catch-up batches)"
            f"   target <= {PAUSE_TARGET_MS} ms"
        )
    if p.get("gc_noticed"):
        out.append(
            "collections over 50 ms the workers logged: "
            + ", ".join(
                f"generation {g}: {v['count']} (longest {v['longest_ms']:.0f} ms;"
                f" of CPU at most {v.get('longest_cpu_ms', 0):.0f} ms)"
                for g, v in p["gc_noticed"].items()
            )
        )
    probe = p.get("gc_probe")
    if probe:
        full = probe["not_frozen"]["generation 2"]
        frozen = probe["frozen"]
        out.append(
            f"the collector with {probe['cached']:,} states cached ({probe['tracked_objects']:,} tracked objects):"
            f" a full collection {full['wall_ms']:,.0f} ms ({full['cpu_ms']:,.0f} ms CPU) unfrozen; frozen as a worker"
            " does: " + ", ".join(f"{g} {v['wall_ms']:.1f} ms ({v['cpu_ms']:.1f} CPU)" for g, v in frozen.items())
        )
    w = results.workers
    out.append(
        f"worker RSS MiB: after catch-up {w.get('rss_mb_after_catch_up')},"
        f" after 50% load {w.get('rss_mb_after_half_load')}"
    )
    tk = results.takeover
    if tk:
        took = "did not finish" if tk.get("seconds") is None else f"{tk['seconds']:.1f} s"
        out.append(f"takeover after kill -9 of one worker: {took} (one event per partition committed by the survivor)")
    t = results.tiers
    if t.get("agreement") is not None:
        out.append(
            f"tier agreement with the exact quartiles: {t['agreement']:.4%} of {t['customers']:,}"
            f" (live cuts {t['live_cuts']}, exact {t['exact_cuts']};"
            f" read {t.get('seconds_after_the_wait', 0):.0f} s after one and a half refresh intervals)"
        )
    b = results.board
    if b.get("timed_out_after_ms"):
        out.append(f"看板 read (GET /board's body, all shards): not done in {b['timed_out_after_ms'] / 1000:.0f} s")
    elif b:
        out.append(f"看板 read (GET /board's body, all shards): p50 {b['p50_ms']} ms, max {b['max_ms']} ms")
    out += [*results.notes[1:], "", summary(results)]
    return "\n".join(out)


def results_dict(results: Results) -> dict[str, Any]:
    return {name: getattr(results, name) for name in results.__slots__}


def run_bench_scale_command(
    berka: Path | None, customers: int | None, smoke: bool, out: Path, variants: int = VARIANTS
) -> int:
    """``fundflow bench-scale`` (``make bench-scale``)."""
    berka = SHIPPED_BERKA if berka is None else berka
    if not berka.is_dir():
        raise ConfigError(f"no Berka data at {berka}")
    customers = customers if customers is not None else (SMOKE_CUSTOMERS if smoke else DEFAULT_CUSTOMERS)
    run_scale(Settings(), berka, customers, smoke, out, variants)
    return 0


if __name__ == "__main__":  # pragma: no cover
    print("bench-scale: run `fundflow bench-scale`", file=sys.stderr)
    sys.exit(2)
