"""Issue 20, end to end: a real ``fundflow worker`` process fed two poison pills amid
valid traffic (a 1,000,000-byte record of valid JSON plus padding, and a ts in year 1
that the state step cannot convert to the bank's time zone) applies every valid event,
dead-letters the two in publishable dead letters, keeps its consumer lag at zero, stays
ready, and stops within 10 s on SIGTERM."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.local.orchestra import read_topic
from streams.local.servers import EmbeddedRedis
from streams.topics import DLQ
from tests.support import eventgen
from tests.support.scenario import Scenario, http_get, wait_retrying

pytestmark = [pytest.mark.slow, pytest.mark.connected]


def poison_pills() -> list[bytes]:
    base = {
        "customer_id": "C0003",
        "account_id": "A0003",
        "direction": "credit",
        "amount": "10.00",
    }
    oversized = orjson.dumps({**base, "txn_id": "P-big", "ts": "2024-01-05T09:00:00+08:00", "pad": ""})
    oversized = oversized[:-2] + b"x" * (1_000_000 - len(oversized)) + b'"}'
    assert len(oversized) == 1_000_000 and isinstance(orjson.loads(oversized), dict)
    year_one = orjson.dumps({**base, "txn_id": "P-year-1", "ts": "0001-01-01T00:00:00+08:00"})
    return [oversized, year_one]


def test_poison_pills_are_dead_letters_and_the_worker_keeps_going_and_stops_cleanly(tmp_path: Path) -> None:
    workload = eventgen.lines(eventgen.transactions(customers=12, per_customer=25, seed=20))
    pills = poison_pills()
    third = len(workload) // 3
    mixed = [*workload[:third], pills[0], *workload[third : 2 * third], pills[1], *workload[2 * third :]]
    with Scenario(tmp_path) as scenario:
        worker = scenario.run.start_worker()
        asyncio.run(scenario.produce(mixed))
        asyncio.run(scenario.run.wait_caught_up(len(mixed), timeout=120))  # every offset committed: lag 0
        lags = asyncio.run(scenario.run.lag())
        assert lags and all(v == 0 for v in lags.values())
        assert scenario.applied_total() == len(workload)  # every valid event, once

        letters = asyncio.run(read_topic(scenario.settings, scenario.run.bootstrap, DLQ))
        assert sorted(orjson.loads(v)["reason"] for v in letters) == ["implausible_timestamp", "too_large"]
        assert all(len(v) < 100_000 for v in letters)  # far under any topic's 1 MiB
        big = next(orjson.loads(v) for v in letters if orjson.loads(v)["reason"] == "too_large")
        assert big["value_bytes"] == 1_000_000 and big["value_truncated"] is True

        status, body = http_get(f"http://127.0.0.1:{scenario.run.web_ports[0]}/readyz")
        assert status == 200 and body["checks"]["progress"] == "ok", body
        _, metrics = http_get(f"http://127.0.0.1:{scenario.run.web_ports[0]}/metrics")
        assert 'fundflow_dead_letters_total{reason="too_large"} 1.0' in metrics
        assert 'fundflow_dead_letters_total{reason="implausible_timestamp"} 1.0' in metrics

        started = time.monotonic()
        scenario.run.stop_worker(worker, timeout=30)
        assert time.monotonic() - started < 10, "SIGTERM took too long"
        assert worker.returncode is not None and worker.returncode != -9


def test_a_worker_that_cannot_progress_says_so_until_it_can(tmp_path: Path) -> None:
    """Redis gone: the batch is retried (never dropped); after FUNDFLOW_STALLED_AFTER_SECONDS
    its partitions are reported stalled in /readyz and in fundflow_partition_stalled; once
    Redis is back the batch goes through, every event is applied and the report clears."""
    workload = eventgen.lines(eventgen.transactions(customers=8, per_customer=20, seed=21))
    with Scenario(tmp_path, persistent_redis=True) as scenario:
        worker, valkey = start_then_lose_redis(scenario, workload, FUNDFLOW_STALLED_AFTER_SECONDS="2")
        ready = f"http://127.0.0.1:{scenario.run.web_ports[0]}/readyz"
        metrics = f"http://127.0.0.1:{scenario.run.web_ports[0]}/metrics"
        try:
            body = poll(ready, lambda status, body: body["checks"].get("progress", "").startswith("stalled: "))
            assert "fundflow.transactions.v1:" in body["checks"]["progress"]
            assert http_get(ready)[0] == 503
            assert stalled_lines(http_get(metrics)[1]), "fundflow_partition_stalled is not 1 for any partition"
        finally:
            valkey.start()
        poll(ready, lambda status, body: status == 200 and body["checks"]["progress"] == "ok")
        asyncio.run(scenario.run.wait_caught_up(len(workload), timeout=60))
        assert scenario.applied_total() == len(workload)
        assert not stalled_lines(http_get(metrics)[1])
        started = time.monotonic()
        scenario.run.stop_worker(worker, timeout=30)
        assert time.monotonic() - started < 10, "SIGTERM took too long"


def start_then_lose_redis(scenario: Scenario, workload: list[bytes], **env: str) -> tuple[Any, EmbeddedRedis]:
    """A worker applies the first 40 events; then Redis stops and the rest are produced."""
    assert scenario.run.stack is not None and scenario.run.stack.redis is not None
    worker = scenario.run.start_worker(**env)
    asyncio.run(scenario.produce(workload[:40]))
    scenario.wait_applied(40)
    valkey = scenario.run.stack.redis
    valkey.stop()
    asyncio.run(scenario.produce(workload[40:]))
    return worker, valkey


def poll(url: str, done: Callable[[int, Any], bool], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_get(url)
        if isinstance(body, dict) and done(status, body):
            return body
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.5)


def stalled_lines(metrics: str) -> list[str]:
    return [
        line
        for line in metrics.splitlines()
        if line.startswith("fundflow_partition_stalled{") and line.endswith(" 1.0")
    ]


def test_sigterm_during_an_outage_gives_the_batch_back_and_stops(tmp_path: Path) -> None:
    """A worker retrying a batch while Redis is down stops within 10 s on SIGTERM: the batch
    is abandoned unacked, and the next worker applies every event of it."""
    workload = eventgen.lines(eventgen.transactions(customers=8, per_customer=20, seed=22))
    with Scenario(tmp_path, persistent_redis=True) as scenario:
        worker, valkey = start_then_lose_redis(scenario, workload)
        try:
            wait_retrying(scenario.run.web_ports[0])  # retrying now
            started = time.monotonic()
            scenario.run.stop_worker(worker, timeout=30)
            assert time.monotonic() - started < 10, "SIGTERM during an outage took too long"
        finally:
            valkey.start()
        scenario.run.workers.remove(worker)
        scenario.run.start_worker()
        asyncio.run(scenario.run.wait_caught_up(len(workload), timeout=60))
        assert scenario.applied_total() == len(workload)
