"""``make soak``: many customers, event time bounded by the wall clock, on the embedded stack
with a real worker, for N minutes (docs/performance.md, "An honest soak").

* **Many customers**: ``--customers`` (default ``DEFAULT_CUSTOMERS``) made of copies of the
  Berka data's customers with fresh ids (``replay.population``).
* **Warm-up** (not judged): every customer's history, and then the data's last
  ``WINDOW_DAYS`` days once more (``soak_stream``), produced as fast as the worker takes
  it, the way a bank's initial load comes. The customers then have full windows, lots and
  remembered ids of the traffic the soak sends, so nothing that grows with a history
  (the data's accounts open through 1993 and get busier) still grows in the soak.
* **The soak**: those last ``WINDOW_DAYS`` days again and again, moved on in event time
  and each account's ledger carried, event time running at most ``--speedup`` (default
  ``DEFAULT_SPEEDUP``) times the wall clock, so N minutes are a bounded number of event
  days whatever the load, and the memory verdict sees leaks, not days.

Every interval it prints consumer lag, committed offsets, worker and Redis memory and the
event time reached, and at the end a verdict:

* event time stayed within the bound;
* lag keeps returning to (near) zero — the worker keeps up and never silently stops;
* committed offsets keep advancing — commits never stall;
* memory stays flat — worker RSS and Redis memory after the warm-up, Redis beside the
  看板, and the 看板 grows by its days and no faster (``judge``).

Exit code 0 when all hold, 1 otherwise. ``fundflow soak --help``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from streams.clients import connect, start_producer
from streams.errors import ConfigError
from streams.local.orchestra import LocalRun, committed_offsets, group_lag
from streams.settings import Settings
from streams.storage.keys import Keys
from streams.tools.berka import berka_lines
from streams.tools.replay import (
    SYNTHETIC_SKEW_SECONDS,
    event_time,
    net_flows,
    population,
    population_id,
    replay,
    route,
    with_fresh_ids,
)
from streams.tools.scale import COEFFICIENTS, predicted_bytes
from streams.topics import INPUT_TOPICS

MIB = 1024 * 1024
DAY = 86_400.0
# The soak's customers: 17 copies of the data's 1,229, so what grows with customers (state,
# cache, tiers, the 看板's daily sets) is the bulk of the memory, and the warm-up (every
# customer's history once) takes minutes, not an hour, on the embedded stack.
DEFAULT_CUSTOMERS = 20_000
# The bound on event time: one event day per 10 s of wall clock, so the default 15 minutes are
# the data's last 90 days once (docs/performance.md, "An honest soak").
DEFAULT_SPEEDUP = DAY / 10
WINDOW_DAYS = 90  # the soak's days: the data's last quarter, every one of its accounts open
# The replay producer's linger: at most one stored batch per partition per second, as the
# demo (docs/demo.md, "What the demo does about it"); at the default 5 ms a soak's producer
# would reach the embedded broker's fetch stall within minutes.
SOAK_LINGER_MS = 1000
RSS_GROWTH, RSS_SLACK = 1.25, 32 * MIB  # worker RSS: allocator and cache churn, not a leak
REDIS_GROWTH, REDIS_SLACK = 1.10, 8 * MIB  # Redis beside the 看板: state churn, not a leak
MODEL_TOLERANCE = 0.20  # the issue's: measured against predicted, as make bench-scale checks it
BOARD_GROWTH, BOARD_SLACK = 1.5, 2 * MIB  # the 看板 per soak day against the same day in the warm-up


@dataclass(slots=True)
class Sample:
    minute: float
    lag: int
    min_lag: int
    committed: int
    worker_rss: int
    redis_memory: int
    keys: int
    board_bytes: int  # the 看板's keys (``board_bytes``): they grow with event days by design
    event_days: float  # event time the producer reached, in days since the soak's first event
    predicted: int = 0  # the memory model's bytes for what Redis holds (``model_bytes``); 0: not measured


@dataclass(slots=True)
class Verdict:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def check(self, ok: bool, text: str) -> None:
        self.ok &= ok
        self.lines.append(f"{'PASS' if ok else 'FAIL'}  {text}")

    def note(self, text: str) -> None:
        self.lines.append(f"NOTE  {text}")


@dataclass(slots=True)
class Plan:
    """The soak's traffic: the warm-up's lines and the window's, and what they make."""

    warmup: list[bytes]
    window: list[bytes]
    copies: int
    window_days: int
    speedup: float
    customers: int  # the data's times ``copies``

    @property
    def mean_rate(self) -> float:
        """Events/s the window makes at ``speedup``."""
        return len(self.window) * self.copies * self.speedup / (self.window_days * DAY)


def plan(lines: list[bytes], customers: int, speedup: float, window_days: int = WINDOW_DAYS) -> Plan:
    """Cut ``lines`` into the warm-up (before the last ``window_days`` local days) and the
    window, with as many copies of the data's customers as ``customers`` needs."""
    dates = sorted({day for day in map(_day, lines) if day is not None})
    if not dates:
        raise ConfigError("the data has no event with a ts")
    last = dt.date.fromisoformat(dates[-1])
    first_day = (last - dt.timedelta(days=window_days - 1)).isoformat()
    if first_day <= dates[0]:
        raise ConfigError(f"the data spans {len(dates)} days: too few for a {window_days}-day soak after a warm-up")
    warmup: list[bytes] = []
    window: list[bytes] = []
    for line in lines:
        day = _day(line)
        (window if day is not None and day >= first_day else warmup).append(line)
    data_customers = len({key for _, key, _ in map(route, lines) if key is not None})
    copies = max(1, math.ceil(customers / max(1, data_customers)))
    return Plan(warmup, window, copies, window_days, speedup, data_customers * copies)


def _day(line: bytes) -> str | None:
    """The local date (``YYYY-MM-DD``) of a line's ts; None when it has none."""
    obj = route(line)[2]
    stamp = obj.get("ts") if obj is not None else None
    return stamp[:10] if isinstance(stamp, str) and len(stamp) >= 10 else None


def soak_stream(window: list[bytes], copies: int, window_days: int, first: int = 0) -> Iterator[bytes]:
    """The window, all copies, again and again from pass ``first``: pass ``n`` moved on
    ``n * window_days`` in event time with new txn_ids and each account's ledger carried, so
    the same customers go on (their number, and so their memory, stays what it is) and
    nothing is a duplicate or a reconciliation break. A pass at the default bound lasts 15
    minutes; over hours the balances drift up by a quarter's net flow a pass (docs/demo.md
    says why the demo loops generations instead)."""
    net = net_flows(window)
    ledger: dict[str, Decimal] = {
        population_id(account, copy): flow for account, flow in net.items() for copy in range(copies)
    }
    for loop in itertools.count(first):
        yield from with_fresh_ids(population(window, copies), loop, window_days, ledger_shift=ledger)


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def model_bytes(url: str, settings: Settings, customers: int) -> int:
    """What the memory model (``streams.tools.scale``, docs/scale.md) says Redis's
    ``used_memory`` beside the 看板 is for ``customers`` with the findings and feed entries it
    holds now; 0 while the model's coefficients are not measured. Beside the 看板: the model's
    看板 is a bank with Berka's mean activity, the soak's days are the data's busiest (its
    last quarter), and ``judge`` holds the 看板 to its own days instead."""
    if not COEFFICIENTS.customer:
        return 0
    keys = Keys(settings.key_prefix)
    client = connect(url)
    try:
        findings = 0
        async with client.pipeline(transaction=False) as pipe:
            async for key in client.scan_iter(match=f"{settings.key_prefix}:{{*}}:alerts", count=1000):
                pipe.llen(key)
            findings = sum(int(n) for n in await pipe.execute())
        feed = int(await client.xlen(keys.feed))
    finally:
        await client.aclose()
    # no 看板 day kept before the latest and no customer active on it: the model's 看板 left out
    return predicted_bytes(customers, 0, findings, active_per_day=0.0, open_days=1, feed_entries=feed)


async def used_memory(url: str, prefix: str) -> tuple[int, int, int]:
    """Redis ``used_memory``, its key count, and the bytes of the 看板's keys (``MEMORY USAGE``)."""
    client = connect(url)
    try:
        info = await client.info("memory")
        keys = int(await client.dbsize())
        board = 0
        async for key in client.scan_iter(match=f"{prefix}:{{board*}}:board:*", count=1000):
            board += int(await client.memory_usage(key, samples=0) or 0)
        return int(info["used_memory"]), keys, board
    finally:
        await client.aclose()


async def warm_up(run: LocalRun, soak_plan: Plan) -> tuple[float, float]:
    """The customers' histories, then the window's first pass, as fast as the worker takes
    them; returns the seconds it took and what a day of the window adds to the 看板 (bytes:
    the window's days are the data's busiest, so the data's mean day would say too little)."""
    started = time.monotonic()
    producer = await start_producer(run.settings, run.bootstrap)
    first_pass = itertools.islice(
        soak_stream(soak_plan.window, soak_plan.copies, soak_plan.window_days), len(soak_plan.window) * soak_plan.copies
    )
    sent = 0
    board: list[int] = []
    try:
        for part in (population(soak_plan.warmup, soak_plan.copies), first_pass):
            sent += (await replay(part, producer)).sent
            await run.wait_caught_up(sent, timeout=max(600.0, sent / 200))
            board.append((await used_memory(run.redis_url, run.settings.key_prefix))[2])
    finally:
        await producer.stop()
    return time.monotonic() - started, (board[1] - board[0]) / soak_plan.window_days


async def soak(run: LocalRun, soak_plan: Plan, minutes: float, rate: float, interval: float) -> list[Sample]:
    settings = run.settings.model_copy(update={"producer_linger_ms": SOAK_LINGER_MS})
    producer = await start_producer(settings, run.bootstrap)
    reached: list[float | None] = [None, None]  # the first and the latest event time sent

    def watched() -> Iterator[bytes]:
        for line in soak_stream(soak_plan.window, soak_plan.copies, soak_plan.window_days, first=1):
            ts = event_time(route(line)[2])
            if ts is not None:
                reached[0] = ts if reached[0] is None else reached[0]
                reached[1] = ts
            yield line

    sender = asyncio.create_task(replay(watched(), producer, rate=rate, speedup=soak_plan.speedup))
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
            memory, keys, board = await used_memory(run.redis_url, run.settings.key_prefix)
            predicted = await model_bytes(run.redis_url, run.settings, soak_plan.customers)
            first, latest = reached
            sample = Sample(
                minute=(time.monotonic() - started) / 60,
                lag=lag,
                min_lag=min_lag or 0,
                committed=committed,
                worker_rss=rss_bytes(worker.pid),
                redis_memory=memory,
                keys=keys,
                board_bytes=board,
                event_days=(latest - first) / DAY if first is not None and latest is not None else 0.0,
                predicted=predicted,
            )
            samples.append(sample)
            print(
                f"{sample.minute:6.1f} min  event day {sample.event_days:6.1f}  lag {sample.lag:>7} "
                f"(min {sample.min_lag:>6})  committed {committed:>10}  worker RSS {sample.worker_rss / MIB:7.1f} MiB  "
                f"redis {memory / MIB:7.1f} MiB (看板 {board / MIB:5.1f})  keys {keys}",
                flush=True,
            )
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await producer.stop()
    return samples


def judge(samples: list[Sample], rate: float, batch: int, speedup: float, board_day: float) -> Verdict:
    """The verdict on the samples of the soak (the warm-up is not in them); ``board_day``: the
    bytes a day of the window added to the 看板 in the warm-up."""
    verdict = Verdict()
    if len(samples) < 2:
        verdict.check(False, "too few samples: run longer than two intervals")
        return verdict
    last = samples[-1]
    bound = speedup * last.minute * 60 / DAY
    verdict.check(
        last.event_days <= bound + 1,  # + a day: the line last taken may still wait for its time
        f"event time within {speedup:,.0f}x the wall clock: {last.event_days:.1f} event days "
        f"in {last.minute:.1f} min (bound {bound:.1f})",
    )
    near_zero = max(2 * batch, int(rate))  # one second of traffic or two batches
    stuck = [s for s in samples if s.min_lag > near_zero]
    verdict.check(
        not stuck, f"lag returned to <= {near_zero} in every interval (worst minimum {max(s.min_lag for s in samples)})"
    )
    stalled = [b for a, b in itertools.pairwise(samples) if b.committed <= a.committed]
    verdict.check(
        not stalled, f"committed offsets advanced in every interval ({samples[0].committed} -> {last.committed})"
    )
    # Memory is judged on floors: the least of the last quarter's samples against the least of
    # the second quarter's. A burst of the data (a month's first days) leaves changelogs and
    # outboxes until its customers are quiet, folded and published; a leak raises the floor.
    # The second quarter: by then the changelogs the soak's traffic keeps have filled up.
    quarter = len(samples) // 4
    reference = samples[quarter : quarter + max(1, quarter)]
    recent = samples[-max(1, quarter) :]

    def beside(sample: Sample) -> int:
        return sample.redis_memory - sample.board_bytes

    rss_before, rss_after = min(s.worker_rss for s in reference), min(s.worker_rss for s in recent)
    rss_ok = rss_after <= rss_before * RSS_GROWTH + RSS_SLACK
    verdict.check(rss_ok, f"worker RSS flat: {rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB (floors)")
    # Redis beside the 看板: after the warm-up nothing there grows with event time
    before, after = min(map(beside, reference)), min(map(beside, recent))
    redis_ok = after <= before * REDIS_GROWTH + REDIS_SLACK
    verdict.check(redis_ok, f"Redis memory flat beside the 看板: {before / MIB:.1f} -> {after / MIB:.1f} MiB (floors)")
    # the 看板 keeps days by design (FUNDFLOW_BOARD_DAYS_KEPT, closed days trimmed): the soak's
    # days may add what the same days added in the warm-up, and no more
    warm = reference[0]
    days = last.event_days - warm.event_days
    grown = last.board_bytes - warm.board_bytes
    board_ok = grown <= BOARD_GROWTH * max(board_day, 0.0) * days + BOARD_SLACK
    verdict.check(
        board_ok,
        f"看板 grows by its days: {warm.board_bytes / MIB:.1f} -> {last.board_bytes / MIB:.1f} MiB over "
        f"{days:.0f} event days ({grown / max(days, 1) / 1024:.0f} KiB a day; the same days in the warm-up "
        f"{board_day / 1024:.0f} KiB)",
    )
    # the model is Redis at rest (changelogs folded, outboxes published): the floor again
    rest = min(recent, key=beside)
    if rest.predicted:
        verdict.check(
            abs(beside(rest) - rest.predicted) <= MODEL_TOLERANCE * rest.predicted,
            f"Redis beside the 看板 within {MODEL_TOLERANCE:.0%} of the memory model: {beside(rest) / MIB:.1f} MiB "
            f"used, {rest.predicted / MIB:.1f} MiB predicted (docs/scale.md)",
        )
    else:
        verdict.note("the memory model's coefficients are not measured (streams.tools.scale.COEFFICIENTS)")
    return verdict


def run_soak_command(
    berka: Path | None, minutes: float, interval: float, customers: int, speedup: float, rate: float | None, var: Path
) -> int:
    """``fundflow soak`` (``make soak``): exit 0 when the checks above hold, 1 otherwise."""
    if interval * 2 > minutes * 60:
        raise ConfigError("--interval must fit twice in --minutes (the verdict compares samples)")
    settings = Settings(
        kafka_bootstrap=None,
        redis_url=None,
        var_dir=var,
        partitions=4,
        event_time_max_skew_seconds=SYNTHETIC_SKEW_SECONDS,
    )
    soak_plan = plan(berka_lines(berka, settings.zone), customers, speedup)
    rate = rate or 2 * soak_plan.mean_rate  # a cap: a day's events come at 09:00, spread over its slot
    print(
        f"{soak_plan.customers:,} customers ({soak_plan.copies} copies of the data's); warm-up: "
        f"{(len(soak_plan.warmup) + len(soak_plan.window)) * soak_plan.copies:,} events at full speed; then the "
        f"last {soak_plan.window_days} days again and again, at most {speedup:,.0f}x the wall clock "
        f"({DAY / speedup:.0f} s per event day): "
        f"{soak_plan.mean_rate:.0f} events/s on average, at most {rate:.0f}",
        flush=True,
    )
    with LocalRun(settings, var) as run:
        run.start_worker()
        seconds, board_day = asyncio.run(warm_up(run, soak_plan))
        print(f"warm-up done in {seconds:.0f} s; a window day added {board_day / 1024:.0f} KiB to the 看板", flush=True)
        samples = asyncio.run(soak(run, soak_plan, minutes, rate, interval))
    verdict = judge(samples, rate, settings.batch_max_events, speedup, board_day)
    print("\n".join(verdict.lines))
    return 0 if verdict.ok else 1
