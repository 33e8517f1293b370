"""``make soak``: the Berka data replayed in a loop (fresh ids) for N minutes at
about 70% of the measured maximum rate, on the embedded stack with a real worker.

Every interval it prints consumer lag, committed offsets, worker and Redis
memory, and at the end a verdict on the three things long-running Faust
deployments most often get wrong:

* lag keeps returning to (near) zero — the worker keeps up and never silently stops;
* committed offsets keep advancing — commits never stall;
* memory stays flat — worker RSS and Redis memory stop growing once warm.

Exit code 0 when all three hold, 1 otherwise. ``fundflow soak --help``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streams.clients import connect, start_producer
from streams.errors import ConfigError
from streams.local.orchestra import LocalRun, committed_offsets, group_lag
from streams.settings import Settings
from streams.tools.berka import berka_lines
from streams.tools.replay import SYNTHETIC_SKEW_SECONDS, loop_shift_days, replay, with_fresh_ids
from streams.topics import INPUT_TOPICS

MIB = 1024 * 1024


@dataclass(slots=True)
class Sample:
    minute: float
    lag: int
    min_lag: int
    committed: int
    worker_rss: int
    redis_memory: int
    customers: int


@dataclass(slots=True)
class Verdict:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def check(self, ok: bool, text: str) -> None:
        self.ok &= ok
        self.lines.append(f"{'PASS' if ok else 'FAIL'}  {text}")


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def used_memory(url: str) -> tuple[int, int]:
    client = connect(url)
    try:
        info = await client.info("memory")
        keys = int(await client.dbsize())
        return int(info["used_memory"]), keys
    finally:
        await client.aclose()


async def measure_max_rate(run: LocalRun, lines: list[bytes], shift: int) -> tuple[float, int]:
    """Warm up (group join, first loop), then time one loop at full speed; returns (events/s, loops used)."""
    producer = await start_producer(run.settings, run.bootstrap)
    try:
        await replay(lines, producer)
        await run.wait_caught_up(len(lines), timeout=300)
        started = time.monotonic()
        await replay(with_fresh_ids(lines, 1, shift), producer)
        await run.wait_caught_up(2 * len(lines), timeout=300, poll=0.2)
    finally:
        await producer.stop()
    return len(lines) / (time.monotonic() - started), 2


async def soak(
    run: LocalRun, lines: list[bytes], minutes: float, rate: float, interval: float, loops_used: int
) -> list[Sample]:
    shift = loop_shift_days(lines)
    producer = await start_producer(run.settings, run.bootstrap)

    def endless() -> Iterator[bytes]:
        loop = loops_used
        while True:
            yield from with_fresh_ids(lines, loop, shift)
            loop += 1

    sender = asyncio.create_task(replay(endless(), producer, rate=rate))
    samples: list[Sample] = []
    started = time.monotonic()
    worker = run.workers[0]
    try:
        while time.monotonic() - started < minutes * 60:
            min_lag: int | None = None
            window_end = time.monotonic() + interval
            lag = 0
            while time.monotonic() < window_end:
                run.check_workers()
                if sender.done():
                    sender.result()  # raises what stopped the producer
                lags = await group_lag(run.settings, run.bootstrap, run.settings.app_id, INPUT_TOPICS)
                lag = sum(lags.values())
                min_lag = lag if min_lag is None else min(min_lag, lag)
                await asyncio.sleep(1.0)
            committed = sum(
                (await committed_offsets(run.settings, run.bootstrap, run.settings.app_id, list(lags))).values()
            )
            memory, keys = await used_memory(run.redis_url)
            sample = Sample(
                minute=(time.monotonic() - started) / 60,
                lag=lag,
                min_lag=min_lag or 0,
                committed=committed,
                worker_rss=rss_bytes(worker.pid),
                redis_memory=memory,
                customers=keys,
            )
            samples.append(sample)
            print(
                f"{sample.minute:6.1f} min  lag {sample.lag:>7} (min {sample.min_lag:>6})  committed {committed:>10}  "
                f"worker RSS {sample.worker_rss / MIB:7.1f} MiB  redis {memory / MIB:7.1f} MiB  keys {keys}",
                flush=True,
            )
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await producer.stop()
    return samples


def judge(samples: list[Sample], rate: float, batch: int) -> Verdict:
    verdict = Verdict()
    if len(samples) < 2:
        verdict.check(False, "too few samples: run longer than two intervals")
        return verdict
    near_zero = max(2 * batch, int(rate))  # one second of traffic or two batches
    stuck = [s for s in samples if s.min_lag > near_zero]
    verdict.check(
        not stuck, f"lag returned to <= {near_zero} in every interval (worst minimum {max(s.min_lag for s in samples)})"
    )
    stalled = [b for a, b in itertools.pairwise(samples) if b.committed <= a.committed]
    verdict.check(
        not stalled, f"committed offsets advanced in every interval ({samples[0].committed} -> {samples[-1].committed})"
    )
    warm = samples[len(samples) // 2] if len(samples) > 2 else samples[0]
    last = samples[-1]
    rss_ok = last.worker_rss <= warm.worker_rss * 1.25 + 32 * MIB
    verdict.check(rss_ok, f"worker RSS flat: {warm.worker_rss / MIB:.1f} -> {last.worker_rss / MIB:.1f} MiB")
    redis_ok = last.redis_memory <= warm.redis_memory * 1.25 + 16 * MIB
    verdict.check(redis_ok, f"Redis memory flat: {warm.redis_memory / MIB:.1f} -> {last.redis_memory / MIB:.1f} MiB")
    return verdict


def run_soak_command(
    berka: Path | None, minutes: float, interval: float, rate_fraction: float, rate: float | None, var: Path
) -> int:
    """``fundflow soak`` (``make soak``): exit 0 when the three checks above hold, 1 otherwise."""
    if not 0 < rate_fraction <= 1:
        raise ConfigError("--rate-fraction must be in (0, 1]")
    settings = Settings(
        kafka_bootstrap=None,
        redis_url=None,
        var_dir=var,
        partitions=4,
        event_time_max_skew_seconds=SYNTHETIC_SKEW_SECONDS,
    )
    lines = berka_lines(berka, settings.zone)
    with LocalRun(settings, var) as run:
        run.start_worker()
        shift = loop_shift_days(lines)
        if rate:
            loops_used = 0
        else:
            maximum, loops_used = asyncio.run(measure_max_rate(run, lines, shift))
            rate = maximum * rate_fraction
            print(f"measured maximum {maximum:.0f} events/s; soaking at {rate:.0f} events/s", flush=True)
        samples = asyncio.run(soak(run, lines, minutes, rate, interval, loops_used))
    verdict = judge(samples, rate, settings.batch_max_events)
    print("\n".join(verdict.lines))
    return 0 if verdict.ok else 1
