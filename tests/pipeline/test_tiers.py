"""Live tiers: the cut points kept in Redis equal metrics.md's quartile rule."""

from __future__ import annotations

import datetime as dt
import statistics
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.contribution import ContributionRates, quartile_cuts, tier_of
from rules.events import TransactionEvent
from rules.metrics import SegmentThresholds
from rules.state import CustomerState, StateConfig, apply_transaction
from streams.clients import connect
from streams.storage.keys import Keys, tier_tags
from streams.tiers import (
    WRITE_CHUNK,
    TierBook,
    all_contributions,
    contributions,
    customer_count,
    cut_positions,
    distribution,
    interpolate,
    iso_week,
    migrate_shard_copies,
    migrate_single_keys,
    moved_in,
    moved_this_week,
    read_cuts,
    recompute_cuts,
    tier_key_names,
    values_at,
    write_contributions,
)

ZONE = ZoneInfo("Asia/Shanghai")
cents = st.integers(min_value=-(10**9), max_value=10**11).map(lambda c: Decimal(c) / 100)


@given(st.lists(cents, min_size=2, max_size=60))
def test_rank_interpolation_is_statistics_quantiles_inclusive(values: list[Decimal]) -> None:
    ordered = sorted(values)
    needed = {r for lo, hi, _ in cut_positions(len(ordered)) for r in (lo, hi)}
    assert interpolate({r: ordered[r] for r in needed}, len(ordered)) == quartile_cuts(values)
    as_floats = statistics.quantiles([float(v) for v in values], n=4, method="inclusive")
    assert [float(c) for c in quartile_cuts(values) or ()] == pytest.approx(as_floats)


async def test_cuts_and_distribution_from_redis_match_the_spec(redis_url: str) -> None:
    import random

    rng = random.Random(5)
    values = {f"C{i}": Decimal(rng.randint(-50_000, 5_000_000)) / 100 for i in range(101)}
    values["C7"] = values["C8"]  # ties across a boundary are fine too
    keys = Keys("t")
    client = connect(redis_url)
    try:
        await write_contributions(client, keys, values)
        cuts = await recompute_cuts(client, keys, 0)
        assert cuts == quartile_cuts(values.values())
        result = await distribution(client, keys, top=5)
    finally:
        await client.aclose()
    expected = {"I": 0, "II": 0, "III": 0, "IV": 0}
    for value in values.values():
        expected[tier_of(value, cuts)] += 1
    assert result["counts"] == expected
    best = sorted(values.items(), key=lambda kv: kv[1], reverse=True)[:5]
    assert [(r["customer_id"], r["contribution"]) for r in result["top"]] == [(c, str(v)) for c, v in best]


def _credit(customer: str, n: int, amount: str, day: int) -> TransactionEvent:
    return TransactionEvent.model_validate(
        {
            "txn_id": f"{customer}-{n}",
            "customer_id": customer,
            "account_id": f"A-{customer}",
            "ts": dt.datetime(2024, 3, day, 10, tzinfo=ZONE).isoformat(),
            "direction": "credit",
            "amount": amount,
        }
    )


def _credited(count: int, step: int, config: StateConfig) -> dict[str, CustomerState]:
    """Customers C0.. each with one credit on 1 March: C{i} holds step x (i + 1)."""
    states = {}
    for i in range(count):
        state = CustomerState(f"C{i}")
        apply_transaction(state, _credit(state.customer_id, 0, str(step * (i + 1)), 1), config)
        states[state.customer_id] = state
    return states


async def test_tiers_follow_balances(redis_url: str) -> None:
    config = StateConfig(zone=ZONE)
    client = connect(redis_url)
    book = TierBook(client, Keys("t"), config, SegmentThresholds(), ContributionRates())
    states = _credited(8, 1000, config)
    try:
        book.changed(states.values())
        await book.refresh()
        assert await book.tier_of("C7") == "I"
        assert await book.tier_of("C0") == "IV"
        # C0 receives a fortune: after the next refresh it is the top tier.
        apply_transaction(states["C0"], _credit("C0", 1, "900000", 2), config)
        book.changed([states["C0"]])
        assert await book.tier_of("C0") == "IV"  # live tiers lag by one refresh interval
        await book.refresh()
        assert await book.tier_of("C0") == "I"
        assert await book.tier_of("C1") == "IV"
    finally:
        await client.aclose()


async def test_one_unusable_state_never_stops_the_tiers_of_everyone_else(redis_url: str) -> None:
    """Issue 20: a state stored with a year-9999 clock (before event time had bounds) made
    every refresh fail, for every customer. It is left out; the others get their tiers."""
    config = StateConfig(zone=ZONE)
    client = connect(redis_url)
    book = TierBook(client, Keys("t9"), config, SegmentThresholds(), ContributionRates())
    states = list(_credited(4, 1000, config).values())
    broken = CustomerState("BROKEN")
    apply_transaction(broken, _credit("BROKEN", 0, "5", 1), config)
    broken.last_us = broken.last_txn_us = int(dt.datetime(9999, 12, 31, 16, tzinfo=dt.UTC).timestamp() * 1e6)
    try:
        book.changed([*states, broken])
        assert await book.refresh() == 4
        assert await book.tier_of("C3") == "I" and await book.tier_of("C0") == "IV"
        assert (await contributions(client, Keys("t9"), ["BROKEN"]))["BROKEN"] is None
    finally:
        await client.aclose()


async def test_a_long_refresh_gives_the_event_loop_back_between_slices(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's batches share the event loop with the refresh: evaluating thousands of
    changed customers in one go stalled every batch for half a second (make bench, 80% of
    the catch-up rate). A concurrent task runs during the refresh, never waits a whole one."""
    import asyncio
    import time

    from streams import tiers

    # Slices far shorter than the refresh on any machine: a fast one refreshed these 1,500
    # customers in 49 ms, under ten 5 ms slices, and the test had nothing to check.
    monkeypatch.setattr(tiers, "REFRESH_SLICE_SECONDS", 0.0002)

    config = StateConfig(zone=ZONE)
    client = connect(redis_url)
    book = TierBook(client, Keys("t10"), config, SegmentThresholds(), ContributionRates())
    states = list(_credited(1500, 10, config).values())
    gaps: list[float] = []

    async def ticker() -> None:
        while True:
            last = time.perf_counter()
            await asyncio.sleep(0)
            gaps.append(time.perf_counter() - last)

    try:
        book.changed(states)
        started = time.perf_counter()
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        assert await book.refresh() == 1500
        took = time.perf_counter() - started
        task.cancel()
        assert await book.tier_of("C1499") == "I"
    finally:
        await client.aclose()
    assert max(gaps) < took / 3  # in one piece, the longest wait was nearly all of the refresh
    assert took > 10 * tiers.REFRESH_SLICE_SECONDS  # (else there was nothing to slice)


def test_a_paced_refresh_waits_until_its_share_is_due_and_never_when_behind() -> None:
    from streams.tiers import pause_after

    assert pause_after(10.0, 10.1, 50, 100, 1.0) == pytest.approx(0.4)  # half done: due at 10.5
    assert pause_after(10.0, 10.7, 50, 100, 1.0) == 0.0  # behind: no pause
    assert pause_after(10.0, 10.1, 50, 100, 0.0) == 0.0  # not paced
    assert pause_after(10.0, 10.1, 0, 0, 1.0) == 0.0


async def test_the_workers_refresh_spreads_its_work_over_the_time_it_is_given(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back to back, a refresh's slices took all of a loaded worker's spare time for a
    second (the committed p99 at 50% load went from ~100 to ~430 ms); the worker gives it
    half its interval. It fails when the refresh runs its slices back to back; the tiers
    are those of an unpaced refresh."""
    import time

    from streams import tiers

    monkeypatch.setattr(tiers, "REFRESH_SLICE_SECONDS", 0.0002)
    config = StateConfig(zone=ZONE)
    client = connect(redis_url)
    book = TierBook(client, Keys("t11"), config, SegmentThresholds(), ContributionRates())
    try:
        book.changed(list(_credited(1500, 10, config).values()))
        started = time.perf_counter()
        assert await book.refresh(within=0.5) == 1500
        took = time.perf_counter() - started
        assert await book.tier_of("C1499") == "I"
    finally:
        await client.aclose()
    assert took > 0.45


async def test_tier_moves_are_counted_per_iso_week_including_moves_by_the_cut_points(redis_url: str) -> None:
    """One customer's fortune moves the cut points, so customers the refresh did not
    re-evaluate change tier too: each customer whose tier changed is in the week's set once."""
    config = StateConfig(zone=ZONE)
    client = connect(redis_url)
    keys = Keys("tm")
    book = TierBook(client, keys, config, SegmentThresholds(), ContributionRates())
    states = _credited(12, 1000, config)

    async def tiers_now() -> dict[str, str]:
        cuts, _ = await read_cuts(client, keys)
        return {cid: tier_of(value, cuts) for cid, value in (await all_contributions(client, keys)).items()}

    try:
        book.changed(states.values())
        await book.refresh()
        assert await moved_this_week(client, keys, ZONE) == ("2024-W09", 0)  # a first tier is not a move
        before = await tiers_now()
        for n, name in enumerate(("C0", "C1", "C2")):  # three fortunes shift every cut point up
            apply_transaction(states[name], _credit(name, 1, str(900_000 + n), 4), config)
            book.changed([states[name]])
        await book.refresh()
        after = await tiers_now()
        moved = {c for c in after if after[c] != before[c]}
        assert moved - {"C0", "C1", "C2"}, "the cut points moved others too"
        week, count = await moved_this_week(client, keys, ZONE)
        assert (week, count) == ("2024-W10", len(moved))  # 2024-03-04 is the Monday of week 10
        weeks = [keys.tier_shard(tag, "moved:2024-W10") for tag in tier_tags()]
        assert {m.decode() for week in weeks for m in cast(set[bytes], await client.smembers(week))} == moved
        ttls = [await client.ttl(week) for week in weeks if await client.exists(week)]
        assert ttls and all(0 < ttl <= 14 * 86400 for ttl in ttls)
        await book.refresh()  # nothing changed: nothing more moved
        assert await moved_this_week(client, keys, ZONE) == ("2024-W10", len(moved))
    finally:
        await client.aclose()


def test_iso_weeks_are_in_the_bank_zone() -> None:
    sunday_late = int(dt.datetime(2024, 3, 3, 23, 30, tzinfo=ZONE).timestamp() * 1_000_000)
    assert iso_week(sunday_late, ZONE) == "2024-W09"
    assert iso_week(sunday_late, ZoneInfo("UTC")) == "2024-W09"
    assert iso_week(sunday_late + 3_600_000_000, ZONE) == "2024-W10"
    assert iso_week(int(dt.datetime(1998, 12, 31, 12, tzinfo=ZONE).timestamp() * 1_000_000), ZONE) == "1998-W53"


_examples = iter(range(10**9))


async def reads_as_one_sorted_list(client: Any, keys: Keys, values: dict[str, Decimal], rng: Any) -> None:
    """The value at some ranks (the ends, a random one, the middle), the cut points, the tier
    counts and the top 7 equal what one sorted list of ``values`` gives (ties included)."""
    ordered = sorted(values.values())
    if ordered:
        ranks = {0, len(ordered) - 1, rng.randrange(len(ordered)), len(ordered) // 2}
        assert await values_at(client, keys, ranks) == {r: ordered[r] for r in ranks}
    cuts = await recompute_cuts(client, keys, 1)
    assert cuts == quartile_cuts(values.values())
    result = await distribution(client, keys, top=7)
    expected = {"I": 0, "II": 0, "III": 0, "IV": 0}
    for value in values.values():
        expected[tier_of(value, cuts) if cuts else "I"] += 1
    assert result["counts"] == expected and result["customers"] == len(values)
    best = sorted(values.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:7]  # ZREVRANGE's order
    assert [(r["customer_id"], Decimal(r["contribution"])) for r in result["top"]] == best


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=-(10**8), max_value=10**10), min_size=0, max_size=300), st.randoms())
async def test_sharded_cuts_counts_and_top_equal_a_sort_of_every_value(redis_url: str, cents_: list[int], rng) -> None:  # type: ignore[no-untyped-def]
    """The shards merged by rank give what one sorted list of every contribution gives:
    the cut points (statistics.quantiles, inclusive), the value at every rank, the tier
    counts and the top customers (ties included: values are drawn from a small pool too)."""
    pool = cents_[:5] or [0]
    values = {f"H{i}": Decimal(rng.choice(pool) if rng.random() < 0.3 else c).scaleb(-2) for i, c in enumerate(cents_)}
    keys = Keys(f"hp{next(_examples)}")
    client = connect(redis_url)
    try:
        await write_contributions(client, keys, values)
        assert await customer_count(client, keys) == len(values)
        await reads_as_one_sorted_list(client, keys, values, rng)
    finally:
        await client.delete(*tier_key_names(keys), keys.tier_cuts)
        await client.aclose()


def test_tier_shards_split_customers_evenly_and_each_lives_in_its_slot_range() -> None:
    """No shard holds much more than 1/32 of the customers (docs/scale.md: no key above 1% of
    the data at a million customers), and each shard's tag hashes into the slot range of its
    customers, so on a cluster a shard sits on the node of its customers."""
    from redis.crc import key_slot

    from streams.storage.keys import SLOTS, TIER_SHARDS, tier_tag

    tags = tier_tags()
    assert len(set(tags)) == TIER_SHARDS
    for i, tag in enumerate(tags):
        assert key_slot(tag.encode()) * TIER_SHARDS // SLOTS == i
    counts: dict[str, int] = {}
    for n in range(64_000):
        counts[tier_tag(f"C{n:07d}")] = counts.get(tier_tag(f"C{n:07d}"), 0) + 1
    assert len(counts) == TIER_SHARDS and max(counts.values()) < 1.15 * 64_000 / TIER_SHARDS


async def test_tiers_of_an_earlier_version_in_single_keys_are_moved_into_the_shards_once(redis_url: str) -> None:
    """Migration at start: the first refresh of a worker moves the single keys into the
    shards and deletes them; tiers, counts, top and the week's moves read the same as the
    earlier version's; a value a refresh wrote since is not overwritten; a second run is a no-op."""
    config = StateConfig(zone=ZONE)
    keys = Keys("mig")
    client = connect(redis_url)
    values = {f"M{i}": Decimal(i * 137 % 1000 - 200).scaleb(-1) for i in range(300)}
    week = "2024-W10"
    as_of = int(dt.datetime(2024, 3, 6, 12, tzinfo=ZONE).timestamp() * 1_000_000)
    try:
        # what the earlier version wrote: one key each
        await client.zadd(keys.tiers, {cid: float(v) for cid, v in values.items()})
        await client.hset(keys.tier_values, mapping={cid: str(v) for cid, v in values.items()})
        cuts = quartile_cuts(values.values())
        assert cuts is not None
        await client.hset(keys.tier_last, mapping={cid: tier_of(v, cuts) for cid, v in values.items()})
        await client.hset(keys.tier_cuts, mapping={"q1": str(cuts[0]), "q2": str(cuts[1]), "q3": str(cuts[2])})
        await client.hset(keys.tier_cuts, mapping={"n": len(values), "as_of_us": as_of})
        await client.sadd(keys.tier_moved(week), "M1", "M2", "M3")
        # a refresh since the upgrade already wrote M5's newer value into its shard
        await write_contributions(client, keys, {"M5": Decimal("99999.00")})
        book = TierBook(client, keys, config, SegmentThresholds(), ContributionRates())
        await book.refresh()  # nothing changed: it migrates and recomputes the cut points
        assert not await client.exists(keys.tiers, keys.tier_values, keys.tier_last, keys.tier_moved(week))
        values["M5"] = Decimal("99999.00")
        assert await all_contributions(client, keys) == values
        assert await read_cuts(client, keys) and book.cuts == quartile_cuts(values.values())
        assert await moved_in(client, keys, week) == 3
        shown = await distribution(client, keys, top=3)
        assert shown["customers"] == 300 and shown["top"][0]["customer_id"] == "M5"
        # the last tiers are not kept: a refresh reads them from the contributions and cut points
        assert not any([await client.exists(keys.tier_shard(tag, "last")) for tag in tier_tags()])
        assert await migrate_single_keys(client, keys, ZONE) == 0  # once
    finally:
        await client.delete(*tier_key_names(keys), keys.tier_cuts)
        await client.aclose()


@given(st.integers(min_value=-(10**17), max_value=10**17), st.integers(min_value=0, max_value=3))
def test_whether_a_value_needs_its_exact_string_is_whether_its_score_gives_it_back(units: int, places: int) -> None:
    from streams.tiers import cents_of, exact_needed

    for value in (Decimal(units).scaleb(-places), Decimal(units % 10**15).scaleb(-2)):
        assert exact_needed(value) == (str(cents_of(float(value))) != str(value))


async def test_a_shard_keeps_an_exact_string_only_where_its_score_does_not_give_it_back(redis_url: str) -> None:
    """One sorted-set entry per customer: the score is the contribution in cents; an exact
    string is kept beside it only when the score cannot give it back, and dropped when a
    later value no longer needs it."""
    keys = Keys("ex")
    client = connect(redis_url)
    big, odd = Decimal("12345678901234567.89"), Decimal("1.5")  # beyond a double's cents; not in cents
    values = {"A": Decimal("12.30"), "B": Decimal("-0.07"), "C": Decimal("0.00"), "BIG": big, "ODD": odd}
    try:
        await write_contributions(client, keys, values)
        kept = {
            cid.decode(): value.decode()
            for tag in tier_tags()
            for cid, value in cast(dict[bytes, bytes], await client.hgetall(keys.tier_shard(tag, "value"))).items()
        }
        assert kept == {"BIG": "12345678901234567.89", "ODD": "1.5"}
        found = await contributions(client, keys, [*values, "NONE"])
        assert {cid: str(v) for cid, v in found.items() if v is not None} == {c: str(v) for c, v in values.items()}
        assert found["NONE"] is None
        assert await all_contributions(client, keys) == values
        more = {f"F{i}": Decimal(i).scaleb(-2) for i in range(100)}  # (more than FEW: shards asked first)
        await write_contributions(client, keys, {**more, "BIG": Decimal("5.00")})
        assert not await client.hexists(keys.tier_shard_of("BIG", "value"), "BIG")
        assert (await contributions(client, keys, [*more, "BIG"])) == {**more, "BIG": Decimal("5.00")}
    finally:
        await client.delete(*tier_key_names(keys))
        await client.aclose()


async def test_tier_shards_of_the_previous_version_drop_what_the_scores_hold_and_moves_still_count(
    redis_url: str,
) -> None:
    """The version before kept, per customer, an exact string and the last tier beside the
    score. The first refresh drops the strings the scores give back and the last tiers, once;
    the moves it counts are those the kept last tiers would have given."""
    config = StateConfig(zone=ZONE)
    keys = Keys("v2")
    client = connect(redis_url)
    book = TierBook(client, keys, config, SegmentThresholds(), ContributionRates())
    states = _credited(12, 1000, config)
    as_of = max(s.last_us or 0 for s in states.values())
    values = {cid: book.contribution_of(s, as_of) for cid, s in states.items()}
    values["BIG"], values["ODD"] = Decimal("12345678901234567.89"), Decimal("1.5")
    cuts = quartile_cuts(values.values())
    assert cuts is not None
    try:
        for cid, value in values.items():  # as the previous version wrote them
            await client.zadd(keys.tier_shard_of(cid), {cid: float(value)})
            await client.hset(keys.tier_shard_of(cid, "value"), cid, str(value))
            await client.hset(keys.tier_shard_of(cid, "last"), cid, tier_of(value, cuts))
        await client.hset(keys.tier_cuts, mapping={"q1": str(cuts[0]), "q2": str(cuts[1]), "q3": str(cuts[2])})
        await client.hset(keys.tier_cuts, mapping={"n": len(values), "as_of_us": as_of})
        apply_transaction(states["C0"], _credit("C0", 1, "900000", 4), config)  # moves C0 and the cut points
        book.changed([states["C0"]])
        await book.refresh()
        assert not any([await client.exists(keys.tier_shard(tag, "last")) for tag in tier_tags()])
        kept = {
            cid.decode()
            for tag in tier_tags()
            for cid in cast(dict[bytes, bytes], await client.hgetall(keys.tier_shard(tag, "value")))
        }
        assert kept == {"BIG", "ODD"}
        now = {**values, "C0": (await contributions(client, keys, ["C0"]))["C0"]}
        assert await all_contributions(client, keys) == now
        assert book.cuts == quartile_cuts(now.values())
        moved = {cid for cid in now if tier_of(values[cid], cuts) != tier_of(now[cid], book.cuts)}
        assert "C0" in moved and len(moved) > 1  # the cut points moved others too
        weeks = [keys.tier_shard(tag, "moved:2024-W10") for tag in tier_tags()]
        assert {m.decode() for week in weeks for m in cast(set[bytes], await client.smembers(week))} == moved
        assert await migrate_shard_copies(client, keys) == 0  # once
    finally:
        await client.delete(*tier_key_names(keys), keys.tier_cuts)
        await client.aclose()


async def test_sharded_tiers_and_their_migration_on_redis_cluster(cluster_url: str) -> None:
    """On Redis Cluster the shards live on many slots: the single keys of an earlier version are
    moved into them, and the cut points, counts and top equal a sort of every value."""
    import redis

    plain = redis.Redis.from_url(cluster_url)
    plain.flushdb()
    plain.close()
    keys = Keys("tcl")
    client = connect(cluster_url, cluster=True)
    values = {f"K{i}": Decimal(i * 7919 % 5000 - 1000).scaleb(-2) for i in range(400)}
    try:
        await client.zadd(keys.tiers, {cid: float(v) for cid, v in values.items()})
        await client.hset(keys.tier_values, mapping={cid: str(v) for cid, v in values.items()})
        assert await migrate_single_keys(client, keys, ZONE) == 400
        assert not await client.exists(keys.tiers, keys.tier_values)
        assert await all_contributions(client, keys) == values
        cuts = await recompute_cuts(client, keys, 1)
        assert cuts == quartile_cuts(values.values())
        shown = await distribution(client, keys, top=3)
        best = sorted(values.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:3]
        assert [(r["customer_id"], Decimal(r["contribution"])) for r in shown["top"]] == best
        assert sum(shown["counts"].values()) == 400
        # the shard layout of the version before: an exact string and a last tier beside each score
        for cid, value in values.items():
            await client.hset(keys.tier_shard_of(cid, "value"), cid, str(value))
            await client.hset(keys.tier_shard_of(cid, "last"), cid, "I")
        assert await migrate_shard_copies(client, keys) == 400
        assert not sum([await client.exists(keys.tier_shard(tag, "last")) for tag in tier_tags()])
        assert await all_contributions(client, keys) == values
    finally:
        await client.aclose()


async def test_contributions_are_written_a_chunk_at_a_time_and_all_of_them(redis_url: str) -> None:
    """A refresh after a catch-up writes many customers: in pipelines of ``WRITE_CHUNK``, every
    one of them, exactly."""
    client = connect(redis_url)
    try:
        keys = Keys("chunks")
        values = {f"c{i}": Decimal(i) / 100 for i in range(2 * WRITE_CHUNK + 7)}
        await write_contributions(client, keys, values)
        assert await all_contributions(client, keys) == values
    finally:
        await client.aclose()


class _Watched(CustomerState):
    __slots__ = ("__weakref__",)  # (a state the test can see freed)


async def test_a_refresh_lets_each_state_go_as_it_evaluates_it(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state committed since the last refresh stays alive for it after the worker's cache
    let it go. After a catch-up tens of thousands were freed at once when the refresh ended,
    a stall of the loop of hundreds of ms (docs/scale.md). Each is now freed once evaluated,
    within its slice: before the refresh writes anything. Fails when the refresh keeps them
    to its end."""
    import weakref

    from streams import tiers

    config = StateConfig(zone=ZONE)
    client = connect(redis_url)
    book = TierBook(client, Keys("t12"), config, SegmentThresholds(), ContributionRates())
    states = []
    for i in range(200):
        state = _Watched(f"W{i}")
        apply_transaction(state, _credit(state.customer_id, 0, str(10 * (i + 1)), 1), config)
        states.append(state)
    watched = [weakref.ref(s) for s in states]
    book.changed(states)
    del states, state
    alive_when_written: list[int] = []
    write = tiers.write_contributions

    async def written(*args: Any, **kwargs: Any) -> None:
        alive_when_written.append(sum(1 for ref in watched if ref() is not None))
        await write(*args, **kwargs)

    monkeypatch.setattr(tiers, "write_contributions", written)
    try:
        assert await book.refresh() == 200
        assert await book.tier_of("W199") == "I"
    finally:
        await client.aclose()
    assert alive_when_written == [0]


# --- sub-shards: a shard split so that each sorted set stays a listpack ----------------


async def _every_member(client: Any, keys: Keys) -> list[str]:
    """Every member of every sub-shard (a customer twice would show twice)."""
    from streams.tiers import layouts, sub_key

    spans = await layouts(client, keys)
    found: list[str] = []
    for tag in tier_tags():
        for j in range(max(spans[tag])):
            found += [m.decode() for m in await client.zrange(sub_key(keys, tag, j), 0, -1)]
    return found


async def bands_count_exactly(client: Any, keys: Keys, values: dict[str, Decimal]) -> None:
    """The shards' counts (customers, and below each band) and band sets are what ``values`` say."""
    from streams.tiers import read_bands

    bands = await read_bands(client, keys)
    if bands is None:
        return
    assert bands.n == len(values)
    members: dict[str, float] = {}
    for tag in tier_tags():
        for m, score in await client.zrange(keys.tier_shard(tag, "band"), 0, -1, withscores=True):
            members[m.decode()] = score
    expected: dict[str, float] = {}
    for b, (lo, hi) in enumerate(bands.bounds):
        assert bands.below[b] == sum(1 for v in values.values() if float(v) < float(lo))
        inside = {c: float(v) for c, v in values.items() if float(lo) <= float(v) <= float(hi)}
        assert bands.inside[b] == len(inside)
        expected.update(inside)
    assert members == expected


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cents_=st.lists(st.integers(min_value=-(10**6), max_value=10**9), min_size=1, max_size=400),
    rng=st.randoms(),
    margin=st.sampled_from([0.0, 0.5, 6.0]),
)
async def test_sub_sharded_tiers_grown_midway_equal_a_sort_of_every_value(  # type: ignore[no-untyped-def]
    redis_url: str, monkeypatch: pytest.MonkeyPatch, cents_: list[int], rng, margin: float
) -> None:
    """With shards split into sub-shards (a few customers each) and grown while values change,
    and cut points searched from a small sample (brackets that often miss, with a margin of 0
    or 0.5: the answer must still be exact), everything reads as one sorted list of every
    contribution: count, the value at every rank, cut points, tier counts, the top, each
    customer's value, and every customer in exactly one sub-shard."""
    import streams.tiers as tiers

    monkeypatch.setattr(tiers, "SUB_TARGET", 1)
    monkeypatch.setattr(tiers, "SAMPLE", 8)
    monkeypatch.setattr(tiers, "MARGIN", margin)
    monkeypatch.setattr(tiers, "BAND_SHARE", 0.01)
    monkeypatch.setattr(tiers, "BAND_LEAST", 2)
    monkeypatch.setattr(tiers, "TOP_KEPT", 7)
    pool = cents_[:3] or [0]
    draw = lambda i, c: Decimal(rng.choice(pool) if rng.random() < 0.3 else c).scaleb(-2)  # noqa: E731
    values = {f"S{i}": draw(i, c) for i, c in enumerate(cents_)}
    keys = Keys(f"sp{next(_examples)}")
    client = connect(redis_url)
    try:
        half = dict(list(values.items())[: len(values) // 2])
        await write_contributions(client, keys, half)
        await tiers.fit_layout(client, keys)
        # a growth begun and not finished: writers and readers meet a shard in the middle
        await client.eval(
            tiers._GROW, 2, keys.tier_shard(tier_tags()[0]), keys.tier_shard(tier_tags()[0], "layout"), 64
        )
        for cid in list(half)[::3]:
            values[cid] = draw(0, rng.choice(cents_))
        await write_contributions(client, keys, values)
        assert await customer_count(client, keys) == len(values)
        assert await contributions(client, keys, values) == values
        await tiers.fit_layout(client, keys)
        members = await _every_member(client, keys)
        assert sorted(members) == sorted(values)
        assert (await tiers.layouts(client, keys))[tier_tags()[0]] == (64, 0)
        assert await contributions(client, keys, values) == values
        assert await all_contributions(client, keys) == values
        await reads_as_one_sorted_list(client, keys, values, rng)
        await bands_count_exactly(client, keys, values)
        # the bands kept by the writes: changed and new customers, then everything again
        for cid in rng.sample(sorted(values), len(values) // 3):
            values[cid] = draw(0, rng.choice(cents_))
        values.update({f"T{i}": draw(0, c) for i, c in enumerate(cents_[: len(cents_) // 4])})
        await write_contributions(client, keys, values)
        await bands_count_exactly(client, keys, values)
        await reads_as_one_sorted_list(client, keys, values, rng)
        await bands_count_exactly(client, keys, values)
    finally:
        await client.delete(*await tiers.tier_keys(client, keys), keys.tier_cuts)
        await client.aclose()


def test_a_customers_sub_shard_keeps_its_place_or_moves_up_by_the_old_count_when_a_shard_grows() -> None:
    """``position`` (the scripts' twin): sub-shards are filled evenly, and doubling them moves a
    customer from j to j + subs or not at all, so growth moves about half of a shard."""
    from streams.tiers import position

    ids = [f"c{i:09d}" for i in range(20_000)]
    for subs in (2, 8, 64):
        at = [position(cid, subs) for cid in ids]
        counts = [at.count(j) for j in range(subs)]
        assert max(counts) < 1.25 * len(ids) / subs and min(counts) > 0.75 * len(ids) / subs
        grown = [position(cid, 2 * subs) for cid in ids]
        assert all(g in (a, a + subs) for a, g in zip(at, grown, strict=True))
        assert 0.4 < sum(g != a for a, g in zip(at, grown, strict=True)) / len(ids) < 0.6


async def test_the_scripts_place_customers_where_position_says(redis_url: str) -> None:
    from streams.storage.keys import tier_tag
    from streams.tiers import fit_layout, position, sub_key, tier_keys

    keys = Keys("subpos")
    client = connect(redis_url)
    values = {f"P{i}": Decimal(i).scaleb(-2) for i in range(3_000)}
    try:
        await fit_layout(client, keys, len(values))
        await write_contributions(client, keys, values)
        assert await client.hget(keys.tier_shard(tier_tags()[0], "layout"), "subs") == b"2"
        for cid in list(values)[:200]:
            assert await client.zscore(sub_key(keys, tier_tag(cid), position(cid, 2)), cid) is not None
    finally:
        await client.delete(*await tier_keys(client, keys))
        await client.aclose()


async def test_every_tier_sorted_set_stays_a_listpack_as_the_customers_grow(redis_url: str) -> None:
    """The refresh grows the shards with the customers, so no sorted set passes the 128 entries
    Redis keeps as a listpack, and the tier index costs about a listpack entry a customer (a
    skiplist costs ~90 B: docs/scale.md, "Tiers")."""
    from streams.tiers import fit_layout, tier_keys

    keys = Keys("sublp")
    client = connect(redis_url)
    try:
        for size in (1_000, 6_000, 20_000):
            values = {f"c{i:09d}": Decimal(i * 7919 % 100_003 - 500).scaleb(-2) for i in range(size)}
            await write_contributions(client, keys, values)
            await fit_layout(client, keys)
            names = [n for n in await tier_keys(client, keys) if not n.endswith((":value", ":layout"))]
            encodings = {(await client.object("encoding", n)) for n in names if await client.exists(n)}
            assert encodings == {b"listpack"}, (size, encodings)
            used = sum([int(await client.memory_usage(n, samples=0) or 0) for n in await tier_keys(client, keys)])
            assert used / size < 40, (size, used / size)
        assert await customer_count(client, keys) == 20_000
    finally:
        await client.delete(*await tier_keys(client, keys), keys.tier_cuts)
        await client.aclose()


async def test_sub_sharded_tiers_on_a_redis_cluster(cluster_url: str) -> None:
    """The scripts touch a shard's sub-shards and layout in the slot of its tag: on a cluster
    they run where the shard lives, and read and grow as on one Redis."""
    from streams.tiers import fit_layout, tier_keys

    keys = Keys("subcl")
    client = connect(cluster_url, cluster=True)
    values = {f"c{i:09d}": Decimal(i * 31 % 9_973 - 100).scaleb(-1) for i in range(5_000)}
    try:
        await write_contributions(client, keys, dict(list(values.items())[:1_000]))
        await write_contributions(client, keys, values)
        await fit_layout(client, keys)
        assert await customer_count(client, keys) == len(values)
        assert await contributions(client, keys, list(values)[:300]) == {c: values[c] for c in list(values)[:300]}
        assert await recompute_cuts(client, keys, 1) == quartile_cuts(values.values())
        assert len(await tier_keys(client, keys)) > 3 * len(tier_tags())
    finally:
        async with client.pipeline(transaction=False) as pipe:
            for name in await tier_keys(client, keys):
                pipe.delete(name)
            await pipe.execute()
        await client.aclose()


async def test_a_refresh_whose_ranks_stay_in_their_bands_visits_no_sub_shard(redis_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Once the bands are set, the cut points, the tier counts, the count and the top come from
    the 32 layout hashes and bands: not one script walks the sub-shards (each such walk is a
    scan of the whole index: docs/scale.md, "Tier sub-shards")."""
    import streams.tiers as tiers

    keys = Keys("bandquiet")
    client = connect(redis_url)
    values = {f"c{i:09d}": Decimal(i * 7919 % 100_003 - 500).scaleb(-2) for i in range(20_000)}
    walks: list[str] = []
    real = tiers._run

    def spy(pipe: Any, script: str, keys_: Any, tag: str, *args: Any) -> Any:
        if script in (tiers._COUNT, tiers._RANGE, tiers._TOP, tiers._RECENTER):
            walks.append(script[-40:])
        return real(pipe, script, keys_, tag, *args)

    from streams import telemetry

    try:
        await write_contributions(client, keys, values)
        await tiers.fit_layout(client, keys)
        set_before = telemetry.TIER_BANDS_SET._value.get()
        cuts = await recompute_cuts(client, keys, 1)  # sets the bands
        assert cuts == quartile_cuts(values.values())
        assert telemetry.TIER_BANDS_SET._value.get() == set_before + 1  # (operators see each walk)
        monkeypatch.setattr(tiers, "_run", spy)
        for cid in list(values)[::97]:  # a few changes, as a refresh between two others writes
            values[cid] += Decimal("0.01")
        await write_contributions(client, keys, values)
        cuts = await recompute_cuts(client, keys, 2)
        assert cuts == quartile_cuts(values.values())
        result = await distribution(client, keys, top=10)
        assert result["customers"] == len(values)
        assert walks == []
        assert telemetry.TIER_BANDS_SET._value.get() == set_before + 1
    finally:
        await client.delete(*await tiers.tier_keys(client, keys), keys.tier_cuts)
        await client.aclose()


async def test_a_refresh_that_finds_the_bands_being_set_keeps_the_cut_points_it_had(redis_url: str) -> None:
    """Two workers refresh the same shared tiers: while one sets the bands anew (its lock), the
    other does not walk the sub-shards too nor write cut points from half-set bands; it keeps
    the cut points of the last refresh until its next one."""
    import streams.tiers as tiers

    keys = Keys("bandbusy")
    client = connect(redis_url)
    values = {f"B{i}": Decimal(i).scaleb(-2) for i in range(500)}
    try:
        await write_contributions(client, keys, values)
        before = await recompute_cuts(client, keys, 1)
        assert before == quartile_cuts(values.values())
        low = {f"B{i}": Decimal(-10_000 - i) for i in range(200, 500)}  # below every band: Q1 leaves its band
        await write_contributions(client, keys, low)
        await client.set(f"{keys.tiers}:recentering", "1")  # another process is setting them
        assert await recompute_cuts(client, keys, 2) == before
        await client.delete(f"{keys.tiers}:recentering")
        values.update(low)
        assert await recompute_cuts(client, keys, 3) == quartile_cuts(values.values())
    finally:
        await client.delete(*await tiers.tier_keys(client, keys), keys.tier_cuts)
        await client.aclose()


async def test_the_scripts_hash_an_id_as_python_does(redis_url: str) -> None:
    """Writers pass each id's hash; a growing shard's moves hash the ids they find in Redis
    themselves: the two must agree, or a moved customer lands where no reader looks."""
    from streams.tiers import _HASH, id_hash

    client = connect(redis_url)
    ids = ["c000000001", "C1", "", "客户-42", "x" * 70, *(f"id{i}" for i in range(300))]
    try:
        script = _HASH + "local out = {} for i = 1, #ARGV do out[i] = tostring(id_hash(ARGV[i])) end return out"
        found = await client.eval(script, 0, *ids)
        assert [int(h) for h in found] == [id_hash(i) for i in ids]
    finally:
        await client.aclose()
