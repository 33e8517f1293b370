"""Live 客户分层: quartile tiers of contribution over all customers, kept in Redis.

Layout (``streams.storage.keys``):

* ``{p}:{T}:tiers`` — sorted set, member = customer_id, score = contribution
  (cent-rounded; a double holds every cent exactly up to ~10^13, so the order
  is exact, and the score gives the contribution back);
* ``{p}:{T}:tiers:value`` — hash customer_id -> the exact contribution string, only
  for the contributions the score does not give back (beyond a double's cents, or
  not in cents): as a rule empty, so a customer costs one sorted-set entry;
* ``{p}:tiers:cuts`` — hash q1, q2, q3, n, as_of, refreshed_at;
* ``{p}:{T}:tiers:moved:{YYYY-Www}`` — set of the customers whose tier changed in
  that ISO week (event time of the refresh, bank zone), for the 看板.

Finding the cut points reads only the ranks the interpolation needs
(``statistics.quantiles(method="inclusive")`` puts Qk at position
(n-1)·k/4), so a refresh costs O(changed customers + log n), never a scan.
A worker refreshes what it changed every ``FUNDFLOW_TIER_REFRESH_SECONDS``;
``fundflow tiers --refresh`` rebuilds everything from the stored states.
Tiers may lag the newest events by one refresh interval (metrics.md allows it);
a backtest snapshot computes them exactly. A state whose contribution cannot be
computed (one stored before event time had bounds, say) is left out and logged:
it never stops the refresh for everyone else, nor moves their ``as_of``.

Tiers are a refreshed view, not exactly-once state (metrics.md allows it): they
are not written in the workers' atomic commit, several workers refresh the same
shared keys, and a customer's tier depends on everyone's contribution. So are
the tier moves: after each refresh the customers it re-evaluated, and those
whose score lies between an old and a new cut point (the only ones whose tier
the moved cuts can change), are compared with the tier they had before it: their
stored contribution before the refresh wrote theirs, under the cut points before it
(each refresh leaves every customer at ``tier_of(stored contribution, cut points)``,
so that is the tier the last refresh gave them, without a copy of it per customer);
a changed tier adds the customer to the week's set (a set: a repeat, or two workers
finding the same move, counts once). A move is dated by the refresh's event
time, so it may land in the next week when a refresh straddles midnight of a
Sunday; a customer's first tier is not a move.

An earlier version kept every exact value and every last tier in two hashes per
shard; ``migrate_shard_copies`` drops what the scores already hold, once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis

from rules.contribution import ContributionRates, contribution, tier_of
from rules.metrics import SegmentThresholds, evaluate
from rules.money import to_cent
from rules.state import CustomerState, StateConfig, from_us
from streams import telemetry
from streams.decode import LATEST_SUPPORTED_US
from streams.storage.keys import tier_tag, tier_tags

log = logging.getLogger(__name__)

Cuts = tuple[Decimal, Decimal, Decimal]
MOVED_KEPT_SECONDS = 14 * 86400  # a week's set of tier moves outlives its week by one more

# A refresh evaluates every customer changed since the last one, which at a bank's rates is
# a fraction of a second of CPU or more (docs/performance.md, "The live-tier refresh"). The
# worker's batches run on the same event loop, so the refresh gives the loop back after each
# slice of this long: a batch waits at most one slice, never the whole refresh. The worker's
# refresh also spreads its slices over half its interval (``pause_after``): run back to
# back they took the worker's spare capacity, and the backlog they left raised the
# committed latency while it drained (same section).
REFRESH_SLICE_SECONDS = 0.005
MOVES_PER_SLICE = 2_048  # customers whose move a refresh looks at between two turns of the loop


def pause_after(started: float, now: float, done: int, total: int, within: float) -> float:
    """How long a refresh that spreads ``total`` evaluations over ``within`` seconds from
    ``started`` waits at ``now``, ``done`` of them done: until its next share is due, and
    not at all when it is behind (or ``within`` is 0): it then only gives the loop back."""
    if within <= 0 or total <= 0:
        return 0.0
    return max(0.0, started + within * done / total - now)


def cut_positions(n: int) -> list[tuple[int, int, Decimal]]:
    """For Q1..Q3 of n sorted values: (lower rank, upper rank, fraction)."""
    result = []
    for k in (1, 2, 3):
        position = Decimal((n - 1) * k) / 4
        low = int(position)
        result.append((low, min(low + 1, n - 1), position - low))
    return result


def interpolate(values_at: dict[int, Decimal], n: int) -> Cuts | None:
    if n < 2:
        return None
    cuts = [values_at[lo] + (values_at[hi] - values_at[lo]) * frac for lo, hi, frac in cut_positions(n)]
    return cuts[0], cuts[1], cuts[2]


class Committed:
    """What a worker committed since the tiers' last refresh: the states to re-evaluate
    (the processor's ``on_commit`` adds them), and the latest event time among them. Its
    own object so that the processor can be told of commits before the tier book, which
    reads the processor's cached states, is built."""

    def __init__(self) -> None:
        self.states: dict[str, CustomerState] = {}
        self.watermark_us = 0

    def add(self, states: Iterable[CustomerState]) -> None:
        for state in states:
            self.states[state.customer_id] = state
            last = state.last_us
            if last is not None and self.watermark_us < last <= LATEST_SUPPORTED_US:
                self.watermark_us = last

    def take(self) -> dict[str, CustomerState]:
        """The states added since the last ``take``, forgotten here."""
        taken, self.states = self.states, {}
        return taken


class TierBook:
    """The worker's view of live tiers: what it changed, the cut points, tier lookups.
    ``state_of`` finds the state of a customer the book has not evaluated (the worker's
    cached state); ``committed`` is where the worker's commits arrive."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Any,
        config: StateConfig,
        thresholds: SegmentThresholds,
        rates: ContributionRates,
        state_of: Callable[[str], CustomerState | None] = lambda cid: None,
        committed: Committed | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.thresholds = thresholds
        self.rates = rates
        self.state_of = state_of
        self.committed = committed if committed is not None else Committed()
        self.cuts: Cuts | None = None
        self.migrated = False

    def contribution_of(self, state: CustomerState, as_of_us: int) -> Decimal:
        metrics = evaluate(state, as_of_us, self.config, self.thresholds)
        value = contribution(state, metrics, as_of_us, self.config.zone, self.rates)["contribution"]
        return to_cent(value)

    def changed(self, states: Iterable[CustomerState]) -> None:
        self.committed.add(states)

    async def tier_of(self, customer_id: str) -> str | None:
        """The customer's tier with the current cut points (None before the first refresh):
        of the contribution the last refresh stored, else of its cached state. Read from
        Redis each time: a worker that remembered every customer it refreshed grew with the
        bank, not with its cache."""
        if self.cuts is None:
            return None
        value = (await contributions(self.redis, self.keys, [customer_id]))[customer_id]
        if value is None:
            state = self.state_of(customer_id)
            if state is None or state.last_us is None:
                return None
            value = self.contribution_of(state, max(state.last_us, self.committed.watermark_us))
        return tier_of(value, self.cuts)

    async def refresh(self, within: float = 0.0) -> int:
        """Write the changed customers' contributions, then recompute the cut points. The
        evaluations are spread over ``within`` seconds (0: done as fast as slices allow)."""
        if not self.migrated:  # a deployment's tiers as an earlier version kept them
            await migrate_single_keys(self.redis, self.keys, self.config.zone)
            await migrate_shard_copies(self.redis, self.keys)
            self.migrated = True
        dirty = self.committed.take()
        as_of = self.committed.watermark_us
        values: dict[str, Decimal] = {}
        failed: list[str] = []
        started = time.perf_counter()
        slice_ends = started + REFRESH_SLICE_SECONDS
        total = len(dirty)
        for done in range(total):
            if (now := time.perf_counter()) > slice_ends:
                # let the batches waiting on the loop run (a state changed meanwhile is in
                # the next refresh's ``dirty`` too: tiers lag one interval)
                await asyncio.sleep(pause_after(started, now, done, total, within))
                slice_ends = time.perf_counter() + REFRESH_SLICE_SECONDS
            # taken out as it is evaluated: a state the cache let go since its commit is freed
            # here, within a slice, not with tens of thousands of others when the refresh ends
            # (docs/scale.md, "What a refresh let go at once")
            cid, state = dirty.popitem()
            try:
                values[cid] = self.contribution_of(state, max(as_of, state.last_us or 0))
            except Exception as exc:  # one unusable state must not stop everyone's tiers
                failed.append(type(exc).__name__)
            del state
        if failed:
            log.warning("live tiers: %d customers left out: state cannot be evaluated (%s)", len(failed), failed[0])
        before, _ = await read_cuts(self.redis, self.keys)
        previous = await contributions(self.redis, self.keys, values)  # (their tiers before: for the moves)
        await write_contributions(self.redis, self.keys, values)
        self.cuts = await recompute_cuts(self.redis, self.keys, as_of)
        await record_moves(self.redis, self.keys, values, previous, before, self.cuts, as_of, self.config.zone)
        for tier, count in (await tier_counts(self.redis, self.keys, self.cuts)).items():
            telemetry.TIER_CUSTOMERS.labels(tier).set(count)
        return len(values)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def by_shard(customers: Iterable[str]) -> dict[str, list[str]]:
    """``customers`` grouped by their tier shard tag."""
    groups: dict[str, list[str]] = {}
    for cid in customers:
        groups.setdefault(tier_tag(cid), []).append(cid)
    return groups


async def _each_shard(redis: aioredis.Redis, call: Callable[[Any, str], Any]) -> list[Any]:
    """``call(pipe, tag)`` for every tier shard, in one pipeline; the replies in shard order."""
    async with redis.pipeline(transaction=False) as pipe:
        for tag in tier_tags():
            call(pipe, tag)
        replies: list[Any] = await pipe.execute()
        return replies


# Customers one pipeline of a refresh writes: after a catch-up a worker has every customer it
# touched to write, and one pipeline of them all is packed and parsed in one go on the loop.
WRITE_CHUNK = 1_000


def cents_of(score: float) -> Decimal:
    """The contribution a sorted-set score stands for: its cent amount."""
    return Decimal(round(score * 100)).scaleb(-2)


def exact_needed(value: Decimal) -> bool:
    """Whether ``value`` needs its exact string beside its score: the score's cent amount
    does not give the same string back (beyond a double's cents, or not in cents)."""
    text = str(value)
    if text[-3:-2] == "." and len(text) - text.startswith("-") <= 16 and text != "-0.00":
        return False  # cents below 10^13 in magnitude: a double gives every one back (tested)
    return str(cents_of(float(value))) != text


# Up to this many customers, a read or write goes to every shard's exact strings without
# asking first which shards have any: one round trip rather than two (a lookup, the top).
FEW = 64


async def _with_exact(redis: aioredis.Redis, keys: Any, customers: int) -> set[str]:
    """The shards that hold exact strings at all (as a rule none: ``exact_needed``); for a
    few customers, every shard."""
    if customers <= FEW:
        return set(tier_tags()) if customers else set()
    found = await _each_shard(redis, lambda pipe, tag: pipe.exists(keys.tier_shard(tag, "value")))
    return {tag for tag, n in zip(tier_tags(), found, strict=True) if int(n)}


async def write_contributions(redis: aioredis.Redis, keys: Any, values: dict[str, Decimal]) -> None:
    """Each customer's score, and its exact string where the score does not give it back;
    any other exact string of theirs (an earlier value's, or an earlier version's) is deleted."""
    customers = list(values)
    with_exact = await _with_exact(redis, keys, len(customers))
    for start in range(0, len(customers), WRITE_CHUNK):
        chunk = {cid: values[cid] for cid in customers[start : start + WRITE_CHUNK]}
        async with redis.pipeline(transaction=False) as pipe:
            for tag, group in by_shard(chunk).items():
                pipe.zadd(keys.tier_shard(tag), {cid: float(chunk[cid]) for cid in group})
                exact: dict[Any, str] = {cid: str(chunk[cid]) for cid in group if exact_needed(chunk[cid])}
                if exact:
                    pipe.hset(keys.tier_shard(tag, "value"), mapping=exact)
                if tag in with_exact and (plain := [cid for cid in group if cid not in exact]):
                    pipe.hdel(keys.tier_shard(tag, "value"), *plain)
            await pipe.execute()


async def contributions(redis: aioredis.Redis, keys: Any, customers: Iterable[str]) -> dict[str, Decimal | None]:
    """The exact contribution the last refresh wrote for each customer (None: none): its
    exact string where there is one, else its score's cent amount."""
    found: dict[str, Decimal | None] = {}
    wanted = list(dict.fromkeys(customers))
    with_exact = await _with_exact(redis, keys, len(wanted))
    for start in range(0, len(wanted), WRITE_CHUNK):
        groups = by_shard(wanted[start : start + WRITE_CHUNK])
        async with redis.pipeline(transaction=False) as pipe:
            for tag, group in groups.items():
                pipe.zmscore(keys.tier_shard(tag), group)
                if tag in with_exact:
                    pipe.hmget(keys.tier_shard(tag, "value"), group)
            replies = iter(await pipe.execute())
        for tag, group in groups.items():
            scores = next(replies)
            exact = next(replies) if tag in with_exact else [None] * len(group)
            for cid, score, value in zip(group, scores, exact, strict=True):
                found[cid] = Decimal(value.decode()) if value else None if score is None else cents_of(score)
    return found


async def all_contributions(redis: aioredis.Redis, keys: Any) -> dict[str, Decimal]:
    """Every customer's exact contribution (a walk over the shards: for checks and tests)."""
    found: dict[str, Decimal] = {}
    for tag in tier_tags():
        async for cid, score in redis.zscan_iter(keys.tier_shard(tag), count=1000):
            found[_text(cid)] = cents_of(score)
        async for cid, value in redis.hscan_iter(keys.tier_shard(tag, "value"), count=1000):
            found[_text(cid)] = Decimal(_text(value))
    return found


async def customer_count(redis: aioredis.Redis, keys: Any) -> int:
    """How many customers the tiers hold: the shards' ZCARDs summed."""
    return sum(int(n) for n in await _each_shard(redis, lambda pipe, tag: pipe.zcard(keys.tier_shard(tag))))


def tier_key_names(keys: Any) -> list[str]:
    """Every per-customer tier key (the shards' sorted sets and exact values), for MEMORY USAGE."""
    return [keys.tier_shard(tag, name) for tag in tier_tags() for name in ("", "value")]


def _score(cents: int) -> float:
    """The sorted-set score of a cent amount, as ``write_contributions`` writes it."""
    return float(Decimal(cents).scaleb(-2))  # (cents_of gives ``cents`` back)


async def values_at(redis: aioredis.Redis, keys: Any, ranks: Iterable[int]) -> dict[int, Decimal]:
    """The contribution at each rank (0: the lowest) over every shard, exactly: a bisection
    over cent amounts, each step one pipelined ZCOUNT per shard and rank still open, so a
    refresh costs O(shards · log(range in cents) · log n), never a walk over the customers
    (docs/scale.md, "Tiers"). Scores are cent-exact doubles: a cent amount ``k`` counts every
    customer whose contribution is at most ``k``, and none above it."""
    wanted = sorted(set(ranks))
    if not wanted:
        return {}
    ends = await _each_shard(
        redis,
        lambda pipe, tag: (
            pipe.zrange(keys.tier_shard(tag), 0, 0, withscores=True),
            pipe.zrange(keys.tier_shard(tag), -1, -1, withscores=True),
        ),
    )
    scores = [round(score * 100) for reply in ends for _, score in reply]
    if not scores:
        raise ValueError("no tier values stored")
    low, high = min(scores), max(scores)
    bounds = {rank: (low, high) for rank in wanted}  # the answer lies in [a, b]
    while any(a < b for a, b in bounds.values()):
        mids = sorted({(a + b) // 2 for a, b in bounds.values() if a < b})

        def count_at_most(pipe: Any, tag: str, mids: list[int] = mids) -> None:
            for m in mids:
                pipe.zcount(keys.tier_shard(tag), "-inf", _score(m))

        counts = await _each_shard(redis, count_at_most)
        at_most = {m: sum(int(counts[s * len(mids) + i]) for s in range(len(tier_tags()))) for i, m in enumerate(mids)}
        for rank, (a, b) in bounds.items():
            if a < b:
                mid = (a + b) // 2
                bounds[rank] = (a, mid) if at_most[mid] > rank else (mid + 1, b)
    return {rank: Decimal(a).scaleb(-2) for rank, (a, _) in bounds.items()}


async def recompute_cuts(redis: aioredis.Redis, keys: Any, as_of_us: int) -> Cuts | None:
    n = await customer_count(redis, keys)
    if n < 2:
        await redis.delete(keys.tier_cuts)
        return None
    values = await values_at(redis, keys, (r for lo, hi, _ in cut_positions(n) for r in (lo, hi)))
    cuts = interpolate(values, n)
    assert cuts is not None
    await redis.hset(
        keys.tier_cuts,
        mapping={
            "q1": str(cuts[0]),
            "q2": str(cuts[1]),
            "q3": str(cuts[2]),
            "n": n,
            "as_of_us": as_of_us,
            "refreshed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return cuts


def iso_week(ts_us: int, zone: ZoneInfo) -> str:
    """The ISO week (``1998-W52``) of ``ts_us`` in ``zone``."""
    year, week, _ = from_us(ts_us).astimezone(zone).isocalendar()
    return f"{year}-W{week:02d}"


async def record_moves(
    redis: aioredis.Redis,
    keys: Any,
    values: dict[str, Decimal],
    previous: dict[str, Decimal | None],
    before: Cuts | None,
    cuts: Cuts | None,
    as_of_us: int,
    zone: ZoneInfo,
    crossed: bool = True,
) -> int:
    """Add to the set of ``as_of_us``'s week each customer in ``values`` (just refreshed;
    ``previous``: what was stored for them before, None for none) whose tier moved from
    ``tier_of(previous, before)`` to ``tier_of(value, cuts)``, and (``crossed``) each other
    customer the move of the cut points from ``before`` to ``cuts`` moved. A customer's first
    tier, and every tier of the first cut points, is not a move. Returns how many moved."""
    if cuts is None or before is None or as_of_us <= 0:
        return 0
    moved: list[str] = []
    for done, (cid, value) in enumerate(values.items(), start=1):
        if (old := previous.get(cid)) is not None and tier_of(old, before) != tier_of(value, cuts):
            moved.append(cid)
        if done % MOVES_PER_SLICE == 0:  # (after a catch-up a refresh holds hundreds of thousands)
            await asyncio.sleep(0)
    if crossed and before != cuts:
        ranges = [
            (float(min(old, new)), float(max(old, new))) for old, new in zip(before, cuts, strict=True) if old != new
        ]
        found = await _each_shard(
            redis, lambda pipe, tag: [pipe.zrangebyscore(keys.tier_shard(tag), a, b) for a, b in ranges]
        )
        others = [cid for cid in dict.fromkeys(_text(m) for members in found for m in members) if cid not in values]
        if others:
            exact = await contributions(redis, keys, others)
            moved += [cid for cid, v in exact.items() if v is not None and tier_of(v, before) != tier_of(v, cuts)]
    if moved:
        week = iso_week(as_of_us, zone)
        async with redis.pipeline(transaction=False) as pipe:
            for tag, group in by_shard(moved).items():
                pipe.sadd(keys.tier_shard(tag, f"moved:{week}"), *group)
                pipe.expire(keys.tier_shard(tag, f"moved:{week}"), MOVED_KEPT_SECONDS)
            await pipe.execute()
    return len(moved)


async def moved_this_week(redis: aioredis.Redis, keys: Any, zone: ZoneInfo) -> tuple[str | None, int]:
    """The ISO week of the latest refresh (event time) and how many customers changed tier in it."""
    _, info = await read_cuts(redis, keys)
    as_of_us = int(info.get("as_of_us") or 0)
    if as_of_us <= 0:
        return None, 0
    week = iso_week(as_of_us, zone)
    return week, await moved_in(redis, keys, week)


async def moved_in(redis: aioredis.Redis, keys: Any, week: str) -> int:
    """How many customers changed tier in ``week`` (``1998-W52``): the shards' sets summed."""
    counts = await _each_shard(redis, lambda pipe, tag: pipe.scard(keys.tier_shard(tag, f"moved:{week}")))
    return sum(int(n) for n in counts)


async def read_cuts(redis: aioredis.Redis, keys: Any) -> tuple[Cuts | None, dict[str, str]]:
    raw = cast(dict[bytes, bytes], await redis.hgetall(keys.tier_cuts))
    info = {k.decode(): v.decode() for k, v in raw.items()}
    if not {"q1", "q2", "q3"} <= info.keys():
        return None, info
    return (Decimal(info["q1"]), Decimal(info["q2"]), Decimal(info["q3"])), info


async def distribution(redis: aioredis.Redis, keys: Any, top: int = 10) -> dict[str, Any]:
    """Tier counts, cut points and the top customers by contribution (for ``fundflow tiers`` and the API)."""
    cuts, info = await read_cuts(redis, keys)
    n = await customer_count(redis, keys)
    leaders: list[tuple[bytes, float]] = []
    if top > 0:  # (top <= 0 lists nobody: ZREVRANGE 0 -1 would be every customer)
        tops = await _each_shard(
            redis, lambda pipe, tag: pipe.zrevrange(keys.tier_shard(tag), 0, top - 1, withscores=True)
        )
        # ZREVRANGE's order over all shards: score, then member, both descending
        leaders = sorted((pair for reply in tops for pair in reply), key=lambda p: (p[1], p[0]), reverse=True)[:top]
    exact = await contributions(redis, keys, [_text(m) for m, _ in leaders])
    counts = await tier_counts(redis, keys, cuts)
    rows = []
    for member, score in leaders:
        value = exact.get(_text(member))
        shown = value if value is not None else to_cent(Decimal(score))
        rows.append({"customer_id": _text(member), "contribution": str(shown), "tier": tier_of(shown, cuts)})
    return {
        "customers": n,
        "cuts": {"q1": str(cuts[0]), "q2": str(cuts[1]), "q3": str(cuts[2])} if cuts else None,
        "counts": counts,
        "refreshed_at": info.get("refreshed_at"),
        "top": rows,
    }


async def tier_counts(redis: aioredis.Redis, keys: Any, cuts: Cuts | None) -> dict[str, int]:
    if cuts is None:
        return {"I": await customer_count(redis, keys), "II": 0, "III": 0, "IV": 0}
    # Scores are cent-exact doubles, so [a, b) ranges on them match tier_of on the Decimals.
    q1, q2, q3 = (float(q) for q in cuts)
    bounds = ((q3, "+inf"), (q2, f"({q3}"), (q1, f"({q2}"), ("-inf", f"({q1}"))
    counts = await _each_shard(redis, lambda pipe, tag: [pipe.zcount(keys.tier_shard(tag), a, b) for a, b in bounds])
    width = len(bounds)
    totals = [sum(int(counts[s * width + i]) for s in range(len(tier_tags()))) for i in range(width)]
    return dict(zip(("I", "II", "III", "IV"), totals, strict=True))


async def rebuild(redis: aioredis.Redis, keys: Any, states: list[CustomerState], book: TierBook) -> int:
    """On demand: every stored customer at the latest event time, then the cut points."""
    as_of = max((s.last_us for s in states if s.last_us is not None), default=0)
    started = time.monotonic()
    values = {s.customer_id: book.contribution_of(s, as_of) for s in states if s.last_us is not None}
    await migrate_single_keys(redis, keys, book.config.zone)
    await migrate_shard_copies(redis, keys)
    before, _ = await read_cuts(redis, keys)
    previous = await contributions(redis, keys, values)  # (the tiers before, for the moves)
    async with redis.pipeline(transaction=False) as pipe:
        for tag in tier_tags():
            pipe.delete(keys.tier_shard(tag), keys.tier_shard(tag, "value"))
        await pipe.execute()
    await write_contributions(redis, keys, values)
    cuts = await recompute_cuts(redis, keys, as_of)
    # (everyone is in values: no one else to look for between the old and new cut points)
    await record_moves(redis, keys, values, previous, before, cuts, as_of, book.config.zone, crossed=False)
    log.info("tiers rebuilt for %d customers in %.2fs", len(values), time.monotonic() - started)
    return len(values)


MIGRATION_CHUNK = 10_000  # customers per round trip of the one-time migration
MIGRATION_LOCK_SECONDS = 600


async def migrate_single_keys(redis: aioredis.Redis, keys: Any, zone: ZoneInfo) -> int:
    """Move the tiers of a version that kept them in one key each (``{p}:tiers``,
    ``{p}:tiers:value``, ``{p}:tiers:last`` and the week of the last refresh's moves) into the
    shards, then delete those keys; returns how many customers moved (0: nothing to move, or
    another process is moving them). Run once by the first refresh of each worker and by
    ``fundflow tiers --refresh``: a value already in a shard was written by a refresh since,
    so it is never overwritten (ZADD NX; an exact string only with a score just added), and a
    second run finds nothing. The last tiers are not kept: a refresh reads a customer's tier
    before it from its contribution and the cut points (the module's docstring)."""
    if not await redis.exists(keys.tiers, keys.tier_values, keys.tier_last):
        return 0
    lock = f"{keys.tiers}:migrating"
    if not await redis.set(lock, "1", nx=True, ex=MIGRATION_LOCK_SECONDS):
        return 0
    moved = 0
    try:
        start = 0
        while True:
            chunk = cast(
                list[tuple[bytes, float]],
                await redis.zrange(keys.tiers, start, start + MIGRATION_CHUNK - 1, withscores=True),
            )
            if not chunk:
                break
            members = [_text(m) for m, _ in chunk]
            exact = cast(list[bytes | None], await redis.hmget(keys.tier_values, members))
            async with redis.pipeline(transaction=False) as pipe:
                for cid, (_, score) in zip(members, chunk, strict=True):
                    pipe.zadd(keys.tier_shard_of(cid), {cid: score}, nx=True)
                added = await pipe.execute()
            async with redis.pipeline(transaction=False) as pipe:
                for cid, (_, score), value, new in zip(members, chunk, exact, added, strict=True):
                    if new and value is not None and _text(value) != str(cents_of(score)):
                        pipe.hsetnx(keys.tier_shard_of(cid, "value"), cid, value)
                await pipe.execute()
            moved += len(chunk)
            start += MIGRATION_CHUNK
        await _migrate_moves(redis, keys, zone)
        await redis.delete(keys.tiers, keys.tier_values, keys.tier_last)
    finally:
        await redis.delete(lock)
    log.info("live tiers: %d customers moved from the single keys into %d shards", moved, len(tier_tags()))
    return moved


async def _migrate_moves(redis: aioredis.Redis, keys: Any, zone: ZoneInfo) -> None:
    """The single-key sets of tier moves of the last refresh's week and the week before (a
    set is kept 14 days), spread over the shards."""
    _, info = await read_cuts(redis, keys)
    as_of_us = int(info.get("as_of_us") or 0)
    if as_of_us <= 0:
        return
    for week in dict.fromkeys(iso_week(t, zone) for t in (as_of_us, as_of_us - 7 * 86_400_000_000)):
        old = keys.tier_moved(week)
        members = [_text(m) for m in cast(set[bytes], await redis.smembers(old))]
        if members:
            async with redis.pipeline(transaction=False) as pipe:
                for tag, group in by_shard(members).items():
                    pipe.sadd(keys.tier_shard(tag, f"moved:{week}"), *group)
                    pipe.expire(keys.tier_shard(tag, f"moved:{week}"), MOVED_KEPT_SECONDS)
                await pipe.execute()
        await redis.delete(old)


async def migrate_shard_copies(redis: aioredis.Redis, keys: Any) -> int:
    """Drop what an earlier version kept per customer beside the scores: the shards' hash of
    last tiers, and each exact string its score gives back (``exact_needed``). Returns how
    many exact strings went (0: none to drop, or another process is dropping them). Run where
    ``migrate_single_keys`` runs. A writer changes a string with its score: a string read
    before and a score read after do not match, so it stays; a string dropped just after a
    writer rewrote it leaves that writer's score, which gives the value back unless it needs
    its string (an earlier version's worker, during an upgrade, beyond a double's cents)."""
    olds = await _each_shard(redis, lambda pipe, tag: pipe.exists(keys.tier_shard(tag, "last")))
    tags = [tag for tag, n in zip(tier_tags(), olds, strict=True) if int(n)]
    if not tags:
        return 0
    lock = f"{keys.tiers}:trimming"
    if not await redis.set(lock, "1", nx=True, ex=MIGRATION_LOCK_SECONDS):
        return 0
    dropped = 0
    try:
        for tag in tags:
            name = keys.tier_shard(tag, "value")
            cursor = 0
            while True:
                cursor, page = await redis.hscan(name, cursor, count=MIGRATION_CHUNK)
                found = {_text(f): _text(v) for f, v in cast(dict[bytes, bytes], page).items()}
                if fields := list(found):
                    scores = await redis.zmscore(keys.tier_shard(tag), fields)
                    plain = [
                        f
                        for f, score in zip(fields, scores, strict=True)
                        if score is not None and found[f] == str(cents_of(score))
                    ]
                    if plain:
                        dropped += int(await redis.hdel(name, *plain))
                if not cursor:
                    break
            await redis.delete(keys.tier_shard(tag, "last"))
    finally:
        await redis.delete(lock)
    log.info("live tiers: %d exact values and the last tiers of %d shards dropped", dropped, len(tags))
    return dropped
