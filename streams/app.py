"""The Faust worker: one agent over the two input topics, in batches.

The agent only moves records: Kafka -> ``BatchProcessor`` (decode, pure step,
atomic Redis commit, publish) -> ack, in adaptive batches (``streams.batcher``):
records are acked by hand only after their batch returns, so offsets are
committed after the state and the findings are safe. The input topics are co-partitioned and keyed by
customer_id, so one customer is owned by one worker at a time; the version
check in Redis covers the moments of a rebalance when two might think so.

What can go wrong: Redis down -> the batch is retried with backoff inside
``process`` (the agent waits; lag grows; nothing is dropped; after
``FUNDFLOW_STALLED_AFTER_SECONDS`` ``/readyz`` says which partitions are stalled).
Kafka publish failure -> same. SIGTERM meanwhile -> the batch is abandoned unacked
and Faust is told to stop waiting for it (``patches.give_back_unacked``): the
worker stops, the next owner gets the records again. One bad record -> its dead
letter (``streams.pipeline``), never a stall. A crash -> the uncommitted batch is redelivered and is a
no-op for state (txn_ids), its findings are re-sent from the outbox.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import redis.asyncio as aioredis
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis.exceptions import RedisError

from rules.state import CustomerState
from streams import board, health, patches, telemetry
from streams.batcher import Batcher, drain
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.decode import TimeBounds
from streams.errors import Abandoned, TransientError
from streams.health import readiness
from streams.pipeline import BatchProcessor, Emitter, Message, Prepared, Step
from streams.rulestep import RulesStep, VersionFollower, build_step, shadow_by_version
from streams.settings import Settings, rates, state_config, thresholds
from streams.storage.keys import Keys
from streams.storage.rulebook import Rulebook
from streams.storage.store import StateStore
from streams.tiers import Committed, TierBook
from streams.topics import INPUT_TOPICS

log = logging.getLogger(__name__)
BOARD_PRUNE_SECONDS = 600.0  # how often a worker drops 看板 days past the retention
# how often a worker reads the rule versions: well within the grace a promotion or a shadow
# run leaves before its instant (``streams.storage.rulebook.DEFAULT_GRACE_US``)
FOLLOW_VERSIONS_SECONDS = 2.0


class ShadowKeeping:
    """An emitter that also keeps every shadow record by id in ``{p}:{rules}:shadow:{N}``
    (the report reads them there), before it publishes: a record published again after a
    crash is written again under the same id, so Redis holds each once."""

    def __init__(self, emitter: Emitter, redis: aioredis.Redis, keys: Keys) -> None:
        self.emitter = emitter
        self.redis = redis
        self.keys = keys

    async def send_all(self, messages: Sequence[Message]) -> None:
        by_version = shadow_by_version(messages)
        if by_version:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for version, records in by_version.items():
                        pipe.hset(self.keys.shadow_records(version), mapping=cast(Any, records))
                    await pipe.execute()
            except RedisError as exc:
                raise TransientError(f"shadow records not stored: {exc}") from exc
        await self.emitter.send_all(messages)


class FaustEmitter:
    """Publishes through the worker's own Faust producer and waits for every ack."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send_all(self, messages: Sequence[Message]) -> None:
        producer = self.app.producer
        try:
            futures = [await producer.send(topic, key, value, None, None, None) for topic, key, value in messages]
            await asyncio.gather(*futures)
        except (KafkaError, faust.exceptions.ProducerSendError) as exc:
            raise TransientError(f"kafka publish failed: {exc}") from exc


def _with_crash_hook(
    on_commit: Callable[[list[CustomerState]], None], crash_after: int
) -> Callable[[list[CustomerState]], None]:
    """Fault injection for the reliability tests: die like ``kill -9`` right after the
    N-th state commit, before the findings are published and the offsets committed."""
    if crash_after <= 0:
        return on_commit
    commits = 0

    def hook(states: list[CustomerState]) -> None:
        nonlocal commits
        on_commit(states)
        commits += 1
        if commits >= crash_after:
            log.warning("fault injection: exiting after state commit %d", commits)
            os._exit(137)

    return hook


def broker_url(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def faust_security(settings: Settings) -> dict[str, Any]:
    """Kafka TLS/SASL settings for Faust, from ``FUNDFLOW_KAFKA_*``."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return {}
    ssl_context = None
    if protocol in ("SSL", "SASL_SSL"):
        ssl_context = create_ssl_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if protocol == "SSL":
        return {"broker_credentials": faust.SSLCredentials(ssl_context)}
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    credentials = faust.SASLCredentials(
        username=settings.kafka_sasl_username or "",
        password=password,
        ssl_context=ssl_context,
        mechanism=settings.kafka_sasl_mechanism or "PLAIN",
    )
    return {"broker_credentials": credentials}


def tune_gc(settings: Settings) -> None:
    """A worker's heap is mostly long-lived (its cache of customer states: ~27 tracked
    objects each) and every event allocates a few dozen short-lived ones in Faust and in
    the rules. With CPython's default thresholds (700, 10, 10) the young collections
    alone are a measurable cost per event, and every full collection walks the whole
    cache. Objects alive once the app is built are frozen (never scanned again) and
    collections run far less often: reference counting frees almost everything; the
    collector is only there for cycles.

    But what survives (a state's event records, lots, remembered ids: ~1.5 tracked objects
    per event) is scanned once in a young collection, and a collection is one pause of the
    event loop, so its size is latency: with much larger young generations a young
    collection paused the worker for tens of ms, and a middle one, which walks everything
    that survived since, for about half a second. (10000, 2, 1000) keeps collections
    rare; what bounds them is that each committed batch freezes what it left
    (``health.PauseMonitor.after_batch``), so a collection walks one batch's objects at
    most. Every figure: docs/performance.md, "Garbage-collector thresholds" and "Young
    collections and the batch"."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*settings.gc_threshold)


def run_faust_worker(app: faust.App, settings: Settings, loglevel: str) -> None:
    """Run ``app`` in this process as a Faust worker, the garbage collector tuned once it
    is built: FundFlow's worker and the do-nothing agent of ``make bench`` both start here,
    so the floor the benchmark compares against runs with the same process settings."""
    worker = patches.StoppingWorker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    tune_gc(settings)
    worker.execute_from_commandline()


def faust_app(settings: Settings, bootstrap: str, *, fast_drain: bool = True) -> faust.App:
    """The Faust app with FundFlow's consumer, producer and security settings
    (also the do-nothing agents of ``make bench`` use it, so the floor is fair).
    ``fast_drain``: Faust's consumer hands records over without four tasks per record
    (``streams.patches``); off only for the bench's stock-Faust floor (b)."""
    patches.set_fetch_max_wait(settings.fetch_max_wait_ms)
    patches.time_fetches(telemetry.BROKER_FETCH_COST.observe)
    if fast_drain:
        patches.install_fast_drain()
    patches.young_collections_on_rebalance()
    return faust.App(
        settings.app_id,
        broker=broker_url(bootstrap),
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_enabled=True,
        # none of Faust's own pages (cluster topology, table contents, statistics): only ours
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        broker_commit_interval=settings.broker_commit_interval,
        producer_acks=-1,
        stream_wait_empty=True,
        **faust_security(settings),
    )


def kafka_backlog(app: faust.App) -> Callable[[Sequence[Any]], int]:
    """For ``streams.batcher``: given the buffered Faust messages, the records Kafka holds
    beyond them on their partitions (the high watermarks of the consumer's latest fetches)."""

    def backlog(buffered: Sequence[Any]) -> int:
        last: dict[Any, int] = {}
        for message in buffered:
            last[message.tp] = message.offset
        consumer: Any = app.consumer
        waiting = 0
        for tp, offset in last.items():
            high = patches.highwater(consumer, tp)
            if high is not None:
                waiting += max(high - offset - 1, 0)
        return waiting

    return backlog


async def _as_is(records: list[RawRecord]) -> Any:
    return records


class BatchReader:
    """The input topics' records in adaptive batches (``streams.batcher``), each batch
    ``prepare``d, then ``complete``d, and its records acked only after that (its effects
    are safe), so Faust commits offsets after the effects. A batch is prepared while the
    one before it completes (``streams.batcher.drain``). Records reach the batcher straight from
    Faust's conductor (``streams.patches.BatchIntake``); Faust keeps group membership,
    partition assignment, rebalances and offset commits. FundFlow's worker and the batched
    do-nothing consumer of ``make bench`` both read here, so that floor stays fair.

    A failure of the drain (a bug: transient Redis/Kafka errors are retried inside the
    processor, bad records are dead letters) crashes the worker, so an orchestrator
    restarts it; nothing unprocessed was acked, so Kafka redelivers it."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        complete: Callable[[Any], Awaitable[None]],
        prepare: Callable[[list[RawRecord]], Awaitable[Any]] = _as_is,
    ):
        self.app = app
        self.settings = settings
        self.complete = complete
        self.prepare = prepare
        self.batcher: Batcher[Any] = Batcher(settings.batch_max_events)
        self.intake = patches.BatchIntake(app, INPUT_TOPICS, self.batcher)
        app.topics.add(self.intake)
        app.task(self.run)

    async def _prepare(self, messages: list[Any]) -> Any:
        return await self.prepare(
            [
                RawRecord(
                    topic=m.topic,
                    partition=m.partition,
                    offset=m.offset,
                    key=m.key,
                    value=m.value,
                    timestamp_ms=int(m.timestamp * 1000) if m.timestamp else None,
                )
                for m in messages
            ]
        )

    def _ack(self, messages: list[Any]) -> None:
        consumer = self.app.consumer
        for message in messages:
            message.ack(consumer)  # what a stream's ack does: Faust commits up to contiguous acks

    async def run(self) -> None:
        settings = self.settings
        try:
            await drain(
                self.batcher,
                self._prepare,
                self.complete,
                self._ack,
                settings.batch_within_seconds,
                kafka_backlog(self.app),
                settings.batch_busy_linger_seconds,
            )
        except asyncio.CancelledError:
            raise
        except Abandoned:
            return  # the worker is stopping; the batch was given back for redelivery
        except BaseException as exc:
            self.batcher.fail(exc)
            log.exception("the batch drain failed; stopping the worker")
            await self.app.crash(exc)
            raise


@dataclass(frozen=True, eq=False)  # (one worker's: compared and hashed as itself)
class WorkerParts:
    """What one worker is made of (``build_parts``): the timers and pages below take it, and
    tests reach it with ``parts_of(app)``."""

    app: faust.App
    settings: Settings
    bootstrap: str
    redis: aioredis.Redis
    keys: Keys
    store: StateStore
    processor: BatchProcessor
    tiers: TierBook
    reader: BatchReader
    follower: VersionFollower | None = None  # the rule versions in Redis (None: a test's own step)
    monitor: health.PauseMonitor = field(default_factory=health.PauseMonitor)  # collections and loop lag


def build_parts(
    app: faust.App, settings: Settings, bootstrap: str, redis_url: str, step: Step | None, emitter: Emitter | None
) -> WorkerParts:
    """The worker's Redis client, state store, batch processor, live tiers and batch reader
    (which registers the input channel and the drain task with ``app``)."""
    # redis-py connects on first use, inside the worker's event loop
    redis = connect(redis_url, settings.redis_cluster)
    keys = Keys(settings.key_prefix)
    store = StateStore(redis, keys, compress=settings.compress_state, config=state_config(settings))
    committed = Committed()  # the processor tells it its commits; the tier book refreshes from it
    step = build_step(settings) if step is None else step
    processor = BatchProcessor(
        store,
        step,
        ShadowKeeping(emitter or FaustEmitter(app), redis, keys),
        max_event_bytes=settings.max_event_bytes,
        bounds=TimeBounds(settings.event_time_earliest, settings.event_time_max_skew_seconds),
        currency=settings.currency,
        cache_size=settings.cache_customers,
        retry_initial=settings.retry_initial_seconds,
        retry_max=settings.retry_max_seconds,
        stalled_after_seconds=settings.stalled_after_seconds,
        on_commit=_with_crash_hook(committed.add, settings.crash_after_commits),
        should_stop=lambda: bool(app.should_stop),
        zone=settings.zone,
        snapshot_every=settings.snapshot_every,
    )
    tiers = TierBook(
        redis, keys, state_config(settings), thresholds(settings), rates(settings), processor.cached_state, committed
    )
    monitor = health.PauseMonitor()
    reader = BatchReader(app, settings, functools.partial(complete_batch, app, processor, monitor), processor.prepare)
    follower = VersionFollower(Rulebook(redis, keys), step.provider) if isinstance(step, RulesStep) else None
    return WorkerParts(app, settings, bootstrap, redis, keys, store, processor, tiers, reader, follower, monitor)


_PARTS = "_fundflow_parts"


def parts_of(app: faust.App) -> WorkerParts:
    """The parts of a worker app ``create_app`` built."""
    parts = getattr(app, _PARTS, None)
    if not isinstance(parts, WorkerParts):
        raise TypeError(f"{app!r} was not built by streams.app.create_app")
    return parts


def create_app(
    settings: Settings, bootstrap: str, redis_url: str, step: Step | None = None, emitter: Emitter | None = None
) -> faust.App:
    """The Faust app of one worker. ``step`` defaults to ``streams.rulestep.build_step``
    (findings never carry the live tier: docs/findings.md); tests pass their own step and emitter."""
    app = faust_app(settings, bootstrap)
    patches.drop_faust_pages(app)  # the web port serves /healthz, /readyz and /metrics only
    parts = build_parts(app, settings, bootstrap, redis_url, step, emitter)
    setattr(app, _PARTS, parts)
    for rebalance in (app.on_partitions_revoked, app.on_partitions_assigned):
        rebalance.connect(functools.partial(forget_cached_states, parts))
    monitor = parts.monitor
    app.on_partitions_assigned.connect(functools.partial(collect_after_rebalance, parts, monitor))
    app.task(monitor.watch_loop)
    for path, page in PAGES.items():
        _serve(app, path, page, parts)
    for seconds, timer in timers(settings):
        # a partial takes no argument, so Faust calls it without the app
        app.timer(seconds, name=f"{__name__}.{timer.__name__}")(functools.partial(timer, parts))
    return app


async def complete_batch(
    app: faust.App, processor: BatchProcessor, monitor: health.PauseMonitor, prepared: Prepared
) -> None:
    """A prepared batch's effects (``BatchReader``'s ``complete``), timed; then what it left
    alive is frozen (``health.PauseMonitor.after_batch``)."""
    try:
        report = await processor.complete(prepared)
        telemetry.BATCH_SECONDS.observe(time.perf_counter() - prepared.started)
        monitor.after_batch(clean=not report.retries and not report.dead_letters)
    except Abandoned:
        # stopping mid-outage: nothing of this batch (or buffered after it) is acked, so
        # all of it is redelivered; without this Faust waits for the acks (stream_wait_empty)
        given_back = patches.give_back_unacked(app.consumer)
        log.warning("stopping: %d unprocessed records given back for redelivery", given_back)
        raise


async def forget_cached_states(parts: WorkerParts, sender: Any, *args: Any, **kwargs: Any) -> None:
    """On a rebalance (partitions revoked or assigned): Redis is the truth."""
    parts.processor.forget_all()


async def collect_after_rebalance(
    parts: WorkerParts, monitor: health.PauseMonitor, sender: Any, *args: Any, **kwargs: Any
) -> None:
    """Partitions assigned, no batch in flight: with the state cache dropped (also here: the
    order of a signal's receivers is not kept), the one moment the collector gets the whole
    heap back (``streams.health``: cycles frozen while alive)."""
    parts.processor.forget_all()
    monitor.collect_whole_heap()


# The worker's web pages: each takes the parts, Faust's view (``web``) and the request.
Page = Callable[[WorkerParts, View, Request], Awaitable[Response]]


async def serve_metrics(parts: WorkerParts, web: View, request: Request) -> Response:
    """Prometheus exposition of everything declared in streams.telemetry."""
    return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])


async def serve_healthz(parts: WorkerParts, web: View, request: Request) -> Response:
    return web.json({"status": "ok", "checks": {}})


async def serve_readyz(parts: WorkerParts, web: View, request: Request) -> Response:
    """Kafka and Redis reachable, and no input partition stalled (503 and which, if
    not): an outage shows here and in fundflow_dependency_up while the agent waits and
    retries, a batch retried for FUNDFLOW_STALLED_AFTER_SECONDS also in
    fundflow_partition_stalled.

    A rule version it cannot load (fundflow_rules_reload_rejected, the gauge the alert reads)
    is ``degraded``, still 200: the worker keeps judging on its last good rules, and taking it
    out of service would stop the stream for a version an operator must fix (docs/runbook.md)."""
    ready, checks = await readiness(parts.redis, parts.bootstrap)
    stalled = parts.processor.stalled_partitions()
    checks["progress"] = f"stalled: {', '.join(stalled)}" if stalled else "ok"
    ready = ready and not stalled
    rejected = REGISTRY.get_sample_value("fundflow_rules_reload_rejected") == 1
    checks["rules"] = "a rule version cannot be loaded: running on the last good rules" if rejected else "ok"
    status = ("degraded" if rejected else "ready") if ready else "not_ready"
    return web.json({"status": status, "checks": checks}, status=200 if ready else 503)


PAGES: dict[str, Page] = {"/metrics": serve_metrics, "/healthz": serve_healthz, "/readyz": serve_readyz}


def _serve(app: faust.App, path: str, page: Page, parts: WorkerParts) -> None:
    """Serve ``page`` at ``path`` (a Faust view, named after the page)."""

    async def get(web: View, request: Request) -> Response:
        return await page(parts, web, request)

    get.__name__, get.__doc__ = page.__name__, page.__doc__
    app.page(path)(get)


# The worker's timers: each takes the parts.
Timer = Callable[[WorkerParts], Awaitable[None]]


async def check_dependencies(parts: WorkerParts) -> None:
    await readiness(parts.redis, parts.bootstrap)
    parts.processor.stalled_partitions()  # (keeps fundflow_partition_stalled current between retries)


async def report_lag(parts: WorkerParts) -> None:
    """fundflow_consumer_lag: high watermark minus committed offset, per owned input partition."""
    consumer: Any = parts.app.consumer
    for tp in consumer.assignment():
        if tp.topic not in INPUT_TOPICS:
            continue
        high = patches.highwater(consumer, tp)
        committed = patches.committed_offset(consumer, tp)
        if high is not None:
            telemetry.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(high - (committed or 0), 0))


async def refresh_tiers(parts: WorkerParts) -> None:
    seconds = parts.settings.tier_refresh_seconds
    try:
        count = await parts.tiers.refresh(within=seconds / 2)
    except Exception as exc:  # tiers are a view; never stop the stream for them
        log.warning("live tiers not refreshed: %s", exc)
    else:
        telemetry.TIER_REFRESHED.set_to_current_time()
        log.debug("live tiers refreshed for %d customers", count)


def owned_partitions(app: faust.App) -> frozenset[int] | None:
    """The input partitions this worker's consumer holds now (None: no consumer yet)."""
    try:
        consumer: Any = app.consumer
        assignment = consumer.assignment()
    except Exception:  # (not started, or stopping)
        return None
    return frozenset(tp.partition for tp in assignment if tp.topic in INPUT_TOPICS)


async def fold_quiet(parts: WorkerParts) -> None:
    """Customers whose changelog went quiet get their full state written, their log dropped:
    those this worker cached, and those of partitions it took over (a predecessor's, which
    it learns from the index the commits keep, ``BatchProcessor.adopt``)."""
    partitions = owned_partitions(parts.app)
    if partitions is not None:
        try:
            await parts.processor.adopt(partitions)
        except (TransientError, RedisError) as exc:  # (tried again at the next tick)
            log.warning("changelogs of taken-over partitions not looked up: %s", exc)
    folded = await parts.processor.fold(parts.settings.fold_after_seconds)
    if folded:
        log.debug("folded %d changelogs into full states", folded)


async def follow_versions(parts: WorkerParts) -> None:
    """The rule version timeline and shadow run in Redis, followed (``VersionFollower``)."""
    if parts.follower is None:
        return
    try:
        await parts.follower.poll(time.time_ns() // 1000)
    except (TransientError, RedisError) as exc:  # (tried again at the next tick)
        log.warning("rule versions not read from Redis: %s", exc)


async def keep_rules_current(parts: WorkerParts) -> None:
    """The rules in force, kept in Redis as the last good ones (``FUNDFLOW_RULES_FALLBACK``)."""
    try:
        await parts.processor.note_rules_in_force()
    except (TransientError, RedisError) as exc:  # (tried again at the next tick)
        log.warning("rules in force not written to Redis: %s", exc)


# Closed 看板 days one run of the board timer cuts at most: after an upgrade or a history load
# every kept day is closed and uncut, and on a Redis Cluster a day is a read and a script per
# slot; a month per run cuts a year's backlog within hours without taking a worker's loop.
BOARD_TRIM_DAYS_PER_RUN = 31


async def fold_board(parts: WorkerParts) -> None:
    """On Redis Cluster: the 看板 cells this worker's commits left in their slots, carried into
    the bank-wide keys (``streams.board.fold``: exactly once, whoever folds)."""
    store = parts.store
    if not parts.settings.redis_cluster:
        return
    dirty, store.dirty = sorted(store.dirty), set()
    try:
        await board.fold(parts.redis, parts.keys, dirty)
    except Exception as exc:  # a view: never stop the stream for it (the cells wait in their slots)
        store.dirty.update(dirty)
        log.warning("看板 cells not folded: %s", exc)
    else:
        telemetry.BOARD_FOLDED.set(time.time())


async def prune_board(parts: WorkerParts) -> None:
    """The 看板 keeps ``board_days_kept`` days before its latest event, and a closed day's
    net outflow only its top (every worker prunes and cuts; doing either twice is harmless).
    On Redis Cluster the cut folds every shard first (``board.trim``): what a stopped worker's
    commits left too."""
    settings = parts.settings
    days = settings.board_days_kept
    try:
        if settings.redis_cluster:
            await board.fold_legacy(parts.redis, parts.keys, settings.zone, days)
        dropped = await board.prune(parts.redis, parts.keys, settings.zone, days, settings.redis_cluster)
        cut = await board.trim(
            parts.redis,
            parts.keys,
            settings.zone,
            kept=settings.board_top_kept,
            open_days=settings.board_open_days,
            keep_days=days,
            cluster=settings.redis_cluster,
            most_days=BOARD_TRIM_DAYS_PER_RUN,
        )
    except Exception as exc:  # a view: never stop the stream for it
        log.warning("看板 days not pruned: %s", exc)
    else:
        if dropped or cut:
            log.info("看板: dropped %d day keys older than %d days, cut %d closed days", dropped, days, cut)


def timers(settings: Settings) -> list[tuple[float, Timer]]:
    """Every timer of a worker, with its interval in seconds."""
    return [
        (5.0, check_dependencies),
        (5.0, report_lag),
        (settings.tier_refresh_seconds, refresh_tiers),
        (1.0, fold_quiet),
        (5.0, keep_rules_current),
        (FOLLOW_VERSIONS_SECONDS, follow_versions),
        (settings.board_fold_seconds, fold_board),
        (BOARD_PRUNE_SECONDS, prune_board),
    ]
