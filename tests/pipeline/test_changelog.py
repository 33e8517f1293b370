"""The changelog (``streams.storage.changelog``) on a real Redis: a worker that writes a customer's
full state only every Nth commit, appending the records in between, must leave exactly
what a worker that writes the full state on every commit leaves (states, findings, the
看板) however often its cache is lost, its process replaced, its rules reloaded, or its
customers folded along the way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from rules.state import CustomerState
from streams import telemetry
from streams.batcher import Batcher, drain
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.errors import ConfigError, TransientError
from streams.pipeline import FOLD_CHUNK, BatchProcessor, Prepared
from streams.rulestep import build_step, last_good_rules, reader_store
from streams.settings import Settings
from streams.storage.changelog import decode_entry, encode_entry
from streams.storage.codec import decode_state, encode_state
from streams.storage.keys import Keys
from streams.storage.store import StateStore
from streams.tools.berka import berka_lines
from streams.tools.replay import route
from streams.worker import fallback_rules, run_worker
from tests.support.fakes import Sink

BATCH = 250
COUNTERS = {  # what an operator sees of the changelog (docs/metrics.md)
    "log": telemetry.CHANGELOG_COMMITS.labels("log"),
    "state": telemetry.CHANGELOG_COMMITS.labels("state"),
    "replayed": telemetry.CHANGELOG_REPLAYED,
    "folded": telemetry.CHANGELOG_FOLDED,
}
NOW_MS = 1_711_000_000_000  # (2024-03-21: record timestamps after the events' times)
EVENTS = 5_000


@pytest.fixture(scope="module")
def records() -> list[RawRecord]:
    """The first Berka events, as two partitions deliver them (each customer on one)."""
    out = []
    offsets = [0, 0]
    for line in berka_lines(None, Settings().zone)[:EVENTS]:
        topic, key, _ = route(line)
        partition = (key or b"")[-1:] == b"7"
        out.append(RawRecord(topic, int(partition), offsets[partition], key, line, 1_700_000_000_000))
        offsets[partition] += 1
    return out


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


def settings(prefix: str, rules: Path | None = None) -> Settings:
    return Settings(key_prefix=prefix, **({"rules_file": rules} if rules else {}))


def processor(client: aioredis.Redis, config: Settings, sink: Sink, snapshot_every: int) -> BatchProcessor:
    store = StateStore(client, Keys(config.key_prefix))
    return BatchProcessor(
        store, build_step(config), sink, zone=config.zone, snapshot_every=snapshot_every, retry_initial=0.001
    )


def batches(records: list[RawRecord]) -> list[list[RawRecord]]:
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


async def states(store: StateStore, customers: set[str]) -> dict[str, bytes]:
    found = {}
    for cid in sorted(customers):
        state = await store.read(cid)
        assert state is not None, cid
        found[cid] = encode_state(state)
    return found


async def board(client: aioredis.Redis, prefix: str) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    async for key in client.scan_iter(match=f"{prefix}:{{board}}:board:*"):
        name = key.decode().split(":board:", 1)[1]
        kind = await client.type(key)
        if kind == b"hash":
            cells[name] = {k: int(v) for k, v in (await client.hgetall(key)).items() if int(v)}
        elif kind == b"zset":
            cells[name] = {k: int(v) for k, v in await client.zrange(key, 0, -1, withscores=True) if int(v)}
        else:
            cells[name] = await client.get(key)
    return cells


async def logged(client: aioredis.Redis, prefix: str) -> int:
    return len([key async for key in client.scan_iter(match=f"{prefix}:{{*}}:log")])


async def test_changelog_leaves_what_full_writes_leave(client: aioredis.Redis, records: list[RawRecord]) -> None:
    customers = {r.key.decode() for r in records if r.key}
    full_sink, log_sink = Sink(), Sink()
    full = processor(client, settings("full"), full_sink, 1)
    for batch in batches(records):
        await full.process(batch)
    assert await logged(client, "full") == 0

    config = settings("log")
    worker = processor(client, config, log_sink, 4)
    counted = {name: counter._value.get() for name, counter in COUNTERS.items()}
    most_logged = 0
    for i, batch in enumerate(batches(records)):
        await worker.process(batch)
        most_logged = max(most_logged, await logged(client, "log"))
        if i % 5 == 2:  # a rebalance: the cache is dropped, every state comes back from Redis
            worker.forget_all()
        if i % 7 == 5:  # a new process: nothing cached, and rules it knows only from Redis
            worker = processor(client, config, log_sink, 4)
        if i == 11:  # quiet customers: their logs are folded into states
            assert await worker.fold(quiet_seconds=0) > 0
            assert await logged(client, "log") < most_logged
    assert most_logged > len(customers) // 4  # the logs were there to be replayed
    moved = {name: counter._value.get() - counted[name] for name, counter in COUNTERS.items()}
    assert moved["log"] > moved["state"] > 0 and moved["replayed"] > 0 and moved["folded"] > 0

    assert log_sink.sent == full_sink.sent  # the same findings, ids and contents, in order
    assert await board(client, "log") == await board(client, "full")
    expected = await states(full.store, customers)
    assert await states(worker.store, customers) == expected  # replayed with the worker's rules
    readers = reader_store(client, config)  # another process: the rules from Redis
    assert await states(readers, customers) == expected
    assert [s async for s in readers.scan_states()] and len([s async for s in readers.scan_states()]) == len(customers)


async def test_entries_replay_under_the_rules_they_ran_under(
    client: aioredis.Redis, records: list[RawRecord], tmp_path: Path
) -> None:
    """Rules reloaded between a commit and its replay: the entry is replayed under the rules
    it ran under (stored in Redis by fingerprint), not the new ones. The new rules never
    fire collection alerts, so replaying the old entries under them loses the cool-downs
    the alerts left in the customers' states."""
    text = Path("deploy/rules.yaml").read_text()
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(text.replace("min_amount: 5000 ", "min_amount: 500 "))
    after.write_text(text.replace("min_amount: 5000 ", "min_amount: 50000000 "))
    half = len(records) // 2
    customers = {r.key.decode() for r in records if r.key}
    results = {}
    for name, every in (("full", 1), ("log", 8)):
        sink = Sink()
        worker = processor(client, settings(name, before), sink, every)
        for batch in batches(records[:half]):
            await worker.process(batch)
        if every > 1:
            assert await logged(client, name) > 0
        worker = processor(client, settings(name, after), sink, every)  # a restart with new rules
        for batch in batches(records[half:]):
            await worker.process(batch)
        results[name] = (sink.sent, await states(worker.store, customers))
    assert any(b'"collection' in value for _, _, value in results["full"][0])  # the old rules fired
    assert results["log"] == results["full"]


def test_an_entry_keeps_its_records_byte_for_byte() -> None:
    records = [
        RawRecord("transactions", 3, 17, b"c 1", b'{"a": "\\n \xe4\xb8\xad"}\n', 1_700_000_000_123),
        RawRecord("loans", 0, 0, None, b"", None),
    ]
    entry = decode_entry(b"3\n" + encode_entry("abc", records))
    assert entry.rules == "abc" and entry.records == records
    with pytest.raises(ValueError, match="cannot be read"):
        decode_entry(b"3\n" + encode_entry("abc", records)[:-3] + b"")


async def test_a_customer_logged_by_a_worker_is_read_whole_by_the_api(
    client: aioredis.Redis, records: list[RawRecord]
) -> None:
    """What the API and ``fundflow snapshot`` read (a reader store, no rules file of their
    own) is the worker's state, not the state as last written whole."""
    config = settings("api")
    worker = processor(client, config, Sink(), 8)
    for batch in batches(records[:1500]):
        await worker.process(batch)
    cid = next(r.key.decode() for r in reversed(records[:1500]) if r.key)
    assert await client.llen(f"api:{{{cid}}}:log") > 0
    cached = worker.cached_state(cid)
    assert isinstance(cached, CustomerState)
    read = await reader_store(client, config).read(cid)
    assert read is not None and encode_state(read) == encode_state(cached)
    version, _ = await worker.store.stored(cid)
    assert worker.cache[cid][0] == version + await client.llen(f"api:{{{cid}}}:log")
    assert orjson.loads(encode_state(read))["c"] == cid


async def test_folds_beside_the_batches_in_flight_change_nothing(
    client: aioredis.Redis, records: list[RawRecord]
) -> None:
    """The worker's drain (two batches overlapping) with a fold after every step of the
    event loop: a fold never writes a customer a batch in flight holds (it fails when one
    does), so the outcome is that of full writes."""
    full_sink, log_sink = Sink(), Sink()
    full = processor(client, settings("full2"), full_sink, 1)
    for batch in batches(records):
        await full.process(batch)

    worker = processor(client, settings("fold2"), log_sink, 3)
    batcher: Batcher[RawRecord] = Batcher(BATCH)
    acked: list[RawRecord] = []
    folded = 0

    async def complete(prepared: Prepared) -> None:
        await worker.complete(prepared)

    async def folds() -> None:
        nonlocal folded
        while True:
            folded += await worker.fold(quiet_seconds=0, limit=7)
            await asyncio.sleep(0)

    drainer = asyncio.create_task(drain(batcher, worker.prepare, complete, acked.extend, 0.0))
    folder = asyncio.create_task(folds())
    try:
        for batch in batches(records):  # (one batch at a time: the same batches as the full run)
            while len(batcher) and not drainer.done():
                await asyncio.sleep(0.001)
            for record in batch:
                await batcher.put(record)

        async def all_acked() -> None:
            while len(acked) < len(records) and not drainer.done():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(all_acked(), 60)
        assert not drainer.done(), drainer.exception()
    finally:
        for task in (drainer, folder):
            task.cancel()
        await asyncio.gather(drainer, folder, return_exceptions=True)
    assert folded > 100
    customers = {r.key.decode() for r in records if r.key}
    assert sorted(log_sink.sent) == sorted(full_sink.sent)
    assert await board(client, "fold2") == await board(client, "full2")
    assert await states(worker.store, customers) == await states(full.store, customers)


async def test_a_fold_holds_back_only_the_customers_it_is_writing(
    client: aioredis.Redis, records: list[RawRecord]
) -> None:
    """Under load, hundreds of customers go quiet together. A batch that arrives while
    they are folded is prepared at once; only its customers the fold is writing wait, in
    ``complete``, for their write. It fails when the batch waits for the fold (folded in
    one go, all of them held every batch back for 40-220 ms at 80% load), and when a
    customer the fold is writing is stepped in ``prepare``. The outcome is that of full
    writes."""
    first, second = records[:3000], records[3000:3250]
    full = processor(client, settings("fullc"), Sink(), 1)
    for batch in [*batches(first), second]:
        await full.process(batch)

    worker = processor(client, settings("chunk"), Sink(), 8)
    for batch in batches(first):
        await worker.process(batch)
    logged = {key.decode().split("{", 1)[1].split("}", 1)[0] async for key in client.scan_iter(match="chunk:*:log")}
    assert len(logged) > 8 * FOLD_CHUNK
    fold = asyncio.create_task(worker.fold(quiet_seconds=0, limit=len(logged), chunk=len(logged)))
    await asyncio.sleep(0)  # (the fold chooses its customers, encodes them and waits for the write)
    assert not fold.done()
    prepared = await worker.prepare(second)  # (it decides what waits before its first await)
    held = {r.key.decode() for r in second if r.key} & logged
    assert held and held <= set(prepared.later)  # those wait for their write, in complete
    assert prepared.runs  # the others were stepped at once
    assert (await worker.complete(prepared)).conflicts == 0  # (stepped from what the fold wrote)
    assert await fold == len(logged)
    customers = {r.key.decode() for r in [*first, *second] if r.key}
    assert await states(worker.store, customers) == await states(full.store, customers)


async def small_cache(
    client: aioredis.Redis, records: list[RawRecord], prefix: str, cache_size: int = 40
) -> tuple[BatchProcessor, BatchProcessor]:
    """``records`` written whole by one processor (under ``full{prefix}``); and a processor
    that logs, with a cache of ``cache_size`` customers (under ``prefix``), not yet run."""
    full = processor(client, settings("full" + prefix), Sink(), 1)
    for batch in batches(records):
        await full.process(batch)
    config = settings(prefix)
    store = StateStore(client, Keys(prefix))
    worker = BatchProcessor(
        store, build_step(config), Sink(), zone=config.zone, snapshot_every=8, cache_size=cache_size
    )
    return full, worker


async def test_customers_the_cache_lets_go_are_folded_too(client: aioredis.Redis, records: list[RawRecord]) -> None:
    """At a bank a customer's next event comes hours later, so the cache lets most
    customers go before their log has been quiet long enough to fold. Queued for the fold,
    they leave no log behind (it fails when the cache drops them: their logs stayed in Redis
    until their next seven commits). The outcome is that of full writes."""
    full, worker = await small_cache(client, records, "evict")
    customers = {r.key.decode() for r in records if r.key}
    for batch in batches(records):
        await worker.process(batch)
    queued = sum(map(len, worker._orphans.values()))
    assert len(worker.cache) == 40 and queued > 100
    assert await logged(client, "evict") > 100
    while await worker.fold(quiet_seconds=0):
        pass
    assert await logged(client, "evict") == 0 and not worker._orphans
    assert await states(worker.store, customers) == await states(full.store, customers)


async def test_customers_past_the_folds_queue_keep_their_log_and_are_counted(
    client: aioredis.Redis, records: list[RawRecord]
) -> None:
    """When the cache lets customers go faster than the fold writes them, the queue stays
    bounded: those past it keep their log in Redis, counted (``fundflow_changelog_left_total``),
    and read whole from it."""
    full, worker = await small_cache(client, records, "reserve")
    worker._evicted_max = 10
    left = telemetry.CHANGELOG_LEFT._value.get()
    for batch in batches(records):
        await worker.process(batch)
    assert sum(map(len, worker._orphans.values())) == 10
    dropped = telemetry.CHANGELOG_LEFT._value.get() - left
    while await worker.fold(quiet_seconds=0):
        pass
    assert dropped > 0 and await logged(client, "reserve") > 0
    customers = {r.key.decode() for r in records if r.key}
    assert await states(worker.store, customers) == await states(full.store, customers)


async def test_an_idle_worker_folds_past_its_limit_until_a_batch_comes(
    client: aioredis.Redis, records: list[RawRecord]
) -> None:
    """While batches flow a fold run writes at most ``limit`` customers; after a catch-up,
    with no batch since the last run, up to ``idle_limit``: the hundreds of thousands of
    logs a catch-up left are gone in a minute, not ten."""
    worker = processor(client, settings("idle"), Sink(), 8)
    for batch in batches(records[:2000]):
        await worker.process(batch)
    held = len(worker._logged)
    assert held > 40
    assert await worker.fold(quiet_seconds=0, limit=5, idle_limit=10_000) == 5  # (a batch since the last run)
    assert await worker.fold(quiet_seconds=0, limit=5, idle_limit=10_000) == held - 5
    assert await logged(client, "idle") == 0


@pytest.mark.parametrize("surfaces_as", ["a Redis error", "a retried write"])
async def test_a_cancelled_fold_stops_however_the_client_answers_the_cancel(
    client: aioredis.Redis, records: list[RawRecord], surfaces_as: str
) -> None:
    """A fold logs a failed write and goes on; cancelled (the worker stops), it must stop,
    also when redis-py answers the cancelled round trip with a timeout error or retries it
    and returns. The drain-with-folds test hung in ~1 of 10 runs before: its fold task
    swallowed the cancel and folded for ever."""
    worker = processor(client, settings(f"cancelled{len(surfaces_as)}"), Sink(), 8)
    for batch in batches(records[:1000]):
        await worker.process(batch)
    writing = asyncio.Event()

    async def commit(commits: list[Any], tally: Any = None) -> set[str]:
        if writing.is_set():
            return set()  # (the next chunks: written at once)
        writing.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if surfaces_as == "a Redis error":
                raise TransientError("redis commit failed: Timeout reading from socket") from None
        return set()

    worker.store.commit = commit  # type: ignore[method-assign]
    fold = asyncio.create_task(worker.fold(quiet_seconds=0))
    await writing.wait()
    fold.cancel()
    await asyncio.wait({fold}, timeout=5)
    assert fold.cancelled()


async def test_positions_a_batch_of_duplicates_noted_reach_redis(client: aioredis.Redis) -> None:
    """A batch with nothing to commit (a redelivered record, here from a recreated topic:
    offset 0, a later timestamp) still moves the customer's partition position in the
    cache. A log entry of the next batch would not carry that move; the next commit
    writes the state whole, so Redis holds what the cache holds."""

    def txn(offset: int, stamp: int, txn_id: str, day: int) -> RawRecord:
        value = orjson.dumps(
            {
                "txn_id": txn_id,
                "customer_id": "pos",
                "account_id": "pos-a",
                "ts": f"2024-03-{day:02d}T09:00:00+08:00",
                "direction": "credit",
                "amount": "10.00",
            }
        )
        return RawRecord("fundflow.transactions.v1", 0, offset, b"pos", value, NOW_MS + stamp)

    config = settings("pos")
    worker = processor(client, config, Sink(), 8)
    await worker.process([txn(9, 1_000, "t0", 1)])
    await worker.process([txn(10, 1_000, "t1", 2)])  # (a log entry)
    assert await client.llen("pos:{pos}:log") == 1
    await worker.process([txn(0, 2_000, "t1", 2)])  # the same event again, from a new incarnation
    await worker.process([txn(5, 1_500, "t2", 3)])
    cached = worker.cached_state("pos")
    assert cached is not None and cached.offsets == {"fundflow.transactions.v1:0": [5, NOW_MS + 2_000]}
    read = await reader_store(client, config).read("pos")
    assert read is not None and encode_state(read) == encode_state(cached)


async def test_fold_all_leaves_what_an_earlier_version_can_read(
    client: aioredis.Redis, records: list[RawRecord]
) -> None:
    """``fundflow fold`` (``StateStore.fold_all``): afterwards every customer's state key
    alone holds its whole state, as a version that knows no changelog reads it; and a
    worker whose cache it made stale loses the version checks and redoes, exactly."""
    half = 2_000
    full_sink, log_sink = Sink(), Sink()
    full = processor(client, settings("foldfull"), full_sink, 1)
    for batch in batches(records):
        await full.process(batch)
    config = settings("foldall")
    worker = processor(client, config, log_sink, 8)
    for batch in batches(records[:half]):
        await worker.process(batch)
    customers = {r.key.decode() for r in records[:half] if r.key}
    before = await states(reader_store(client, config), customers)
    assert await logged(client, "foldall") > 0

    folded, left = await reader_store(client, config).fold_all(batch=50)
    assert folded > 0 and left == 0 and await logged(client, "foldall") == 0
    for cid in customers:
        _, blob = await worker.store.stored(cid)
        assert blob is not None and encode_state(decode_state(blob)) == before[cid], cid

    for batch in batches(records[half:]):
        await worker.process(batch)
    everyone = {r.key.decode() for r in records if r.key}
    assert log_sink.sent == full_sink.sent
    assert await states(worker.store, everyone) == await states(full.store, everyone)


async def test_a_dead_workers_changelogs_are_folded_by_the_new_owner(
    client: aioredis.Redis, records: list[RawRecord]
) -> None:
    """A worker dies with customers' logs in Redis: the worker that takes its partitions
    folds them once they stay quiet after the takeover, with no new event for them."""
    config = settings("orphan")
    dead = processor(client, config, Sink(), 1000)
    for batch in batches(records[:1500]):
        await dead.process(batch)
    left = await logged(client, "orphan")
    assert left > 0  # the logs it never folded
    customers = {r.key.decode() for r in records[:1500] if r.key}
    before = await states(reader_store(client, config), customers)

    now = [0.0]
    store = StateStore(client, Keys("orphan"))
    heir = BatchProcessor(
        store, build_step(config), Sink(), zone=config.zone, snapshot_every=1000, monotonic=lambda: now[0]
    )
    assert await heir.adopt(frozenset({0, 1})) == left
    assert await heir.fold(quiet_seconds=10) == 0  # not yet quiet since the takeover
    now[0] = 11.0
    assert await heir.fold(quiet_seconds=10, limit=10_000) == left
    assert await logged(client, "orphan") == 0
    assert await client.zcard("orphan:{board}:logged") == 0
    assert await states(reader_store(client, config), customers) == before


async def test_the_rules_in_force_are_kept_for_a_worker_whose_file_is_bad(
    client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("outflow:\n  streak_days: 9\n")
    config = settings("kept", rules)
    worker = processor(client, config, Sink(), 4)
    await worker.note_rules_in_force()
    fp, kept = await last_good_rules(worker.store) or ("", None)
    assert kept is not None and kept.outflow.streak_days == 9 and fp == worker.rulebook.refresh()

    rules.write_text("disabled: [fast_in_fast_out_typo]\n")
    with pytest.raises(ConfigError, match=r"unknown rule .*FUNDFLOW_RULES_FALLBACK=last-good"):
        run_worker(config, "127.0.0.1:1", redis_url, web_port=None, loglevel="warning")
    assert await fallback_rules(redis_url, config, "bad file") == kept
    with pytest.raises(ConfigError, match="no last good rules"):
        await fallback_rules(redis_url, settings("none-kept", rules), "bad file")
