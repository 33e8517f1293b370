"""Live 客户分层: quartile tiers of contribution over all customers, kept in Redis.

Layout (``streams.storage.keys``):

* ``{p}:{T}:tiers`` and ``{p}:{T}:tiers:{j}`` — shard ``T``'s sub-shards, sorted sets,
  member = customer_id, score = contribution (cent-rounded; a double holds every cent
  exactly up to ~10^13, so the order is exact, and the score gives the contribution back);
  ``{p}:{T}:tiers:layout`` says how many, and counts the shard's customers and bands;
  ``{p}:{T}:tiers:band`` holds the customers near each cut point and at the top (below,
  "a shard's sub-shards" and "bands");
* ``{p}:{T}:tiers:value`` — hash customer_id -> the exact contribution string, only
  for the contributions the score does not give back (beyond a double's cents, or
  not in cents): as a rule empty, so a customer costs one sorted-set entry;
* ``{p}:tiers:cuts`` — hash q1, q2, q3, n, as_of, refreshed_at;
* ``{p}:{T}:tiers:moved:{YYYY-Www}`` — set of the customers whose tier changed in
  that ISO week (event time of the refresh, bank zone), for the 看板.

Finding the cut points reads only the ranks the interpolation needs
(``statistics.quantiles(method="inclusive")`` puts Qk at position
(n-1)·k/4), counted within the bands, so a refresh costs O(changed customers +
log n), never a scan; the bands are set anew, one walk of the sub-shards, only
when a cut point drifts near their edge.
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
import math
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
        await fit_layout(self.redis, self.keys)
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


# --- a shard's sub-shards: sorted sets small enough to stay listpacks ------------------
#
# Redis and Valkey keep a sorted set of at most ``zset-max-listpack-entries`` (128) members
# as one listpack, ~17 B a customer; past it as a skiplist and a hash table, ~90 B. At a
# million customers a shard holds ~31,000, so each shard is split into ``subs`` sub-shards
# (a power of two): sub-shard 0 is the shard's own key, sub-shard j its key + ``:j``; a
# customer's sub-shard is a hash of its id. The shard's layout hash (``:layout``: ``subs``,
# and ``from`` while it grows) lives in the shard's slot, so every script below reads it
# and touches the sub-shards in one atomic step: a customer is in exactly one sub-shard at
# any time, counts are exact while a shard grows, and no reader needs to know the layout.
# A shard grows (doubles, or more at once) when its customers pass ``SUB_TARGET`` a
# sub-shard on average (``fit_layout``), never shrinks; a customer keeps its sub-shard or
# moves to j + subs (the hash's bits are taken highest first, one more a doubling).

SUB_TARGET = 64  # customers a sub-shard holds on average at most: far below 128 by chance too
MOVE_CHUNK = 1_000  # members one move step of a growing shard looks at (one script: a short block)

_PRELUDE = """
local base, layout = KEYS[1], KEYS[2]
local function key(j) if j == 0 then return base end return base .. ':' .. j end
local meta, flat = {}, redis.call('HGETALL', layout)
for i = 1, #flat, 2 do meta[flat[i]] = flat[i + 1] end
local subs = tonumber(meta.subs or '1')
local from = tonumber(meta.from or '0')
local span = math.max(subs, from)
local band = base .. ':band'
local banded = meta.v ~= nil
local nb, lo, hi = tonumber(meta.nb or '0'), {}, {}
for b = 1, nb do lo[b] = tonumber(meta['lo' .. b]); hi[b] = tonumber(meta['hi' .. b]) end
local function position(h, n)
  if n <= 1 then return 0 end
  local at, bit_value = 0, 1
  while bit_value < n do
    if h >= 2147483648 then at = at + bit_value end
    h = (h * 2) % 4294967296
    bit_value = bit_value * 2
  end
  return at
end
"""

# The hash of a customer's id (``id_hash``) for the growth's moves, which meet ids in Redis; the
# writers and readers pass the one Python computed. CRC-32 (zlib's) and MurmurHash3's finalizer.
_HASH = """
local crc_table = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c % 2 == 1 then c = bit.bxor(bit.rshift(c, 1), 0xEDB88320) else c = bit.rshift(c, 1) end
  end
  crc_table[i] = c
end
local function mul32(a, b)
  local high, low = math.floor(b / 65536), b % 65536
  return (a * low + ((a * high) % 65536) * 65536) % 4294967296
end
local function shifted(h, n) return bit.bxor(h, math.floor(h / 2 ^ n)) % 4294967296 end
local function id_hash(id)
  local c = 0xFFFFFFFF
  for i = 1, #id do
    c = bit.bxor(bit.rshift(c, 8), crc_table[bit.band(bit.bxor(c, string.byte(id, i)), 255)])
  end
  local h = bit.bxor(c, 0xFFFFFFFF) % 4294967296
  return shifted(mul32(shifted(mul32(shifted(h, 16), 2246822507), 13), 3266489909), 16)
end
"""

# ARGV: NX or -, customer, score, ...: each at its sub-shard (and out of the one it had while the
# shard grows); NX: only a customer the shard lacks. Returns each one's ZADD reply.
_WRITE = (
    _PRELUDE
    + """
local nx, out = ARGV[1] == 'NX', {}
for i = 2, #ARGV, 3 do
  local id, h, score = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local at = position(h, subs)
  local was = at
  if from > 0 then was = position(h, from) end
  local old = redis.call('ZSCORE', key(at), id)
  if not old and was ~= at then old = redis.call('ZSCORE', key(was), id) end
  if nx and old then
    out[#out + 1] = 0
  else
    out[#out + 1] = redis.call('ZADD', key(at), score, id)
    if was ~= at then redis.call('ZREM', key(was), id) end
    if banded then
      local x, o, inside, was_inside = tonumber(score), old and tonumber(old), false, false
      if not o then redis.call('HINCRBY', layout, 'n', 1) end
      for b = 1, nb do
        local d = (x < lo[b] and 1 or 0) - ((o and o < lo[b]) and 1 or 0)
        if d ~= 0 then redis.call('HINCRBY', layout, 'below' .. b, d) end
        if x >= lo[b] and x <= hi[b] then inside = true end
        if o and o >= lo[b] and o <= hi[b] then was_inside = true end
      end
      if inside then redis.call('ZADD', band, score, id) elseif was_inside then redis.call('ZREM', band, id) end
    end
  end
end
return out
"""
)

# ARGV: customers: each one's score (nil: none)
_READ = (
    _PRELUDE
    + """
local out = {}
for i = 1, #ARGV, 2 do
  local id, h = ARGV[i], tonumber(ARGV[i + 1])
  local s = redis.call('ZSCORE', key(position(h, subs)), id)
  if not s and from > 0 then s = redis.call('ZSCORE', key(position(h, from)), id) end
  out[#out + 1] = s
end
return out
"""
)

# ARGV: min, max, ...: the shard's customers in each score range
_COUNT = (
    _PRELUDE
    + """
local counts = {}
for i = 1, #ARGV, 2 do counts[(i + 1) / 2] = 0 end
for j = 0, span - 1 do
  local k = key(j)
  for i = 1, #ARGV, 2 do
    counts[(i + 1) / 2] = counts[(i + 1) / 2] + redis.call('ZCOUNT', k, ARGV[i], ARGV[i + 1])
  end
end
return counts
"""
)

# ARGV: sub-shards (0: all), members (1: with them), min, max, ...: for each range the scores
# in it (and each one's member before it) of the first so many sub-shards, unordered
_RANGE = (
    _PRELUDE
    + """
local upto, members, out = tonumber(ARGV[1]), ARGV[2] == '1', {}
if upto == 0 or upto > span then upto = span end
for i = 3, #ARGV, 2 do
  local found = {}
  for j = 0, upto - 1 do
    local got = redis.call('ZRANGEBYSCORE', key(j), ARGV[i], ARGV[i + 1], 'WITHSCORES')
    for n = 1, #got, 2 do
      if members then found[#found + 1] = got[n] end
      found[#found + 1] = got[n + 1]
    end
  end
  out[#out + 1] = found
end
return out
"""
)

# ARGV: n: every member, score whose score is at least the shard's n-th highest (ties kept:
# the caller orders them as ZREVRANGE does)
_TOP = (
    _PRELUDE
    + """
local n, all = tonumber(ARGV[1]), {}
for j = 0, span - 1 do
  local got = redis.call('ZREVRANGE', key(j), 0, n - 1, 'WITHSCORES')
  for m = 1, #got, 2 do all[#all + 1] = {got[m], tonumber(got[m + 1]), got[m + 1]} end
end
table.sort(all, function(x, y) return x[2] > y[2] end)
local out = {}
if #all > 0 then
  local floor = all[math.min(n, #all)][2]
  for m = 1, #all do
    if all[m][2] >= floor then out[#out + 1] = all[m][1]; out[#out + 1] = all[m][3] end
  end
end
return out
"""
)

# ARGV: subs: start growing to subs sub-shards (from the current layout); returns the old
# count, or 0 when the shard is already growing or as large
_GROW = (
    _PRELUDE
    + """
local want = tonumber(ARGV[1])
if from > 0 or want <= subs then return 0 end
redis.call('HSET', layout, 'subs', want, 'from', subs)
return subs
"""
)

# ARGV: j, cursor: move the members at ranks cursor.. of old sub-shard j (MOVE_CHUNK of them)
# that belong elsewhere; returns the next cursor (-1: the sub-shard's end) and how many moved
_MOVE = (
    _PRELUDE
    + _HASH
    + """
local j, cursor, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local got = redis.call('ZRANGE', key(j), cursor, cursor + n - 1, 'WITHSCORES')
local moved = 0
for m = 1, #got, 2 do
  local at = position(id_hash(got[m]), subs)
  if at ~= j then
    redis.call('ZADD', key(at), got[m + 1], got[m])
    redis.call('ZREM', key(j), got[m])
    moved = moved + 1
  end
end
if #got < 2 * n then
  -- a sorted set that passed 128 members stays a skiplist when it shrinks: written again
  -- whole, it is a listpack once more
  local sub = key(j)
  if redis.call('ZCARD', sub) <= 128 and redis.call('OBJECT', 'ENCODING', sub) == 'skiplist' then
    redis.call('ZRANGESTORE', sub .. ':compact', sub, 0, -1)
    redis.call('RENAME', sub .. ':compact', sub)
  end
  return {-1, moved}
end
return {cursor + n - moved, moved}
"""
)

# ARGV: version, lo1, hi1, lo2, hi2, ...: the shard's bands set anew, counted from its sub-shards:
# its customers, those below each band, and the band set of those inside one (bands disjoint)
_RECENTER = (
    _PRELUDE
    + """
local count = (#ARGV - 1) / 2
local n, below = 0, {}
for b = 1, count do below[b] = 0 end
redis.call('DEL', band)
for j = 0, span - 1 do
  local k = key(j)
  n = n + redis.call('ZCARD', k)
  for b = 1, count do
    below[b] = below[b] + redis.call('ZCOUNT', k, '-inf', '(' .. ARGV[2 * b])
    local got = redis.call('ZRANGEBYSCORE', k, ARGV[2 * b], ARGV[2 * b + 1], 'WITHSCORES')
    for m = 1, #got, 2 do redis.call('ZADD', band, got[m + 1], got[m]) end
  end
end
for b = count + 1, nb do redis.call('HDEL', layout, 'lo' .. b, 'hi' .. b, 'below' .. b) end
redis.call('HSET', layout, 'v', ARGV[1], 'nb', count, 'n', n)
for b = 1, count do
  redis.call('HSET', layout, 'lo' .. b, ARGV[2 * b], 'hi' .. b, ARGV[2 * b + 1], 'below' .. b, below[b])
end
return n
"""
)

# ARGV: version, band, lo, hi: narrow the shard's band to [lo, hi] (within it), those below lo
# counted; a new version, so that no reader sums shards narrowed and not yet narrowed
_NARROW = (
    _PRELUDE
    + """
local b = tonumber(ARGV[2])
local gone = redis.call('ZCOUNT', band, meta['lo' .. b], '(' .. ARGV[3])
redis.call('ZREMRANGEBYSCORE', band, meta['lo' .. b], '(' .. ARGV[3])
redis.call('ZREMRANGEBYSCORE', band, '(' .. ARGV[4], meta['hi' .. b])
redis.call('HINCRBY', layout, 'below' .. b, gone)
redis.call('HSET', layout, 'lo' .. b, ARGV[3], 'hi' .. b, ARGV[4], 'v', ARGV[1])
return gone
"""
)

# the shard grown: its old layout forgotten
_GROWN = (
    _PRELUDE
    + """
redis.call('HDEL', layout, 'from')
return subs
"""
)


def id_hash(customer_id: str) -> int:
    """The hash that places a customer in its shard's sub-shards (the scripts' ``id_hash``):
    CRC-32 of its id, then MurmurHash3's finalizer (CRC's high bits alone are uneven for ids
    in sequence)."""
    h = zlib.crc32(customer_id.encode())
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def position(customer_id: str, subs: int, h: int | None = None) -> int:
    """The customer's sub-shard among ``subs`` (the scripts' ``position``): the top bits of its
    hash read lowest first, so doubling the sub-shards keeps a customer at j or moves it to
    j + subs."""
    if subs <= 1:
        return 0
    h = id_hash(customer_id) if h is None else h
    at, bit_value = 0, 1
    while bit_value < subs:
        if h & 0x80000000:
            at += bit_value
        h = (h << 1) & 0xFFFFFFFF
        bit_value *= 2
    return at


def layout_for(customers: int) -> int:
    """The sub-shards each shard needs for ``customers``: the least power of two that keeps
    them ≤ ``SUB_TARGET`` a sub-shard on average."""
    subs = 1
    while customers > subs * SUB_TARGET * len(tier_tags()):
        subs *= 2
    return subs


def _hashed(customers: Iterable[str], scores: dict[str, float] | None = None) -> list[Any]:
    """The scripts' arguments for ``customers``: each id, its ``id_hash`` (and its score)."""
    if scores is None:
        return [x for cid in customers for x in (cid, id_hash(cid))]
    return [x for cid in customers for x in (cid, id_hash(cid), repr(scores[cid]))]


def _column_sums(replies: list[Any], width: int) -> list[int]:
    """A pipeline of ``width`` counts a shard, summed over the shards, column by column."""
    return [sum(int(replies[s * width + i]) for s in range(len(replies) // width)) for i in range(width)]


def _merged(spans: Iterable[tuple[Any, Any]], gap: int = 0) -> list[tuple[Any, Any]]:
    """``spans`` sorted, those that overlap (or lie within ``gap`` of each other) made one."""
    merged: list[tuple[Any, Any]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + gap:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _run(pipe: Any, script: str, keys: Any, tag: str, *args: Any) -> Any:
    """``script`` on shard ``tag`` (its sub-shard 0 and layout: one slot)."""
    return pipe.eval(script, 2, keys.tier_shard(tag), keys.tier_shard(tag, "layout"), *args)


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
                _run(pipe, _WRITE, keys, tag, "-", *_hashed(group, {cid: float(chunk[cid]) for cid in group}))
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
                _run(pipe, _READ, keys, tag, *_hashed(group))
                if tag in with_exact:
                    pipe.hmget(keys.tier_shard(tag, "value"), group)
            replies = iter(await pipe.execute())
        for tag, group in groups.items():
            scores = next(replies)
            exact = next(replies) if tag in with_exact else [None] * len(group)
            for cid, score, value in zip(group, scores, exact, strict=True):
                found[cid] = Decimal(value.decode()) if value else None if score is None else cents_of(float(score))
    return found


async def all_contributions(redis: aioredis.Redis, keys: Any) -> dict[str, Decimal]:
    """Every customer's exact contribution (a walk over the shards: for checks and tests)."""
    found: dict[str, Decimal] = {}
    spans = await layouts(redis, keys)
    for tag in tier_tags():
        for j in range(max(spans[tag])):
            async for cid, score in redis.zscan_iter(sub_key(keys, tag, j), count=1000):
                found[_text(cid)] = cents_of(score)
    for tag in tier_tags():
        async for cid, value in redis.hscan_iter(keys.tier_shard(tag, "value"), count=1000):
            found[_text(cid)] = Decimal(_text(value))
    return found


async def customer_count(redis: aioredis.Redis, keys: Any) -> int:
    """How many customers the tiers hold: the shards' counts where they keep bands, else every
    sub-shard counted."""
    bands = await read_bands(redis, keys)
    return bands.n if bands is not None else await _count_all(redis, keys)


async def _count_all(redis: aioredis.Redis, keys: Any) -> int:
    """Every sub-shard's customers counted and summed (a visit of every sub-shard)."""
    counts = await _each_shard(redis, lambda pipe, tag: _run(pipe, _COUNT, keys, tag, "-inf", "+inf"))
    return sum(int(reply[0]) for reply in counts)


def sub_key(keys: Any, tag: str, j: int) -> str:
    """Sub-shard ``j`` of shard ``tag``: the shard's own key for 0."""
    return str(keys.tier_shard(tag) if j == 0 else keys.tier_shard(tag, str(j)))


async def layouts(redis: aioredis.Redis, keys: Any) -> dict[str, tuple[int, int]]:
    """Each shard's sub-shards now and (while it grows) before: (subs, from); from 0 when settled."""
    found = await _each_shard(redis, lambda pipe, tag: pipe.hmget(keys.tier_shard(tag, "layout"), ["subs", "from"]))
    return {tag: (int(subs or 1), int(was or 0)) for tag, (subs, was) in zip(tier_tags(), found, strict=True)}


def tier_key_names(keys: Any, spans: dict[str, int] | None = None) -> list[str]:
    """Every tier key a customer is counted in (each shard's sub-shards, its exact values and
    its layout), for MEMORY USAGE and clean-up; ``spans``: each shard's sub-shards (1)."""
    return [
        name
        for tag in tier_tags()
        for name in (
            *(sub_key(keys, tag, j) for j in range((spans or {}).get(tag, 1))),
            keys.tier_shard(tag, "value"),
            keys.tier_shard(tag, "layout"),
            keys.tier_shard(tag, "band"),
        )
    ]


async def tier_keys(redis: aioredis.Redis, keys: Any) -> list[str]:
    """``tier_key_names`` of the layout Redis holds now."""
    return tier_key_names(keys, {tag: max(pair) for tag, pair in (await layouts(redis, keys)).items()})


async def fit_layout(redis: aioredis.Redis, keys: Any, customers: int | None = None) -> int:
    """Grow every shard to the sub-shards ``customers`` (default: as many as the tiers hold)
    need (``layout_for``), and finish a growth an earlier process left half done; returns
    the sub-shards wanted. One process grows at a time (a lock); the others find the lock and
    go on, reading and writing through the scripts, which see a growing shard whole. A shard
    is grown by moving, chunk by chunk, each member of its old sub-shards that belongs
    elsewhere, until one whole pass finds nothing to move (writers meanwhile put every
    customer where it belongs), then forgetting the old layout."""
    n = await customer_count(redis, keys) if customers is None else customers
    want = layout_for(n)
    current = await layouts(redis, keys)
    todo = [tag for tag, (subs, was) in current.items() if subs < want or was]
    if not todo:
        return want
    lock = f"{keys.tiers}:growing"
    if not await redis.set(lock, "1", nx=True, ex=MIGRATION_LOCK_SECONDS):
        return want
    try:
        for tag in todo:
            await _run(redis, _GROW, keys, tag, want)
            subs, was = (await layouts(redis, keys))[tag]
            while was:
                moved = 0
                for j in range(was):
                    cursor = 0
                    while cursor >= 0:
                        cursor, step = (int(x) for x in await _run(redis, _MOVE, keys, tag, j, cursor, MOVE_CHUNK))
                        moved += step
                if not moved:
                    break
            await _run(redis, _GROWN, keys, tag)
            log.info("live tiers: shard %s grown to %d sub-shards", tag, subs)
    finally:
        await redis.delete(lock)
    return want


def _score(cents: int) -> float:
    """The sorted-set score of a cent amount, as ``write_contributions`` writes it."""
    return float(Decimal(cents).scaleb(-2))  # (cents_of gives ``cents`` back)


# --- bands: the customers near each cut point, in value order -------------------------
#
# The sub-shards hold each customer by a hash of its id, so a count below a value would visit
# every one of them (docs/scale.md, "Tier sub-shards"). Each shard therefore also keeps a
# *band* sorted set: the customers whose contribution lies in one of a few value ranges, one
# around each rank the cut points need and one over the top customers; and in its layout hash
# how many customers it holds (``n``) and how many lie below each range (``below<b>``). The
# write script keeps all three in the step that writes a customer, so they are exact at every
# moment. A search reads 32 layout hashes and counts within the bands (``_band_values``);
# only when a rank it wants has drifted near the edge of its band, or out of it, are the
# bands set anew (``recenter``): a sample places wide ranges, one script a shard counts them
# from its sub-shards, and the ranges are narrowed to ``BAND_SHARE`` of the ranks either side
# of each wanted rank, exactly, inside the bands.
SAMPLE = 8_192  # customers a re-centring reads to place its ranges (the first sub-shards: a fair sample)
MARGIN = 6.0  # standard deviations of a sample quantile a range is widened by before it is counted
BAND_SHARE = 0.0025  # a band holds this share of the ranks either side of its rank
BAND_LEAST = 64  # and at least this many
TOP_KEPT = 100  # the top band: the highest customers, for the largest ``top`` /tiers serves
RECENTER_LOCK_SECONDS = 120


class Busy(Exception):
    """Another process is setting the bands anew: the cut points keep their last value."""


@dataclass(frozen=True)
class Bands:
    """The bands every shard agrees on: their Redis range bounds, the customers below and in
    each (summed over the shards), and the customers in all."""

    bounds: list[tuple[str, str]]
    below: list[int]
    inside: list[int]
    n: int

    def of_rank(self, rank: int) -> int | None:
        for b, (below, inside) in enumerate(zip(self.below, self.inside, strict=True)):
            if below <= rank < below + inside:
                return b
        return None

    def of_value(self, value: float) -> int | None:
        for b, (lo, hi) in enumerate(self.bounds):
            if float(lo) <= value <= float(hi):
                return b
        return None

    def holds(self, ranks: Iterable[int], half: int) -> bool:
        """Every rank in a band, at least ``half / 2`` ranks from an edge that is not an end."""
        for r in ranks:
            b = self.of_rank(r)
            if b is None:
                return False
            lo, hi = self.bounds[b]
            offset, inside = r - self.below[b], self.inside[b]
            if (lo != "-inf" and offset < half // 2) or (hi != "inf" and inside - 1 - offset < half // 2):
                return False
        return True


def _bound(value: float) -> str:
    return repr(value)  # 'inf', '-inf' and every double as Redis and Lua read it back


async def read_bands(redis: aioredis.Redis, keys: Any) -> Bands | None:
    """The shards' bands, or None while any shard has none or its own (being set anew)."""
    metas = await _each_shard(redis, lambda pipe, tag: pipe.hgetall(keys.tier_shard(tag, "layout")))
    parsed = [{_text(k): _text(v) for k, v in cast(dict[bytes, bytes], m).items()} for m in metas]
    if not parsed or any("v" not in m for m in parsed) or len({m["v"] for m in parsed}) > 1:
        return None
    count = int(parsed[0]["nb"])
    bounds = [(parsed[0][f"lo{b}"], parsed[0][f"hi{b}"]) for b in range(1, count + 1)]
    if any([(m[f"lo{b}"], m[f"hi{b}"]) for b in range(1, count + 1)] != bounds for m in parsed):
        return None  # (a version is set shard by shard; so are the bounds)
    below = [sum(int(m[f"below{b}"]) for m in parsed) for b in range(1, count + 1)]

    def inside(pipe: Any, tag: str) -> None:
        for lo, hi in bounds:
            pipe.zcount(keys.tier_shard(tag, "band"), lo, hi)

    totals = _column_sums(await _each_shard(redis, inside), count) if count else []
    return Bands(bounds, below, totals, sum(int(m["n"]) for m in parsed))


async def _band_values(redis: aioredis.Redis, keys: Any, bands: Bands, ranks: Iterable[int]) -> dict[int, Decimal]:
    """The contribution at each rank, each inside a band: a bisection over cent amounts
    between the band's least and greatest value, each step one pipelined ``ZCOUNT`` of the
    band a shard and open rank (scores are cent-exact doubles: a cent amount counts every
    customer at or below it)."""
    wanted = {r: cast(int, bands.of_rank(r)) for r in sorted(set(ranks))}
    used = sorted(set(wanted.values()))
    ends = await _each_shard(
        redis,
        lambda pipe, tag: [
            (
                pipe.zrangebyscore(keys.tier_shard(tag, "band"), *bands.bounds[b], start=0, num=1, withscores=True),
                pipe.zrevrangebyscore(
                    keys.tier_shard(tag, "band"),
                    bands.bounds[b][1],
                    bands.bounds[b][0],
                    start=0,
                    num=1,
                    withscores=True,
                ),
            )
            for b in used
        ],
    )
    found: dict[int, list[int]] = {b: [] for b in used}  # each band's least and greatest cents, a shard each
    for s in range(len(tier_tags())):
        for i, b in enumerate(used):
            for reply in ends[s * 2 * len(used) + 2 * i : s * 2 * len(used) + 2 * i + 2]:
                found[b] += [round(score * 100) for _, score in reply]
    bounds = {r: (min(found[b]), max(found[b])) for r, b in wanted.items()}
    while any(a < z for a, z in bounds.values()):
        open_ = [(r, (a + z) // 2) for r, (a, z) in bounds.items() if a < z]

        def count_at_most(pipe: Any, tag: str, open_: list[tuple[int, int]] = open_) -> None:
            for r, mid in open_:
                pipe.zcount(keys.tier_shard(tag, "band"), bands.bounds[wanted[r]][0], _score(mid))

        counts = _column_sums(await _each_shard(redis, count_at_most), len(open_))
        for i, (r, mid) in enumerate(open_):
            at_most = bands.below[wanted[r]] + counts[i]
            a, z = bounds[r]
            bounds[r] = (a, mid) if at_most > r else (mid + 1, z)
    return {r: Decimal(a).scaleb(-2) for r, (a, _) in bounds.items()}


def _ranges(ranks: Iterable[int], n: int) -> list[tuple[int, int]]:
    """The rank ranges the bands keep: ``half`` ranks either side of each wanted rank and the
    top ``TOP_KEPT``, overlapping ones merged."""
    half = max(BAND_LEAST, int(n * BAND_SHARE))
    return _merged([(max(0, r - half), min(n - 1, r + half)) for r in ranks] + [(max(0, n - TOP_KEPT), n - 1)], gap=1)


async def _set_bands(redis: aioredis.Redis, keys: Any, bounds: list[tuple[str, str]]) -> None:
    """Every shard's bands set to ``bounds`` (one script a shard, one after the other, so that
    the commits waiting on a master pass between them)."""
    version = str(time.time_ns())
    args = [x for pair in bounds for x in pair]
    for tag in tier_tags():
        await _run(redis, _RECENTER, keys, tag, version, *args)


async def recenter(redis: aioredis.Redis, keys: Any, ranks: Iterable[int], n: int) -> Bands:
    """The bands set anew around ``ranks`` (and the top) for ``n`` customers: placed by a
    sample, counted from the sub-shards, narrowed exactly. Raises ``Busy`` while another
    process does it."""
    lock = f"{keys.tiers}:recentering"
    if not await redis.set(lock, "1", nx=True, ex=RECENTER_LOCK_SECONDS):
        raise Busy
    try:
        spans = _ranges(ranks, n)
        span = max(max(pair) for pair in (await layouts(redis, keys)).values())
        upto = span if n <= SAMPLE else max(1, -(-span * SAMPLE // n))
        read = await _each_shard(redis, lambda pipe, tag: _run(pipe, _RANGE, keys, tag, upto, 0, "-inf", "+inf"))
        sample = sorted(float(v) for reply in read for v in reply[0])
        m = len(sample)
        whole = upto >= span
        wide: list[tuple[float, float]] = []
        for lo_rank, hi_rank in spans:
            ends = []
            for rank, side in ((lo_rank, -1), (hi_rank, 1)):
                if (side < 0 and rank == 0) or (side > 0 and rank >= n - 1) or not m:
                    ends.append(side * math.inf)
                    continue
                p = rank / max(1, n - 1)
                at = p * (m - 1) + side * (0 if whole else MARGIN * math.sqrt(m * p * (1 - p)) + 2)
                i = math.floor(at) if side < 0 else math.ceil(at)
                ends.append(sample[i] if 0 <= i < m else side * math.inf)
            wide.append((ends[0], ends[1]))
        for attempt in range(3):
            await _set_bands(redis, keys, [(_bound(lo), _bound(hi)) for lo, hi in _merged(wide)])
            bands = await read_bands(redis, keys)
            if bands is None:
                raise Busy  # (the tiers rebuilt meanwhile: the next refresh sets them)
            missed = False
            for i, (lo_rank, hi_rank) in enumerate(spans):
                b = bands.of_rank(lo_rank)
                if b is None or bands.of_rank(hi_rank) != b:
                    missed = True  # the sample placed a range off its ranks: widen that side
                    lo, hi = wide[i]
                    below = bands.of_rank(lo_rank) is None
                    wide[i] = (-math.inf if below or attempt else lo, math.inf if not below or attempt else hi)
            if not missed:
                break
        if bands is None or not bands.holds((r for pair in spans for r in pair), 0):
            raise Busy  # (customers moved faster than three tries: the next refresh tries again)
        # narrowed to exactly the ranks each range wants (bands that merged stay one)
        cut = await _band_values(redis, keys, bands, [r for pair in spans for r in pair])
        for b, (least, most) in enumerate(bands.bounds):
            group = [(a, z) for a, z in spans if bands.of_rank(a) == b]
            if not group:
                continue  # (a range the sample placed where nobody is: empty, and costs nothing)
            lo_rank, hi_rank = min(a for a, _ in group), max(z for _, z in group)
            new_lo = least if lo_rank == 0 else _bound(float(cut[lo_rank]))
            new_hi = most if hi_rank == n - 1 else _bound(float(cut[hi_rank]))
            if (new_lo, new_hi) != (least, most):
                version = str(time.time_ns())
                for tag in tier_tags():
                    await _run(redis, _NARROW, keys, tag, version, b + 1, new_lo, new_hi)
        final = await read_bands(redis, keys)
        if final is None:
            raise Busy
        telemetry.TIER_BANDS_SET.inc()
        log.info("live tiers: bands set anew around %d ranks of %d customers", len(spans), n)
        return final
    finally:
        await redis.delete(lock)


async def values_at(
    redis: aioredis.Redis, keys: Any, ranks: Iterable[int], n: int | None = None, bands: Bands | None = None
) -> dict[int, Decimal]:
    """The contribution at each rank (0: the lowest) over every shard, exactly, for ``n``
    customers (default: as many as the shards hold): counted within the bands, set anew
    first when a rank is out of them or near their edge (docs/scale.md, "Tiers"). Raises
    ``Busy`` when that is needed while another process sets them. ``bands``: as the caller
    just read them (default: read here)."""
    wanted = sorted(set(ranks))
    if not wanted:
        return {}
    if bands is None:
        bands = await read_bands(redis, keys)
    if n is None:
        n = bands.n if bands is not None else await _count_all(redis, keys)
    if n <= 0:
        raise ValueError("no tier values stored")
    half = max(BAND_LEAST, int(n * BAND_SHARE))
    if bands is None or bands.n != n or not bands.holds(wanted, half):
        bands = await recenter(redis, keys, wanted, n)
    if not bands.holds(wanted, 0):
        raise ValueError(f"the bands do not hold ranks {wanted} of {n}")
    return await _band_values(redis, keys, bands, wanted)


async def recompute_cuts(redis: aioredis.Redis, keys: Any, as_of_us: int) -> Cuts | None:
    bands = await read_bands(redis, keys)  # (the count and the search from one read of them)
    n = bands.n if bands is not None else await _count_all(redis, keys)
    if n < 2:
        await redis.delete(keys.tier_cuts)
        return None
    try:
        values = await values_at(redis, keys, (r for lo, hi, _ in cut_positions(n) for r in (lo, hi)), n, bands)
    except Busy:  # another process sets the bands anew: the cut points stay as they are till the next refresh
        return (await read_cuts(redis, keys))[0]
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
        bands = await read_bands(redis, keys)
        if bands is not None and all(
            bands.of_value(a) is not None and bands.of_value(a) == bands.of_value(b) for a, b in ranges
        ):
            found = await _each_shard(
                redis, lambda pipe, tag: [pipe.zrangebyscore(keys.tier_shard(tag, "band"), a, b) for a, b in ranges]
            )
            members = iter(found)
        else:  # a cut point moved beyond its band: a visit of every sub-shard
            bounds = [repr(x) for pair in ranges for x in pair]
            found = await _each_shard(redis, lambda pipe, tag: _run(pipe, _RANGE, keys, tag, 0, 1, *bounds))
            members = (reply[i][::2] for reply in found for i in range(len(ranges)))
        others = [cid for cid in dict.fromkeys(_text(m) for got in members for m in got) if cid not in values]
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
        bands = await read_bands(redis, keys)
        if bands is not None and bands.bounds and bands.bounds[-1][1] == "inf" and bands.inside[-1] >= top:
            # the top band holds at least ``top``: a shard's highest are its highest there
            tops = await _each_shard(
                redis, lambda pipe, tag: pipe.zrevrange(keys.tier_shard(tag, "band"), 0, top - 1, withscores=True)
            )
            pairs = ((m, float(score)) for reply in tops for m, score in reply)
        else:
            tops = await _each_shard(redis, lambda pipe, tag: _run(pipe, _TOP, keys, tag, top))
            pairs = ((reply[i], float(reply[i + 1])) for reply in tops for i in range(0, len(reply), 2))
        # ZREVRANGE's order over all shards: score, then member, both descending
        leaders = sorted(pairs, key=lambda p: (p[1], p[0]), reverse=True)[:top]
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
    bands = await read_bands(redis, keys)
    held = [bands.of_value(q) for q in (q1, q2, q3)] if bands is not None else [None]
    if bands is not None and None not in held:  # each cut point inside a band: counted there
        at = cast(list[int], held)

        def below(pipe: Any, tag: str) -> None:
            for q, b in zip((q1, q2, q3), at, strict=True):
                pipe.zcount(keys.tier_shard(tag, "band"), bands.bounds[b][0], f"({q!r}")

        counts = _column_sums(await _each_shard(redis, below), len(at))
        under = [bands.below[b] + counts[i] for i, b in enumerate(at)]
        return {"I": bands.n - under[2], "II": under[2] - under[1], "III": under[1] - under[0], "IV": under[0]}
    bounds = ((q3, "+inf"), (q2, f"({q3}"), (q1, f"({q2}"), ("-inf", f"({q1}"))
    args = [str(x) for pair in bounds for x in pair]
    replies = await _each_shard(redis, lambda pipe, tag: _run(pipe, _COUNT, keys, tag, *args))
    totals = [sum(int(reply[i]) for reply in replies) for i in range(len(bounds))]
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
        for name in await tier_keys(redis, keys):
            pipe.delete(name)  # (a key a command: on a cluster the shards sit in different slots)
        await pipe.execute()
    await fit_layout(redis, keys, len(values))
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
            scores = dict(zip(members, (score for _, score in chunk), strict=True))
            async with redis.pipeline(transaction=False) as pipe:
                groups = by_shard(members)
                for tag, group in groups.items():
                    _run(pipe, _WRITE, keys, tag, "NX", *_hashed(group, scores))
                replies = iter(await pipe.execute())
                fresh = {cid: int(a) for group in groups.values() for cid, a in zip(group, next(replies), strict=True)}
            added = [fresh[cid] for cid in members]
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
                    read = await _run(redis, _READ, keys, tag, *_hashed(fields))
                    scores = [None if s is None else float(s) for s in read]
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
