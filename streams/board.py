"""The 看板 (overview): reading, checking and pruning the bank-level aggregates.

The worker writes them in its commit script (``streams.storage.store``), exactly-once with
the customer states; this module only reads them (``read_board``, the API's
``GET /board``), compares them with a recomputation from the stored states
(``check``: ``fundflow board --check``), and drops days older than the retention
(``prune``, a worker timer). On Redis Cluster the aggregates are spread over one
shard per slot (``streams.storage.keys``): every reader sums the shards.

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

from rules.board import BUCKETS, NO_RATE, Board, floor_value, recompute
from rules.money import rounded
from rules.state import KINDS, from_us
from streams.pipeline import outbox_message
from streams.storage.keys import BOARD, Keys
from streams.storage.store import StateStore, _bounded

DAYS_SHOWN = 30  # the findings history of the board
# Closed days one trim script cuts in a shard: on a cluster a shard's sets are small and the
# shards many, so a call takes a month of them; on one Redis its one shard holds every active
# customer of a day, and one day is what a call may keep Redis busy for.
TRIM_DAYS_PER_CALL = 31
# A Redis Cluster has a 看板 shard per slot: a day's floor reads them in pipelines of this many,
# so no one pipeline's packing and parsing holds the worker's event loop for long.
FLOOR_SHARDS_PER_PIPELINE = 1024
FIRST_PRUNE_LOOKBACK_DAYS = 31  # how far before the retention a shard's first prune looks
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
    newest = await latest_us(redis, keys, found)
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
    collection, *rest = await _cells(redis, keys, found, names)
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
    for shard in await shards(redis, keys, cluster):
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
    newest = await latest_us(redis, keys, found)
    if newest is None:
        return 0
    first = from_us(newest).astimezone(zone).date() - dt.timedelta(days=keep_days)
    dropped = 0
    for shard in found:
        marker = keys.board(shard, "kept_from")
        kept_from = await redis.get(marker)
        lookback = dt.timedelta(days=max(keep_days, FIRST_PRUNE_LOOKBACK_DAYS))
        start = dt.date.fromisoformat(_text(kept_from)) if kept_from else first - lookback
        day = start
        while day < first:
            batch: list[str] = []
            while day < first and len(batch) < 300:
                batch += [keys.board(shard, f"{name}:{day.isoformat()}") for name in ("flow", "findings", "net")]
                day += dt.timedelta(days=1)
            dropped += int(await redis.delete(*batch))  # (one shard: one slot, also on a cluster)
        if start < first or kept_from is None:
            await redis.set(marker, first.isoformat())
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
    script = redis.register_script(TRIM_LUA)
    while first <= last:
        per_call = TRIM_DAYS_PER_CALL if cluster else 1
        days = [first + dt.timedelta(days=n) for n in range(min(per_call, (last - first).days + 1))]
        floors = [await _floor(redis, keys, found, day.isoformat(), kept) for day in days]
        names = [f"net:{day.isoformat()}" for day in days]
        await _bounded(
            script(
                keys=[keys.board(shard, "trim"), *(keys.board(shard, n) for n in names)],
                args=[days[-1].isoformat(), *floors],
            )
            for shard in found
        )
        await redis.hset(keys.board_floors, "through", days[-1].isoformat())
        cut += len(days)
        first = days[-1] + dt.timedelta(days=1)
    return cut


async def _floor(redis: aioredis.Redis, keys: Keys, found: Sequence[str], day: str, kept: int) -> int:
    """The floor of ``day``: the one already fixed, else from every shard's top ``kept``, fixed now."""
    fixed = await redis.hget(keys.board_floors, day)
    if fixed is None:
        tops: list[Any] = []
        for start in range(0, len(found), FLOOR_SHARDS_PER_PIPELINE):
            async with redis.pipeline(transaction=False) as pipe:
                for shard in found[start : start + FLOOR_SHARDS_PER_PIPELINE]:
                    pipe.zrevrange(keys.board(shard, f"net:{day}"), 0, kept - 1, withscores=True)
                tops += await pipe.execute()
        await redis.hsetnx(keys.board_floors, day, floor_value([int(score) for top in tops for _, score in top], kept))
        fixed = await redis.hget(keys.board_floors, day)
    return int(cast(bytes, fixed))


async def floors(redis: aioredis.Redis, keys: Keys) -> tuple[dict[str, int], str | None]:
    """The closed days' floors, and the last day every shard has cut (None: none yet)."""
    raw = cast(dict[bytes, bytes], await redis.hgetall(keys.board_floors))
    found = {_text(k): _text(v) for k, v in raw.items()}
    through = found.pop("through", None)
    return {day: int(value) for day, value in found.items()}, through
