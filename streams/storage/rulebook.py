"""The rule versions in Redis: proposals, four-eyes decisions, the timeline, the shadow run.

What each transition may do is decided by ``rules.versions`` (pure); this module reads
what a transition needs, asks it, and writes the answer with its audit entry in one step.
Every key carries the hash tag ``{rules}`` (one Redis Cluster slot), and every write is
one Lua script (``APPLY_LUA``) that first compares ``{p}:{rules}:rev``, the count of
transitions so far, with the count read before deciding: a transition decided on a book
that moved meanwhile writes nothing and is decided again. So two supervisors approving,
or promoting, at once: exactly one wins, and the other is answered as the book then
stands (already approved: a conflict). Several workers bootstrapping at once make one
version 1.

Nothing is deleted: versions only gain fields (approved, rejected), the timeline and
the audit stream are appended to, and the shadow records of a run stay after it stops
(the report reads them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from rules.versions import (
    BEGINNING_US,
    DEPLOYMENT,
    DEPLOYMENT_ROLE,
    Code,
    RuleRefusal,
    ShadowRun,
    TimelineEntry,
    Version,
    approval,
    audit_entry,
    deployment_version,
    entry_of,
    latest,
    promotion,
    proposal,
    rejection,
    rollback_target,
    shadow_of,
    shadow_stop,
    shadowing,
)
from streams.storage.keys import BOARD, Keys

T = TypeVar("T")

# The grace a promotion leaves by default between now and its effective instant: every
# worker re-reads the timeline within it, so none has judged an event past the instant
# under the old version by the time the instant comes (settings.rules_promotion_grace_seconds).
DEFAULT_GRACE_US = 30_000_000
TRIES = 20  # decisions retried on a moving book before answering "busy"
AUDIT_READ = 100

# KEYS[1]: rev; KEYS[2..]: the keys the operations name by index. ARGV[1]: the rev the
# decision was made on; then operations: hset <key> <n> <field> <value>..., set <key> <value>,
# del <key>, rpush <key> <value>, xadd <key> <value> (field ``v``). Returns 1 applied, 0 moved.
APPLY_LUA = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
redis.call('INCR', KEYS[1])
local i = 2
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 'hset' then
    local n = tonumber(ARGV[i + 2])
    for j = i + 3, i + 2 + 2 * n, 2 do redis.call('HSET', key, ARGV[j], ARGV[j + 1]) end
    i = i + 3 + 2 * n
  elseif op == 'set' then redis.call('SET', key, ARGV[i + 2]); i = i + 3
  elseif op == 'del' then redis.call('DEL', key); i = i + 2
  elseif op == 'rpush' then redis.call('RPUSH', key, ARGV[i + 2]); i = i + 3
  elseif op == 'xadd' then redis.call('XADD', key, '*', 'v', ARGV[i + 2]); i = i + 3
  else return redis.error_reply('unknown operation ' .. tostring(op)) end
end
return 1
"""

_INTS = frozenset({"number", "proposed_us", "approved_us", "rejected_us", "base"})


def version_fields(version: Version) -> dict[str, str | bytes]:
    """A version as its Redis hash (a field that is None is not written)."""
    out: dict[str, str | bytes] = {}
    for name in Version.__slots__:
        value = getattr(version, name)
        if value is None:
            continue
        if name == "diff":
            out[name] = orjson.dumps(list(value))
        elif isinstance(value, bytes):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def version_from_hash(raw: dict[bytes, bytes]) -> Version:
    text = {key.decode(): value for key, value in raw.items()}
    values: dict[str, Any] = {}
    for name in Version.__slots__:
        if name not in text:
            continue
        value = text[name]
        if name == "rules":
            values[name] = value
        elif name == "diff":
            values[name] = tuple(orjson.loads(value))
        elif name in _INTS:
            values[name] = int(value)
        else:
            values[name] = value.decode()
    return Version(**values)


class _Ops:
    """The writes of one transition, as ``APPLY_LUA`` takes them."""

    def __init__(self, rev_key: str) -> None:
        self.keys = [rev_key]
        self.args: list[str | bytes | int] = []

    def _key(self, key: str) -> int:
        if key not in self.keys:
            self.keys.append(key)
        return self.keys.index(key) + 1

    def hset(self, key: str, fields: dict[str, str | bytes]) -> None:
        self.args += ["hset", self._key(key), len(fields)]
        for name, value in fields.items():
            self.args += [name, value]

    def set(self, key: str, value: str | bytes) -> None:
        self.args += ["set", self._key(key), value]

    def delete(self, key: str) -> None:
        self.args += ["del", self._key(key)]

    def rpush(self, key: str, value: bytes) -> None:
        self.args += ["rpush", self._key(key), value]

    def xadd(self, key: str, value: bytes) -> None:
        self.args += ["xadd", self._key(key), value]


class Rulebook:
    """The rule versions of a deployment (``keys.rulebook``), four eyes kept by ``rules.versions``.

    Times are microseconds since the epoch, given by the caller (``now_us``: the wall clock
    of the request; ``effective_us``: event time). ``grace_us``: how far after ``now_us`` a
    promotion takes effect when no instant is given."""

    def __init__(self, client: aioredis.Redis, keys: Keys, grace_us: int = DEFAULT_GRACE_US) -> None:
        self.redis = client
        self.keys = keys
        self.grace_us = grace_us
        self._apply = client.register_script(APPLY_LUA)

    # ---- keys

    @property
    def _rev(self) -> str:
        return self.keys.rulebook("rev")

    @property
    def _seq(self) -> str:
        return self.keys.rulebook("seq")

    @property
    def _timeline(self) -> str:
        return self.keys.rulebook("timeline")

    @property
    def _shadow(self) -> str:
        return self.keys.rulebook("shadow")

    @property
    def _audit(self) -> str:
        return self.keys.rulebook("audit")

    def _version_key(self, number: int) -> str:
        return self.keys.rulebook(f"version:{number}")

    # ---- reads

    async def judged_until(self) -> int | None:
        """The latest event time any worker's commit carried (the 看板's "now", kept per shard
        by the commit script): events up to it may have been judged already."""
        if isinstance(self.redis, RedisCluster):
            shards = sorted(m.decode() for m in cast(set[bytes], await self.redis.smembers(self.keys.board_shards)))
        else:
            shards = [BOARD]
        if not shards:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.get(self.keys.board(shard, "latest"))
            values = cast(list[bytes | None], await pipe.execute())
        present = [int(v) for v in values if v is not None]
        return max(present) if present else None

    async def version(self, number: int) -> Version | None:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self._version_key(number)))
        return version_from_hash(raw) if raw else None

    async def versions(self) -> list[Version]:
        """Every version, oldest first."""
        count = int(cast(bytes | None, await self.redis.get(self._seq)) or 0)
        if not count:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for number in range(1, count + 1):
                pipe.hgetall(self._version_key(number))
            replies = cast(list[dict[bytes, bytes]], await pipe.execute())
        return [version_from_hash(raw) for raw in replies if raw]

    async def timeline(self) -> list[TimelineEntry]:
        raw = cast(list[bytes], await self.redis.lrange(self._timeline, 0, -1))
        return [entry_of(orjson.loads(item)) for item in raw]

    async def shadow(self) -> ShadowRun | None:
        raw = cast(bytes | None, await self.redis.get(self._shadow))
        return shadow_of(orjson.loads(raw)) if raw else None

    async def rules_json(self, number: int) -> bytes | None:
        return cast(bytes | None, await self.redis.hget(self._version_key(number), "rules"))

    async def audit(self, newest: int = AUDIT_READ) -> list[dict[str, Any]]:
        """The newest ``newest`` audit entries, newest first (each with its stream ``id``)."""
        raw = cast(list[tuple[bytes, dict[bytes, bytes]]], await self.redis.xrevrange(self._audit, count=newest))
        return [{"id": entry_id.decode(), **orjson.loads(fields[b"v"])} for entry_id, fields in raw]

    async def audit_length(self) -> int:
        return int(await self.redis.xlen(self._audit))

    async def shadow_records(self, number: int) -> list[dict[str, Any]]:
        """Every record the workers wrote for the shadow run of version ``number`` (any order)."""
        records = []
        async for _, value in self.redis.hscan_iter(self.keys.shadow_records(number), count=1000):
            records.append(orjson.loads(value))
        return records

    # ---- transitions

    async def _transition(self, decide: Callable[[str], Awaitable[tuple[T, _Ops | None]]]) -> T:
        """Decide on the book as read after ``rev`` and write the decision if the book has not moved."""
        for _ in range(TRIES):
            rev = (cast(bytes | None, await self.redis.get(self._rev)) or b"0").decode()
            result, ops = await decide(rev)
            if ops is None:
                return result
            if int(await self._apply(keys=ops.keys, args=[rev, *ops.args])):
                return result
        raise RuleRefusal(Code.BUSY, "the rule versions kept changing; try again")

    async def _get(self, number: int) -> Version:
        found = await self.version(number)
        if found is None:
            raise RuleRefusal(Code.NOT_FOUND, f"no version {number}")
        return found

    async def _base(self, timeline: Sequence[TimelineEntry]) -> Version | None:
        last = latest(timeline)
        return await self.version(last.version) if last is not None else None

    def _audit_op(self, ops: _Ops, entry: dict[str, Any]) -> None:
        ops.xadd(self._audit, orjson.dumps(entry))

    async def bootstrap(self, rules_json: bytes, fingerprint: str, now_us: int) -> bool:
        """Make version 1 from the rules a deployment starts with, in force from the beginning of
        time, if there is no version yet; True if this call made it (several may race: one does)."""

        async def decide(rev: str) -> tuple[bool, _Ops | None]:
            if await self.redis.exists(self._seq):
                return False, None
            version = deployment_version(rules_json, fingerprint, now_us)
            entry = TimelineEntry(BEGINNING_US, 1, fingerprint, DEPLOYMENT, now_us)
            ops = _Ops(self._rev)
            ops.set(self._seq, "1")
            ops.hset(self._version_key(1), version_fields(version))
            ops.rpush(self._timeline, orjson.dumps(entry.as_dict()))
            self._audit_op(ops, audit_entry("bootstrap", DEPLOYMENT, DEPLOYMENT_ROLE, now_us, 1,
                                            fingerprint=fingerprint, effective_us=BEGINNING_US))  # fmt: skip
            return True, ops

        return await self._transition(decide)

    async def propose(self, yaml_text: str, author: str, role: str, reason: str, now_us: int) -> Version:
        async def decide(rev: str) -> tuple[Version, _Ops | None]:
            count = int(cast(bytes | None, await self.redis.get(self._seq)) or 0)
            base = await self._base(await self.timeline())
            version = proposal(count + 1, yaml_text, author, role, reason, now_us, base)
            ops = _Ops(self._rev)
            ops.set(self._seq, str(version.number))
            ops.hset(self._version_key(version.number), version_fields(version))
            self._audit_op(ops, audit_entry("propose", author, role, now_us, version.number, reason=version.reason,
                                            fingerprint=version.fingerprint))  # fmt: skip
            return version, ops

        return await self._transition(decide)

    async def approve(self, number: int, actor: str, role: str, now_us: int) -> Version:
        async def decide(rev: str) -> tuple[Version, _Ops | None]:
            version = approval(await self._get(number), actor, role, now_us)
            ops = _Ops(self._rev)
            ops.hset(self._version_key(number), version_fields(version))
            self._audit_op(ops, audit_entry("approve", actor, role, now_us, number))
            return version, ops

        return await self._transition(decide)

    async def reject(self, number: int, actor: str, role: str, reason: str, now_us: int) -> Version:
        async def decide(rev: str) -> tuple[Version, _Ops | None]:
            version = rejection(await self._get(number), actor, role, reason, now_us)
            ops = _Ops(self._rev)
            ops.hset(self._version_key(number), version_fields(version))
            self._audit_op(ops, audit_entry("reject", actor, role, now_us, number, reason=version.rejected_reason))
            await self._end_shadow_of(ops, number, actor, role, now_us, "rejected")
            return version, ops

        return await self._transition(decide)

    async def promote(
        self, number: int, actor: str, role: str, now_us: int, effective_us: int | None = None
    ) -> TimelineEntry:
        """Put version ``number`` in force from ``effective_us`` (event time; default ``now_us`` + the grace)."""
        return await self._promote(lambda _: number, "promote", actor, role, now_us, effective_us)

    async def rollback(self, actor: str, role: str, now_us: int, effective_us: int | None = None) -> TimelineEntry:
        """Promote again the version in force before the last promoted one."""
        return await self._promote(rollback_target, "rollback", actor, role, now_us, effective_us)

    async def _promote(
        self,
        target: Callable[[list[TimelineEntry]], int],
        action: str,
        actor: str,
        role: str,
        now_us: int,
        effective_us: int | None,
    ) -> TimelineEntry:
        judged = await self.judged_until()
        when = effective_us if effective_us is not None else max(now_us, judged or 0) + self.grace_us

        async def decide(rev: str) -> tuple[TimelineEntry, _Ops | None]:
            timeline = await self.timeline()
            number = target(timeline)
            entry = promotion(await self._get(number), timeline, actor, role, now_us, when, judged)
            ops = _Ops(self._rev)
            ops.rpush(self._timeline, orjson.dumps(entry.as_dict()))
            self._audit_op(ops, audit_entry(action, actor, role, now_us, number, effective_us=when,
                                            fingerprint=entry.fingerprint))  # fmt: skip
            await self._end_shadow_of(ops, number, actor, role, now_us, "promoted")
            return entry, ops

        return await self._transition(decide)

    async def start_shadow(self, number: int, actor: str, role: str, now_us: int) -> ShadowRun:
        async def decide(rev: str) -> tuple[ShadowRun, _Ops | None]:
            version = await self._get(number)
            judged = await self.judged_until()
            run = shadowing(version, await self.timeline(), await self.shadow(), actor, role, now_us, self.grace_us,
                            judged)  # fmt: skip
            ops = _Ops(self._rev)
            ops.set(self._shadow, orjson.dumps(run.as_dict()))
            self._audit_op(ops, audit_entry("shadow_start", actor, role, now_us, number))
            return run, ops

        return await self._transition(decide)

    async def stop_shadow(self, actor: str, role: str, now_us: int) -> ShadowRun:
        async def decide(rev: str) -> tuple[ShadowRun, _Ops | None]:
            run = shadow_stop(await self.shadow(), role)
            ops = _Ops(self._rev)
            ops.delete(self._shadow)
            self._audit_op(ops, audit_entry("shadow_stop", actor, role, now_us, run.version))
            return run, ops

        return await self._transition(decide)

    async def _end_shadow_of(self, ops: _Ops, number: int, actor: str, role: str, now_us: int, why: str) -> None:
        """A version rejected or promoted stops running in shadow, in the same step."""
        run = await self.shadow()
        if run is not None and run.version == number:
            ops.delete(self._shadow)
            self._audit_op(ops, audit_entry("shadow_stop", actor, role, now_us, number, reason=f"version {why}"))
