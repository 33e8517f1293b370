"""Every Redis key FundFlow uses, in one place.

A customer's keys share the hash tag ``{C}``, so all of them live on one Redis
Cluster slot and the per-customer atomic commit (a Lua script over that
customer's keys only) runs unchanged on Redis Cluster. ``C`` is the customer_id
itself when it has no brace (every ordinary id: keys unchanged since the first
version); an id with ``{`` or ``}`` would cut the tag short or leave it empty
(``ff:{}x}:state`` hashes the whole key, so a customer's keys would land on
different slots and its commit fail with CROSSSLOT), so it is written ``{`` plus
its UTF-8 in unpadded base64url: ``ff:{{fXg}:state``. That tag is never empty,
holds no ``}``, and no ordinary id starts with ``{``, so the encoding is one-to-one.

| key | type | what |
| --- | --- | --- |
| ``{p}:{C}:state`` | string | ``version:bucket:blob``: the full state as last written (``streams.storage.codec``) |
| ``{p}:{C}:log`` | list | records since that state (``streams.storage.changelog``): version = state's + length |
| ``{p}:{C}:outbox`` | list | findings committed with the state, not yet confirmed published |
| ``{p}:{C}:alerts`` | list | the customer's recent findings (newest first, capped; zstd, ``codec.compress_finding``) |
| ``{p}:stats`` | hash | pipeline counters (processed, duplicates, dead letters by reason) |
| ``{p}:stats:latency_ms`` | list | recent end-to-end latencies in ms (capped), for backtest and bench |
| ``{p}:feed`` | stream | published findings (JSON in field ``v``, topic in ``t``), capped; the API's feed |
| ``{p}:rules:{F}`` | string | the rules a changelog entry ran under, by fingerprint ``F`` (JSON), for its replay |
| ``{p}:rules:current`` | string | the fingerprint of the rules a worker runs under (``FUNDFLOW_RULES_FALLBACK``) |
| ``{p}:{S}:logged`` | sorted set | customer -> input partition, for the shard's customers with a changelog |
| ``{p}:{T}:tiers`` | sorted set | tier shard ``T``'s sub-shard 0: customer -> contribution (cent-rounded) |
| ``{p}:{T}:tiers:{j}`` | sorted set | its sub-shard ``j`` (1 .. subs-1); a customer's: a hash of its id |
| ``{p}:{T}:tiers:layout`` | hash | tier shard ``T``: sub-shards (``subs``, ``from`` while it grows), customers, bands |
| ``{p}:{T}:tiers:band`` | sorted set | tier shard ``T``'s customers near a cut point or at the top, in value order |
| ``{p}:{T}:tiers:value`` | hash | tier shard ``T``: customer -> exact contribution, only where the score lacks it |
| ``{p}:tiers:cuts`` | hash | the current quartile cut points q1,q2,q3 and when they were computed |
| ``{p}:{T}:tiers:last`` | hash | an earlier version's last tiers; dropped once (``migrate_shard_copies``) |
| ``{p}:{T}:tiers:moved:{YYYY-Www}`` | set | tier shard ``T``: who changed tier in that ISO week (event time), 14 d |
| ``{p}:tiers``, ``{p}:tiers:value``, ``{p}:tiers:last`` | | before sharding; moved in once (``migrate_single_keys``) |
| ``{p}:{S}:board:latest`` | string | the latest event time (µs) any commit carried: the 看板's "now" |
| ``{p}:{S}:board:collection`` | hash | 归集率 bucket -> customers whose latest state is in it (``rules.board``) |
| ``{p}:{S}:board:flow:{day}`` | hash | ``HH|in|kind|ext`` -> cents that flowed on that local day and hour |
| ``{p}:{S}:board:findings:{day}`` | hash | ``HH|type|category|rule`` -> findings of that local day and hour |
| ``{p}:{S}:board:net:{day}`` | sorted set | customer -> net outflow of that local day (cents) |
| ``{p}:{S}:board:kept_from`` | string | the first day the shard still keeps (``streams.board.prune``) |
| ``{p}:{S}:board:trim`` | hash | ``day``: the last day cut (``board.trim``); cluster: ``gen``, ``hist``, ``legacy`` |
| ``{p}:{S}:board:pending`` | hash | cluster: cells not yet folded, ``name cell`` -> count, ``#``: generation |
| ``{p}:{S}:board:moving`` | hash | cluster: the pending cells a fold is carrying (``streams.board.fold``) |
| ``{p}:{board}:board:applied`` | hash | cluster: shard -> the last generation of its cells the ``{board}`` keys hold |
| ``{p}:{board}:board:hist:{day}`` | hash | cluster: quarter-octave bucket -> customers with that positive net outflow |
| ``{p}:board:floors`` | hash | closed day -> net outflow (cents) below which it keeps nobody; ``through``: last day |
| ``{p}:board:shards`` | set | on Redis Cluster: the 看板 shards written (``S`` values) |
| ``{p}:{cases}:case:{N}`` | hash | case N (``cases.store``): status, assignee, outcome, ``v`` = version |
| ``{p}:{cases}:case:{N}:audit`` | list | case N's append-only audit trail (JSON entries, oldest first) |
| ``{p}:{cases}:case:{N}:findings`` | list | the findings that opened or joined case N (JSON, oldest first) |
| ``{p}:{cases}:seq`` | string | the last case number given out |
| ``{p}:{cases}:open`` | hash | ``type|customer|category`` -> the open case of that customer and family |
| ``{p}:{cases}:by_finding`` | hash | finding id -> its case (empty: taken back first); intake: once per finding |
| ``{p}:{cases}:retracted`` | hash | retracted finding id -> the retraction that took it back (once per finding) |
| ``{p}:{cases}:cursor`` | string | the feed id the case intake has read up to |
| ``{p}:{cases}:ix:{field}:{value}`` | sorted set | case numbers per value of each list filter (``-``: none) |
| ``{p}:{cases}:ix:opened`` | sorted set | case number -> when it was opened (ms), for the age filters |
| ``{p}:{cases}:rules`` | hash | rule -> findings taken into cases (the rules seen) |
| ``{p}:{cases}:idem:{name}:{key}`` | string | a mutating request's stored response for its ``Idempotency-Key`` (24 h) |
| ``{p}:{ct.B}:consent`` | hash | consent bucket B: customer -> packed consent, 21 bytes (``contact.store``) |
| ``{p}:{ct.B}:consent:audit:{C}`` | list | customer C's consent records made through the API (append-only) |
| ``{p}:{contact}:imports`` | list | every consent import: who, when, the file's SHA-256, counts (append-only) |
| ``{p}:{contact}:held`` | stream | pushes held at delivery, with why (capped); ``held:{id}``: once per push |
| ``{p}:{cdc:F}:row:{id}`` | string | CDC feed ``F``: a row's version and live event (``feeds.adapter``) |
| ``{p}:{rules}:seq`` | string | the last rule version number given out (``streams.storage.rulebook``) |
| ``{p}:{rules}:rev`` | string | transitions of the rule versions so far: each one's compare-and-set |
| ``{p}:{rules}:version:{N}`` | hash | rule version N: fingerprint, rules JSON, YAML, author, reason, status, diff |
| ``{p}:{rules}:timeline`` | list | promotions (JSON: effective_us, version, fingerprint, by, at_us), appended only |
| ``{p}:{rules}:shadow`` | string | the shadow run (JSON: version, fingerprint, started_us, by, from_us); absent: none |
| ``{p}:{rules}:audit`` | stream | who did what to the rule versions, when and why (JSON in field ``v``) |
| ``{p}:{rules}:shadow:{N}`` | hash | shadow record id -> record JSON, of version N's shadow runs (docs/events.md) |

The 看板's keys are written by the commit script of the customers they count, so they
share those customers' slot: ``S`` is ``board`` on a single Redis; on Redis Cluster it
is ``board.N``, the first such tag that hashes to the slot of the commit's customers
(``board_shard``), which holds the slot's net-outflow sets and pending cells; the fold
carries the cells into the ``{board}`` keys, which readers read. A customer's state key also holds
the 归集率 bucket it is counted in.

The live tiers are spread over ``TIER_SHARDS`` shards by the customer's slot, so no Redis
Cluster shard holds every customer's tier: ``T`` is ``tier_tags()[i]`` for the customers of
the i-th of ``TIER_SHARDS`` equal slot ranges, a tag whose own slot lies in that range (on a
cluster the shard sits with its customers); ``streams.tiers`` merges the shards by rank. A shard
is split into sub-shards as its customers grow, so that each sorted set stays small enough
for Redis to keep it as a listpack; its band keeps the customers a search needs in value
order (docs/scale.md, "Tiers").

Every case key carries the hash tag ``{cases}``: they live in one Redis Cluster slot,
so each case write is one atomic script over them.

Every rule version key carries the hash tag ``{rules}`` likewise: each transition is one
script over them (``streams.storage.rulebook``).

``{p}`` is ``Settings.key_prefix`` (default ``ff``); a backtest against shared
servers uses its own prefix so it never touches live state.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass

from redis.crc import key_slot


def hash_tag(customer_id: str) -> str:
    """What stands between the braces of a customer's keys: the id, or (when it has a
    brace) ``{`` + its base64url; never empty, never with a ``}``."""
    if "{" not in customer_id and "}" not in customer_id:
        return customer_id
    return "{" + base64.urlsafe_b64encode(customer_id.encode()).decode().rstrip("=")


BOARD = "board"  # the 看板's hash tag on a single Redis


@functools.cache
def _board_tags() -> dict[int, str]:
    """For every Redis Cluster slot, the first tag ``board.N`` that hashes to it (found once,
    ~160k CRC16s: every slot is met long before N reaches 200,000)."""
    tags: dict[int, str] = {}
    n = 0
    while len(tags) < 16384:
        tag = f"{BOARD}.{n}"
        tags.setdefault(key_slot(tag.encode()), tag)
        n += 1
    return tags


TIER_SHARDS = 32  # the live tiers' shards (docs/scale.md, "Tiers")
SLOTS = 16384


@functools.cache
def tier_tags() -> tuple[str, ...]:
    """Shard i's hash tag: the first ``tiers.N`` whose slot lies in the i-th of ``TIER_SHARDS``
    equal slot ranges (so a shard lives on the node of the slots whose customers it holds)."""
    tags: list[str | None] = [None] * TIER_SHARDS
    n = 0
    while None in tags:
        tag = f"tiers.{n}"
        shard = key_slot(tag.encode()) * TIER_SHARDS // SLOTS
        if tags[shard] is None:
            tags[shard] = tag
        n += 1
    return tuple(t for t in tags if t is not None)


def tier_tag(customer_id: str) -> str:
    """The tier shard tag of ``customer_id``: by the slot of its keys."""
    return tier_tags()[key_slot(f"{{{hash_tag(customer_id)}}}".encode()) * TIER_SHARDS // SLOTS]


def board_shard(slot: int) -> str:
    """The 看板 hash tag of a Redis Cluster slot: its keys live on that slot."""
    return _board_tags()[slot]


def customer_of_tag(tag: str) -> str:
    """The customer_id whose ``hash_tag`` is ``tag``."""
    if not tag.startswith("{"):
        return tag
    encoded = tag[1:]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"not an encoded hash tag: {tag!r}") from exc


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "ff"

    def state(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{hash_tag(customer_id)}}}:state"

    def outbox(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{hash_tag(customer_id)}}}:outbox"

    def alerts(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{hash_tag(customer_id)}}}:alerts"

    def log(self, customer_id: str) -> str:
        return f"{self.prefix}:{{{hash_tag(customer_id)}}}:log"

    def rules(self, fingerprint: str) -> str:
        return f"{self.prefix}:rules:{fingerprint}"

    @property
    def rules_current(self) -> str:
        """The fingerprint of the rules in force (a fingerprint is hex: never ``current``)."""
        return f"{self.prefix}:rules:current"

    def logged(self, shard: str) -> str:
        """Customers of ``shard`` (a 看板 shard: their slot) holding a changelog, scored by input
        partition: written by the commit script, read by a worker taking over partitions."""
        return f"{self.prefix}:{{{shard}}}:logged"

    @property
    def state_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:state"

    @property
    def log_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:log"

    def customer_of_state_key(self, key: str) -> str:
        return self._customer_of(key, "state")

    def customer_of_log_key(self, key: str) -> str:
        return self._customer_of(key, "log")

    def _customer_of(self, key: str, kind: str) -> str:
        head, tail = f"{self.prefix}:{{", f"}}:{kind}"
        if not (key.startswith(head) and key.endswith(tail)):
            raise ValueError(f"not a {kind} key: {key!r}")
        return customer_of_tag(key[len(head) : -len(tail)])

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def latency(self) -> str:
        return f"{self.prefix}:stats:latency_ms"

    @property
    def feed(self) -> str:
        return f"{self.prefix}:feed"

    @property
    def tiers(self) -> str:
        """The single sorted set of every customer, before the tiers were sharded (migrated)."""
        return f"{self.prefix}:tiers"

    def tier_shard(self, tag: str, name: str = "") -> str:
        """A key of tier shard ``tag`` (``tier_tags()``): the sorted set, or ``value``, ``last``,
        ``moved:{YYYY-Www}``."""
        return f"{self.prefix}:{{{tag}}}:tiers" + (f":{name}" if name else "")

    def tier_shard_of(self, customer_id: str, name: str = "") -> str:
        """The key ``name`` of the tier shard holding ``customer_id``."""
        return self.tier_shard(tier_tag(customer_id), name)

    @property
    def tier_values(self) -> str:
        return f"{self.prefix}:tiers:value"

    @property
    def tier_cuts(self) -> str:
        return f"{self.prefix}:tiers:cuts"

    def board(self, shard: str, name: str) -> str:
        """A 看板 key of ``shard`` (``board``, or on Redis Cluster ``board_shard(slot)``)."""
        return f"{self.prefix}:{{{shard}}}:board:{name}"

    @property
    def board_floors(self) -> str:
        """The 看板's closed days: day -> the net outflow its sets keep from (``streams.board.trim``)."""
        return f"{self.prefix}:board:floors"

    @property
    def board_shards(self) -> str:
        """The 看板 shards written on Redis Cluster (a set: readers never scan for them)."""
        return f"{self.prefix}:board:shards"

    @property
    def tier_last(self) -> str:
        return f"{self.prefix}:tiers:last"

    def tier_moved(self, iso_week: str) -> str:
        """Customers whose tier changed in ``iso_week`` (``1998-W52``)."""
        return f"{self.prefix}:tiers:moved:{iso_week}"

    @property
    def cases(self) -> str:
        """The common head of every case key (``cases.store`` builds the rest)."""
        return f"{self.prefix}:{{cases}}"

    def rulebook(self, name: str) -> str:
        """A rule version key (``streams.storage.rulebook``): ``seq``, ``rev``, ``version:{N}``, ``timeline``,
        ``shadow``, ``audit``; one hash tag, so a transition is one script."""
        return f"{self.prefix}:{{rules}}:{name}"

    def shadow_records(self, version: int) -> str:
        """The records of version ``version``'s shadow runs, by record id (written by the workers)."""
        return self.rulebook(f"shadow:{version}")

    def consent_bucket(self, bucket: int) -> str:
        """A consent bucket (``contact.store``); each its own hash tag, so buckets spread over a cluster
        and a customer's record and audit (``:audit:{C}`` after it) are one script."""
        return f"{self.prefix}:{{ct.{bucket}}}:consent"

    def contact(self, name: str) -> str:
        """A deployment-wide contact key (``imports``, ``import_seq``, ``held``, ``held:{id}``): one hash tag."""
        return f"{self.prefix}:{{contact}}:{name}"

    def cdc(self, source: str, name: str) -> str:
        """A CDC adapter key of feed ``source`` (``feeds.adapter``: ``row:{id}``, ``pos:{topic}:{partition}``,
        ``seen:{topic}:{partition}``); one hash tag per feed, so a batch's writes are one MULTI."""
        return f"{self.prefix}:{{cdc:{source}}}:{name}"
