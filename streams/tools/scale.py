"""The memory model of docs/scale.md: Redis bytes from what a deployment keeps.

    bytes = a·customers + f·findings kept + e·feed entries
            + the 看板: per day kept, its flow and finding cells, and its net-outflow sets
              (whole for the open days, the top ``top_kept`` for the closed ones)
            + what does not grow (the latency samples, the statistics)

Every coefficient is measured (``streams.tools.memmodel``: a few thousand Berka customers
through the real commit path into a Valkey of its own, ``MEMORY USAGE`` of every key by
what it holds); ``COEFFICIENTS`` are the figures of the last measurement, and docs/scale.md
shows the run. On Redis Cluster the 看板 has one shard per slot with data (``streams.board``),
so a day's cells and sets are spread over as many small keys, each with its own overhead
and the compact encoding of a small key: ``predicted_bytes(..., cluster=True)`` counts them
so. Pure arithmetic: no Redis here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from streams.pipeline import Message
from streams.tiers import BAND_LEAST, BAND_SHARE, TOP_KEPT, layout_for

SLOTS = 16384
FEED_KEPT = 10_000  # streams.storage.store.FEED_KEPT (the feed stream's cap)
SMALL_ZSET = 128  # zset-max-listpack-entries: a set up to this many members is a listpack
TIER_SHARDS = 32  # streams.storage.keys.TIER_SHARDS


@dataclass(frozen=True, slots=True)
class Coefficients:
    """Bytes per unit, as measured (``streams.tools.memmodel.coefficients``)."""

    customer: float  # a customer's state (string), changelog and outbox at rest
    tier: float  # a customer's share of the tier index: a listpack entry, its sub-shard's overhead
    tier_big: float  # a skiplist's entry (one sorted set a shard past 128 customers): not in the model
    finding: float  # one finding in a customer's recent-alerts list
    feed_entry: float  # one finding in the feed stream
    net_entry: float  # one member of a large net-outflow set (skiplist)
    net_entry_small: float  # one member of a small one (listpack: a cluster shard's)
    zset_key: float  # a sorted set's own overhead
    cell: float  # one cell of a flow or findings hash
    hash_key: float  # a hash's own overhead
    cells_per_day: float  # flow and findings cells of one day, one shard holding every customer
    cells_per_active: float  # cells one active customer adds to a day of a shard of its own
    active_share: float  # customers with a net-outflow entry on a day, over all customers (Berka)
    positive_share: float  # customers with a positive net outflow on a day, over all customers (Berka)
    findings_per_customer: float  # findings kept in the recent-alerts lists, per customer (Berka)
    shard_key: float  # a 看板 shard's own keys on a cluster (latest, collection, trim marker)
    fixed: float  # the latency samples and statistics, full
    per_key: float  # what a key costs Redis beyond its MEMORY USAGE (its keyspace entry)
    keys_per_customer: float  # a customer's own keys at rest (state; alerts when it has findings)
    overhead: float  # used_memory beyond the keys' MEMORY USAGE, their keyspace entries and an empty server
    overhead_per_customer: float  # the part of it that grows with the customers (two runs, fitted)
    empty: float  # used_memory of an empty server (once per master)


# The figures of the last run of ``python -m streams.tools.memmodel`` (docs/scale.md, "The
# coefficients, measured").
COEFFICIENTS = Coefficients(
    customer=555.6,
    tier=17.4,
    tier_big=90.9,
    finding=163.1,
    feed_entry=707.0,
    net_entry=90.9,
    net_entry_small=10.8,
    zset_key=53.2,
    cell=26.7,
    hash_key=53.3,
    cells_per_day=3.451,
    cells_per_active=1.192,
    active_share=0.08024,
    positive_share=0.0369,
    findings_per_customer=0.2343,
    shard_key=248,
    fixed=1006800.0,
    per_key=16.5,
    keys_per_customer=1.129,
    overhead=41118.1,
    overhead_per_customer=11.1,
    empty=1044736,
)

# That run (3 × Berka, 3,687 customers): what ``predicted_bytes`` is held to (tests/unit/test_scale.py).
CALIBRATION = {
    "customers": 3687,
    "findings_kept": 864,
    "feed_entries": 864,
    "days_kept": 400,
    "keys_total": 8327788,
    "used_memory": 9538600,
}


HIST_BUCKETS_PER_DAY = 60  # quarter-octave buckets of a day's positive net outflows (cents: ~15 octaves)


def slots_hit(members: float) -> float:
    """How many of the 16,384 slots ``members`` customers, spread at random, fall into."""
    return SLOTS * (1 - math.exp(-members / SLOTS)) if members > 0 else 0.0


def _sets(members: float, keys: float, c: Coefficients) -> float:
    """``members`` spread over ``keys`` sorted sets: each its overhead, each member as its
    set's encoding costs it."""
    if keys <= 0 or members <= 0:
        return 0.0
    per_key = members / keys
    entry = c.net_entry_small if per_key <= SMALL_ZSET else c.net_entry
    return keys * c.zset_key + members * entry


def board_bytes(
    days_kept: int,
    active_per_day: float,
    open_days: int,
    top_kept: int,
    cluster: bool,
    c: Coefficients,
    findings_per_day: float = 0.0,
) -> tuple[float, float]:
    """The 看板's keys: per day its cells and its net-outflow set(s). Returns (bytes, keys)."""
    days = days_kept + 1  # the latest day and the days kept before it
    opened = min(open_days, days)
    closed = days - opened
    positive = active_per_day * (c.positive_share / c.active_share) if c.active_share else active_per_day
    kept = min(top_kept, positive)  # (a closed day keeps only positive net outflows)
    if not cluster:
        flows = 1 + (1 if findings_per_day > 0 else 0)  # the day's flow hash, and findings hash
        per_day = flows * c.hash_key + c.cells_per_day * c.cell
        size = days * per_day + opened * _sets(active_per_day, 1, c) + closed * _sets(kept, 1, c)
        return size, days * (flows + 1)
    # Redis Cluster: a day's cells are folded into the bank-wide keys (one flow, findings and
    # histogram hash a day); each slot keeps its own net-outflow sets and its shard keys (latest,
    # trim marker; pending cells only between folds), and the bank-wide keys a generation per slot
    shards = slots_hit(active_per_day)  # shards with a net-outflow set on a day
    kept_shards = slots_hit(kept)
    every = slots_hit(active_per_day * days)  # every shard written on any day: its own keys
    hashes = 1 + (1 if findings_per_day > 0 else 0) + (1 if positive > 0 else 0)  # flows, findings, histogram
    cells = min(c.cells_per_day, c.cells_per_active * active_per_day) + min(HIST_BUCKETS_PER_DAY, positive)
    per_day = hashes * c.hash_key + cells * c.cell
    size = (
        every * (c.shard_key + c.cell)
        + days * per_day
        + opened * _sets(active_per_day, shards, c)
        + closed * _sets(kept, kept_shards, c)
    )
    keys = every * 2 + days * hashes + opened * shards + closed * kept_shards
    return size, keys


def tier_bands(customers: int, c: Coefficients = COEFFICIENTS) -> float:
    """Bytes of the tier bands (``streams.tiers``): the customers near the three cut points and
    the top ones, a second entry each, in 32 sorted sets (listpacks while small)."""
    held = min(customers, 3 * (2 * max(BAND_LEAST, int(customers * BAND_SHARE)) + 1) + TOP_KEPT)
    return held * (c.tier if held / TIER_SHARDS <= SMALL_ZSET else c.tier_big)


def predicted_bytes(
    customers: int,
    days_kept: int = 400,
    findings_kept: float | None = None,
    *,
    active_per_day: float | None = None,
    open_days: int = 8,
    top_kept: int = 200,
    feed_entries: float | None = None,
    cluster: bool = False,
    masters: int = 1,
    used_memory: bool = True,
    c: Coefficients = COEFFICIENTS,
) -> int:
    """Redis bytes of a deployment of ``customers`` that keeps ``days_kept`` 看板 days
    (FUNDFLOW_BOARD_DAYS_KEPT), ``findings_kept`` findings in its recent-alerts lists (at most
    200 per customer; default: Berka's rate per customer), ``active_per_day`` customers with
    a flow on a day (default: Berka's share), ``open_days`` whole days and ``top_kept``
    customers per closed day (FUNDFLOW_BOARD_OPEN_DAYS, FUNDFLOW_BOARD_TOP_KEPT), and
    ``feed_entries`` findings in the feed (default: the cap, or every finding if fewer).
    ``used_memory``: what ``INFO memory`` says, summed over ``masters`` (each its empty
    server, every key its keyspace entry); else the sum of ``MEMORY USAGE`` of the keys."""
    findings = c.findings_per_customer * customers if findings_kept is None else findings_kept
    active = c.active_share * customers if active_per_day is None else active_per_day
    feed = min(FEED_KEPT, findings) if feed_entries is None else feed_entries
    per_day = findings / max(1, days_kept)  # (findings kept spread over the days kept)
    board, board_keys = board_bytes(days_kept, active, open_days, top_kept, cluster, c, per_day)
    total = (
        customers * (c.customer + c.tier)  # (the tier shards grow sub-shards with the customers)
        + tier_bands(customers, c)
        + findings * c.finding
        + feed * c.feed_entry
        + board
        + c.fixed
    )
    if used_memory:
        keys = customers * c.keys_per_customer + board_keys + TIER_SHARDS * (layout_for(customers) + 3)
        total += keys * c.per_key + customers * c.overhead_per_customer + masters * (c.empty + c.overhead)
    return round(total)


class DiscardingEmitter:
    """Publishing that always succeeds: the tools that load customers through the real commit
    path (``memmodel``, ``benchscale``) measure Redis, not the findings' topics."""

    async def send_all(self, messages: Sequence[Message]) -> None:
        return None
