"""Consent, complaints, imports and held pushes in Redis.

**Records.** A customer's consent is 21 packed bytes (``contact.model.Consent.pack``) in a
hash field of one of ``FUNDFLOW_CONTACT_BUCKETS`` bucket hashes (``{p}:{ct.B}:consent``,
B = CRC-32 of the customer id modulo the bucket count). Small hashes are kept by Redis as
one listpack (no per-field objects), so a record costs its id, its 21 bytes and a few
bytes of listpack framing, plus its share of the bucket key (docs/performance.md,
"Consent records in Redis"). A bucket stays a listpack while it holds at most
``hash-max-listpack-entries`` fields (128 on Redis 7, 512 on Valkey 8): choose the bucket
count so that customers / buckets stays under 100 (the default, 131,072, fits 13 M).
Changing it later needs the records imported again into a fresh prefix.

Every change is ``lua/merge.lua``: the records merged as ``Consent.apply`` merges them, and
for a change made through the API its audit entry appended to the customer's list in the
same atomic step. An import is one entry in ``{p}:{contact}:imports`` (who, when, the file's
SHA-256, the counts), not one per row; the records it changed name it (``source``).

**Held pushes.** A push held at delivery (opt-out, complaint, a route to the RM) is one entry
in the ``{p}:{contact}:held`` stream, once per finding id (``lua/hold.lua``), for the API
and the console to show.

With ``FUNDFLOW_REDIS_CLUSTER`` each script call holds the buckets of one slot.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Iterable, Sequence
from importlib.resources import files
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.crc import key_slot

from contact.model import Consent, Record
from rules.contribution import tier_of
from streams.storage.keys import Keys
from streams.tiers import contributions, read_cuts

KIND_CODE = {"opt_in": 0, "opt_out": 1, "complaint": 2}
SCOPE_CODE = {"push": 1, "sms": 2, "all": 3}
IMPORT_BATCH = 5_000  # records per script call (fewer than 65,536 buckets each): Redis is held for milliseconds
HELD_KEPT = 100_000  # entries the held stream keeps (approximately)
HELD_ONCE_SECONDS = 14 * 86_400  # as long as the relay remembers a delivered push (webhook_dedupe_days)
HELD_SCAN = 5_000  # newest held entries a per-customer read looks through


def _lua(name: str) -> str:
    return (files("contact") / "lua" / name).read_text(encoding="utf-8")


class ContactStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, buckets: int = 131_072, cluster: bool = False) -> None:
        self.redis = client
        self.keys = keys
        self.buckets = buckets
        self.cluster = cluster
        self._names: dict[int, str] = {}
        self._merge = client.register_script(_lua("merge.lua"))
        self._hold = client.register_script(_lua("hold.lua"))

    def bucket(self, customer_id: str) -> str:
        number = zlib.crc32(customer_id.encode()) % self.buckets
        name = self._names.get(number)
        if name is None:
            name = self._names[number] = self.keys.consent_bucket(number)
        return name

    def audit_key(self, customer_id: str) -> str:
        return f"{self.bucket(customer_id)}:audit:{customer_id}"

    # ---- records

    async def record(self, record: Record, entry: dict[str, Any]) -> Consent:
        """One record made through the API, with its audit entry (who, when, why); the state after it."""
        bucket = self.bucket(record.customer_id)
        args: list[Any] = [orjson.dumps(entry), _numbers(1, record, record.source), record.customer_id]
        await self._merge(keys=[bucket, self.audit_key(record.customer_id)], args=args)
        return await self.consent(record.customer_id)

    async def merge(self, records: Iterable[Record], source: int | None = None) -> tuple[int, int]:
        """Records without audit entries (an import: its one entry is the caller's), in batches of
        ``IMPORT_BATCH`` (each batch's script runs while the next one is prepared); ``source``
        overrides the records' own. Returns (changed, unchanged)."""
        changed = same = 0
        running: asyncio.Task[list[list[int]]] | None = None
        # slot (0: any) -> (bucket -> its KEYS index, the records' numbers, their customer ids)
        batch: dict[int, tuple[dict[str, int], list[bytes], list[str]]] = {}
        size = 0

        async def finish(task: asyncio.Task[list[list[int]]] | None) -> None:
            nonlocal changed, same
            if task is not None:
                for done in await task:
                    changed, same = changed + int(done[0]), same + int(done[1])

        for record in records:
            bucket = self.bucket(record.customer_id)
            where, numbers, customers = batch.setdefault(key_slot(bucket.encode()) if self.cluster else 0, ({}, [], []))
            numbers.append(_numbers(where.setdefault(bucket, len(where) + 1), record,
                                    record.source if source is None else source))  # fmt: skip
            customers.append(record.customer_id)
            size += 1
            if size >= IMPORT_BATCH:
                await finish(running)
                running = asyncio.ensure_future(self._scripts(batch))
                batch, size = {}, 0
        await finish(running)
        if batch:
            await finish(asyncio.ensure_future(self._scripts(batch)))
        return changed, same

    async def _scripts(self, batch: dict[int, tuple[dict[str, int], list[bytes], list[str]]]) -> list[list[int]]:
        done = []
        for where, numbers, customers in batch.values():
            done.append(cast(list[int], await self._merge(keys=list(where), args=["", b"".join(numbers), *customers])))
        return done

    async def import_records(self, records: Iterable[Record], source: int) -> tuple[int, int]:
        """Every record, marked as from import ``source``; (changed, unchanged)."""
        return await self.merge(records, source)

    async def consent(self, customer_id: str) -> Consent:
        return Consent.unpack(cast(bytes | None, await self.redis.hget(self.bucket(customer_id), customer_id)))

    async def consents(self, customer_ids: Sequence[str]) -> dict[str, Consent]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for customer in customer_ids:
                pipe.hget(self.bucket(customer), customer)
            raw = await pipe.execute()
        return {c: Consent.unpack(r) for c, r in zip(customer_ids, raw, strict=True)}

    async def audit(self, customer_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The customer's newest ``limit`` audit entries, oldest first."""
        raw = cast(list[bytes], await self.redis.lrange(self.audit_key(customer_id), -limit, -1))
        return [orjson.loads(r) for r in raw]

    # ---- imports

    async def next_import(self) -> int:
        return int(await self.redis.incr(self.keys.contact("import_seq")))

    async def log_import(self, entry: dict[str, Any]) -> None:
        await self.redis.rpush(self.keys.contact("imports"), orjson.dumps(entry))

    async def imports(self, limit: int = 50) -> list[dict[str, Any]]:
        raw = cast(list[bytes], await self.redis.lrange(self.keys.contact("imports"), -limit, -1))
        return [orjson.loads(r) for r in raw]

    # ---- held pushes

    async def hold(self, entries: Sequence[dict[str, Any]]) -> list[bool]:
        """Record held pushes (each a dict with the finding's ``id``), once per id; which were new."""
        if not entries:
            return []
        keys = [self.keys.contact("held")] + [self.keys.contact(f"held:{e['id']}") for e in entries]
        args: list[Any] = [HELD_ONCE_SECONDS, HELD_KEPT, *(orjson.dumps(e) for e in entries)]
        return [bool(n) for n in cast(list[int], await self._hold(keys=keys, args=args))]

    async def held(self, limit: int = 100, customer: str | None = None) -> list[dict[str, Any]]:
        """The newest held pushes (of ``customer``, among the newest ``HELD_SCAN``), newest first."""
        count = HELD_SCAN if customer else limit
        raw = cast(list[tuple[bytes, dict[bytes, bytes]]], await self.redis.xrevrange(
            self.keys.contact("held"), count=count))  # fmt: skip
        found = []
        for _, fields in raw:
            entry = orjson.loads(fields[b"v"])
            if customer is None or entry.get("customer_id") == customer:
                found.append(entry)
                if len(found) >= limit:
                    break
        return found


NUMBERS = struct.Struct(">HBBII")  # a record's numbers as merge.lua reads them


def _numbers(index: int, record: Record, source: int) -> bytes:
    return NUMBERS.pack(index, KIND_CODE[record.kind], SCOPE_CODE[record.scope], record.at, source)


async def live_tiers(client: aioredis.Redis, keys: Keys, customer_ids: Sequence[str]) -> dict[str, str | None]:
    """Each customer's live tier now (``streams.tiers``: the exact contribution against the cut
    points of the last refresh); None before the first refresh or for a customer not in it."""
    if not customer_ids:
        return {}
    cuts, _ = await read_cuts(client, keys)
    if cuts is None:
        return dict.fromkeys(customer_ids)
    values = await contributions(client, keys, customer_ids)
    found: dict[str, str | None] = {}
    for customer in customer_ids:
        value = values.get(customer)
        found[customer] = None if value is None else tier_of(value, cuts)
    return found
