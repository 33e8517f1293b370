"""A LocalRun of real workers with the probes the reliability scenarios need (``docs/reliability.md``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis

from rules.board import Board
from rules.state import CustomerState, to_us
from streams.board import check, stored
from streams.clients import connect, start_producer
from streams.local.orchestra import LocalRun, read_topic
from streams.rulestep import reader_store
from streams.settings import Settings
from streams.storage.keys import Keys
from streams.storage.snapshot import load_all, rows
from streams.storage.store import RECENT_ALERTS_KEPT
from streams.tools.replay import replay
from streams.topics import ALERTS, DLQ, MARKETING, RECOMMENDATIONS

FINDING_TOPICS = (ALERTS, RECOMMENDATIONS, MARKETING)


def settings_for(tmp: Path, **extra: Any) -> Settings:
    return Settings(
        kafka_bootstrap=None,
        redis_url=None,
        var_dir=tmp,
        partitions=4,
        tier_refresh_seconds=3600,
        **extra,
    )


def as_of(workload: list[bytes]) -> int:
    import datetime as dt

    return max(to_us(dt.datetime.fromisoformat(orjson.loads(line)["ts"])) for line in workload)


def snapshot_bytes(states: list[CustomerState], settings: Settings, workload: list[bytes]) -> bytes:
    states = sorted(states, key=lambda s: s.customer_id)
    return b"".join(orjson.dumps(row) + b"\n" for row in rows(states, as_of(workload), settings))


class Scenario:
    """A LocalRun plus the probes the scenarios need."""

    def __init__(self, tmp: Path, *, persistent_redis: bool = False) -> None:
        self.settings = settings_for(tmp)
        self.run = LocalRun(self.settings, tmp / "logs", persistent_redis=persistent_redis)

    def __enter__(self) -> Scenario:
        self.run.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.run.close()

    def applied(self) -> int:
        client = redis.Redis.from_url(self.run.redis_url)
        try:
            return int(client.hget(Keys(self.settings.key_prefix).stats, "applied") or 0)
        except redis.ConnectionError:
            return -1
        finally:
            client.close()

    def wait_applied(self, at_least: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.applied() < at_least:
            self.run.check_workers()
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.applied()} applied after {timeout}s; logs in {self.run.log_dir}")
            time.sleep(0.1)

    async def produce(self, lines: list[bytes], rate: float | None = None) -> None:
        producer = await start_producer(self.settings, self.run.bootstrap)
        try:
            await replay(lines, producer, rate=rate)
        finally:
            await producer.stop()

    def produce_in_background(self, lines: list[bytes], rate: float) -> subprocess.Popen[bytes]:
        """A ``fundflow replay`` process, so this test process stays free to kill and restart."""
        path = self.run.log_dir / f"input-{time.monotonic_ns()}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "replay", str(path), "--rate", str(rate)],
            env=self.run.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def state(self, workload: list[bytes]) -> bytes:
        client = connect(self.run.redis_url)
        try:
            states = await load_all(reader_store(client, self.settings))
        finally:
            await client.aclose()
        return snapshot_bytes(states, self.settings, workload)

    async def published(self) -> tuple[list[str], int]:
        """Finding ids in publication order over every finding topic, and dead letters
        (their reasons are kept in ``LAST_DEAD_REASONS`` for assertion messages)."""
        ids: list[str] = []
        for topic in FINDING_TOPICS:
            ids += [orjson.loads(v)["id"] for v in await read_topic(self.settings, self.run.bootstrap, topic)]
        letters = [orjson.loads(v) for v in await read_topic(self.settings, self.run.bootstrap, DLQ)]
        LAST_DEAD_REASONS.clear()
        LAST_DEAD_REASONS.update(f"{letter['reason']}: {letter['error']}"[:160] for letter in letters)
        return ids, len(letters)

    def finish(
        self, workload: list[bytes], produced: int | None = None, timeout: float = 120
    ) -> tuple[bytes, list[str], int]:
        asyncio.run(self.run.wait_caught_up(produced or len(workload), timeout))

        async def read() -> tuple[bytes, list[str], int]:
            state = await self.state(workload)
            ids, dead = await self.published()
            return state, ids, dead

        return asyncio.run(read())

    def assert_board(self, expected: Board) -> None:
        """The 看板's cells equal one application of the events, and a recomputation from the
        stored states (``fundflow board --check``) agrees with them."""

        async def read() -> tuple[Board, list[str]]:
            client = connect(self.run.redis_url)
            try:
                store = reader_store(client, self.settings)
                return await stored(client, store.keys, cluster=False), await check(
                    store, self.settings.zone, RECENT_ALERTS_KEPT
                )
            finally:
                await client.aclose()

        board, differences = asyncio.run(read())
        assert differences == []
        for field in ("flows", "findings", "net"):
            assert _nonzero(getattr(board, field)) == _nonzero(getattr(expected, field)), field
        assert {b: n for b, n in board.collection.items() if n} == expected.collection

    def changelogs(self) -> int:
        """Customers whose state in Redis is a full state plus a changelog (``streams.storage.changelog``)."""

        async def read() -> int:
            client = connect(self.run.redis_url)
            try:
                return len([k async for k in client.scan_iter(match=f"{self.settings.key_prefix}:{{*}}:log")])
            finally:
                await client.aclose()

        return asyncio.run(read())

    def remembered_ids(self) -> set[str]:
        """Every txn_id still in some customer's dedup memory."""

        async def read() -> set[str]:
            client = connect(self.run.redis_url)
            try:
                states = await load_all(reader_store(client, self.settings))
            finally:
                await client.aclose()
            return {txn for state in states for txn in state.seen}

        return asyncio.run(read())

    def applied_total(self) -> int:
        """Events applied, from the states themselves (exact, unlike the stats counter)."""

        async def read() -> int:
            client = connect(self.run.redis_url)
            try:
                return sum(s.applied_total for s in await load_all(reader_store(client, self.settings)))
            finally:
                await client.aclose()

        return asyncio.run(read())


LAST_DEAD_REASONS: Counter[str] = Counter()


def _nonzero(cells: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {day: {c: v for c, v in row.items() if v} for day, row in cells.items() if any(row.values())}


def http_get(url: str) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode()
    return status, json.loads(text) if text.startswith("{") else text


def retried_batches(port: int) -> float:
    """``fundflow_transient_retries_total`` of the worker serving ``port``: batches it retried."""
    _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
    for line in str(metrics).splitlines():
        if line.startswith("fundflow_transient_retries_total "):
            return float(line.split()[1])
    return 0.0


def wait_retrying(port: int, at_least: float = 2, timeout: float = 30) -> None:
    """Until the worker serving ``port`` has retried a batch ``at_least`` times: it meets the
    outage and backs off (what a fixed sleep used to hope for)."""
    deadline = time.monotonic() + timeout
    while retried_batches(port) < at_least:
        assert time.monotonic() < deadline, "the worker never retried a batch"
        time.sleep(0.2)
