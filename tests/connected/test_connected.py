"""Across process boundaries, with real servers: the embedded stack, a worker
process, Kafka in, Redis and the output topics out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from streams.clients import ensure_topics
from streams.local.servers import Stack, free_port
from streams.settings import Settings
from streams.topics import all_topics
from tests.support import eventgen
from tests.support.processes import _alive

pytestmark = pytest.mark.connected

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    env.update(extra)
    return env


def test_embedded_servers_start_answer_restart_and_stop(tmp_path: Path) -> None:
    import asyncio

    settings = Settings(kafka_bootstrap=None, redis_url=None, var_dir=tmp_path)
    with Stack(settings) as stack:
        assert stack.broker is not None and stack.redis is not None
        client = redis.Redis.from_url(stack.redis_url)
        assert client.ping()
        client.set("k", "v")
        asyncio.run(ensure_topics(stack.kafka_bootstrap, all_topics(2), settings))
        stack.redis.restart()  # same port, and nothing kept (no persistence)
        assert client.ping()
        assert client.get("k") is None
        client.close()
        pids = [stack.broker.process.pid, stack.redis.process.pid]  # type: ignore[union-attr]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_configured_servers_start_nothing(tmp_path: Path) -> None:
    settings = Settings(
        kafka_bootstrap="kafka.example:9092", redis_url="redis://redis.example:6379/0", var_dir=tmp_path
    )
    with Stack(settings) as stack:
        assert stack.broker is None and stack.redis is None
        assert stack.env() == {
            "FUNDFLOW_KAFKA_BOOTSTRAP": "kafka.example:9092",
            "FUNDFLOW_REDIS_URL": "redis://redis.example:6379/0",
        }


def test_embedded_servers_die_with_their_parent(tmp_path: Path) -> None:
    """kill -9 of the process that started them leaves no orphan servers."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from streams.local.servers import EmbeddedBroker, EmbeddedRedis\n"
        f"b = EmbeddedBroker({free_port()}, Path(sys.argv[1])); b.start()\n"
        f"r = EmbeddedRedis({free_port()}, Path(sys.argv[1])); r.start()\n"
        "print(b.process.pid, r.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, cwd=ROOT, env=clean_env()
    )
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        time.sleep(0.1)
    assert not alive, f"orphans left: {alive}"


@pytest.fixture(scope="module")
def backtest_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[dict[str, object]]]]:
    work = tmp_path_factory.mktemp("backtest")
    events = eventgen.transactions(customers=12, per_customer=40)
    data = eventgen.lines(events)
    mixed = []
    for i, line in enumerate(data):
        mixed.append(line)
        if i % 50 == 0 and i // 50 < len(eventgen.GARBAGE):
            mixed.append(eventgen.GARBAGE[i // 50])
    mixed.append(data[3])  # an exact redelivery: applied once, no dead letter
    (work / "events.jsonl").write_bytes(b"\n".join(mixed) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "backtest", str(work / "events.jsonl"), "--out", str(work / "out")],
        cwd=ROOT,
        env=clean_env(FUNDFLOW_VAR_DIR=str(work / "var"), FUNDFLOW_PARTITIONS="2"),
        capture_output=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    yield work / "out", events


def test_backtest_applies_every_good_event_once(backtest_run: tuple[Path, list[dict[str, object]]]) -> None:
    out, events = backtest_run
    state = [json.loads(line) for line in (out / "state.jsonl").read_text().splitlines()]
    expected = eventgen.expected_balances(events)
    assert {row["customer_id"]: Decimal(row["balance"]) for row in state} == expected
    as_of = max(str(e["ts"]) for e in events)
    assert {row["as_of"] for row in state} == {state[0]["as_of"]}
    assert state[0]["as_of"].startswith(as_of[:16])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["customers"] == 12
    assert summary["latency_ms"]["samples"] > 0


def test_backtest_dead_letters_every_bad_line_with_a_reason(
    backtest_run: tuple[Path, list[dict[str, object]]],
) -> None:
    out, _ = backtest_run
    letters = [json.loads(line) for line in (out / "dlq.jsonl").read_text().splitlines()]
    assert len(letters) == len(eventgen.GARBAGE)
    for letter in letters:
        assert letter["reason"] and letter["error"]
        assert letter["topic"] == "fundflow.transactions.v1"
        assert isinstance(letter["offset"], int)
    import base64

    originals = sorted(base64.b64decode(letter["value_b64"]) for letter in letters)
    assert originals == sorted(eventgen.GARBAGE)
