"""``fundflow adapt``, with real servers: change records of a core table produced into the
embedded broker, the adapter run (in-process, then as the ``fundflow adapt canal``
command), and the TransactionEvents it produced read back from ``fundflow.transactions.v1``
and compared with the events the changes mean; bad records land in the DLQ with reasons
while the rest flows, and redelivered records publish nothing new."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from feeds.adapter import BatchResult, run_adapter
from feeds.mapping import parse_mapping
from streams.clients import ensure_topics
from streams.local.orchestra import read_topic
from streams.local.servers import Stack
from streams.settings import Settings
from streams.topics import DLQ, TRANSACTIONS
from tests.support import ROOT
from tests.support.cdcgen import at, canal, debezium, expected, mapping, row

pytestmark = pytest.mark.connected

Record = tuple[bytes | None, bytes | None]  # (key, value)


def settings_for(stack: Stack, prefix: str, tmp: Path) -> Settings:
    return Settings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, key_prefix=prefix, var_dir=tmp)


async def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


async def adapt_until(
    fmt: Any, settings: Settings, topic: str, mapping_data: dict[str, Any], records: int, group: str
) -> dict[str, int]:
    """Run the adapter in-process until it handled ``records`` records; its outcome counts."""
    stop = asyncio.Event()
    outcomes: dict[str, int] = {}

    def counted(result: BatchResult) -> None:
        for outcome, n in result.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + n
        if sum(outcomes.values()) >= records:
            stop.set()

    assert settings.kafka_bootstrap and settings.redis_url
    task = asyncio.create_task(
        run_adapter(
            fmt,
            settings,
            settings.kafka_bootstrap,
            settings.redis_url,
            parse_mapping(mapping_data),
            topic,
            group=group,
            stop=stop,
            on_batch=counted,
        )
    )
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=60)
    finally:
        stop.set()
        await task
    return outcomes


async def read_back(settings: Settings, keep: Callable[[dict[str, Any]], bool], topic: str) -> list[dict[str, Any]]:
    assert settings.kafka_bootstrap
    return [
        e for e in (orjson.loads(v) for v in await read_topic(settings, settings.kafka_bootstrap, topic)) if keep(e)
    ]


def by_id(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: str(e["txn_id"]))


async def test_debezium_changes_become_events_reversals_and_dead_letters(stack: Stack, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    prefix, topic = f"T{run}:", f"corebank.core.acct_txn.{run}"
    settings = settings_for(stack, f"cdc{run}", tmp_path)
    await ensure_topics(stack.kafka_bootstrap, {topic: 1}, settings)
    one, two = row(1, "1000.00", cust=f"C1{run}"), row(2, "20.50", cust=f"C2{run}", dc="D", code="TRO01")
    three = row(3, "300.00", cust=f"C3{run}", cp_bank="105100000017", cp_cust=f"C1{run}")
    four, pending = row(4, "4.00", cust=f"C1{run}", code="SAL01"), row(5, "5.00", cust=f"C1{run}", status="P")
    one_fixed = {**one, "txn_amt": "1100.00"}

    def key(n: int) -> bytes:
        return orjson.dumps({"txn_no": n})

    snapshot_1 = debezium("r", None, one, pos=154)  # every snapshot row: the same binlog position
    snapshot_2 = debezium("r", None, two, pos=154)
    create_3 = debezium("c", None, three, pos=1000)
    update_1 = debezium("u", one, one_fixed, pos=1100, changed=at(1, 10))
    memo_2 = debezium("u", two, {**two, "memo": "checked"}, pos=1200)
    delete_3 = debezium("d", three, None, pos=1300, changed=at(1, 11))
    floating = debezium("c", None, row(6, "6.60", cust=f"C1{run}"), pos=1400, decimal="double")
    records: list[Record] = [
        (key(1), snapshot_1),
        (key(2), snapshot_2),
        (key(3), create_3),
        (key(1), update_1),
        (key(2), memo_2),
        (key(3), delete_3),
        (key(3), None),  # the delete's tombstone
        (key(3), debezium("c", None, three, pos=1000)),  # redeliveries: a recovering connector re-sends
        (key(1), debezium("u", one, one_fixed, pos=1100, changed=at(1, 10))),
        (key(2), debezium("r", None, two, pos=154)),
        (key(6), floating),
        (key(7), b'{"payload": '),  # cut short
        (key(5), debezium("c", None, pending, pos=1500)),
        (key(4), debezium("c", None, four, pos=1600, wrapped=False)),  # no schema: the mapping's scale
    ]
    await produce(stack.kafka_bootstrap, topic, records)
    outcomes = await adapt_until("debezium", settings, topic, mapping(prefix), len(records), f"g{run}")
    assert outcomes == {
        "published": 6,
        "unchanged": 1,  # the memo update
        "tombstone": 1,
        "duplicate": 3,
        "dead_letter": 2,
        "not_posted": 1,
    }

    def ours(event: dict[str, Any]) -> bool:
        return str(event["txn_id"]).startswith(prefix)

    events = await read_back(settings, ours, TRANSACTIONS)
    base = f"{prefix}acct_txn"
    assert by_id(events) == by_id(
        [
            expected(f"{base}:1", one),
            expected(f"{base}:2", two),
            expected(f"{base}:3", three),
            expected(f"{base}:1:rev", one, reverses=f"{base}:1", ts=at(1, 10)),
            expected(f"{base}:1~2", one_fixed),
            expected(f"{base}:3:rev", three, reverses=f"{base}:3", ts=at(1, 11)),
            expected(f"{base}:4", four),
        ]
    )
    letters = await read_back(settings, lambda d: d["topic"] == topic, DLQ)
    assert sorted((d["reason"], d["offset"]) for d in letters) == [("amount_not_exact", 10), ("not_json", 11)]
    assert all(d["value_b64"] and "6.6" not in d["error"] for d in letters)

    # Another group reads the whole topic again (a reset, a backfill): every record is known.
    again = await adapt_until("debezium", settings, topic, mapping(prefix), len(records), f"h{run}")
    assert again.get("published", 0) == 0 and again["duplicate"] == 12, again
    assert len(await read_back(settings, ours, TRANSACTIONS)) == len(events)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    env.update(extra)
    return env


async def test_the_canal_command_adapts_flat_messages_and_stops_on_sigterm(stack: Stack, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    prefix, topic = f"K{run}:", f"canal.acct_txn.{run}"
    settings = settings_for(stack, f"cdc{run}", tmp_path)
    await ensure_topics(stack.kafka_bootstrap, {topic: 1}, settings)
    a, b = row(40, "100.00", cust=f"A{run}"), row(41, "200.00", cust=f"B{run}", dc="2")
    a2 = {**a, "txn_amt": "150.00"}
    bad = row(42, "1.00", cust=f"A{run}", dc="Q")
    good = row(43, "9.00", cust=f"A{run}", code="CSW01", dc="D")
    update = canal("UPDATE", [a2], [{"txn_amt": "100.00"}], batch_id=2, es=at(1, 12))
    records: list[Record] = [
        (None, canal("INSERT", [a, b], batch_id=1)),
        (None, update),
        (None, canal("ALTER", [], batch_id=3, is_ddl=True)),
        (None, canal("DELETE", [b], batch_id=4, es=at(2, 9))),
        (None, canal("UPDATE", [a2], [{"txn_amt": "100.00"}], batch_id=1, es=at(1, 12))),  # Canal restarted
        (None, canal("INSERT", [bad, good], batch_id=5)),
    ]
    await produce(stack.kafka_bootstrap, topic, records)
    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text(yaml.safe_dump(mapping(prefix, ts_format="yyyy-MM-dd HH:mm:ss")))
    env = clean_env(
        FUNDFLOW_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
        FUNDFLOW_REDIS_URL=stack.redis_url,
        FUNDFLOW_KEY_PREFIX=f"cdc{run}",
        FUNDFLOW_VAR_DIR=str(tmp_path),
    )
    command = [sys.executable, "-m", "streams.cli.main", "adapt", "canal", "--from", topic, "--mapping"]
    with (tmp_path / "adapter.log").open("wb") as log:
        adapter = subprocess.Popen(
            [*command, str(mapping_file)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"{prefix}acct_txn"
        wanted = by_id(
            [
                expected(f"{base}:40", a),
                expected(f"{base}:41", b),
                expected(f"{base}:40:rev", a, reverses=f"{base}:40", ts=at(1, 12)),
                expected(f"{base}:40~2", a2),
                expected(f"{base}:41:rev", b, reverses=f"{base}:41", ts=at(2, 9)),
                expected(f"{base}:43", good),
            ]
        )
        deadline = time.monotonic() + 60
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(events) < len(wanted):
            assert adapter.poll() is None, (tmp_path / "adapter.log").read_text()
            events = await read_back(settings, lambda e: str(e["txn_id"]).startswith(prefix), TRANSACTIONS)
            await asyncio.sleep(0.5)
        assert by_id(events) == wanted
        letters = await read_back(settings, lambda d: d["topic"] == topic, DLQ)
        assert [(d["reason"], d["offset"], d["error"]) for d in letters] == [
            ("unknown_code", 5, "row 0: direction column 'dc_flag': a code the mapping does not list")
        ]
    finally:
        started = time.monotonic()
        adapter.send_signal(signal.SIGTERM)
        code = adapter.wait(timeout=15)
    assert code == 0 and time.monotonic() - started < 10
    assert "stopping on SIGTERM" in (tmp_path / "adapter.log").read_text()


def test_a_bad_mapping_stops_the_command_in_one_line(tmp_path: Path) -> None:
    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text(yaml.safe_dump(mapping(decimal="double")))
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "adapt", "debezium", "--from", "t", "--mapping", str(mapping_file)],
        env=clean_env(FUNDFLOW_KAFKA_BOOTSTRAP="127.0.0.1:1", FUNDFLOW_REDIS_URL="redis://127.0.0.1:1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "decimal: double loses cents" in done.stderr, done.stderr
