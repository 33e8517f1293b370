"""Runs of the real pipeline on one machine: servers, topics, worker processes,
and the consumer-group lag that says when every event is processed.

Used by ``backtest``, ``demo``, the benchmarks and the connected tests.
Workers are real ``fundflow worker`` processes; they die with this process
(they are stopped in ``close``, and each is started in its own process group
so a terminal's Ctrl-C reaches only us, and we stop them in order; a parent-death
signal takes them down if we exit without ``close``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.clients import ensure_topics, kafka_client_kwargs
from streams.errors import ConfigError
from streams.local.servers import EMBEDDED_FETCH_MAX_WAIT_MS, Stack, die_with_parent, free_port
from streams.settings import Settings
from streams.topics import INPUT_TOPICS, all_topics


class LocalRun:
    def __init__(self, settings: Settings, log_dir: Path, *, persistent_redis: bool = False) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.persistent_redis = persistent_redis
        self.stack: Stack | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.web_ports: list[int] = []  # each worker's HTTP port (/metrics, /readyz), by start order

    def __enter__(self) -> LocalRun:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        settings = self.settings.model_copy(update={"var_dir": self.log_dir})
        self.stack = Stack(settings, persistent_redis=self.persistent_redis)
        self.stack.__enter__()
        asyncio.run(ensure_topics(self.bootstrap, all_topics(self.settings.partitions), self.settings))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bootstrap(self) -> str:
        assert self.stack is not None
        return self.stack.kafka_bootstrap

    @property
    def redis_url(self) -> str:
        assert self.stack is not None
        return self.stack.redis_url

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["FUNDFLOW_KAFKA_BOOTSTRAP"] = self.bootstrap
        env["FUNDFLOW_REDIS_URL"] = self.redis_url
        env["FUNDFLOW_APP_ID"] = self.settings.app_id
        env["FUNDFLOW_KEY_PREFIX"] = self.settings.key_prefix
        env["FUNDFLOW_PARTITIONS"] = str(self.settings.partitions)
        if self.settings.rules_file.exists():  # (whatever folder a local process runs in)
            env["FUNDFLOW_RULES_FILE"] = str(self.settings.rules_file.resolve())
        # (the synthetic loads of bench and soak move event time years ahead: they widen this)
        env["FUNDFLOW_EVENT_TIME_MAX_SKEW_SECONDS"] = str(self.settings.event_time_max_skew_seconds)
        if self.stack is not None and self.stack.broker is not None:
            env.setdefault("FUNDFLOW_FETCH_MAX_WAIT_MS", str(EMBEDDED_FETCH_MAX_WAIT_MS))
        env.update(extra)
        return env

    def start_worker(self, loglevel: str = "warning", **extra_env: str) -> subprocess.Popen[bytes]:
        index = len(self.workers)
        port = free_port()
        with (self.log_dir / f"worker-{index}.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streams.cli.main",
                    "worker",
                    "--web-port",
                    str(port),
                    "--loglevel",
                    loglevel,
                ],
                env=self.env(**extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        self.workers.append(process)
        self.web_ports.append(port)
        return process

    def stop_worker(self, process: subprocess.Popen[bytes], *, kill: bool = False, timeout: float = 20) -> None:
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        for process in self.workers:
            self.stop_worker(process)
        self.workers.clear()
        if self.stack is not None:
            self.stack.__exit__(None, None, None)
            self.stack = None

    def check_workers(self) -> None:
        for process in self.workers:
            code = process.poll()
            if code is not None and code != 0 and code != -signal.SIGKILL:
                raise ConfigError(f"a worker exited with code {code}; see {self.log_dir}/worker-*.log")

    async def lag(self, topics: Iterable[str] = INPUT_TOPICS) -> dict[TopicPartition, int]:
        return await group_lag(self.settings, self.bootstrap, self.settings.app_id, topics)

    async def wait_caught_up(self, expected: int, timeout: float, poll: float = 0.5) -> float:
        """Wait until the group committed every record of the input topics; returns seconds waited."""
        started = time.monotonic()
        while True:
            self.check_workers()
            lags = await self.lag()
            produced = await end_offsets_total(self.settings, self.bootstrap)
            if produced >= expected and lags and all(v == 0 for v in lags.values()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                behind = sum(lags.values()) if lags else expected
                raise ConfigError(f"timed out after {timeout:.0f}s with {behind} records not processed")
            await asyncio.sleep(poll)


async def _partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    await consumer.topics()  # refresh metadata
    return [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]


async def _end_offsets(settings: Settings, bootstrap: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """The high watermark of every partition of ``topics``.

    Read from a fetch response, not from ListOffsets: the embedded broker (Tansu
    0.6) answers ListOffsets(latest) with the base offset of the last record
    batch, which under-reports the end; a fetch's high watermark is right on
    Tansu and on Apache Kafka alike.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka_client_kwargs(settings))
    await consumer.start()
    try:
        partitions = await _partitions(consumer, list(topics))
        if not partitions:
            return {}
        listed: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, max(listed[tp] - 1, 0))
        ends = dict(listed)
        unknown = set(tp for tp in partitions if listed[tp] > 0)
        deadline = time.monotonic() + 10
        while unknown and time.monotonic() < deadline:
            await consumer.getmany(*unknown, timeout_ms=200, max_records=1)
            for tp in list(unknown):
                high = consumer.highwater(tp)
                if high is not None:
                    ends[tp] = max(high, listed[tp])
                    unknown.discard(tp)
        return ends
    finally:
        await consumer.stop()


async def end_offsets_total(settings: Settings, bootstrap: str, topics: Iterable[str] = INPUT_TOPICS) -> int:
    return sum((await _end_offsets(settings, bootstrap, topics)).values())


async def committed_offsets(
    settings: Settings, bootstrap: str, group: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """What ``group`` has committed (OffsetFetch through a consumer that never joins
    the group; the admin client's OffsetFetch does not decode against Tansu)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **kafka_client_kwargs(settings)
    )
    await consumer.start()
    try:
        result = {}
        for tp in partitions:
            offset = await consumer.committed(tp)
            result[tp] = offset if offset is not None and offset >= 0 else 0
        return result
    finally:
        await consumer.stop()


async def group_lag(
    settings: Settings, bootstrap: str, group: str, topics: Iterable[str] = INPUT_TOPICS
) -> dict[TopicPartition, int]:
    """Records not yet committed by ``group``, per input partition."""
    ends = await _end_offsets(settings, bootstrap, list(topics))
    committed = await committed_offsets(settings, bootstrap, group, ends)
    return {tp: max(end - committed.get(tp, 0), 0) for tp, end in ends.items()}


async def read_topic(settings: Settings, bootstrap: str, topic: str) -> list[bytes]:
    """Every record of ``topic`` from the beginning to its current end."""
    ends = await _end_offsets(settings, bootstrap, [topic])
    wanted = {tp: end for tp, end in ends.items() if end > 0}
    if not wanted:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_client_kwargs(settings),
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        consumer.assign(list(wanted))
        for tp in wanted:
            consumer.seek(tp, 0)
        remaining = dict(wanted)
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset < wanted[tp] and message.value is not None:
                        values.append(message.value)
                position = await consumer.position(tp)
                if position >= wanted[tp]:
                    remaining.pop(tp, None)
    finally:
        await consumer.stop()
    return values
