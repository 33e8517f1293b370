"""The 看板's closed days cut to their top (``streams.board.trim``, docs/scale.md): the board
read of every closed day is the same before and after the cut, late events that land on a
closed day afterwards give what one application of every event gives, a second cut changes
nothing, and ``check`` agrees, on a single Redis and on Redis Cluster."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.board import BoardDelta, floor_from_hist, floor_value, hist_bucket
from rules.events import TransactionEvent
from rules.state import CustomerState, Outcome, to_us
from streams.board import amount, check, floors, fold, read_board, shards, trim
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.storage.keys import BOARD, Keys
from streams.storage.store import StateStore
from tests.support.board import ZONE, finding_step, processor, txn

DAY0 = dt.date(2024, 3, 1)
LATEST_DAY = 12  # an anchor event's day: with OPEN_DAYS, days 0..9 are closed
OPEN_DAYS = 3
SHOWN = 2  # the board's ``top`` in these reads
_prefixes = itertools.count()
_ids = itertools.count(1)

# (customer, day, debit, cents, hour): a flow of one customer on one day; few customers and
# days, so that a day's set is cut and a late event often lands on a customer the cut left out
moves = st.tuples(st.integers(0, 9), st.integers(0, 3), st.booleans(), st.integers(1, 99_999), st.integers(8, 20))


def records(flows: list[tuple[int, int, bool, int, int]]) -> list[RawRecord]:
    out = []
    for customer, day, debit, cents, hour in flows:
        when = dt.datetime.combine(DAY0 + dt.timedelta(days=day), dt.time(hour, next(_ids) % 60), ZONE)
        direction = "debit" if debit else "credit"
        out.append(
            txn(next(_ids), f"c{customer:02d}", direction, f"{cents // 100}.{cents % 100:02d}", when.isoformat())
        )
    return out


def anchor() -> RawRecord:
    """A credit of its own customer on LATEST_DAY: the board's "now" (no net outflow to show)."""
    when = dt.datetime.combine(DAY0 + dt.timedelta(days=LATEST_DAY), dt.time(9), ZONE)
    return txn(next(_ids), "zz", "credit", "1.00", when.isoformat())


def nets(batch: list[RawRecord]) -> dict[str, dict[str, int]]:
    """Day -> customer -> net outflow (cents): one application of every event, the pure step."""
    states: dict[str, CustomerState] = {}
    step = finding_step()
    out: dict[str, dict[str, int]] = {}
    for record in batch:
        assert record.value is not None
        event = TransactionEvent.model_validate_json(record.value)
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        outcome, _ = step(state, event)
        assert outcome is Outcome.APPLIED
        delta = BoardDelta()
        delta.add_transaction(event, to_us(event.ts), ZONE, state)
        for day, cents in delta.net.items():
            out.setdefault(day, {})[event.customer_id] = out.get(day, {}).get(event.customer_id, 0) + cents
    return out


def shown(day_nets: dict[str, int], top: int) -> list[dict[str, str]]:
    """The board's "largest net outflow" of a day, from every customer's net."""
    ordered = sorted(((cid, v) for cid, v in day_nets.items() if v > 0), key=lambda x: (-x[1], x[0]))
    return [{"customer_id": cid, "net_outflow": amount(v)} for cid, v in ordered[:top]]


def closed_days() -> list[str]:
    return [(DAY0 + dt.timedelta(days=d)).isoformat() for d in range(LATEST_DAY - OPEN_DAYS + 1)]


async def tops(store: StateStore, cluster: bool) -> dict[str, Any]:
    return {
        day: (await read_board(store.redis, store.keys, ZONE, day, cluster=cluster, top=SHOWN))["top_net_outflow"]
        for day in closed_days()
    }


async def stored_sets(store: StateStore, cluster: bool) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    for shard in await shards(store.redis, store.keys, cluster):
        for day in closed_days():
            members = cast(
                list[tuple[bytes, float]],
                await store.redis.zrange(store.keys.board(shard, f"net:{day}"), 0, -1, withscores=True),
            )
            for member, score in members:
                found.setdefault(day, {})[member.decode()] = int(score)
    return found


async def cut_and_late(
    store: StateStore,
    first: list[RawRecord],
    late: list[RawRecord],
    kept: int,
    cluster: bool = False,
    most_days: int | None = None,
) -> None:
    """Commit ``first``, cut the closed days (``most_days`` at a time: the worker's timer cuts a
    backlog over several runs), commit ``late`` (events on closed days), checking the board's
    reads against one application of the events at each step."""
    await processor(store).process([*first, anchor()])
    expected = nets(first)
    before = await tops(store, cluster)
    assert before == {day: shown(expected.get(day, {}), SHOWN) for day in closed_days()}
    if cluster:  # each day's histogram, folded, counts every positive net in its bucket (Lua = Python)
        await fold(store.redis, store.keys, await shards(store.redis, store.keys, cluster))
        for day, every in expected.items():
            raw = await store.redis.hgetall(store.keys.board(BOARD, f"hist:{day}"))
            held = {int(b): int(n) for b, n in raw.items() if int(n)}
            assert held == Counter(hist_bucket(v) for v in every.values() if v > 0)

    days = 0
    while cut := await trim(store.redis, store.keys, ZONE, kept=kept, open_days=OPEN_DAYS, keep_days=12,
                            cluster=cluster, most_days=most_days):  # fmt: skip
        assert most_days is None or cut <= most_days
        days += cut
    assert days == 13  # the 12 days before the last closed one, and it
    assert await tops(store, cluster) == before  # the cut changes no read of a closed day
    fixed, through = await floors(store.redis, store.keys)
    assert through == closed_days()[-1]
    kept_sets = await stored_sets(store, cluster)
    for day in closed_days():  # each day keeps exactly those at or above its floor, with their whole net
        every = expected.get(day, {})
        if cluster:  # the least amount of the histogram's bucket that reaches ``kept`` from the top
            positive = Counter(hist_bucket(v) for v in every.values() if v > 0)
            assert fixed[day] == floor_from_hist(positive, kept) <= floor_value(list(every.values()), kept)
        else:
            assert fixed[day] == floor_value(list(every.values()), kept)
        assert kept_sets.get(day, {}) == {cid: v for cid, v in every.items() if v >= fixed[day]}

    await processor(store).process(late)  # late events land on closed days
    expected = nets([*first, *late])
    assert await tops(store, cluster) == {day: shown(expected.get(day, {}), SHOWN) for day in closed_days()}
    assert await trim(store.redis, store.keys, ZONE, kept=kept, open_days=OPEN_DAYS, keep_days=12, cluster=cluster) == 0
    assert await check(store, ZONE, 200, cluster) == []


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    connection = connect(redis_url)
    try:
        yield connection
    finally:
        await connection.aclose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(moves, min_size=1, max_size=40), st.lists(moves, max_size=3))
async def test_a_closed_day_cut_to_its_top_reads_the_same_and_stays_exact_under_late_events(
    client: Any, first: list[tuple[int, int, bool, int, int]], late: list[tuple[int, int, bool, int, int]]
) -> None:
    """Random customers and days; the later events raise or lower anyone's net on a closed day,
    a customer the cut left out included. A day keeps SHOWN plus one per late event, so no
    sequence of late falls can leave fewer than SHOWN at or above its floor."""
    store = StateStore(client, Keys(f"trim{next(_prefixes)}"))
    await cut_and_late(store, records(first), records(late), kept=SHOWN + len(late))


async def test_a_late_rise_of_a_customer_the_cut_left_out_brings_it_back_with_its_whole_day(client: Any) -> None:
    """c01 was fourth on day 2 and left the set; a late debit of 5.00 makes it first: the board
    shows its whole net of the day (30.00 + 5.00), not the late event's 5.00."""
    store = StateStore(client, Keys(f"trim{next(_prefixes)}"))
    first = [(0, 2, True, 10_000, 9), (1, 2, True, 3_000, 9), (2, 2, True, 5_000, 9), (3, 2, True, 4_000, 9)]
    late = [(1, 2, True, 500, 18), (1, 2, True, 8_000, 19)]
    await cut_and_late(store, records(first), records(late), kept=SHOWN, most_days=1)
    board = await read_board(client, store.keys, ZONE, "2024-03-03", top=SHOWN)
    assert board["top_net_outflow"][0] == {"customer_id": "c01", "net_outflow": "115.00"}


async def test_a_closed_day_on_redis_cluster_is_cut_in_every_shard_from_one_floor(cluster_url: str) -> None:
    """On Redis Cluster each slot has its own sets: the floor comes from all of them, every
    shard cuts at it, and late events in any slot keep the reads exact."""
    plain = redis.Redis.from_url(cluster_url)
    plain.flushdb()
    plain.close()
    connection = connect(cluster_url, cluster=True)
    try:
        store = StateStore(connection, Keys("trimcl"))
        first = [(c, d, c % 3 != 0, 1_000 * (c + 1) + 37 * d, 10) for c in range(12) for d in range(0, 10, 2)]
        late = [(5, 2, False, 900_000, 15), (0, 4, True, 2_000_000, 16), (11, 0, True, 1, 17)]
        await cut_and_late(store, records(first), records(late), kept=SHOWN + len(late), cluster=True, most_days=5)
        assert len(await shards(connection, store.keys, True)) > 5
    finally:
        await connection.aclose()


async def test_a_late_rise_the_state_cannot_make_whole_is_counted_not_guessed(client: Any) -> None:
    """c09's newest event is 100 days after a cut day: its state no longer keeps that day (90
    days), yet the dedup horizon (120) lets a late debit of that day in. Outside the cut set,
    it cannot come back with its whole net, which nobody knows any more: it is left out and
    counted under ``late:{day}``, and the day's list stays as it was."""
    store = StateStore(client, Keys(f"trim{next(_prefixes)}"))
    day0 = DAY0.isoformat()
    first = records([(0, 0, True, 50_000, 9), (1, 0, True, 40_000, 9), (9, 0, True, 100, 9)])
    later = dt.datetime.combine(DAY0 + dt.timedelta(days=100), dt.time(10), ZONE).isoformat()
    await processor(store).process([*first, txn(next(_ids), "c09", "credit", "1.00", later)])
    await trim(store.redis, store.keys, ZONE, kept=1, open_days=OPEN_DAYS, keep_days=120)
    assert await stored_sets(store, False) == {day0: {"c00": 50_000}}
    await processor(store).process(records([(9, 0, True, 900_000, 11)]))  # would make c09 first
    board = await read_board(client, store.keys, ZONE, day0, top=SHOWN)
    assert board["top_net_outflow"] == [{"customer_id": "c00", "net_outflow": "500.00"}]
    assert await client.hget(store.keys.board("board", "trim"), f"late:{day0}") == b"1"
