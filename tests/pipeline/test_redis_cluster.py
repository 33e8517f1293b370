"""Redis Cluster, for real: a one-node cluster (Valkey in cluster mode, all 16,384
slots) refuses, as a many-node one does, any command or script whose keys span
slots, and answers only through a cluster client. The store, the live tiers and a
whole worker run on it with ``FUNDFLOW_REDIS_CLUSTER=true`` and no other change."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

from rules.board import hist_bucket
from streams.board import MOVE_LUA, check, fold, fold_legacy, prune, read_board, shards, stored
from streams.clients import connect, ensure_topics
from streams.local.servers import Stack, free_port
from streams.settings import Settings, rates, state_config, thresholds
from streams.storage.keys import BOARD, Keys, board_shard
from streams.storage.store import CLUSTER_CALLS_IN_FLIGHT, RECENT_ALERTS_KEPT, StateStore, _bounded
from streams.tiers import TierBook, contributions, customer_count, distribution, rebuild
from streams.topics import all_topics
from tests.support import ROOT
from tests.support.batches import big_credit_step, processor, txn
from tests.support.board import ZONE as BOARD_ZONE
from tests.support.board import processor as board_processor
from tests.support.board import reference as board_reference
from tests.support.board import txn as board_txn
from tests.support.fakes import Sink
from tests.support.processes import env, produce, stop

CUSTOMERS = [f"cl{i:02d}" for i in range(40)]  # spread over many hash slots


@pytest.fixture
async def cluster_store(cluster_url: str) -> AsyncIterator[StateStore]:
    plain = redis.Redis.from_url(cluster_url)
    plain.flushdb()
    plain.close()
    client = connect(cluster_url, cluster=True)
    try:
        yield StateStore(client, Keys("cl"))
    finally:
        await client.aclose()


def records() -> list:  # type: ignore[type-arg]
    return [txn(i, customer, "credit", f"{100_000 * (i + 1)}.00") for i, customer in enumerate(CUSTOMERS)] + [
        txn(100 + i, customer, "debit", "30.00", day=2) for i, customer in enumerate(CUSTOMERS)
    ]


async def test_a_batch_of_many_slots_commits_publishes_and_reads_back(cluster_store: StateStore) -> None:
    assert cluster_store.cluster  # a cluster client makes the store group its commit calls by slot
    assert len({key_slot(cluster_store.keys.state(c).encode()) for c in CUSTOMERS}) == len(CUSTOMERS)
    sink = Sink()
    report = await processor(cluster_store, sink, big_credit_step()).process(records())
    assert (report.applied, report.dead_letters) == (2 * len(CUSTOMERS), {})
    assert len(sink.sent) == len(CUSTOMERS)  # every credit >= 100 is a finding, each published once
    for i, customer in enumerate(CUSTOMERS):
        state = await cluster_store.read(customer)
        assert state is not None and state.balance == Decimal(100_000 * (i + 1)) - Decimal("30.00")
        assert await cluster_store.redis.llen(cluster_store.keys.outbox(customer)) == 0  # confirmed
    scanned = [s.customer_id async for s in cluster_store.scan_states()]
    assert sorted(scanned) == CUSTOMERS
    # the same batch again changes nothing (exactly-once on the cluster too)
    again = await processor(cluster_store, Sink(), big_credit_step()).process(records())
    assert (again.applied, again.duplicates) == (0, 2 * len(CUSTOMERS))


async def test_a_batch_on_the_cluster_leaves_no_pipeline_for_the_collector(cluster_store: StateStore) -> None:
    """A worker freezes what each batch leaves (streams.health), so garbage only the collector
    can free is kept until the next rebalance. redis-py's cluster pipeline and its strategy
    held each other: every commit left one such cycle (~70 a second a worker under load).
    Fails without ``patches.cluster_pipelines_free_by_refcount``."""
    import gc

    await processor(cluster_store, Sink(), big_credit_step()).process(records()[:4])  # (connected, scripts loaded)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        report = await processor(cluster_store, Sink(), big_credit_step()).process(records())
        gc.collect()
        kept = Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert report.applied == 2 * len(CUSTOMERS) - 4
    assert kept["ClusterPipeline"] == kept["PipelineStrategy"] == 0, kept.most_common(8)


BRACED = ["}x", "}", "{", "{}", "a}b{c", "{y}", "客户}1"]  # issue 20 row 7b: "}x" made an empty hash tag


async def test_ids_with_braces_keep_one_slot_per_customer_on_the_cluster(cluster_store: StateStore) -> None:
    keys = cluster_store.keys
    for customer in BRACED:
        slots = {key_slot(k.encode()) for k in (keys.state(customer), keys.outbox(customer), keys.alerts(customer))}
        assert len(slots) == 1, customer
        assert keys.customer_of_state_key(keys.state(customer)) == customer
    assert keys.state("cl07") == "cl:{cl07}:state"  # ordinary ids: the keys of every earlier version
    batch = [txn(i, customer, "credit", "250.00") for i, customer in enumerate(BRACED)]
    sink = Sink()
    report = await processor(cluster_store, sink, big_credit_step()).process(batch)
    assert (report.applied, report.dead_letters) == (len(BRACED), {})
    assert sorted(key for _, key, _ in sink.sent) == sorted(c.encode() for c in BRACED)  # alerts keyed right
    for customer in BRACED:
        state = await cluster_store.read(customer)
        assert state is not None and state.customer_id == customer and state.balance == Decimal("250.00")
        assert len(await cluster_store.recent_findings(customer)) == 1
        assert await cluster_store.redis.llen(keys.outbox(customer)) == 0
    assert sorted([s.customer_id async for s in cluster_store.scan_states()]) == sorted(BRACED)


async def test_without_grouping_by_slot_the_cluster_refuses_the_commit(cluster_store: StateStore) -> None:
    """What the grouping is for: one script call with customers of several slots (what a
    single Redis gets) is refused, and nothing is written."""
    ungrouped = StateStore(cluster_store.redis, cluster_store.keys)
    ungrouped._groups = lambda commits: [commits]  # type: ignore[method-assign]
    with pytest.raises((RedisClusterException, ResponseError), match="slot"):
        await processor(ungrouped, Sink(), big_credit_step()).process(records())
    assert [s async for s in cluster_store.scan_states()] == []


async def test_live_tiers_on_the_cluster(cluster_store: StateStore) -> None:
    await processor(cluster_store, Sink(), big_credit_step()).process(records())
    settings = Settings(kafka_bootstrap="unused:9092", redis_url="unused")
    book = TierBook(
        cluster_store.redis, cluster_store.keys, state_config(settings), thresholds(settings), rates(settings)
    )
    states = [s async for s in cluster_store.scan_states()]
    assert await rebuild(cluster_store.redis, cluster_store.keys, states, book) == len(CUSTOMERS)
    result = await distribution(cluster_store.redis, cluster_store.keys, top=3)
    assert result["customers"] == len(CUSTOMERS) and sum(result["counts"].values()) == len(CUSTOMERS)
    assert [row["customer_id"] for row in result["top"]] == ["cl39", "cl38", "cl37"]
    assert result["counts"] == {"I": 10, "II": 10, "III": 10, "IV": 10}
    assert result["top"][0]["tier"] == "I"


ZONE = ZoneInfo("Asia/Shanghai")


def cli(stack: Stack, tmp: Path, cluster_url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        env=env(
            stack, tmp, FUNDFLOW_REDIS_URL=cluster_url, FUNDFLOW_REDIS_CLUSTER="true", FUNDFLOW_KEY_PREFIX="cl-e2e"
        ),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.connected
@pytest.mark.slow
async def test_a_worker_runs_unchanged_on_redis_cluster(stack: Stack, cluster_url: str, tmp_path: Path) -> None:
    """``fundflow worker`` with FUNDFLOW_REDIS_CLUSTER=true keeps every customer's state on
    the cluster; ``fundflow customer show`` and ``fundflow tiers`` read it there."""
    settings = Settings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=cluster_url, var_dir=tmp_path)
    await ensure_topics(stack.kafka_bootstrap, all_topics(settings.partitions), settings)
    # a day no other test's events carry: this worker reads the whole shared topic, and the
    # 看板 shows the latest day unless asked for one
    start = dt.datetime(2023, 2, 14, 9, 0, tzinfo=ZONE)
    events: list[dict[str, object]] = [
        {"txn_id": f"{c}-e2e-1", "customer_id": c, "account_id": f"A-{c}", "ts": start.isoformat(),
         "direction": "credit", "amount": f"{1000 + i}.00"}
        for i, c in enumerate(CUSTOMERS)
    ]  # fmt: skip
    extra = {"FUNDFLOW_REDIS_URL": cluster_url, "FUNDFLOW_REDIS_CLUSTER": "true", "FUNDFLOW_KEY_PREFIX": "cl-e2e"}
    web = free_port()
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "worker", "--web-port", str(web)],
            env=env(stack, tmp_path, FUNDFLOW_APP_ID="cluster-e2e", FUNDFLOW_TIER_REFRESH_SECONDS="1", **extra),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await produce(stack.kafka_bootstrap, events)
        deadline = time.monotonic() + 90
        store = StateStore(connect(cluster_url, cluster=True), Keys("cl-e2e"))
        try:
            balances: dict[str, str] = {}
            while time.monotonic() < deadline and len(balances) < len(CUSTOMERS):
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
                for c in CUSTOMERS:
                    if c not in balances and (state := await store.read(c)) is not None:
                        balances[c] = f"{state.balance:.2f}"
                await asyncio.sleep(0.5)
        finally:
            await store.redis.aclose()
        assert balances == {c: f"{1000 + i}.00" for i, c in enumerate(CUSTOMERS)}
        for i in (0, len(CUSTOMERS) // 2, len(CUSTOMERS) - 1):  # the CLI reads them on the cluster
            shown = cli(stack, tmp_path, cluster_url, "customer", "show", CUSTOMERS[i], "--json")
            assert shown.returncode == 0, shown.stderr.decode()
            assert orjson.loads(shown.stdout)["balance"] == f"{1000 + i}.00"
        # the worker's tier refresh puts every customer in the tier index (the stack's broker
        # also carries other tests' customers: this worker reads the topic from the start)
        client, keys = connect(cluster_url, cluster=True), Keys("cl-e2e")
        try:
            ranked: list[Decimal | None] = [None]
            while time.monotonic() < deadline and None in ranked:
                ranked = list((await contributions(client, keys, CUSTOMERS)).values())
                await asyncio.sleep(0.5)
            assert None not in ranked, dict(zip(CUSTOMERS, ranked, strict=True))
            indexed = await customer_count(client, keys)
        finally:
            await client.aclose()
        # the worker's fold timer carries its slots' 看板 cells into the bank-wide keys
        inflow, board_shown = f"{sum(1000 + i for i in range(len(CUSTOMERS)))}.00", None
        while time.monotonic() < deadline + 30:
            shown = cli(stack, tmp_path, cluster_url, "board", "--day", start.date().isoformat())
            assert shown.returncode == 0, shown.stderr.decode()
            board_shown = orjson.loads(shown.stdout)
            if board_shown["flows"]["total"]["inflow"] == inflow:
                break
            await asyncio.sleep(1)
        assert board_shown is not None and board_shown["flows"]["total"]["inflow"] == inflow, board_shown
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=10) as page:
            metrics = page.read().decode()
        folded = re.search(r"^fundflow_board_fold_last_success_timestamp_seconds (\S+)$", metrics, re.M)
        assert folded is not None and float(folded.group(1)) > time.time() - 60, metrics[-500:]
        tiers = cli(stack, tmp_path, cluster_url, "tiers", "--json")
        assert tiers.returncode == 0, tiers.stderr.decode()
        assert orjson.loads(tiers.stdout)["customers"] >= indexed >= len(CUSTOMERS)
        log_text = (tmp_path / "worker.log").read_text()
        assert "CROSSSLOT" not in log_text and "same slot" not in log_text, log_text[-2000:]
    finally:
        stop(worker)


async def test_cluster_calls_are_bounded_in_flight_and_keep_their_order() -> None:
    """One call per slot group could be hundreds per batch: at most CLUSTER_CALLS_IN_FLIGHT
    hold a connection at once; results come back in call order; a failure is raised."""
    in_flight = peak = 0

    async def call(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001 * (i % 3))
        in_flight -= 1
        if i == -1:
            raise ResponseError("boom")
        return i

    assert await _bounded(call(i) for i in range(500)) == list(range(500))
    assert peak == CLUSTER_CALLS_IN_FLIGHT
    with pytest.raises(ResponseError, match="boom"):
        await _bounded(call(i) for i in [1, -1, 2])


async def test_the_board_is_sharded_by_slot_and_read_whole_on_the_cluster(cluster_store: StateStore) -> None:
    """Each commit call counts its customers in its own slot's 看板 shard (a script may only
    touch keys of one slot); the fold carries every shard's cells, exactly once, into the
    bank-wide keys one Redis would hold, and readers read those."""
    batch = [
        board_txn(i, customer, "credit", "100.00", f"2024-03-01T{i % 24:02d}:00:00+08:00")
        for i, customer in enumerate(CUSTOMERS)
    ] + [
        board_txn(100 + i, customer, "debit", f"{i + 1}.00", "2024-03-02T09:00:00+08:00")
        for i, customer in enumerate(CUSTOMERS)
    ]
    redis_, keys = cluster_store.redis, cluster_store.keys
    await board_processor(cluster_store).process(batch)
    found = await shards(redis_, keys, cluster=True)
    assert len(found) > 1 and set(cluster_store.dirty) == set(found)
    assert (await read_board(redis_, keys, BOARD_ZONE, cluster=True))["day"] is None  # as of the last fold: none
    # a fold that stopped after moving some shards' cells, then two folds at once: each once
    move = await redis_.script_load(MOVE_LUA)
    for shard in found[:5]:
        await redis_.evalsha(move, 3, *(keys.board(shard, n) for n in ("pending", "moving", "trim")), "")
    added = await asyncio.gather(fold(redis_, keys, found), fold(redis_, keys, found))
    assert sum(added) == len(found)
    assert await fold(redis_, keys, found) == 0
    assert await stored(redis_, keys, cluster=True) == board_reference(batch)
    assert not await redis_.exists(*(keys.board(shard, "pending") for shard in found))
    assert await check(cluster_store, BOARD_ZONE, RECENT_ALERTS_KEPT, cluster=True) == []
    board = await read_board(cluster_store.redis, cluster_store.keys, BOARD_ZONE, cluster=True, top=3)
    assert board["flows"]["total"]["outflow"] == f"{sum(range(1, len(CUSTOMERS) + 1))}.00"
    assert [row["customer_id"] for row in board["top_net_outflow"]] == ["cl39", "cl38", "cl37"]
    # pruning deletes by name in every registered shard (no scan of the keyspace)
    assert await prune(cluster_store.redis, cluster_store.keys, BOARD_ZONE, keep_days=0, cluster=True) > 0
    left = await stored(cluster_store.redis, cluster_store.keys, cluster=True)
    assert sorted(left.flows) == ["2024-03-02"] and sorted(left.net) == ["2024-03-02"]


async def test_an_earlier_versions_per_slot_board_is_folded_in_once(cluster_store: StateStore) -> None:
    """A cluster an earlier version wrote (a flow hash per slot and day, a 归集率 hash per slot,
    no ``legacy`` mark): the first fold after the upgrade adds them to the bank-wide keys once,
    beside what the new commits left pending, and a second pass adds nothing."""
    redis_, keys = cluster_store.redis, cluster_store.keys
    batch = [
        board_txn(i, customer, "credit", "100.00", "2024-03-02T09:00:00+08:00")
        for i, customer in enumerate(CUSTOMERS[:5])
    ]
    await board_processor(cluster_store).process(batch)
    found = await shards(redis_, keys, cluster=True)
    old = [board_shard(slot) for slot in (1, 2)]  # slots no new commit wrote: an earlier version's
    assert not set(old) & set(found)
    await redis_.sadd(keys.board_shards, *old)
    for shard in old:
        await redis_.set(keys.board(shard, "latest"), 1)
        await redis_.hincrby(keys.board(shard, "flow:2024-03-01"), "09|in|salary|int", 700)
        await redis_.hincrby(keys.board(shard, "collection"), "3", 2)
    assert await fold_legacy(redis_, keys, BOARD_ZONE, keep_days=400) == 2
    assert await fold_legacy(redis_, keys, BOARD_ZONE, keep_days=400) == 0
    await fold(redis_, keys, await shards(redis_, keys, cluster=True))
    board = await stored(redis_, keys, cluster=True)
    assert board.flows["2024-03-01"] == {"09|in|salary|int": 1400}
    assert board.collection["3"] == 4 + board_reference(batch).collection.get("3", 0)
    assert not await redis_.exists(keys.board(old[0], "flow:2024-03-01"), keys.board(old[0], "collection"))


async def test_the_commit_scripts_histogram_buckets_are_pythons(cluster_store: StateStore) -> None:
    """The commit script's bucket of a net outflow (``COMMIT_LUA``'s ``octant``) is
    ``rules.board.hist_bucket``'s, from a cent to beyond 10^13 cents, rungs and octave edges
    included: the floors the cut takes from the histogram rely on it."""
    amounts = [1, 2, 3, 118, 119, 141, 142, 168, 169, 1023, 1024, 1025, 99_999, 2**33, 2**33 - 1, 10**13 + 7]
    amounts += [
        int(2**k * r) + d for k in range(1, 44, 5) for r in (1.189207115002721, 1.4142135623730951) for d in (0, 1)
    ]
    batch = [
        board_txn(i, f"h{i:03d}", "debit", f"{cents // 100}.{cents % 100:02d}", "2024-03-02T09:00:00+08:00")
        for i, cents in enumerate(amounts)
    ]
    await board_processor(cluster_store).process(batch)
    redis_, keys = cluster_store.redis, cluster_store.keys
    await fold(redis_, keys, await shards(redis_, keys, cluster=True))
    raw = await redis_.hgetall(keys.board(BOARD, "hist:2024-03-02"))
    assert {int(b): int(n) for b, n in raw.items() if int(n)} == Counter(hist_bucket(c) for c in amounts)
