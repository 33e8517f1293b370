"""Redis: the system of record for per-customer state.

One round trip loads the states of a batch's customers (with any outbox left
by a crashed predecessor); one round trip commits the batch. The commit is a
Lua script that, for each customer of the batch, in one atomic step

1. checks the state version it read (compare-and-set): a stale owner after a
   rebalance, or a second worker, fails instead of overwriting;
2. writes the new state (which carries the applied txn_ids, so the
   idempotency record and the state can never disagree), or, on most commits,
   appends the batch's records to the customer's changelog, which a load
   replays (``streams.storage.changelog``);
3. appends the batch's findings to the customer's outbox and recent-alerts list;
4. adds what the customer's applied events and findings add to the 看板's
   bank-level cells (``rules.board``): exactly-once with the state.

A state is one string, ``version:bucket:blob`` (a hash of ``v`` and ``s``, as
versions before 2026-11 wrote it, costs more per customer in Redis, a blob being too
large for a hash's compact encoding: docs/performance.md, "A state as a string,
statistics in the commit"; it is still read, and its next commit replaces it with the
string).

A customer's keys share one hash tag. One script call carries many customers
(the client's per-command cost, not Redis' work, limits a worker); on Redis
Cluster (``FUNDFLOW_REDIS_CLUSTER``: ``connect`` returns a cluster client) a
call carries only customers of one hash slot. Connection errors surface as ``TransientError``; the
caller backs off and retries the whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterError, NoScriptError, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rules.board import BoardDelta, day_net, day_ordinal
from rules.state import CustomerState, StateConfig
from streams import telemetry
from streams.errors import TransientError
from streams.settings import Settings, state_config
from streams.storage.changelog import FixedRules, Rulebook, Step, plain_step, replay
from streams.storage.codec import compress_finding, decode_state, encode_states, finding_entry
from streams.storage.keys import BOARD, Keys, board_shard
from streams.topics import SHADOW

log = logging.getLogger(__name__)

RECENT_ALERTS_KEPT = 200
COMMIT_CHUNK = 256  # customers per commit script call (bounds one call's time in Redis)

SHADOW_TOPIC = SHADOW.encode()  # a shadow run's records: in no live view (docs/events.md, "Shadow runs")
SHADOW_ENTRY = SHADOW_TOPIC + b"\n"  # how a shadow run's outbox entries begin (streams.rulestep.shadow_records)

# The commit of many customers in one call, each customer atomic on its own keys, and the
# 看板's aggregates moved by exactly the customers whose commit went through.
# KEYS: the call's B board keys (1: latest, 2: collection, or on Redis Cluster the shard's
#   pending cells, 3: the customers with a changelog, 4: the shard's trim marker, then per day
#   flow/findings/net), then per customer: state, outbox, recent alerts, changelog.
# ARGV: kept, B, latest event time (or ''), the type of each board key ('s', 'h' hash, 'p' the
#   pending cells, 'z' sorted set, 'l' the changelog index, 't' the trim marker), then per
#   customer: expected version, new version, blob ('': append the entry to the changelog
#   instead), its 归集率 bucket (or ''), changelog entry (or ''), 2 x its number of findings,
#   then per finding its outbox entry and what its recent-findings list keeps of it (the entry
#   compressed, ``codec.compress_finding``; '': none, a shadow run's record), number of board
#   cells, then per cell: board key index, field, integer
#   increment (a negative index -b: field's whole net outflow of net key b's day,
#   ``rules.board.day_net``); last, its input partition (or '') and id.
# A net key of a day the shard cut to its top (day <= the trim marker's ``day``,
# ``streams.board.trim``) moves only its members; anyone else was below the day's floor, so a
# fall leaves them out and a rise brings them back with their whole net (none known: counted
# under ``late:{day}``, docs/scale.md).
# On Redis Cluster (KEYS[2] of type 'p') the shard's flows, findings, 归集率 buckets and latest
# go to one pending hash, fields ``name cell`` (``flow:{day} HH|in|kind|ext``), which the fold
# moves into the bank-wide keys exactly once (``streams.board.fold``): a day costs one key for
# the bank, not one per slot. Its field ``#`` is the shard's generation of that hash. Every
# move of a customer's net outflow on a day not yet cut also moves it between the
# quarter-octave buckets of the day's histogram (``hist:{day}``), from which the cut takes the
# day's floor without reading every slot (``streams.board.hist_bucket``).
# A customer's version is its full state's plus the length of its changelog; its bucket is
# the last changelog entry's (before the entry's first newline), else the state's. A customer
# with a changelog is in KEYS[3] (scored by its input partition) until its full state is
# written again: whoever owns that partition next finds the log there, without a scan.
# Returns 1 (committed) or 0 (version moved: nothing written, nothing counted) per customer.
COMMIT_LUA = """
local kept = tonumber(ARGV[1])
local nboard = tonumber(ARGV[2])
local pend = ARGV[5] == 'p'
local cpre = ''
if pend then cpre = 'collection ' end
local result = {}
local add = {}
local whole = {}
for b = 1, nboard do add[b] = {}; whole[b] = {} end
local function bump(b, f, n)
  add[b][f] = (add[b][f] or 0) + n
end
local a = 4 + nboard
for k = nboard + 1, #KEYS, 4 do
  local n = tonumber(ARGV[a + 5])
  local m = tonumber(ARGV[a + 6 + n])
  local version, held, hashed = 0, false, false
  local raw = redis.pcall('GET', KEYS[k])
  if type(raw) == 'table' and raw.err then  -- a hash, as versions before 2026-11 wrote it
    local old = redis.call('HMGET', KEYS[k], 'v', 'b')
    version, held, hashed = tonumber(old[1] or '0'), old[2], true
  elseif raw then
    local i = string.find(raw, ':', 1, true)
    local j = string.find(raw, ':', i + 1, true)
    version = tonumber(string.sub(raw, 1, i - 1))
    if j > i + 1 then held = string.sub(raw, i + 1, j - 1) end
  end
  local logged = redis.call('LLEN', KEYS[k + 3])
  if logged > 0 then
    local last = redis.call('LINDEX', KEYS[k + 3], -1)
    local nl = string.find(last, '\\n', 1, true)
    held = false
    if nl > 1 then held = string.sub(last, 1, nl - 1) end
  end
  if version + logged == tonumber(ARGV[a]) then
    local bucket = ARGV[a + 3]
    if bucket ~= '' and bucket ~= held then
      if held then bump(2, cpre .. held, -1) end
      bump(2, cpre .. bucket, 1)
    elseif held then
      bucket = held
    end
    if ARGV[a + 2] ~= '' then
      if hashed then redis.call('DEL', KEYS[k]) end
      redis.call('SET', KEYS[k], ARGV[a + 1] .. ':' .. bucket .. ':' .. ARGV[a + 2])
      if logged > 0 then
        redis.call('DEL', KEYS[k + 3])
        redis.call('ZREM', KEYS[3], ARGV[a + 8 + n + 3 * m])
      end
    else
      redis.call('RPUSH', KEYS[k + 3], bucket .. '\\n' .. ARGV[a + 4])
      local part = ARGV[a + 7 + n + 3 * m]
      if part ~= '' then redis.call('ZADD', KEYS[3], part, ARGV[a + 8 + n + 3 * m]) end
    end
    if n > 0 then
      local recent = false
      for i = a + 6, a + 5 + n, 2 do
        redis.call('RPUSH', KEYS[k + 1], ARGV[i])
        if ARGV[i + 1] ~= '' then
          redis.call('LPUSH', KEYS[k + 2], ARGV[i + 1])
          recent = true
        end
      end
      if recent then redis.call('LTRIM', KEYS[k + 2], 0, kept - 1) end
    end
    for c = a + 7 + n, a + 6 + n + 3 * m, 3 do
      local b = tonumber(ARGV[c])
      if b < 0 then whole[-b][ARGV[c + 1]] = tonumber(ARGV[c + 2]) else bump(b, ARGV[c + 1], tonumber(ARGV[c + 2])) end
    end
    result[#result + 1] = 1
  else
    result[#result + 1] = 0
  end
  a = a + 9 + n + 3 * m
end
if pend then  -- (before this call's latest moves: a shard that had none holds no cells of an earlier version)
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('HSETNX', KEYS[4], 'hist', '0')
    redis.call('HSETNX', KEYS[4], 'legacy', '1')
  else
    redis.call('HSETNX', KEYS[4], 'hist', redis.call('GET', KEYS[1]))
  end
end
if ARGV[3] ~= '' then
  local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tonumber(ARGV[3]) > latest then redis.call('SET', KEYS[1], ARGV[3]) end
end
local function octant(v)
  local m, e = math.frexp(v)  -- (exact: v = m * 2^e, 0.5 <= m < 1)
  local o, x = e - 1, 2 * m
  local q = 0
  if x >= 1.681792830507429 then q = 3
  elseif x >= 1.4142135623730951 then q = 2
  elseif x >= 1.189207115002721 then q = 1 end
  return string.format('%d', 4 * o + q)
end
local trimmed = redis.call('HGET', KEYS[4], 'day')
for b = 3, nboard do
  local kind = ARGV[3 + b]
  local day = string.sub(KEYS[b], -10)
  local closed = kind == 'z' and trimmed and day <= trimmed
  for f, n in pairs(add[b]) do
    if n == 0 then
    elseif closed then
      if redis.call('ZSCORE', KEYS[b], f) then
        redis.call('ZINCRBY', KEYS[b], string.format('%.0f', n), f)
      elseif n > 0 then
        local net = whole[b][f]
        if net == nil then
          redis.call('HINCRBY', KEYS[4], 'late:' .. day, 1)
        elseif net > 0 then
          redis.call('ZADD', KEYS[b], string.format('%.0f', net), f)
        end
      end
    elseif kind == 'z' then
      local now = tonumber(redis.call('ZINCRBY', KEYS[b], string.format('%.0f', n), f))
      if pend then
        local was = now - n
        if was >= 1 then bump(2, 'hist:' .. day .. ' ' .. octant(was), -1) end
        if now >= 1 then bump(2, 'hist:' .. day .. ' ' .. octant(now), 1) end
      end
    else
      redis.call('HINCRBY', KEYS[b], f, string.format('%.0f', n))
    end
  end
end
local written = false
for f, n in pairs(add[2]) do
  if n ~= 0 then
    if pend and not written and redis.call('EXISTS', KEYS[2]) == 0 then
      redis.call('HSET', KEYS[2], '#', redis.call('HINCRBY', KEYS[4], 'gen', 1))
    end
    written = true
    redis.call('HINCRBY', KEYS[2], f, string.format('%.0f', n))
  end
end
if pend and ARGV[3] ~= '' then
  if not written and redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[2], '#', redis.call('HINCRBY', KEYS[4], 'gen', 1))
  end
  local seen = tonumber(redis.call('HGET', KEYS[2], '@latest') or '0')
  if tonumber(ARGV[3]) > seen then redis.call('HSET', KEYS[2], '@latest', ARGV[3]) end
end
return result
"""

# KEYS: the changelog index (``Keys.logged``), then customers' changelogs. ARGV: the customers.
# Each leaves the index if its changelog is gone (written by a version that kept no index).
UNINDEX_LUA = """
local gone = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then gone = gone + redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return gone
"""

# KEYS: outbox. ARGV: entries confirmed published.
CONFIRM_LUA = """
for i = 1, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return redis.call('LLEN', KEYS[1])
"""


FEED_KEPT = 10_000  # findings kept in the feed stream for the API and console
LATENCY_SAMPLES_KEPT = 100_000  # recent end-to-end latencies kept for the backtest and the bench


@dataclass(slots=True)
class Loaded:
    version: int  # the full state's version plus the changelog's length
    state: CustomerState | None  # the full state as stored (the changelog not yet replayed)
    outbox: list[bytes] = field(default_factory=list)
    log: list[bytes] = field(default_factory=list)  # changelog entries since ``state``


@dataclass(slots=True)
class Tally:
    """What a commit adds to the pipeline's statistics (``{p}:stats``): the applied
    records and when each was produced. The latencies (produce -> state commit sent)
    are taken by ``StateStore.commit`` as it sends, and kept here for the caller."""

    applied: int
    produced_ms: list[int]
    clock_ms: Callable[[], int]
    latencies_ms: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Commit:
    customer_id: str
    expected_version: int
    state: CustomerState
    findings: Sequence[bytes] = ()
    board: BoardDelta | None = None  # what this commit adds to the 看板 (``rules.board``)
    bucket: str = ""  # the customer's 归集率 bucket after it ('': not counted)
    log: bytes | None = None  # a changelog entry to append instead of writing the full state
    partition: int | None = None  # the customer's input partition (indexes its changelog for a new owner)


class _BoardArgs:
    """The board keys of one commit call and each customer's cells, by key index. On Redis
    Cluster (``pending``) the flows and findings go to the shard's pending cells, as fields
    ``name cell``, for the fold to carry to the bank-wide keys."""

    def __init__(self, keys: Keys, shard: str, pending: bool = False) -> None:
        self.keys = keys
        self.shard = shard
        self.pending = pending
        self.names = [
            keys.board(shard, "latest"),
            keys.board(shard, "pending" if pending else "collection"),
            keys.logged(shard),
            keys.board(shard, "trim"),
        ]
        self.kinds = ["s", "p" if pending else "h", "l", "t"]
        self.index: dict[str, int] = {}
        self.latest: int | None = None

    def _key(self, name: str, kind: str) -> int:
        found = self.index.get(name)
        if found is None:
            self.names.append(self.keys.board(self.shard, name))
            self.kinds.append(kind)
            found = self.index[name] = len(self.names)
        return found

    def _cells(self, name: str, row: dict[str, int]) -> list[bytes | str | int]:
        out: list[bytes | str | int] = []
        if self.pending:
            for cell, value in row.items():
                out += (2, f"{name} {cell}", value)
        else:
            k = self._key(name, "h")
            for cell, value in row.items():
                out += (k, cell, value)
        return out

    def cells(self, customer_id: str, delta: BoardDelta | None, state: CustomerState) -> list[bytes | str | int]:
        if not delta:
            return [0]
        out: list[bytes | str | int] = []
        for day, row in delta.flows.items():
            out += self._cells(f"flow:{day}", row)
        for day, row in delta.findings.items():
            out += self._cells(f"findings:{day}", row)
        for day, value in delta.net.items():
            k = self._key(f"net:{day}", "z")
            out += (k, customer_id, value)
            net = day_net(state, day_ordinal(day), delta.zone) if delta.zone is not None else None
            if net is not None:
                out += (-k, customer_id, net)
        if delta.latest_us is not None and (self.latest is None or delta.latest_us > self.latest):
            self.latest = delta.latest_us
        return [len(out) // 3, *out]


@contextlib.contextmanager
def _round_trip(operation: str) -> Iterator[None]:
    """Times one Redis round trip; connection failures become TransientError (retry, never drop)."""
    started = time.perf_counter()
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        telemetry.REDIS_ERRORS.labels(operation).inc()
        raise TransientError(f"redis {operation} failed: {exc}") from exc
    except RedisError as exc:
        telemetry.REDIS_ERRORS.labels(operation).inc()
        if isinstance(exc, (NoScriptError, ClusterError, TryAgainError)) or any(
            reason in str(exc) for reason in ("NOSCRIPT", "LOADING", "BUSY", "CLUSTERDOWN", "TRYAGAIN")
        ):
            raise TransientError(f"redis {operation} failed: {exc}") from exc
        raise
    else:
        telemetry.REDIS_SECONDS.labels(operation).observe(time.perf_counter() - started)


CLUSTER_CALLS_IN_FLIGHT = 32  # script calls a worker has open at once on Redis Cluster


async def _bounded(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """Await ``calls`` with at most ``CLUSTER_CALLS_IN_FLIGHT`` in flight (each holds a
    connection); results in order; the first failure is raised once all have ended."""
    limit = asyncio.Semaphore(CLUSTER_CALLS_IN_FLIGHT)

    async def one(call: Awaitable[Any]) -> Any:
        async with limit:
            return await call

    results = await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class StateStore:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        compress: bool = True,
        cluster: bool | None = None,
        config: StateConfig | None = None,
        rulebook: Rulebook | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys
        # readers (``read``, ``scan_states``) replay a changelog under the rules each entry
        # names (``rulebook``: known here, else stored in Redis), and the state settings of
        # the environment unless told; a ``BatchProcessor`` gives the store its own rulebook
        self.config = config if config is not None else state_config(Settings())
        self._plain = plain_step(self.config)
        self.rulebook: Rulebook = rulebook or FixedRules(self._plain)
        # Redis Cluster: one commit call per hash slot (None: whenever the client is a cluster client)
        self.cluster = isinstance(client, RedisCluster) if cluster is None else cluster
        self.compress = compress  # how new blobs are written; both kinds are always read
        self._commit = client.register_script(COMMIT_LUA)
        self._confirm = client.register_script(CONFIRM_LUA)
        self._unindex = client.register_script(UNINDEX_LUA)
        self._scripts_loaded = False  # SCRIPT LOAD once, then plain EVALSHA (a restarted Redis -> again)
        self._shards_known: set[str] = set()  # 看板 shards this store registered (Redis Cluster)
        self.dirty: set[str] = set()  # 看板 shards this store wrote pending cells to since their fold

    async def load(self, customer_ids: Sequence[str]) -> dict[str, Loaded]:
        """Version, full state, changelog and pending outbox of each customer, in one round trip."""
        if not customer_ids:
            return {}
        with _round_trip("load"):
            async with self.redis.pipeline(transaction=False) as pipe:
                for cid in customer_ids:
                    pipe.get(self.keys.state(cid))
                    pipe.lrange(self.keys.outbox(cid), 0, -1)
                    pipe.lrange(self.keys.log(cid), 0, -1)
                replies = await pipe.execute(raise_on_error=False)
            stored = await self._stored([self.keys.state(cid) for cid in customer_ids], replies[0::3])
        result: dict[str, Loaded] = {}
        for cid, (version, blob), outbox, log_entries in zip(
            customer_ids, stored, replies[1::3], replies[2::3], strict=True
        ):
            for reply in (outbox, log_entries):
                if isinstance(reply, Exception):
                    raise reply
            try:
                state = decode_state(blob) if blob is not None else None
            except ValueError as exc:
                # (a newer format, a dictionary this version lacks, a damaged blob): the worker
                # cannot go on for this customer without losing its history; it retries and
                # says it is stalled, until an operator (or the right version) can read it
                raise TransientError(f"state of a customer cannot be read: {exc}") from exc
            result[cid] = Loaded(version + len(log_entries), state, list(outbox), list(log_entries))
        return result

    async def rules_of(self, fingerprints: Iterable[str]) -> dict[str, bytes]:
        """The stored JSON of each of these rules (``save_rules``) that Redis holds."""
        wanted = sorted(set(fingerprints))
        if not wanted:
            return {}
        with _round_trip("load"):
            async with self.redis.pipeline(transaction=False) as pipe:
                for fp in wanted:
                    pipe.get(self.keys.rules(fp))
                replies = await pipe.execute()
        return {fp: text for fp, text in zip(wanted, replies, strict=True) if text is not None}

    async def save_rules(self, fp: str, text: bytes) -> None:
        """Keep the rules a changelog entry names, for any later replay of it (never expire:
        a few KB per set of rules a worker ever ran under)."""
        with _round_trip("commit"):
            await self.redis.set(self.keys.rules(fp), text)

    async def save_current_rules(self, fp: str, text: bytes) -> None:
        """The rules ``fp`` are in force: kept by fingerprint, and named the last good ones
        (``FUNDFLOW_RULES_FALLBACK=last-good`` starts from them). The rules first: a pointer
        never names rules Redis does not hold."""
        with _round_trip("commit"):
            await self.redis.set(self.keys.rules(fp), text)
            await self.redis.set(self.keys.rules_current, fp)

    async def current_rules(self) -> str | None:
        """The fingerprint of the rules last in force (``save_current_rules``), if any."""
        with _round_trip("load"):
            raw = await self.redis.get(self.keys.rules_current)
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def _stored(self, keys: Sequence[str | bytes], replies: Sequence[Any]) -> list[tuple[int, bytes | None]]:
        """(version, blob) of each state key from its GET reply: ``version:bucket:blob``, or
        (a key an earlier version wrote as a hash: WRONGTYPE) the hash's ``v`` and ``s``."""
        result: list[tuple[int, bytes | None]] = []
        hashes: dict[int, str | bytes] = {}
        for i, (key, raw) in enumerate(zip(keys, replies, strict=True)):
            if isinstance(raw, ResponseError) and str(raw).startswith("WRONGTYPE"):
                hashes[i] = key
                result.append((0, None))
            elif isinstance(raw, Exception):
                raise raw
            elif raw is None:
                result.append((0, None))
            else:
                version, _, blob = raw.split(b":", 2)
                result.append((int(version), blob))
        if hashes:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in hashes.values():
                    pipe.hmget(key, "v", "s")
                old = await pipe.execute()
            for i, (version, blob) in zip(hashes, old, strict=True):
                result[i] = (int(version) if version is not None else 0, blob)
        return result

    async def commit(self, commits: Sequence[Commit], tally: Tally | None = None) -> set[str]:
        """Apply every commit atomically per customer; returns the customers whose
        version check failed (their state must be re-read and recomputed).

        One script call carries up to ``COMMIT_CHUNK`` customers (per-command cost in the
        client, not Redis' work, is what limits a worker); with ``cluster=True`` a call only
        holds customers of one hash slot, as Redis Cluster requires. ``tally``'s statistics
        ride in the same round trip (a round trip of their own was a noticeable share of
        a small batch: docs/performance.md, "A state as a string, statistics in the commit");
        they are a view: a failure to write them is logged, never raised."""
        if not commits:
            return set()
        sha = self._commit.sha
        state_key, outbox_key, alerts_key, log_key = self.keys.state, self.keys.outbox, self.keys.alerts, self.keys.log
        compress = self.compress
        with _round_trip("commit"):
            await self._load_scripts()
            groups = self._groups(commits)
            if self.cluster:  # readers find the shards in a set, never by a scan of the keyspace
                new = {self._shard(group[0].customer_id) for group in groups} - self._shards_known
                if new:
                    await self.redis.sadd(self.keys.board_shards, *sorted(new))
                    self._shards_known |= new
            calls: list[tuple[Any, ...]] = []
            for group in groups:
                keys: list[str] = []
                args: list[bytes | str | int] = []
                board = _BoardArgs(self.keys, self._shard(group[0].customer_id), self.cluster)
                blobs = iter(encode_states([c.state for c in group if c.log is None], compress=compress))
                for c in group:
                    cid, version = c.customer_id, c.expected_version
                    keys += (state_key(cid), outbox_key(cid), alerts_key(cid), log_key(cid))
                    if c.log is None:
                        args += (version, version + 1, next(blobs), c.bucket, b"", 2 * len(c.findings))
                    else:
                        args += (version, version + 1, b"", c.bucket, c.log, 2 * len(c.findings))
                    for entry in c.findings:  # (a shadow run's record is never a recent finding)
                        args += (entry, b"" if entry.startswith(SHADOW_ENTRY) else compress_finding(entry))
                    args += board.cells(cid, c.board, c.state)
                    args += ("" if c.partition is None else c.partition, cid)
                latest = "" if board.latest is None else board.latest
                head = (RECENT_ALERTS_KEPT, len(board.names), latest, *board.kinds)
                calls.append((sha, len(board.names) + len(keys), *board.names, *keys, *head, *args))
            try:
                # (on Redis Cluster the pipeline sends each node its slots' calls in one go)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for call in calls:
                        pipe.evalsha(*call)
                    if tally is not None:
                        self._count(pipe, tally)
                    replies = await pipe.execute(raise_on_error=False)
                replies = self._script_replies(replies, len(calls))
            except (RedisError, OSError):
                self._scripts_loaded = False  # maybe a restarted Redis (NOSCRIPT): load on the retry
                raise
        if self.cluster:
            self.dirty.update(self._shard(group[0].customer_id) for group in groups)
        failed: set[str] = set()
        for group, reply in zip(groups, replies, strict=True):
            failed.update(c.customer_id for c, ok in zip(group, reply, strict=True) if not ok)
        return failed

    async def _load_scripts(self) -> None:
        """SCRIPT LOAD the commit's scripts (every master of a cluster), once: later calls are
        plain EVALSHAs in pipelines (a restarted Redis answers NOSCRIPT: loaded again then)."""
        if not self._scripts_loaded:
            for script in (COMMIT_LUA, CONFIRM_LUA):
                await self.redis.script_load(script)
            self._scripts_loaded = True

    def _count(self, pipe: Any, tally: Tally) -> None:
        now = tally.clock_ms()
        tally.latencies_ms = [now - produced for produced in tally.produced_ms]
        pipe.hincrby(self.keys.stats, "applied", tally.applied)
        if tally.latencies_ms:
            pipe.lpush(self.keys.latency, *tally.latencies_ms)
            pipe.ltrim(self.keys.latency, 0, LATENCY_SAMPLES_KEPT - 1)

    @staticmethod
    def _script_replies(replies: list[Any], calls: int) -> list[Any]:
        """The commit scripts' replies; an error in one is raised, in the statistics only logged."""
        for reply in replies[:calls]:
            if isinstance(reply, Exception):
                raise reply
        for reply in replies[calls:]:
            if isinstance(reply, Exception):
                log.debug("statistics not recorded: %s", reply)
        return replies[:calls]

    async def count(self, tally: Tally) -> None:
        """Write ``tally``'s statistics on their own (Redis Cluster; corrections)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._count(pipe, tally)
                await pipe.execute()
        except Exception as exc:  # statistics must never stop the stream
            log.debug("statistics not recorded: %s", exc)

    def _shard(self, customer_id: str) -> str:
        """The 看板 hash tag a commit call of ``customer_id``'s slot writes to."""
        if not self.cluster:
            return BOARD
        return board_shard(key_slot(self.keys.state(customer_id).encode()))

    def _groups(self, commits: Sequence[Commit]) -> list[Sequence[Commit]]:
        if not self.cluster:
            return [commits[i : i + COMMIT_CHUNK] for i in range(0, len(commits), COMMIT_CHUNK)]
        by_slot: dict[int, list[Commit]] = {}
        for c in commits:
            by_slot.setdefault(key_slot(self.keys.state(c.customer_id).encode()), []).append(c)
        return [group[i : i + COMMIT_CHUNK] for group in by_slot.values() for i in range(0, len(group), COMMIT_CHUNK)]

    async def confirm_published(self, published: dict[str, list[bytes]]) -> None:
        """Remove outbox entries that reached their topics."""
        if not published:
            return
        with _round_trip("confirm"):
            await self._load_scripts()
            async with self.redis.pipeline(transaction=False) as pipe:
                for cid, entries in published.items():
                    pipe.evalsha(self._confirm.sha, 1, self.keys.outbox(cid), *entries)
                    for entry in entries:
                        # The API's live feed: a view, not the record (a crash between publish
                        # and confirm can repeat an entry; readers drop repeats by finding id).
                        topic, _, value = entry.split(b"\n", 2)
                        if topic == SHADOW_TOPIC:  # (a shadow run's record: never a live finding)
                            continue
                        pipe.xadd(self.keys.feed, {"t": topic, "v": value}, maxlen=FEED_KEPT, approximate=True)
                try:
                    await pipe.execute()
                except (RedisError, OSError):
                    self._scripts_loaded = False  # (NOSCRIPT after a restart: loaded on the retry)
                    raise

    async def read(self, customer_id: str) -> CustomerState | None:
        states = await self._fetch([self.keys.state(customer_id)])
        return states[0] if states else None

    async def stored(self, customer_id: str) -> tuple[int, bytes | None]:
        """The version and the state blob as stored (``(0, None)``: no state)."""
        key = self.keys.state(customer_id)
        with _round_trip("load"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                replies = await pipe.execute(raise_on_error=False)
            return (await self._stored([key], replies))[0]

    async def fold_all(self, batch: int = 256) -> tuple[int, int]:
        """Write the full state of every customer with a changelog and drop the log (``fundflow
        fold``: before an earlier version, which knows no changelog, runs). Each write is a
        compare-and-set of the version read: a customer a running worker changed meanwhile
        is left, and counted. Returns (folded, left)."""
        folded = left = 0
        pending: list[str] = []
        async for key in self.redis.scan_iter(match=self.keys.log_pattern, count=batch):
            pending.append(self.keys.customer_of_log_key(key.decode() if isinstance(key, bytes) else key))
            if len(pending) >= batch:
                done, moved = await self._fold_some(pending)
                folded, left, pending = folded + done, left + moved, []
        if pending:
            done, moved = await self._fold_some(pending)
            folded, left = folded + done, left + moved
        return folded, left

    async def _fold_some(self, customers: list[str]) -> tuple[int, int]:
        loaded = await self.load(customers)
        await self.learn_rules(entry for one in loaded.values() for entry in one.log)
        commits = []
        for cid, one in loaded.items():
            if one.log:  # (folded by a worker since the scan: nothing to do)
                try:
                    state = replay(one.state or CustomerState(cid), one.log, self._reader_step)
                except ValueError as exc:
                    raise TransientError(f"changelog of {cid!r} cannot be replayed: {exc}") from exc
                commits.append(Commit(cid, one.version, state))
        failed = await self.commit(commits)
        return len(commits) - len(failed), len(failed)

    async def logged_customers(self, partitions: Iterable[int]) -> dict[int, list[str]]:
        """The customers of these input partitions that hold a changelog (the index the commit
        script keeps, one sorted set per 看板 shard: no scan of the keyspace)."""
        wanted = set(partitions)
        if not wanted:
            return {}
        with _round_trip("load"):
            if self.cluster:
                members = await self.redis.smembers(self.keys.board_shards)
                shards = sorted(s.decode() if isinstance(s, bytes) else s for s in members)
            else:
                shards = [BOARD]
            low, high = min(wanted), max(wanted)
            ranges = (self.keys.logged(shard) for shard in shards)
            replies = await _bounded(self.redis.zrange(key, low, high, byscore=True, withscores=True) for key in ranges)
        found: dict[int, list[str]] = {}
        for reply in replies:
            for member, score in reply:
                if int(score) in wanted:
                    found.setdefault(int(score), []).append(member.decode() if isinstance(member, bytes) else member)
        return found

    async def unindex(self, customers: Sequence[str]) -> None:
        """Take customers whose changelog is gone out of the index (see ``UNINDEX_LUA``)."""
        by_shard: dict[str, list[str]] = {}
        for cid in customers:
            by_shard.setdefault(self._shard(cid), []).append(cid)
        with _round_trip("commit"):
            await _bounded(
                self._unindex(keys=[self.keys.logged(shard), *map(self.keys.log, group)], args=group)
                for shard, group in by_shard.items()
            )

    async def recent_findings(self, customer_id: str, limit: int = 50) -> list[bytes]:
        """A customer's latest findings, newest first, as their outbox entries."""
        stored = cast(list[bytes], await self.redis.lrange(self.keys.alerts(customer_id), 0, limit - 1))
        return [finding_entry(entry) for entry in stored]

    async def scan_states(self, batch: int = 500) -> AsyncIterator[CustomerState]:
        """Every customer's state (SCAN + pipelined GET: no blocking KEYS)."""
        pending: list[bytes] = []
        async for key in self.redis.scan_iter(match=self.keys.state_pattern, count=batch):
            pending.append(key)
            if len(pending) >= batch:
                for state in await self._fetch(pending):
                    yield state
                pending = []
        if pending:
            for state in await self._fetch(pending):
                yield state

    async def _fetch(self, keys: Sequence[str | bytes]) -> list[CustomerState]:
        """The states of these state keys, each brought up to date with its changelog
        (each entry replayed under the rules it names, ``rulebook``)."""
        logs = [_log_key(key) for key in keys]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, log_key in zip(keys, logs, strict=True):
                pipe.get(key)
                pipe.lrange(log_key, 0, -1)
            replies = await pipe.execute(raise_on_error=False)
        for entries in replies[1::2]:
            if isinstance(entries, Exception):
                raise entries
        await self.learn_rules(entry for entries in replies[1::2] for entry in entries)
        states = []
        for (_, blob), entries in zip(await self._stored(keys, replies[0::2]), replies[1::2], strict=True):
            if blob is not None:
                state = decode_state(blob)
                states.append(replay(state, entries, self._reader_step) if entries else state)
        return states

    def _reader_step(self, fp: str) -> Step:
        step = self.rulebook.replay_step(fp)
        if step is None:  # (rules never stored: a reader still wants the numbers)
            log.warning("changelog names rules %s, which are not stored; replayed without rules", fp)
            return self._plain
        return step

    async def learn_rules(self, entries: Iterable[bytes]) -> None:
        """Teach ``rulebook`` the stored rules that these changelog entries name and it does not know."""
        unknown = {entry.split(b"\n", 2)[1].decode() for entry in entries}
        unknown = {fp for fp in unknown if self.rulebook.replay_step(fp) is None}
        for fp, text in (await self.rules_of(unknown)).items():
            try:
                if self.rulebook.learn(text) != fp:
                    log.warning("stored rules %s do not match their fingerprint", fp)
            except ValueError as exc:
                log.warning("stored rules %s cannot be read: %s", fp, exc)


def _log_key(state_key: str | bytes) -> str:
    text = state_key.decode() if isinstance(state_key, bytes) else state_key
    return text[: -len(":state")] + ":log"
