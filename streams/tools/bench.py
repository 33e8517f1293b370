"""``make bench``: FundFlow's throughput and latency beside the floor of its stack.

One run, one broker, one Redis, the same records (the Berka data, replayed
with fresh ids until there are ``--events`` of them), measured side by side:

  (a) bare aiokafka consuming the input topics;
  (b) a Faust agent that does nothing, per event (``async for``) and in
      batches (``streams.batcher``, manual acks: the way FundFlow's agent reads);
  (c) the full pipeline (``fundflow worker``, all rules on, Redis commits);
  end-to-end latency at light load (100/s) and at 50% and 80% of (c)'s rate (produce -> state committed,
  and produce -> alert on its topic); Redis memory per customer; the per-event
  cost of the pure step for a customer with a short and a very long history;
  (c) with one and with two workers; the analyst's case list among 100,000 cases
  (``streams.tools.casebench``).

Each consumer is timed from its first record to its last, so group joins and
process start-up are not counted. The speed of a shared 2-vCPU machine drifts
by tens of percent within minutes, so (b), (b') and (c) run in ``--rounds``
interleaved rounds (each round a fresh consumer group and, for (c), fresh
state): each row is the median round, each ratio the median of the rounds'
own ratios (a round's stages ran minutes, not a quarter of an hour, apart).
This is a measurement, not a test: nothing
here asserts a speed. ``--smoke`` runs every stage on a few thousand records so
the benchmark cannot rot (``make bench-smoke``, part of ``make test``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from rules.events import LoanEvent, TransactionEvent
from rules.state import CustomerState
from streams.app import BatchReader, faust_app, run_faust_worker
from streams.clients import kafka_client_kwargs, start_producer
from streams.errors import ConfigError
from streams.local.orchestra import LocalRun
from streams.local.servers import free_port
from streams.rulestep import build_step
from streams.settings import Settings
from streams.storage.codec import decode_state, encode_state
from streams.storage.keys import Keys
from streams.tiers import customer_count, tier_keys
from streams.tools import casebench, consentbench, shadowbench
from streams.tools.berka import SHIPPED_BERKA, berka_lines
from streams.tools.measure import percentiles
from streams.tools.memmodel import key_sizes
from streams.tools.replay import SYNTHETIC_SKEW_SECONDS, loop_shift_days, replay, route, with_fresh_ids
from streams.topics import ALERTS, INPUT_TOPICS

LIGHT_LOAD = 100.0  # events/s: the latency floor, when nothing queues
# The latency stages' producer sends what came due every this many ms, each record stamped
# with the moment it came due (a linger: aiokafka's default is 0, our tools' 5). Tansu, the
# embedded broker, lists every stored batch on each fetch: at 5 ms, 80% of (c) wrote so
# many small batches that by the stage's end the broker took the CPU of the two cores the
# worker shares with it, and the committed p99 was the broker's, not FundFlow's
# (docs/performance.md, "The latency stages' producer tick"). Both columns include the wait.
LATENCY_PRODUCER_LINGER_MS = 50
TIER_INDEX_WAIT_SECONDS = 60.0  # the memory stage waits for the first tier refresh (30 s)
SHARE_TARGET_MS = 25  # FundFlow's share at 80% of (c): committed p99 - bare consumer p99 (issue 18)
CASES, CASES_SMOKE = 100_000, 2_000  # the case-list stage (issue 19: "with 100,000 cases")


@dataclass(slots=True)
class Results:
    events: int = 0
    rows: dict[str, float] = field(default_factory=dict)  # stage -> events/s (the median round)
    rounds: dict[str, list[float]] = field(default_factory=dict)  # stage -> events/s of each round
    ratios: dict[str, list[float]] = field(default_factory=dict)  # "c/b", "c/b'" -> each round's ratio
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    cases: dict[str, Any] = field(default_factory=dict)  # the case list among many cases
    consent: dict[str, Any] = field(default_factory=dict)  # a bank's opt-out list imported (consentbench)
    shadow: dict[str, Any] = field(default_factory=dict)  # (c) with and without a shadow version (shadowbench)
    notes: list[str] = field(default_factory=list)


def fresh_loops(lines: list[bytes], first_loop: int = 0, fresh_customers: bool = True) -> Iterator[bytes]:
    """Berka again and again as new traffic. By default each loop is new customers (a bank
    with more customers); ``history_cost`` keeps one customer to make its history long."""
    shift = loop_shift_days(lines)
    loop = first_loop
    while True:
        yield from with_fresh_ids(lines, loop, shift_days=shift, fresh_customers=fresh_customers)
        loop += 1


# --- (a) bare aiokafka -------------------------------------------------------------


async def bare_aiokafka(settings: Settings, bootstrap: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **kafka_client_kwargs(settings),
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for topic in INPUT_TOPICS for p in (consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await consumer.topics()
            partitions = [
                TopicPartition(topic, p) for topic in INPUT_TOPICS for p in (consumer.partitions_for_topic(topic) or ())
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()  # the first fetch is part of the work
        deadline = time.monotonic() + 300
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(messages) for messages in batches.values())
        if seen < expected:
            raise ConfigError(f"bare consumer saw {seen} of {expected} records")
        return expected / (time.perf_counter() - started)
    finally:
        await consumer.stop()


# --- (b) a Faust agent that does nothing (run as its own process) ----------------


def noop_agent_main(mode: str, expected: int, result: Path, web_port: int) -> int:
    """The process body of stage (b): count records, write timings, do nothing else."""

    settings = Settings(web_port=web_port)
    # (b) is stock Faust, the framework's floor; (b') reads as FundFlow's worker does
    app = faust_app(settings, settings.kafka_bootstrap or "", fast_drain=mode != "per-event")
    state: dict[str, Any] = {"n": 0, "t0": None}

    def count(n: int) -> None:
        if state["t0"] is None:
            state["t0"] = time.perf_counter()
        state["n"] += n
        if state["n"] >= expected and not result.exists():
            result.write_text(json.dumps({"n": state["n"], "seconds": time.perf_counter() - state["t0"]}))

    if mode == "per-event":
        source = app.topic(*INPUT_TOPICS, key_serializer="raw", value_serializer="raw")

        @app.agent(source, name="noop")
        async def noop(stream: Any) -> None:
            async for _ in stream.events():
                count(1)

    else:

        async def handle(records: list[Any]) -> None:
            count(len(records))

        BatchReader(app, settings, handle)  # read and ack as FundFlow's worker does

    run_faust_worker(app, settings, "warning")  # as a FundFlow worker runs: the floor stays fair
    return 0


def noop_agent(run: LocalRun, mode: str, expected: int, log_dir: Path, timeout: float, round_: int = 0) -> float:
    result = log_dir / f"noop-{mode}.json"
    result.unlink(missing_ok=True)
    env = run.env(FUNDFLOW_APP_ID=f"bench-noop-{mode}-{os.getpid()}-{round_}")  # a fresh group reads it all
    with (log_dir / f"noop-{mode}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.tools.bench", "noop", mode, str(expected), str(result), str(free_port())],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not result.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(f"the do-nothing agent ({mode}) did not finish; see {log_dir}/noop-{mode}.log")
            time.sleep(0.1)
        time.sleep(0.1)
        timing = json.loads(result.read_text())
        return float(timing["n"] / timing["seconds"])
    finally:
        run.stop_worker(process)


# --- (c) the full pipeline ----------------------------------------------------------


async def pipeline_rate(run: LocalRun, prefix: str, expected: int, timeout: float) -> float:
    """events/s of the workers writing under ``prefix``: first applied record to the last."""

    client = aioredis.Redis.from_url(run.redis_url)
    samples: list[tuple[float, int]] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            run.check_workers()
            applied = int(await client.hget(f"{prefix}:stats", "applied") or 0)
            samples.append((time.perf_counter(), applied))
            if applied >= expected:
                break
            if time.monotonic() > deadline:
                raise ConfigError(f"pipeline applied {applied} of {expected} in {timeout:.0f}s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    # from the last moment nothing was applied yet (group join and start-up excluded)
    start = max((t for t, n in samples if n == 0), default=samples[0][0])
    end, applied = samples[-1]
    return applied / (end - start)


async def latency_at(
    run: LocalRun,
    settings: Settings,
    prefix: str,
    lines: Iterator[bytes],
    rate: float,
    seconds: float,
    fetch_wait_ms: int,
) -> dict[str, Any]:
    """Produce at ``rate`` for ``seconds``; percentiles of produce -> state committed and -> alert,
    and, side by side on the same records, the broker's share: a bare aiokafka consumer,
    assigned every input partition and fetching as the worker does (the same max wait),
    produce -> record in hand. All from the record's timestamp (taken as it is sent)."""

    count = max(int(rate * seconds), 1)
    batch = list(islice(lines, count))
    in_hand_ms: list[int] = []
    records: list[tuple[int, bytes | None]] = []  # (timestamp, value): parsed after the stage, not during it
    client = aioredis.Redis.from_url(run.redis_url)
    await client.delete(f"{prefix}:stats:latency_ms")
    before = int(await client.hget(f"{prefix}:stats", "applied") or 0)
    alerts = AIOKafkaConsumer(
        ALERTS, bootstrap_servers=run.bootstrap, auto_offset_reset="latest", **kafka_client_kwargs(settings)
    )
    floor = AIOKafkaConsumer(
        bootstrap_servers=run.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
        **kafka_client_kwargs(settings),
    )
    await alerts.start()
    await floor.start()
    try:
        await alerts.getmany(timeout_ms=200)  # position at the end before producing
        await floor.topics()
        partitions = [TopicPartition(t, p) for t in INPUT_TOPICS for p in (floor.partitions_for_topic(t) or ())]
        floor.assign(partitions)
        await floor.seek_to_end(*partitions)
        for tp in partitions:  # resolve the positions now, not after the first records land
            await floor.position(tp)

        # Tansu's "latest" offset can be the start of the last batch, not its end: records
        # sent before this stage are told apart by their timestamps
        stage_start_ms = int(time.time() * 1000)

        async def in_hand() -> None:
            while len(in_hand_ms) < count:
                batches = await floor.getmany(timeout_ms=500)
                now = int(time.time() * 1000)
                for messages in batches.values():
                    for m in messages:
                        if m.timestamp < stage_start_ms:
                            continue
                        in_hand_ms.append(now - m.timestamp)
                        records.append((m.timestamp, m.value))

        floor_task = asyncio.create_task(in_hand())
        producer = await start_producer(settings.model_copy(update={"producer_linger_ms": 0}), run.bootstrap)
        try:
            await paced_send(batch, producer, rate, LATENCY_PRODUCER_LINGER_MS / 1000)
        finally:
            await producer.stop()
        deadline = time.monotonic() + 120
        while int(await client.hget(f"{prefix}:stats", "applied") or 0) < before + len(batch):
            if time.monotonic() > deadline:
                raise ConfigError("latency stage: the pipeline did not catch up")
            await asyncio.sleep(0.1)
        try:
            await asyncio.wait_for(floor_task, 60)
        except TimeoutError:
            raise ConfigError(f"latency stage: the bare consumer saw {len(in_hand_ms)} of {count}") from None
        committed = sorted(int(x) for x in await client.lrange(f"{prefix}:stats:latency_ms", 0, -1))
        produced_ms: dict[str, int] = {}  # txn_id -> its record's timestamp
        for timestamp, value in records:
            txn_id = orjson.loads(value or b"{}").get("txn_id")
            if txn_id is not None:
                produced_ms[str(txn_id)] = timestamp
        alert_ms: list[int] = []
        end = time.monotonic() + 3
        while time.monotonic() < end:
            for messages in (await alerts.getmany(timeout_ms=300)).values():
                for message in messages:
                    finding = orjson.loads(message.value or b"{}")
                    trigger = finding.get("trigger_txn_id")
                    if trigger in produced_ms and message.timestamp:
                        alert_ms.append(int(message.timestamp) - produced_ms[trigger])
    finally:
        await alerts.stop()
        await floor.stop()
        await client.aclose()
    return {
        "rate": round(rate),
        "events": len(batch),
        "committed_ms": percentiles(committed),
        "alert_ms": percentiles(alert_ms),
        "bare_consumer_ms": percentiles(in_hand_ms),
    }


async def paced_send(lines: list[bytes], producer: AIOKafkaProducer, rate: float, tick: float) -> None:
    """Send ``lines`` at ``rate``: every ``tick`` seconds, what came due meanwhile, in one
    batch per partition, each record stamped with the moment it came due (so its wait for
    the tick is in every latency measured from it, as a producer's linger is). The load
    generator shares the machine's cores with the worker it measures: routed and placed
    before the clock starts and appended by aiokafka's C batch builder, it takes about half
    the CPU of ``streams.tools.replay.replay`` (a ``send`` per record), which on two cores
    the worker felt (docs/performance.md, sixth session, item 1). Records go to the
    partition the producer's default partitioner would choose for their key."""
    routed = [route(line) for line in lines]
    partitions = {topic: sorted(await producer.partitions_for(topic)) for topic in {t for t, _, _ in routed}}
    partitioner = DefaultPartitioner()
    placed = [
        (topic, partitioner(key, partitions[topic], partitions[topic]), key, line)
        for (topic, key, _), line in zip(routed, lines, strict=True)
    ]
    loop = asyncio.get_running_loop()
    started, wall = loop.time(), time.time()
    sent: list[asyncio.Future[Any]] = []
    i = 0
    while i < len(placed):
        due = min(len(placed), int((loop.time() - started) * rate) + 1)
        batches: dict[tuple[str, int], Any] = {}
        for j in range(i, due):
            topic, partition, key, value = placed[j]
            stamp = int((wall + j / rate) * 1000)
            builder = batches.get((topic, partition))
            if builder is None or builder.append(key=key, value=value, timestamp=stamp) is None:
                if builder is not None:  # full: send it, start another
                    sent.append(await producer.send_batch(builder, topic, partition=partition))
                builder = batches[(topic, partition)] = producer.create_batch()
                builder.append(key=key, value=value, timestamp=stamp)
        for (topic, partition), builder in batches.items():
            sent.append(await producer.send_batch(builder, topic, partition=partition))
        i = due
        await asyncio.sleep(tick)
    await asyncio.gather(*sent)


SUFFIXES = (":state", ":log", ":outbox", ":alerts")  # a customer's keys (streams.storage.keys)


async def redis_memory(run: LocalRun, prefix: str, wait: float = TIER_INDEX_WAIT_SECONDS) -> dict[str, Any]:
    """Bytes per customer: MEMORY USAGE of each customer's keys (state, changelog, outbox, alerts) plus
    their share of the tier index, once the worker's tier refresh (every 30 s) has written
    it: measured before, a run counted less than a worker keeps (docs/performance.md, "The
    memory stage and the tier index")."""

    client = aioredis.Redis.from_url(run.redis_url)
    try:
        deadline = time.monotonic() + wait
        keys = Keys(prefix)
        while not await customer_count(client, keys) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        sizes: list[int] = []
        logs: list[int] = []  # of which the changelog (0: none: folded, or never logged)
        pattern = f"{prefix}:{{*}}:state"
        bases = [key.decode()[: -len(":state")] async for key in client.scan_iter(match=pattern, count=1000)]
        replies = await key_sizes(client, [base + suffix for base in bases for suffix in SUFFIXES])
        n, log_at = len(SUFFIXES), SUFFIXES.index(":log")
        for i in range(len(bases)):
            sizes.append(sum(replies[n * i : n * i + n]))
            logs.append(replies[n * i + log_at])
        index = sum(await key_sizes(client, await tier_keys(client, keys)))  # the tier index, every key of it
    finally:
        await client.aclose()
    if not sizes:
        return {"customers": 0}
    sizes.sort()
    per_index = index / len(sizes)
    return {
        "customers": len(sizes),
        "mean_bytes": round(statistics.mean(sizes) + per_index),
        "p50_bytes": sizes[len(sizes) // 2] + round(per_index),
        "p95_bytes": sizes[int(len(sizes) * 0.95)] + round(per_index),
        "max_bytes": sizes[-1] + round(per_index),
        "with_changelog": sum(1 for n in logs if n),
        "changelog_mean_bytes": round(statistics.mean(logs)),
    }


# --- per-event cost vs history (in process, the pure step and the codec) -----------


def history_cost(lines: list[bytes], settings: Settings, long_events: int, measured: int) -> dict[str, Any]:
    """µs per event for one customer after a short and after a very long history: the
    step and the state encode, what each event costs a worker that holds the customer in
    its cache (beyond Kafka and Redis); and the decode a cache miss adds (after a restart
    or a rebalance)."""

    by_customer: dict[str, list[bytes]] = {}
    for line in lines:
        _, key, obj = route(line)
        if key and obj and "txn_id" in obj:
            by_customer.setdefault(key.decode(), []).append(line)
    customer, own = max(by_customer.items(), key=lambda item: len(item[1]))
    step = build_step(settings)

    def events() -> Iterator[TransactionEvent | LoanEvent]:
        for line in fresh_loops(own, fresh_customers=False):
            yield TransactionEvent.model_validate_json(line)

    def timed(
        state: CustomerState, stream: Iterator[TransactionEvent | LoanEvent], n: int
    ) -> tuple[float, float, CustomerState]:
        started = time.perf_counter()
        for event in islice(stream, n):
            step(state, event)
            blob = encode_state(state, compress=settings.compress_state)
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(n):
            decode_state(blob)
        return elapsed / n * 1e6, (time.perf_counter() - started) / n * 1e6, state

    # one customer's history grows; the cost is measured after 50 events, then after 10% and
    # all of ``long_events`` (each measurement's own events count into the history after it)
    points = [50, max(long_events // 10, 100), long_events]
    state = CustomerState(customer)
    stream = events()
    done = 0
    costs, misses, sizes, lengths = [], [], [], []
    for point in points:
        for event in islice(stream, max(point - done, 0)):
            step(state, event)
        done = max(point, done)
        lengths.append(done)
        cost, miss, state = timed(state, stream, measured)
        costs.append(cost)
        misses.append(miss)
        sizes.append(len(encode_state(state, compress=settings.compress_state)))
        done += measured
    return {
        "customer": customer,
        "events_per_loop": len(own),
        "history_events": lengths,
        "us_per_event": [round(c, 1) for c in costs],
        "us_decode_on_cache_miss": [round(c, 1) for c in misses],
        "state_bytes": sizes,
        "lots_kept": len(state.lots),
        "lot_cap": settings.lot_cap,
        "long_over_short": round(costs[-1] / costs[0], 2),
        "long_over_middle": round(costs[-1] / costs[1], 2),
    }


# --- the whole run ------------------------------------------------------------------


async def produce_all(settings: Settings, bootstrap: str, lines: list[bytes]) -> float:
    producer = await start_producer(settings, bootstrap)
    try:
        stats = await replay(lines, producer)
    finally:
        await producer.stop()
    return stats.rate


STAGE_B = "(b) Faust agent doing nothing (per event)"
STAGE_B2 = "(b') Faust consumer doing nothing, read as FundFlow's worker reads (batched, acked after)"
STAGE_C = "(c) FundFlow full pipeline, 1 worker"


def run_bench(settings: Settings, berka: Path, events: int, smoke: bool, out: Path | None, rounds: int = 1) -> Results:
    results = Results(events=events)
    source = berka_lines(berka, settings.zone)
    generator = fresh_loops(source)
    data = list(islice(generator, events))
    timeout = 60.0 if smoke else 900.0
    settings = settings.model_copy(
        update={"partitions": max(settings.partitions, 2), "event_time_max_skew_seconds": SYNTHETIC_SKEW_SECONDS}
    )
    with tempfile.TemporaryDirectory(prefix="fundflow-bench-") as tmp:
        log_dir = Path(tmp)
        with LocalRun(settings.model_copy(update={"app_id": "bench-full-1", "key_prefix": "bench1"}), log_dir) as run:
            step("producing", len(data))
            results.rows["produce (aiokafka, acks=all)"] = asyncio.run(produce_all(settings, run.bootstrap, data))
            step("(a) bare aiokafka")
            results.rows["(a) bare aiokafka consumer"] = asyncio.run(bare_aiokafka(settings, run.bootstrap, len(data)))
            measured: dict[str, list[float]] = {STAGE_B: [], STAGE_B2: [], STAGE_C: []}
            for r in range(rounds):
                last = r == rounds - 1
                of = f" (round {r + 1} of {rounds})" if rounds > 1 else ""
                step(f"(b) do-nothing Faust agent, per event{of}")
                measured[STAGE_B].append(noop_agent(run, "per-event", len(data), log_dir, timeout, r))
                step(f"(b') do-nothing Faust agent, batches{of}")
                measured[STAGE_B2].append(noop_agent(run, "batches", len(data), log_dir, timeout, r))
                step(f"(c) full pipeline, 1 worker{of}")
                # the last round's worker stays for the memory and latency stages, under "bench1"
                prefix = "bench1" if last else f"bench1r{r}"
                env = {} if last else {"FUNDFLOW_APP_ID": f"bench-full-1-r{r}", "FUNDFLOW_KEY_PREFIX": prefix}
                worker = run.start_worker(**env)
                measured[STAGE_C].append(asyncio.run(pipeline_rate(run, prefix, len(data), timeout)))
                if not last:
                    run.stop_worker(worker)
            results.rounds = measured
            for name, rates in measured.items():
                results.rows[name] = statistics.median(rates)
            for name, floor in (("c/b", STAGE_B), ("c/b'", STAGE_B2)):
                results.ratios[name] = [c / b for c, b in zip(measured[STAGE_C], measured[floor], strict=True)]
            full = results.rows[STAGE_C]
            results.memory = asyncio.run(redis_memory(run, "bench1", 0.0 if smoke else TIER_INDEX_WAIT_SECONDS))
            seconds = 2.0 if smoke else 20.0
            # the worker's fetch wait (the embedded broker's own on Tansu) for the bare consumer beside it
            fetch_wait_ms = int(run.env().get("FUNDFLOW_FETCH_MAX_WAIT_MS", settings.fetch_max_wait_ms))
            loads = {"light": (LIGHT_LOAD, seconds / 2), "50%": (full * 0.5, seconds), "80%": (full * 0.8, seconds)}
            for name, (rate, how_long) in loads.items():
                step(f"latency at {name} load" if name == "light" else f"latency at {name} of (c)")
                results.latency[name] = asyncio.run(
                    latency_at(run, settings, "bench1", generator, rate, how_long, fetch_wait_ms)
                )
            run.stop_worker(worker)
            step("(c) full pipeline, 2 workers")
            env = {"FUNDFLOW_APP_ID": "bench-full-2", "FUNDFLOW_KEY_PREFIX": "bench2"}
            run.start_worker(**env)
            run.start_worker(**env)
            results.rows["(c2) FundFlow full pipeline, 2 workers"] = asyncio.run(
                pipeline_rate(run, "bench2", len(data), timeout)
            )
            step("(c) with a shadow version beside the live rules")
            results.shadow = shadowbench.shadow_stage(run, len(data), timeout, 1 if smoke else rounds, pipeline_rate)
            cases = CASES_SMOKE if smoke else CASES
            step(f"case list among {cases:,} cases")
            results.cases = casebench.case_list_speed(run, cases, 5 if smoke else 30)
            step("consent import")
            results.consent = consentbench.consent_stage(run.redis_url, smoke, run.log_dir)
    step("per-event cost vs history")
    results.history = history_cost(source, settings, 2_000 if smoke else 30_000, 200 if smoke else 2_000)
    results.notes.append(machine())
    print(render(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results_dict(results), indent=2))
    return results


def step(what: str, n: int | None = None) -> None:
    print(f"bench: {what}{f' {n} records' if n else ''} ...", file=sys.stderr, flush=True)


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpus} CPUs ({model or platform.processor()}), Python {platform.python_version()}, {platform.system()}"


def results_dict(results: Results) -> dict[str, Any]:
    return {
        "events": results.events,
        "events_per_second": {k: round(v) for k, v in results.rows.items()},
        "events_per_second_by_round": {k: [round(v) for v in rates] for k, rates in results.rounds.items()},
        "ratios_by_round": {k: [round(v, 3) for v in ratios] for k, ratios in results.ratios.items()},
        "latency": results.latency,
        "redis_memory_per_customer": results.memory,
        "per_event_cost_vs_history": results.history,
        "case_list": results.cases,
        "consent_import": results.consent,
        "shadow": results.shadow,
        "machine": results.notes,
    }


def render(results: Results) -> str:
    rows = results.rows
    a = rows.get("(a) bare aiokafka consumer", 0.0)
    b, b2, c = rows.get(STAGE_B, 0.0), rows.get(STAGE_B2, 0.0), rows.get(STAGE_C, 0.0)
    c2 = rows.get("(c2) FundFlow full pipeline, 2 workers", 0.0)
    out = [f"FundFlow benchmark: {results.events} Berka events, {results.notes[0] if results.notes else ''}", ""]
    out.append(f"{'stage':<56} {'events/s':>10}")
    for name, rate in rows.items():
        each = results.rounds.get(name, [])
        rounds = f"   rounds: {', '.join(f'{r:,.0f}' for r in each)}" if len(each) > 1 else ""
        out.append(f"{name:<56} {rate:>10,.0f}{rounds}")
    out.append("")
    if a and b and c:
        for name, floor, label in (("c/b", b, "c/b  (full pipeline / do-nothing Faust agent)   "),
                                   ("c/b'", b2, "c/b' (full pipeline / do-nothing agent, batched)")):  # fmt: skip
            ratios = results.ratios.get(name) or ([c / floor] if floor else [])
            if not ratios:
                continue
            median = statistics.median(ratios)
            by_round = f"   rounds: {', '.join(f'{r:.2f}' for r in ratios)}" if len(ratios) > 1 else ""
            target = "   target >= 0.6" if name == "c/b" else ""
            out.append(f"{label}   {median:6.2f}{target}{by_round}")
        out.append(f"c/a  (full pipeline / bare aiokafka)               {c / a:6.3f}")
        if c2:
            out.append(f"2 workers / 1 worker                               {c2 / c:6.2f}   (2 cores: CPU-bound)")
    out.append("")
    out.append(
        "end-to-end latency, ms   (produce -> state committed | produce -> alert on its topic"
        " | beside it, the broker's share: produce -> in hand of a bare consumer fetching as the worker does)"
    )
    for share, lat in results.latency.items():
        com, al, bare = lat["committed_ms"], lat["alert_ms"], lat["bare_consumer_ms"]
        where = "at light load     " if share == "light" else f"at {share} of (c) ="
        both = com["p99"] is not None and bare["p99"] is not None
        own = f" | FundFlow's share p99 {com['p99'] - bare['p99']}" if both else ""
        out.append(
            f"  {where} {lat['rate']:>6}/s: committed p50 {com['p50']} p95 {com['p95']} p99 {com['p99']}"
            f" (n={com['n']}) | alert p50 {al['p50']} p95 {al['p95']} p99 {al['p99']} (n={al['n']})"
            f" | bare consumer p50 {bare['p50']} p95 {bare['p95']} p99 {bare['p99']}{own}"
        )
    out.append(
        f"   target at 80%: FundFlow's share (committed p99 - bare consumer p99) <= {SHARE_TARGET_MS};"
        f" the producer sends every {LATENCY_PRODUCER_LINGER_MS} ms (both columns include the wait)"
    )
    mem = results.memory
    if mem.get("customers"):
        out.append("")
        out.append(
            f"Redis per customer ({mem['customers']} customers): mean {mem['mean_bytes']} B, p50 {mem['p50_bytes']} B,"
            f" p95 {mem['p95_bytes']} B, max {mem['max_bytes']} B   target <= 2048 B"
        )
        if "with_changelog" in mem:
            out.append(
                f"  of which changelogs (not yet folded): {mem['with_changelog']} customers,"
                f" mean {mem['changelog_mean_bytes']} B over all"
            )
    h = results.history
    if h:
        history_rows = zip(
            h["history_events"], h["us_per_event"], h["us_decode_on_cache_miss"], h["state_bytes"], strict=True
        )
        costs = ", ".join(
            f"{us} µs after {n} (+{miss} µs on a cache miss; {size} B)" for n, us, miss, size in history_rows
        )
        out.append(
            f"per-event cost (step + state encode), one customer ({h['customer']}) as its history grows: {costs}; "
            f"{h['lots_kept']} FIFO lots kept (cap {h['lot_cap']})"
        )
    if results.cases:
        out += ["", *casebench.render(results.cases)]
    if results.consent:
        out += ["", *consentbench.render(results.consent)]
    if results.shadow:
        out += ["", *shadowbench.render(results.shadow)]
    return "\n".join(out)


def run_bench_command(berka: Path | None, events: int | None, smoke: bool, out: Path, rounds: int | None) -> int:
    """``fundflow bench`` (``make bench``): ``events`` per stage (default 100,000; smoke 3,000)
    in ``rounds`` interleaved rounds (default 3; smoke 1)."""
    berka = SHIPPED_BERKA if berka is None else berka
    if not berka.is_dir():
        raise ConfigError(f"no Berka data at {berka}")
    events = events if events is not None else (3000 if smoke else 100_000)
    rounds = rounds if rounds is not None else (1 if smoke else 3)
    logging.basicConfig(level=logging.CRITICAL)
    run_bench(Settings(), berka, events, smoke, out, rounds)
    return 0


if __name__ == "__main__":  # the do-nothing agent of stage (b), run by noop_agent as its own process
    if len(sys.argv) != 6 or sys.argv[1] != "noop":
        print("bench: error: this module is make bench's own helper; run `fundflow bench`", file=sys.stderr)
        sys.exit(2)
    mode, expected, result, port = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
    sys.exit(noop_agent_main(mode, expected, result, port))
