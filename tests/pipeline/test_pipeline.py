"""BatchProcessor on a real Redis: exactly-once effects under redelivery, stale
owners, crashes between commit and publish, and Kafka publish failures."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import zlib
from collections.abc import AsyncIterator
from decimal import Decimal
from itertools import islice

import pytest
import zstandard
from redis.crc import key_slot

from rules.events import Event, TransactionEvent
from rules.state import CustomerState, Outcome, apply_loan, apply_transaction
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.pipeline import BatchProcessor, Step
from streams.settings import Settings
from streams.storage.codec import WRITE_DICTIONARY, ZSTD_MAGIC, decode_state, dictionaries, encode_state, encode_states
from streams.storage.keys import Keys
from streams.storage.store import COMMIT_CHUNK, Commit, StateStore
from streams.tools.berka import berka_lines
from streams.tools.statedict import sample_findings
from streams.topics import ALERTS, DLQ, TRANSACTIONS
from tests.support.batches import CONFIG, big_credit_step, processor, txn
from tests.support.fakes import Sink


def batch() -> list[RawRecord]:
    return [
        txn(1, "alice", "credit", "500.00"),
        txn(2, "bob", "credit", "50.00"),
        txn(3, "alice", "debit", "120.50", day=2),
        RawRecord(TRANSACTIONS, 0, 4, None, b"\xff not utf8", 0),
        txn(5, "bob", "credit", "300.00", day=3),
    ]


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[StateStore]:
    client = connect(redis_url)
    yield StateStore(client, Keys("fftest"))
    await client.aclose()


async def test_batch_applies_dead_letters_and_publishes(store: StateStore) -> None:
    sink = Sink()
    report = await processor(store, sink).process(batch())
    assert (report.applied, report.duplicates, report.dead_letters) == (4, 0, {"not_utf8": 1})
    alice = await store.read("alice")
    assert alice is not None and alice.balance == Decimal("379.50")
    topics = sorted(topic for topic, _, _ in sink.sent)
    assert topics == [ALERTS, ALERTS, DLQ]
    assert await store.redis.llen(store.keys.outbox("alice")) == 0  # confirmed after publishing


async def test_redelivered_batch_changes_nothing(store: StateStore) -> None:
    sink = Sink()
    await processor(store, sink).process(batch())
    before = {c: encode_state(await store.read(c)) for c in ("alice", "bob")}  # type: ignore[arg-type]
    again = Sink()
    report = await processor(store, again).process(batch())  # a fresh worker: no cache
    assert (report.applied, report.duplicates) == (0, 4)
    assert {c: encode_state(await store.read(c)) for c in ("alice", "bob")} == before  # type: ignore[arg-type]
    assert [topic for topic, _, _ in again.sent] == [DLQ]  # bad input is dead-lettered again, alerts are not


async def test_crash_between_commit_and_publish_republishes_from_outbox(store: StateStore) -> None:
    with pytest.raises(RuntimeError):
        await processor(store, Sink(crash=True)).process(batch())
    assert await store.redis.llen(store.keys.outbox("alice")) == 1
    restarted = Sink()
    report = await processor(store, restarted).process(batch())
    assert report.applied == 0 and report.republished == 2
    alerts = sorted(json.loads(v)["id"] for topic, _, v in restarted.sent if topic == ALERTS)
    assert alerts == ["big-t1", "big-t5"]
    assert await store.redis.llen(store.keys.outbox("alice")) == 0


async def test_transient_publish_failure_retries_without_double_effects(store: StateStore) -> None:
    sink = Sink(fail_times=2)
    report = await processor(store, sink).process(batch())
    assert report.retries == 2
    alerts = sorted(json.loads(v)["id"] for topic, _, v in sink.sent if topic == ALERTS)
    assert alerts == ["big-t1", "big-t5"]
    assert [topic for topic, _, _ in sink.sent].count(DLQ) == 1
    alice = await store.read("alice")
    assert alice is not None and alice.balance == Decimal("379.50")


async def test_stale_owner_loses_the_version_check_and_recomputes(store: StateStore) -> None:
    old_owner, new_owner = processor(store, Sink()), processor(store, Sink())
    await old_owner.process([txn(1, "carol", "credit", "100.00")])  # old owner caches carol at v1
    await new_owner.process([txn(2, "carol", "credit", "10.00", day=2)])  # rebalance: new owner writes v2
    report = await old_owner.process([txn(3, "carol", "debit", "30.00", day=3)])  # stale cache
    assert report.conflicts == 1 and report.applied == 1
    carol = await store.read("carol")
    assert carol is not None and carol.balance == Decimal("80.00") and carol.applied_total == 3


async def test_statistics_ride_with_the_commit_and_stay_exact_through_a_version_conflict(store: StateStore) -> None:
    now = 1_750_000_000_000  # after the events (2024-03): their time is plausible
    clock = lambda: now  # noqa: E731
    old_owner = BatchProcessor(store, big_credit_step(), Sink(), wall_clock_ms=clock)
    new_owner = BatchProcessor(store, big_credit_step(), Sink(), wall_clock_ms=clock)

    def stamped(record: RawRecord, produced_ms: int) -> RawRecord:
        return dataclasses.replace(record, timestamp_ms=produced_ms)

    await old_owner.process([stamped(txn(1, "erin", "credit", "100.00"), now - 7)])
    await new_owner.process([stamped(txn(2, "erin", "credit", "10.00", day=2), now - 9)])
    # the stale owner's commit is counted in its round trip, loses the version check, is redone
    report = await old_owner.process([stamped(txn(3, "erin", "debit", "30.00", day=3), now - 11)])
    assert report.conflicts == 1
    assert int(await store.redis.hget(store.keys.stats, "applied")) == 3
    samples = sorted(int(x) for x in await store.redis.lrange(store.keys.latency, 0, -1))
    assert samples[:2] == [7, 9] and set(samples[2:]) == {11}  # the redone event may be sampled twice


async def test_statistics_that_cannot_be_written_never_stop_the_stream(store: StateStore) -> None:
    await store.redis.set(store.keys.stats, "not a hash")  # HINCRBY fails: WRONGTYPE
    report = await processor(store, Sink()).process(batch())
    assert report.applied == 4
    alice = await store.read("alice")
    assert alice is not None and alice.balance == Decimal("379.50")


async def test_conflicting_duplicate_is_dead_lettered_not_applied(store: StateStore) -> None:
    sink = Sink()
    await processor(store, sink).process([txn(1, "dave", "credit", "100.00")])
    report = await processor(store, sink).process([txn(1, "dave", "credit", "999.00")])
    assert report.dead_letters == {"duplicate_txn_id_conflict": 1}
    dave = await store.read("dave")
    assert dave is not None and dave.balance == Decimal("100.00")


async def test_a_redis_that_forgot_the_commit_script_is_a_retry_not_a_failure(store: StateStore) -> None:
    """A restarted Redis has no scripts: the commit's EVALSHA meets NOSCRIPT, the batch is
    retried, the script loaded again, and every event applied once."""
    sink = Sink()
    worker = processor(store, sink)
    await worker.process(batch()[:2])
    await store.redis.script_flush()
    report = await worker.process(batch()[2:])
    assert report.retries == 1
    assert (report.applied, report.duplicates) == (2, 0)
    alice = await store.read("alice")
    assert alice is not None and alice.balance == Decimal("379.50")


def plain() -> Step:
    def step(state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
        if isinstance(event, TransactionEvent):
            return apply_transaction(state, event, CONFIG), []
        return apply_loan(state, event, CONFIG), []

    return step


async def test_a_redelivery_older_than_the_dedup_horizon_is_a_repeat_not_a_dead_letter(store: StateStore) -> None:
    """In a fast replay event time can run months past a record before its offset is
    committed; after a crash that record comes back with its txn_id aged out of the state.
    Its offset says it is a repeat; a new record that old is still refused as too late."""
    early, late = txn(1, "carol", "credit", "100.00", day=1), txn(2, "carol", "credit", "5.00", day=1)
    late = RawRecord(TRANSACTIONS, 0, 2, b"carol", late.value.replace(b"2024-03-01", b"2024-09-30"), 0)  # type: ignore[union-attr]
    report = await processor(store, Sink(), plain()).process([early, late])
    assert report.applied == 2
    state = await store.read("carol")
    assert state is not None and "t1" not in state.seen  # aged out: 213 days > the 120-day horizon
    again = Sink()
    report = await processor(store, again, plain()).process([early])  # a fresh worker after a crash
    assert (report.applied, report.duplicates, report.dead_letters) == (0, 1, {})
    new_but_old = RawRecord(TRANSACTIONS, 0, 3, b"carol", early.value.replace(b'"t1"', b'"t9"'), 0)  # type: ignore[union-attr]
    report = await processor(store, again, plain()).process([new_but_old])
    assert report.dead_letters == {"too_late_to_deduplicate": 1}
    # a broker that lost its topics restarts offsets at 0; what is sent anew is produced later
    # (stamped at a real time: event time may not run ahead of its record's timestamp)
    resent = RawRecord(TRANSACTIONS, 0, 1, b"carol", early.value.replace(b'"t1"', b'"t8"'), 1_750_000_000_000)  # type: ignore[union-attr]
    resent_too = RawRecord(TRANSACTIONS, 0, 2, b"carol", early.value.replace(b'"t1"', b'"t7"'), 1_750_000_000_000)  # type: ignore[union-attr]
    report = await processor(store, again, plain()).process([resent, resent_too])
    assert report.dead_letters == {"too_late_to_deduplicate": 2}
    # (a refused record changes no state, so nothing remembers it: were it redelivered, it
    # would be dead-lettered again; dead letters are at-least-once)
    state = await store.read("carol")
    assert state is not None and state.balance == Decimal("105.00")


async def test_state_blobs_are_compressed_and_older_blobs_still_read(store: StateStore) -> None:
    sink = Sink()
    await processor(store, sink).process(batch())
    version, blob = await store.stored("alice")
    assert blob is not None and blob[:4] == ZSTD_MAGIC  # zstd, as the worker writes by default
    alice = await store.read("alice")
    assert alice is not None
    plain_blob = encode_state(alice)  # what FUNDFLOW_COMPRESS_STATE=false writes
    assert plain_blob[:1] == b"{" and len(blob) < len(plain_blob)
    assert zstandard.get_frame_parameters(blob).dict_id == WRITE_DICTIONARY
    no_dictionary = zstandard.ZstdCompressor(level=1).compress(plain_blob)  # what earlier versions wrote
    assert len(blob) < len(no_dictionary)
    older_blobs = (plain_blob, zlib.compress(plain_blob, 1), no_dictionary)
    for older in older_blobs:
        version, _ = await store.stored("alice")
        await store.redis.set(store.keys.state("alice"), b"%d::%s" % (version, older))
        fresh = processor(store, Sink())
        report = await fresh.process([txn(9, "alice", "credit", "1.00", day=4)])
        assert report.applied == 1
        again = await store.read("alice")
        assert again is not None and again.balance == alice.balance + Decimal("1.00")
        version, _ = await store.stored("alice")
        await store.redis.set(store.keys.state("alice"), b"%d::%s" % (version, blob))
    with pytest.raises(ValueError, match="neither JSON, zstd nor zlib"):
        decode_state(b"\x00 not a state")
    with pytest.raises(ValueError, match="broken zstd frame"):
        decode_state(ZSTD_MAGIC + b"\x00 broken")
    unknown = zstandard.ZstdCompressionDict(zstandard.train_dictionary(1024, [plain_blob] * 16).as_bytes())
    assert unknown.dict_id() not in dictionaries()
    foreign = zstandard.ZstdCompressor(dict_data=unknown).compress(plain_blob)
    with pytest.raises(ValueError, match=f"zstd dictionary {unknown.dict_id()}, which this version lacks"):
        decode_state(foreign)


async def test_a_batch_of_states_compresses_in_one_call_to_the_same_blobs(store: StateStore) -> None:
    """``encode_states`` (one zstd call per commit, for the GIL: codec.py) writes, blob for
    blob, what ``encode_state`` writes one at a time, and each decodes on its own."""
    await processor(store, Sink()).process(batch())
    states = [s for s in [await store.read(c) for c in ("alice", "bob")] if s is not None]
    assert len(states) == 2
    together = encode_states(states, compress=True)
    alone = [encode_state(s, compress=True) for s in states]
    plain = [encode_state(s) for s in states]  # (states hold encoding caches: compare JSON)
    assert [encode_state(decode_state(b)) for b in together] == plain
    assert all(b[:4] == ZSTD_MAGIC for b in together) and together == alone
    assert encode_states(states) == plain
    assert encode_states([], compress=True) == []


async def test_one_commit_call_carries_many_customers_each_atomic_on_its_own(store: StateStore) -> None:
    """A stale version fails only its own customer, in the middle of a many-customer call;
    the others' states, outboxes and recent alerts are written."""
    ids = [f"many{i}" for i in range(600)]  # more than one call's chunk
    first = [Commit(cid, 0, CustomerState(cid, balance=Decimal(i))) for i, cid in enumerate(ids)]
    assert await store.commit(first) == set()
    second = [
        Commit(cid, 0 if cid == "many300" else 1, CustomerState(cid, balance=Decimal(i) + 1), [b"x%d" % i, b"y%d" % i])
        for i, cid in enumerate(ids)
    ]
    assert await store.commit(second) == {"many300"}
    for i in (0, 299, 301, 599):
        state = await store.read(ids[i])
        assert state is not None and state.balance == Decimal(i) + 1
        assert (await store.stored(ids[i]))[0] == 2
        assert await store.redis.lrange(store.keys.outbox(ids[i]), 0, -1) == [b"x%d" % i, b"y%d" % i]
        assert await store.recent_findings(ids[i]) == [b"y%d" % i, b"x%d" % i]
    stale = await store.read("many300")
    assert stale is not None and stale.balance == Decimal(300)
    assert await store.redis.lrange(store.keys.outbox("many300"), 0, -1) == []


async def test_recent_findings_are_kept_compressed_and_read_as_they_were(store: StateStore) -> None:
    """A customer's recent-findings list keeps each finding compressed with the findings'
    dictionary (about a fifth of the entry on Berka's), and reads it back byte for byte; one
    an earlier version kept as it was reads too, and a shadow run's record is never kept."""
    settings = Settings()
    found = list(islice(sample_findings(berka_lines(None, settings.zone), settings), 30))
    by_customer: dict[str, list[bytes]] = {}
    for cid, entry in found:
        by_customer.setdefault(cid, []).append(entry)
    customer, entries = max(by_customer.items(), key=lambda item: len(item[1]))
    shadow = b'fundflow.shadow.v1\n"' + customer.encode() + b'"\n{}'
    assert await store.commit([Commit(customer, 0, CustomerState(customer), [*entries, shadow])]) == set()
    kept = await store.redis.lrange(store.keys.alerts(customer), 0, -1)
    assert len(kept) == len(entries) and all(k[:4] == ZSTD_MAGIC for k in kept)
    assert sum(map(len, kept)) * 3 < sum(map(len, entries))
    assert await store.recent_findings(customer) == entries[::-1]  # (newest first)
    assert await store.redis.lrange(store.keys.outbox(customer), 0, -1) == [*entries, shadow]
    older = b'fundflow.alerts.v1\n"old"\n{"id":"1"}'  # (as versions before 2026-12 kept it)
    await store.redis.rpush(store.keys.alerts(customer), older)
    assert (await store.recent_findings(customer))[-1] == older


async def test_on_redis_cluster_a_commit_call_holds_one_hash_slot(store: StateStore) -> None:
    clustered = StateStore(store.redis, store.keys, cluster=True)
    ids = [hashlib.sha256(b"%d" % i).hexdigest()[:12] for i in range(2000)]  # some share a slot
    commits = [Commit(cid, 0, CustomerState(cid)) for cid in ids]
    groups = clustered._groups(commits)
    assert sum(len(g) for g in groups) == len(commits)
    for group in groups:
        assert len(group) <= COMMIT_CHUNK
        assert len({key_slot(store.keys.state(c.customer_id).encode()) for c in group}) == 1
    assert any(len(g) > 1 for g in groups)  # customers sharing a slot still share a call
    assert [len(g) for g in store._groups(commits)] == [COMMIT_CHUNK] * 7 + [2000 - 7 * COMMIT_CHUNK]
    assert await clustered.commit(commits) == set()


async def test_commands_are_packed_in_c_exactly_as_redis_py_packs_them(redis_url: str) -> None:
    from redis.asyncio.connection import Connection

    client = connect(redis_url)
    fast = client.connection_pool.make_connection()
    plain = Connection()
    for args in [
        ("EVALSHA", "ab12", 2, "ff:{c}:state", b"ff:{c}:outbox", 0, 1, b"\x28\xb5\x2f\xfd\x00blob", 10**20),
        ("ZADD", "ff:tiers", 0.1 + 0.2, "c1", 1e-7, "c2", float("inf"), "c3"),
        ("SET", "客户", "余额", "EX", 5),
        ("CONFIG GET", "maxmemory"),
        (b"OBJECT ENCODING", memoryview(b"k")),
        ("SET", bytearray(b"k"), memoryview(b"v")),  # (hiredis refuses a bytearray: copied)
    ]:
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))
    assert await client.ping()
    await client.aclose()


async def test_a_state_an_earlier_version_stored_as_a_hash_is_read_and_rewritten(store: StateStore) -> None:
    """Versions before 2026-11 kept a state in a hash (``v``, ``s`` and the 看板's ``b``); a
    string costs ~200 B less per customer. Such a state is read, and its next commit
    replaces the hash with the string, keeping its version sequence and 看板 bucket."""
    await processor(store, Sink()).process(batch())
    version, blob = await store.stored("alice")
    key = store.keys.state("alice")
    await store.redis.delete(key)
    await store.redis.hset(key, mapping={"v": version, "s": blob or b"", "b": "3"})
    assert await store.stored("alice") == (version, blob)
    alice = await store.read("alice")
    assert alice is not None and sorted([s.customer_id async for s in store.scan_states()]) == ["alice", "bob"]
    report = await processor(store, Sink()).process([txn(9, "alice", "credit", "1.00", day=4)])
    assert report.applied == 1
    assert await store.redis.type(key) == b"string"
    assert (await store.redis.get(key) or b"").startswith(b"%d:" % (version + 1))
    again = await store.read("alice")
    assert again is not None and again.balance == alice.balance + Decimal("1.00")
    # duplicates of what the hash state already held are still duplicates
    assert (await processor(store, Sink()).process(batch())).applied == 0


async def stored_blobs(store: StateStore, customers: list[str]) -> dict[str, bytes]:
    states = {c: await store.read(c) for c in customers}
    return {c: encode_state(s) for c, s in states.items() if s is not None}


async def one_by_one(store: StateStore, batches: list[list[RawRecord]], customers: list[str]) -> dict[str, bytes]:
    """What ``customers``' states are after ``batches``, each processed whole before the next
    (under a prefix of its own beside ``store``'s): the reference for the overlap."""
    alone = StateStore(store.redis, Keys("fftest-seq"))
    sequential = processor(alone, Sink())
    for records in batches:
        await sequential.process(records)
    return await stored_blobs(alone, customers)


async def test_a_batch_prepared_while_the_one_before_completes_leaves_that_ones_customers_for_later(
    store: StateStore,
) -> None:
    """The worker prepares batch N+1 (decode, load, step) while batch N commits and
    publishes. Had it stepped alice, whom N holds, on the state object N is about to
    encode, N's commit would carry N+1's credit and N+1's own commit would find it a
    duplicate: its finding lost. Her record waits for N+1's completion, after N's."""
    warm = [txn(0, "alice", "credit", "1.00")]
    first = [txn(1, "alice", "credit", "500.00"), txn(2, "bob", "credit", "50.00")]
    second = [txn(3, "alice", "credit", "300.00", day=2)]
    sink = Sink()
    worker = processor(store, sink)
    await worker.process(warm)  # alice is cached: preparing N+1 needs no round trip
    before = await worker.prepare(first)
    completing = asyncio.create_task(worker.complete(before))
    after = await worker.prepare(second)
    assert after.runs == {} and after.later == ["alice"]
    await completing
    await worker.complete(after)
    assert [json.loads(v)["id"] for topic, _, v in sink.sent if topic == ALERTS] == ["big-t1", "big-t3"]

    both = ["alice", "bob"]
    assert await stored_blobs(store, both) == await one_by_one(store, [warm, first, second], both)


async def test_a_customer_redone_in_the_batch_before_is_stepped_after_it_on_the_state_it_wrote(
    store: StateStore,
) -> None:
    """Batch N loses the version check for carol (another owner wrote her) and redoes her
    from Redis. Batch N+1, prepared while N completes, holds carol too: her record there
    is applied after N's redo, on the state N wrote, never on the stale one N stepped."""
    worker, other = processor(store, Sink()), processor(store, Sink())
    await worker.process([txn(1, "carol", "credit", "100.00")])
    await other.process([txn(2, "carol", "credit", "10.00", day=2)])  # the worker's cache is stale
    before = await worker.prepare([txn(3, "carol", "debit", "30.00", day=3)])
    completing = asyncio.create_task(worker.complete(before))
    after = await worker.prepare([txn(4, "carol", "credit", "5.00", day=4), txn(5, "erin", "credit", "7.00", day=4)])
    assert set(after.runs) == {"erin"} and after.later == ["carol"]
    assert (await completing).conflicts == 1
    assert (await worker.complete(after)).conflicts == 0

    moves = [("credit", "100.00"), ("credit", "10.00"), ("debit", "30.00")]
    batches = [[txn(i, "carol", direction, amount, day=i)] for i, (direction, amount) in enumerate(moves, 1)]
    batches.append([txn(4, "carol", "credit", "5.00", day=4), txn(5, "erin", "credit", "7.00", day=4)])
    assert await stored_blobs(store, ["carol", "erin"]) == await one_by_one(store, batches, ["carol", "erin"])
    carol = await store.read("carol")
    assert carol is not None and carol.balance == Decimal("85.00") and carol.applied_total == 4
