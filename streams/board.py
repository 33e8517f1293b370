"""The 看板 (overview): reading, checking and pruning the bank-level aggregates.

The worker writes them in its commit script (``streams.storage.store``), exactly-once with
the customer states; this module only reads them (``read_board``, the API's
``GET /board``), compares them with a recomputation from the stored states
(``check``: ``fundflow board --check``), and drops days older than the retention
(``prune``, a worker timer). On Redis Cluster a commit can only write its customers' slot:
it writes the slot's pending cells, and ``fold`` carries them, exactly once, into the same
bank-wide keys a single Redis has (one per day, not one per slot per day); a reader reads
those, as of the last fold (``FUNDFLOW_BOARD_FOLD_SECONDS``). The net-outflow sets stay one
per slot (a customer's net is moved with its state), and the top of a day merges them.

What can go wrong: nothing here writes a customer's state; a Redis that does not
answer raises (the API answers 503, the CLI one line). Days are the bank's local
days of event time; "now" is the latest event time any commit carried, so a replay
of old data shows its own days.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import orjson
import redis.asyncio as aioredis

from rules.board import BUCKETS, NO_RATE, Board, floor_from_hist, floor_value, recompute
from rules.money import rounded
from rules.state import KINDS, from_us
from streams.pipeline import outbox_message
from streams.storage.keys import BOARD, Keys
from streams.storage.store import StateStore

DAYS_SHOWN = 30  # the findings history of the board
# Closed days one trim script cuts in a shard: on a cluster a shard's sets are small and the
# shards many, so a call takes a month of them; on one Redis its one shard holds every active
# customer of a day, and one day is what a call may keep Redis busy for.
TRIM_DAYS_PER_CALL = 31
# A Redis Cluster has a 看板 shard per slot: a day's floor reads them in pipelines of this many,
# so no one pipeline's packing and parsing holds the worker's event loop for long.
FLOOR_SHARDS_PER_PIPELINE = 1024
FIRST_PRUNE_LOOKBACK_DAYS = 31  # how far before the retention a shard's first prune looks
# A fold moves the pending cells of this many slots per pipeline (bounds the loop's time per step),
# and carries at most this many arguments per script call into the bank-wide keys.
FOLD_SHARDS_PER_PIPELINE = 256
FOLD_ARGS_PER_CALL = 8192
Cells = dict[str, int]


def amount(cents: int) -> str:
    return str(Decimal(cents).scaleb(-2))


def bucket_label(bucket: str) -> str:
    return "none" if bucket == NO_RATE else f"{int(bucket) * 10}-{int(bucket) * 10 + 10}%"


async def shards(redis: aioredis.Redis, keys: Keys, cluster: bool) -> list[str]:
    """The board's shards: one on a single Redis; on Redis Cluster every one the workers
    registered (``StateStore`` adds a shard to ``{p}:board:shards`` when it first writes it),
    so no reader ever scans the keyspace."""
    if not cluster:
        return [BOARD]
    return sorted(_text(m) for m in cast(set[bytes], await redis.smembers(keys.board_shards)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _each_shard(redis: aioredis.Redis, found: Sequence[str], queue: Any, per: int | None = None) -> list[Any]:
    """The replies of ``queue(pipe, shard)`` for every shard, in order, in pipelines of ``per``
    shards (default ``FOLD_SHARDS_PER_PIPELINE``): on a cluster there is a shard per slot, and
    one pipeline of them all would hold the loop while it is packed and parsed."""
    per = per or FOLD_SHARDS_PER_PIPELINE
    replies: list[Any] = []
    for start in range(0, len(found), per):
        async with redis.pipeline(transaction=False) as pipe:
            for shard in found[start : start + per]:
                queue(pipe, shard)
            replies += await pipe.execute()
    return replies


async def _hashes(redis: aioredis.Redis, names: Sequence[str]) -> list[Cells]:
    """HGETALL of each key (integer values), in one round trip per shard set."""
    if not names:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(name)
        replies = await pipe.execute()
    return [{_text(f): int(v) for f, v in reply.items()} for reply in replies]


def _summed(rows: Sequence[Cells]) -> Cells:
    total: Cells = {}
    for row in rows:
        for cell, value in row.items():
            total[cell] = total.get(cell, 0) + value
    return total


async def latest_us(redis: aioredis.Redis, keys: Keys, found: Sequence[str]) -> int | None:
    """The latest event time any shard's commits carried, in one round trip."""
    if not found:
        return None
    async with redis.pipeline(transaction=False) as pipe:
        for shard in found:
            pipe.get(keys.board(shard, "latest"))
        values = await pipe.execute()
    present = [int(v) for v in values if v is not None]
    return max(present) if present else None


async def _cells(redis: aioredis.Redis, keys: Keys, found: Sequence[str], names: Sequence[str]) -> list[Cells]:
    """The cells of each board hash ``names``, summed over the shards, in one round trip."""
    rows = await _hashes(redis, [keys.board(shard, name) for name in names for shard in found])
    width = len(found)
    return [_summed(rows[i * width : (i + 1) * width]) for i in range(len(names))]


def _flows(cells: Cells) -> dict[str, Any]:
    hours = [[0, 0] for _ in range(24)]
    kinds = {kind: [0, 0] for kind in KINDS}
    where = {"ext": [0, 0], "int": [0, 0]}
    for cell, cents in cells.items():
        hour, direction, kind, place = cell.split("|")
        side = 0 if direction == "in" else 1
        hours[int(hour)][side] += cents
        kinds.setdefault(kind, [0, 0])[side] += cents
        where[place][side] += cents
    inflow = sum(h[0] for h in hours)
    outflow = sum(h[1] for h in hours)
    share = rounded(Decimal(where["ext"][1]) / Decimal(outflow), 4) if outflow else None
    return {
        "hours": [
            {"hour": h, "inflow": amount(i), "outflow": amount(o), "net": amount(i - o)}
            for h, (i, o) in enumerate(hours)
        ],
        "by_kind": [{"kind": kind, "inflow": amount(i), "outflow": amount(o)} for kind, (i, o) in kinds.items()],
        "external": {"inflow": amount(where["ext"][0]), "outflow": amount(where["ext"][1])},
        "internal": {"inflow": amount(where["int"][0]), "outflow": amount(where["int"][1])},
        "total": {"inflow": amount(inflow), "outflow": amount(outflow), "net": amount(inflow - outflow)},
        "external_outflow_share": str(share) if share is not None else None,
    }


def _by_rule(rows: Sequence[tuple[str, Cells]], keep: Any) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str, str], int] = {}
    for day, cells in rows:
        for cell, count in cells.items():
            hour, kind, category, rule = cell.split("|")
            if keep(day, int(hour)):
                counts[(kind, category, rule)] = counts.get((kind, category, rule), 0) + count
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"kind": k, "category": c, "rule": r, "count": n} for (k, c, r), n in ordered if n]


async def read_board(
    redis: aioredis.Redis,
    keys: Keys,
    zone: ZoneInfo,
    day: str | None = None,
    *,
    cluster: bool = False,
    top: int = 10,
) -> dict[str, Any]:
    """The board of ``day`` (ISO date, the bank's; default: the day of the latest event)."""
    found = await shards(redis, keys, cluster)
    newest = await latest_us(redis, keys, [BOARD])
    latest = from_us(newest).astimezone(zone) if newest is not None else None
    if day is None and latest is not None:
        day = latest.date().isoformat()
    board: dict[str, Any] = {
        "day": day,
        "latest": latest.isoformat() if latest is not None else None,
        "zone": zone.key,
    }
    days = _days_to(day)
    names = ["collection", *(f"flow:{d}" for d in days[-1:]), *(f"findings:{d}" for d in days)]
    collection, *rest = await _cells(redis, keys, [BOARD], names)
    flows, findings = (rest[0], rest[1:]) if days else ({}, [])
    board["flows"] = _flows(flows)
    history = list(zip(days, findings, strict=True))
    end_hour = latest.hour if latest is not None and latest.date().isoformat() == day else 23
    today, yesterday = (days[-1], days[-2]) if days else ("", "")
    board["findings"] = {
        "last_24h": _by_rule(
            history[-2:], lambda d, h: (d == today and h <= end_hour) or (d == yesterday and h > end_hour)
        ),
        "last_30d": _by_rule(history, lambda d, h: True),
        "by_day": [
            {"day": d, **{kind: sum(n for c, n in cells.items() if c.split("|")[1] == kind) for kind in _TYPES}}
            for d, cells in history
        ],
    }
    board["collection_rate"] = [{"bucket": bucket_label(b), "customers": collection.get(b, 0)} for b in BUCKETS]
    board["top_net_outflow"] = await _top(redis, keys, found, day, top) if day else []
    return board


_TYPES = ("alert", "recommendation", "push")


def _days_to(day: str | None, count: int = DAYS_SHOWN) -> list[str]:
    if day is None:
        return []
    last = dt.date.fromisoformat(day)
    return [(last - dt.timedelta(days=back)).isoformat() for back in range(count - 1, -1, -1)]


async def _scored(reply: Any) -> list[tuple[bytes, float]]:
    """A sorted-set read WITHSCORES: (member, score) pairs."""
    return cast(list[tuple[bytes, float]], await reply)


async def _top(redis: aioredis.Redis, keys: Keys, found: Sequence[str], day: str, top: int) -> list[dict[str, Any]]:
    if top <= 0 or not found:
        return []
    # a customer is counted in one shard only: the top of each shard, and whoever ties its
    # last, holds the top of all (ties go by customer id, ZREVRANGE's by id reversed); one
    # round trip for every shard (a cluster has up to one per slot), one more for the ties
    names = [keys.board(shard, f"net:{day}") for shard in found]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zrevrange(name, 0, top - 1, withscores=True)
        replies = cast(list[list[tuple[bytes, float]]], await pipe.execute())
    full = [(name, reply[-1][1]) for name, reply in zip(names, replies, strict=True) if len(reply) == top]
    if full:
        async with redis.pipeline(transaction=False) as pipe:
            for name, last in full:
                pipe.zrangebyscore(name, last, last, withscores=True)
            replies += cast(list[list[tuple[bytes, float]]], await pipe.execute())
    scores: dict[str, int] = {}
    for reply in replies:
        for member, score in reply:
            scores[_text(member)] = int(score)
    ordered = sorted(((cid, cents) for cid, cents in scores.items() if cents > 0), key=lambda x: (-x[1], x[0]))
    return [{"customer_id": cid, "net_outflow": amount(cents)} for cid, cents in ordered[:top]]


async def stored(redis: aioredis.Redis, keys: Keys, cluster: bool) -> Board:
    """Every stored cell of every day (for ``check``)."""
    board = Board()
    for shard in [*(await shards(redis, keys, cluster)), *([BOARD] if cluster else [])]:
        for name, into in (("flow", board.flows), ("findings", board.findings)):
            async for key in redis.scan_iter(match=keys.board(shard, f"{name}:*")):
                day = _text(key).rsplit(":", 1)[1]
                row = into.setdefault(day, {})
                for cell, value in (await _hashes(redis, [_text(key)]))[0].items():
                    row[cell] = row.get(cell, 0) + value
        async for key in redis.scan_iter(match=keys.board(shard, "net:*")):
            day = _text(key).rsplit(":", 1)[1]
            row = board.net.setdefault(day, {})
            for member, score in await _scored(redis.zrange(_text(key), 0, -1, withscores=True)):
                row[_text(member)] = row.get(_text(member), 0) + int(score)
        for bucket, count in (await _hashes(redis, [keys.board(shard, "collection")]))[0].items():
            board.collection[bucket] = board.collection.get(bucket, 0) + count
    return board


def _nonzero(cells: dict[str, dict[str, int]], from_day: str | None) -> dict[str, dict[str, int]]:
    return {
        day: {cell: value for cell, value in row.items() if value}
        for day, row in cells.items()
        if (from_day is None or day >= from_day) and any(row.values())
    }


async def check(store: StateStore, zone: ZoneInfo, kept: int, cluster: bool = False) -> list[str]:
    """Differences between the stored board and a recomputation from the stored states and
    recent-findings lists (empty: they agree). Flows and net outflow are compared from the
    first day every state still keeps; findings from the first day no customer's capped list
    (``kept`` entries) may have lost; the 归集率 distribution whole."""
    if cluster:  # (what the workers have not folded yet is part of what they wrote)
        await fold(store.redis, store.keys, await shards(store.redis, store.keys, cluster))
    states = [state async for state in store.scan_states()]
    findings: list[dict[str, Any]] = []
    findings_from: str | None = None
    for state in states:
        entries = await store.recent_findings(state.customer_id, kept)
        values = [cast(dict[str, Any], orjson.loads(outbox_message(e)[2])) for e in entries]
        findings += values
        if len(entries) >= kept and values:  # older ones were dropped: only later days are whole
            oldest = min(str(v["ts"])[:10] for v in values)
            start = (dt.date.fromisoformat(oldest) + dt.timedelta(days=1)).isoformat()
            findings_from = max(findings_from or start, start)
    expected, flows_from = recompute(states, findings, zone)
    actual = await stored(store.redis, store.keys, cluster)
    closed, through = await floors(store.redis, store.keys)
    for net in (actual.net, expected.net):  # a closed day keeps only those at or above its floor
        for day, row in net.items():
            if day in closed or (through is not None and day <= through):
                net[day] = {cid: cents for cid, cents in row.items() if cents >= closed.get(day, 1)}
    differences = []
    for what, mine, theirs, since in (
        ("flows", actual.flows, expected.flows, flows_from),
        ("net outflow", actual.net, expected.net, flows_from),
        ("findings", actual.findings, expected.findings, findings_from),
    ):
        a, e = _nonzero(mine, since), _nonzero(theirs, since)
        for day in sorted(set(a) | set(e)):
            if a.get(day) != e.get(day):
                differences.append(f"{what} of {day}: stored {a.get(day)} != recomputed {e.get(day)}")
    a_coll = {b: n for b, n in actual.collection.items() if n}
    e_coll = {b: n for b, n in expected.collection.items() if n}
    if a_coll != e_coll:
        differences.append(f"collection-rate distribution: stored {a_coll} != recomputed {e_coll}")
    return differences


async def prune(redis: aioredis.Redis, keys: Keys, zone: ZoneInfo, keep_days: int, cluster: bool = False) -> int:
    """Delete the day keys older than ``keep_days`` before the latest event's day; returns how
    many existed. Each shard remembers the first day it still keeps (``board:kept_from``), so
    a prune deletes by name the days since the last one (never a scan of the keyspace); the
    first prune of a shard goes back ``keep_days`` (at least 31) more."""
    found = await shards(redis, keys, cluster)
    if cluster:
        found = [*found, BOARD]  # (the bank-wide keys the fold writes: days and their histograms)
    newest = await latest_us(redis, keys, found)
    if newest is None:
        return 0
    first = from_us(newest).astimezone(zone).date() - dt.timedelta(days=keep_days)
    lookback = dt.timedelta(days=max(keep_days, FIRST_PRUNE_LOOKBACK_DAYS))
    dropped = 0
    for at in range(0, len(found), FOLD_SHARDS_PER_PIPELINE):
        chunk = found[at : at + FOLD_SHARDS_PER_PIPELINE]
        marks = await _each_shard(redis, chunk, lambda pipe, shard: pipe.get(keys.board(shard, "kept_from")))
        deletes: list[int] = []
        async with redis.pipeline(transaction=False) as pipe:
            for shard, kept_from in zip(chunk, marks, strict=True):
                # (on a cluster a slot's shard holds only its net-outflow sets: the rest is folded)
                names = ("net",) if cluster and shard != BOARD else ("flow", "findings", "net", "hist")
                start = dt.date.fromisoformat(_text(kept_from)) if kept_from else first - lookback
                gone = [
                    keys.board(shard, f"{name}:{(start + dt.timedelta(days=n)).isoformat()}")
                    for n in range((first - start).days)
                    for name in names
                ]
                for i in range(0, len(gone), 300):  # (one shard: one slot, also on a cluster)
                    deletes.append(len(pipe))
                    pipe.delete(*gone[i : i + 300])
                if start < first or kept_from is None:
                    pipe.set(keys.board(shard, "kept_from"), first.isoformat())
            replies = await pipe.execute()
        dropped += sum(int(replies[i]) for i in deletes)
    closed, _ = await floors(redis, keys)
    gone = [day for day in closed if day < first.isoformat()]
    if gone:  # (the floors of the days dropped: a closed day is kept as long as its sets)
        await redis.hdel(keys.board_floors, *gone)
    return dropped


# KEYS: the shard's trim marker (``board:trim``), then the net-outflow sets of the days to cut.
# ARGV: the last of those days, then each set's floor. Everyone below a day's floor leaves its
# set, and the marker says the shard's days up to the last one are cut (a commit then moves a
# member of such a day, and brings anyone else back only with their whole net: COMMIT_LUA);
# both in one step, so no commit ever sees a cut day as whole.
TRIM_LUA = """
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[i])
end
local day = redis.call('HGET', KEYS[1], 'day')
if not day or day < ARGV[1] then redis.call('HSET', KEYS[1], 'day', ARGV[1]) end
return 1
"""


async def trim(
    redis: aioredis.Redis,
    keys: Keys,
    zone: ZoneInfo,
    *,
    kept: int,
    open_days: int,
    keep_days: int,
    cluster: bool = False,
    most_days: int | None = None,
) -> int:
    """Cut the net-outflow sets of every closed day to their top ``kept`` customers (at most
    ``most_days`` of them, oldest first: the next call goes on where this one stopped); returns
    how many days it cut. A day is closed once ``open_days`` later days have data (the
    latest event's day among them). Its floor, the ``kept``-th largest net outflow over every
    shard, is fixed once (``board:floors``; a second worker, or a run after a crash, uses the
    same), and each shard keeps those at or above it. Each run starts after the last day
    every shard cut (``through``; the first goes back ``keep_days``, as far as the 看板 keeps),
    so a re-run cuts nothing twice and costs one read. Exact: after the cut a shard's members
    hold their whole net and everyone else is below the floor, and the commit keeps it so
    (docs/scale.md, "The 看板's closed days")."""
    found = await shards(redis, keys, cluster)
    if cluster:  # (the floors come from the histograms: what the slots hold must be in them)
        await fold(redis, keys, found)
    newest = await latest_us(redis, keys, found)
    if newest is None or not found:
        return 0
    last = from_us(newest).astimezone(zone).date() - dt.timedelta(days=open_days)
    through = await redis.hget(keys.board_floors, "through")
    first = (
        dt.date.fromisoformat(_text(through)) + dt.timedelta(days=1) if through else last - dt.timedelta(days=keep_days)
    )
    if most_days is not None:
        last = min(last, first + dt.timedelta(days=most_days - 1))
    cut = 0
    sha = await redis.script_load(TRIM_LUA)
    hist_from = await _hist_from(redis, keys, found) if cluster else None
    while first <= last:
        per_call = (most_days or keep_days) if cluster else 1
        days = [first + dt.timedelta(days=n) for n in range(min(per_call, (last - first).days + 1))]
        floors = [await _floor(redis, keys, found, day, kept, zone, hist_from) for day in days]
        names = [f"net:{day.isoformat()}" for day in days]
        for start in range(0, len(found), FOLD_SHARDS_PER_PIPELINE):
            async with redis.pipeline(transaction=False) as pipe:
                for shard in found[start : start + FOLD_SHARDS_PER_PIPELINE]:
                    shard_keys = [keys.board(shard, "trim"), *(keys.board(shard, n) for n in names)]
                    pipe.evalsha(sha, len(shard_keys), *shard_keys, days[-1].isoformat(), *floors)
                await pipe.execute()
        await redis.hset(keys.board_floors, "through", days[-1].isoformat())
        cut += len(days)
        first = days[-1] + dt.timedelta(days=1)
    return cut


async def _hist_from(redis: aioredis.Redis, keys: Keys, found: Sequence[str]) -> int:
    """The latest event time (µs) a net-outflow set may hold without its histogram: 0 when
    every shard was first written by a version that keeps histograms. A shard written before
    it remembers its latest of then (``hist`` in its trim marker, set by its first commit since);
    one not written since, its latest. Fixed once every shard has its ``hist``."""
    fixed = await redis.get(keys.board(BOARD, "hist_from"))
    if fixed is not None:
        return int(fixed)
    known = True
    latest = 0
    replies = await _each_shard(
        redis,
        found,
        lambda pipe, shard: (pipe.hget(keys.board(shard, "trim"), "hist"), pipe.get(keys.board(shard, "latest"))),
    )
    for hist, shard_latest in zip(replies[0::2], replies[1::2], strict=True):
        if hist is None:
            known = False
        value = hist if hist is not None else shard_latest
        latest = max(latest, int(value) if value is not None else 0)
    if known:
        await redis.set(keys.board(BOARD, "hist_from"), latest)
    return latest


async def _floor(
    redis: aioredis.Redis,
    keys: Keys,
    found: Sequence[str],
    day: dt.date,
    kept: int,
    zone: ZoneInfo,
    hist_from: int | None = None,
) -> int:
    """The floor of ``day``: the one already fixed, else fixed now: on Redis Cluster from the
    day's histogram (one read, where reading every slot's top is a read per slot), unless
    commits of a version without histograms may have touched the day (``_hist_from``); else
    the ``kept``-th largest of every shard's top ``kept``."""
    fixed = await redis.hget(keys.board_floors, day.isoformat())
    if fixed is None:
        start_us = int(dt.datetime.combine(day, dt.time(), tzinfo=zone).timestamp() * 1_000_000)
        if hist_from is not None and start_us > hist_from:
            counts = cast(dict[bytes, bytes], await redis.hgetall(keys.board(BOARD, f"hist:{day.isoformat()}")))
            value = floor_from_hist({int(b): int(n) for b, n in counts.items()}, kept)
        else:
            name = f"net:{day.isoformat()}"
            tops = await _each_shard(
                redis,
                found,
                lambda pipe, shard: pipe.zrevrange(keys.board(shard, name), 0, kept - 1, withscores=True),
                FLOOR_SHARDS_PER_PIPELINE,
            )
            value = floor_value([int(score) for top in tops for _, score in top], kept)
        await redis.hsetnx(keys.board_floors, day.isoformat(), value)
        fixed = await redis.hget(keys.board_floors, day.isoformat())
    return int(cast(bytes, fixed))


# KEYS: a shard's pending cells, the cells being moved, its trim marker; then, once (a shard
#   an earlier version wrote: no ``legacy`` in its marker), that version's per-slot day hashes
#   and 归集率 hash. ARGV: the generation of this shard the bank-wide keys already hold ('': not known).
# The cells being moved are dropped once the bank-wide keys hold their generation, else
# returned again; else the pending cells become the cells being moved (a later commit starts
# a new pending hash, with the next generation) and are returned. An earlier version's hashes
# join the pending cells first, in the same step.
MOVE_LUA = """
local moving = redis.call('HGET', KEYS[2], '#')
if moving then
  if ARGV[1] ~= '' and tonumber(moving) <= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[2])
  else
    return redis.call('HGETALL', KEYS[2])
  end
end
if #KEYS > 3 and not redis.call('HGET', KEYS[3], 'legacy') then
  for i = 4, #KEYS do
    local cells = redis.call('HGETALL', KEYS[i])
    if #cells > 0 then
      if redis.call('EXISTS', KEYS[1]) == 0 then
        redis.call('HSET', KEYS[1], '#', redis.call('HINCRBY', KEYS[3], 'gen', 1))
      end
      local name = string.match(KEYS[i], ':board:(.*)$')
      for j = 1, #cells, 2 do redis.call('HINCRBY', KEYS[1], name .. ' ' .. cells[j], cells[j + 1]) end
      redis.call('DEL', KEYS[i])
    end
  end
  redis.call('HSET', KEYS[3], 'legacy', '1')
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('RENAME', KEYS[1], KEYS[2])
return redis.call('HGETALL', KEYS[2])
"""

# KEYS: the bank-wide keys' record of the generation each shard has added (``board:applied``).
# ARGV: the bank-wide keys' prefix, then per shard: shard, generation, m, then m times a key
# name (``flow:{day}``, ``collection``; ``@latest``: an event time) and its n cells (n, then
# cell, count...). A shard's cells are added only if their generation is newer than the one
# recorded, which moves with them: exactly once. Cells of a day before the first one the 看板
# keeps (``prune``) are dropped, as the prune would.
APPLY_LUA = """
local prefix = ARGV[1]
local kept_from = redis.call('GET', prefix .. 'kept_from')
local i = 2
local added = 0
while i <= #ARGV do
  local shard, gen, names = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local fresh = gen > tonumber(redis.call('HGET', KEYS[1], shard) or '0')
  i = i + 3
  for _ = 1, names do
    local name, n = ARGV[i], tonumber(ARGV[i + 1])
    if fresh then
      if name == '@latest' then
        if tonumber(ARGV[i + 3]) > tonumber(redis.call('GET', prefix .. 'latest') or '0') then
          redis.call('SET', prefix .. 'latest', ARGV[i + 3])
        end
      else
        local day = string.match(name, ':(%d%d%d%d%-%d%d%-%d%d)$')
        if not (day and kept_from and day < kept_from) then
          local key = prefix .. name
          for j = i + 2, i + 2 * n, 2 do
            if ARGV[j + 1] ~= '0' then redis.call('HINCRBY', key, ARGV[j], ARGV[j + 1]) end
          end
        end
      end
    end
    i = i + 2 + 2 * n
  end
  if fresh then
    redis.call('HSET', KEYS[1], shard, gen)
    added = added + 1
  end
end
return added
"""


# KEYS: a shard's cells being moved. ARGV: their generation, now in the bank-wide keys.
DONE_LUA = """
if redis.call('HGET', KEYS[1], '#') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def fold(redis: aioredis.Redis, keys: Keys, found: Sequence[str], *, legacy: Sequence[str] = ()) -> int:
    """Carry the pending cells of the Redis Cluster 看板 shards ``found`` into the bank-wide
    keys, exactly once (any number of workers may fold the same shards at once: each
    generation is added once, ``APPLY_LUA``); returns how many shards' cells it added.
    ``legacy``: the per-slot key names (``flow:{day}``, ``collection``...) an earlier version
    wrote, folded in once per shard. Safe to stop at any point: what was not added is
    added by the next fold."""
    if not found:
        return 0
    move = await redis.script_load(MOVE_LUA)
    apply = await redis.script_load(APPLY_LUA)
    done = await redis.script_load(DONE_LUA)
    applied = keys.board(BOARD, "applied")
    prefix = keys.board(BOARD, "")
    added = 0
    for start in range(0, len(found), FOLD_SHARDS_PER_PIPELINE):
        chunk = found[start : start + FOLD_SHARDS_PER_PIPELINE]
        gens = cast(list[bytes | None], await redis.hmget(applied, chunk))
        async with redis.pipeline(transaction=False) as pipe:
            for shard, gen in zip(chunk, gens, strict=True):
                shard_keys = [keys.board(shard, n) for n in ("pending", "moving", "trim", *legacy)]
                pipe.evalsha(move, len(shard_keys), *shard_keys, _text(gen) if gen is not None else "")
            replies = await pipe.execute()
        calls: list[list[str | bytes]] = []
        args: list[str | bytes] = []
        moved: list[tuple[str, bytes]] = []
        for shard, reply in zip(chunk, replies, strict=True):
            if not reply:
                continue
            by_name: dict[bytes, list[bytes]] = {}
            generation = b""
            for i in range(0, len(reply), 2):
                if reply[i] == b"#":
                    generation = reply[i + 1]
                else:  # (``name cell``; ``@latest`` alone)
                    name, _, cell = reply[i].partition(b" ")
                    by_name.setdefault(name, []).extend((cell, reply[i + 1]))
            moved.append((shard, generation))
            size = sum(len(cells) + 2 for cells in by_name.values())
            if args and len(args) + size > FOLD_ARGS_PER_CALL:
                calls.append(args)
                args = []
            args += [shard, generation, str(len(by_name))]
            for name, cells in by_name.items():
                args += [name, str(len(cells) // 2), *cells]
        if args:
            calls.append(args)
        if calls:
            async with redis.pipeline(transaction=False) as pipe:
                for call in calls:
                    pipe.evalsha(apply, 1, applied, prefix, *call)
                added += sum(int(n) for n in await pipe.execute())
            async with redis.pipeline(transaction=False) as pipe:  # (else the next fold drops them)
                for shard, generation in moved:
                    pipe.evalsha(done, 1, keys.board(shard, "moving"), generation)
                await pipe.execute()
    return added


async def fold_legacy(redis: aioredis.Redis, keys: Keys, zone: ZoneInfo, keep_days: int) -> int:
    """Once after an upgrade on Redis Cluster: fold the per-slot day hashes and 归集率 hash an
    earlier version wrote (each shard once: ``legacy`` in its trim marker) into the bank-wide
    keys. Returns how many shards still had them; a cheap read once done (``board:legacy``)."""
    if await redis.get(keys.board(BOARD, "legacy")) is not None:
        return 0
    found = await shards(redis, keys, True)
    newest = await latest_us(redis, keys, found)
    marks = await _each_shard(redis, found, lambda pipe, shard: pipe.hget(keys.board(shard, "trim"), "legacy"))
    old = [shard for shard, mark in zip(found, marks, strict=True) if mark is None]
    if old and newest is not None:
        last = from_us(newest).astimezone(zone).date()
        back = keep_days + FIRST_PRUNE_LOOKBACK_DAYS
        days = [(last - dt.timedelta(days=n)).isoformat() for n in range(back, -1, -1)]
        names = ["collection", *(f"{name}:{day}" for day in days for name in ("flow", "findings"))]
        for start in range(0, len(old), 64):  # (a shard's call names ~900 keys)
            await fold(redis, keys, old[start : start + 64], legacy=names)
    await redis.set(keys.board(BOARD, "legacy"), 1)
    return len(old)


async def floors(redis: aioredis.Redis, keys: Keys) -> tuple[dict[str, int], str | None]:
    """The closed days' floors, and the last day every shard has cut (None: none yet)."""
    raw = cast(dict[bytes, bytes], await redis.hgetall(keys.board_floors))
    found = {_text(k): _text(v) for k, v in raw.items()}
    through = found.pop("through", None)
    return {day: int(value) for day, value in found.items()}, through
