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
| ``{p}:{C}:alerts`` | list | the customer's recent findings (newest first, capped), for the API |
| ``{p}:stats`` | hash | pipeline counters (processed, duplicates, dead letters by reason) |
| ``{p}:stats:latency_ms`` | list | recent end-to-end latencies in ms (capped), for backtest and bench |
| ``{p}:feed`` | stream | published findings (JSON in field ``v``, topic in ``t``), capped; the API's feed |
| ``{p}:rules:{F}`` | string | the rules a changelog entry ran under, by fingerprint ``F`` (JSON), for its replay |
| ``{p}:rules:current`` | string | the fingerprint of the rules a worker runs under (``FUNDFLOW_RULES_FALLBACK``) |
| ``{p}:{S}:logged`` | sorted set | customer -> input partition, for the shard's customers with a changelog |
| ``{p}:tiers`` | sorted set | customer -> contribution (cent-rounded), for live quartile tiers |
| ``{p}:tiers:value`` | hash | customer -> the exact contribution (decimal string) |
| ``{p}:tiers:cuts`` | hash | the current quartile cut points q1,q2,q3 and when they were computed |
| ``{p}:tiers:last`` | hash | customer -> the tier the last refresh gave them (I..IV), for tier moves |
| ``{p}:tiers:moved:{YYYY-Www}`` | set | customers whose tier changed in that ISO week (event time, bank zone), 14 d |
| ``{p}:{S}:board:latest`` | string | the latest event time (µs) any commit carried: the 看板's "now" |
| ``{p}:{S}:board:collection`` | hash | 归集率 bucket -> customers whose latest state is in it (``rules.board``) |
| ``{p}:{S}:board:flow:{day}`` | hash | ``HH|in|kind|ext`` -> cents that flowed on that local day and hour |
| ``{p}:{S}:board:findings:{day}`` | hash | ``HH|type|category|rule`` -> findings of that local day and hour |
| ``{p}:{S}:board:net:{day}`` | sorted set | customer -> net outflow of that local day (cents) |
| ``{p}:{S}:board:kept_from`` | string | the first day the shard still keeps (``streams.board.prune``) |
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
| ``{p}:{cdc:F}:row:{id}`` | string | CDC feed ``F``: a row's version and live event (``feeds.adapter``) |

The 看板's keys are written by the commit script of the customers they count, so they
share those customers' slot: ``S`` is ``board`` on a single Redis; on Redis Cluster it
is ``board.N``, the first such tag that hashes to the slot of the commit's customers
(``board_shard``), and a reader sums every shard. A customer's state key also holds
the 归集率 bucket it is counted in.

Every case key carries the hash tag ``{cases}``: they live in one Redis Cluster slot,
so each case write is one atomic script over them.

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
        return f"{self.prefix}:tiers"

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

    def cdc(self, source: str, name: str) -> str:
        """A CDC adapter key of feed ``source`` (``feeds.adapter``: ``row:{id}``, ``pos:{topic}:{partition}``,
        ``seen:{topic}:{partition}``); one hash tag per feed, so a batch's writes are one MULTI."""
        return f"{self.prefix}:{{cdc:{source}}}:{name}"
