"""``streams.patches``: every patch of a dependency's internals, each failing here when
the dependency changes the shape it relies on.

The fast drain (Faust's consumer's ``wait_first``, the delivery run inline) must
answer exactly as mode's ``Service.wait_first`` does: the delivery's result when it
finishes, the flag when the flag fires first (the delivery cancelled), exceptions
passed on, and no coroutine left un-awaited."""

from __future__ import annotations

import asyncio
import gc
import inspect
import re
import signal
import warnings
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol import fetch as aiokafka_fetch
from aiokafka.protocol.fetch import FetchRequest, FetchResponse_v4
from faust.transport.conductor import ConductorCompiler
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage, Message
from faust.web import base as web_base
from mode import Service
from mode.utils.queues import FlowControlEvent

from streams import patches
from streams.app import faust_app
from streams.settings import Settings


class FakeConsumer(Service):
    """What the patched method reads of a Faust consumer: the flow flag and the service flags."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


@pytest.fixture(autouse=True)
def installed() -> None:
    patches.install_fast_drain()


def wait_first(consumer: FakeConsumer, *coros: Any) -> Any:
    return Consumer.wait_first(consumer, *coros)  # type: ignore[arg-type]


def test_faust_still_hands_records_over_as_the_fast_path_assumes() -> None:
    """The fast path recognises Faust's one call per record by its shape (two coroutines:
    the delivery, then the flow flag's wait). An upgrade of faust-streaming that changes
    the call must fail here, not silently fall back or take the fast path wrongly."""
    source = inspect.getsource(Consumer._drain_messages)
    assert "await self.wait_first(" in source
    assert re.search(r"wait_first\(\s*callback\(message\),\s*self\.suspend_flow\.wait\(\)\s*\)", source)


async def test_install_is_idempotent_and_patches_faust() -> None:
    method = Consumer.wait_first
    patches.install_fast_drain()
    assert Consumer.wait_first is method
    assert getattr(method, "__fundflow_fast__", False)


async def test_a_delivery_that_does_not_suspend_wins_without_a_task() -> None:
    consumer = FakeConsumer()
    tasks_before = len(asyncio.all_tasks())
    seen: list[int] = []

    async def deliver() -> str:
        seen.append(len(asyncio.all_tasks()))
        return "delivered"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail here
        delivery = deliver()
        result = await wait_first(consumer, delivery, consumer.suspend_flow.wait())
        gc.collect()
    assert result.done == [delivery]
    assert result.results == ["delivered"]
    assert result.stopped is False
    assert seen == [tasks_before]  # ran inline: no task was made for it


async def test_a_delivery_that_suspends_finishes_through_the_original() -> None:
    consumer = FakeConsumer()
    room = asyncio.Event()

    async def deliver() -> int:
        await asyncio.sleep(0)
        await room.wait()  # a full stream buffer
        return 7

    asyncio.get_running_loop().call_later(0.01, room.set)
    result = await wait_first(consumer, deliver(), consumer.suspend_flow.wait())
    assert result.results == [7]
    assert result.stopped is False


async def test_a_rebalance_interrupts_a_suspended_delivery() -> None:
    consumer = FakeConsumer()
    cancelled = asyncio.Event()

    async def deliver() -> None:
        try:
            await asyncio.Event().wait()  # never gets room
        except asyncio.CancelledError:
            cancelled.set()
            raise

    flag = consumer.suspend_flow
    asyncio.get_running_loop().call_later(0.01, flag.set)
    result = await wait_first(consumer, deliver(), flag.wait())
    assert result.results == [True]  # the flag won, as in Faust
    await asyncio.sleep(0)
    assert cancelled.is_set()  # and the delivery was cancelled, not left running


async def test_an_error_in_the_delivery_is_raised() -> None:
    consumer = FakeConsumer()

    async def deliver() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        await wait_first(consumer, deliver(), consumer.suspend_flow.wait())

    async def deliver_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    with pytest.raises(ValueError, match="later"):
        await wait_first(consumer, deliver_later(), consumer.suspend_flow.wait())


async def test_with_the_flow_suspended_faust_decides() -> None:
    consumer = FakeConsumer()
    consumer.suspend_flow.set()
    ran: list[bool] = []

    async def deliver() -> None:
        ran.append(True)

    result = await wait_first(consumer, deliver(), consumer.suspend_flow.wait())
    assert result.stopped is False
    assert result.done  # what mode's wait_first gives, unchanged


async def test_the_fetch_wait_setting_reaches_the_consumer_faust_builds() -> None:
    """Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and aiokafka reads
    the private ``_fetch_max_wait_ms`` when it starts; a bump of either that moves the value
    elsewhere must fail here instead of silently bringing back 1.5 s latencies."""
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    settings = Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1", fetch_max_wait_ms=37)
    app = faust_app(settings, "127.0.0.1:1")
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)
    try:
        assert consumer._fetch_max_wait_ms == 37
    finally:
        await consumer.stop()
        thread.thread_loop.close()  # never started: its private loop is ours to close
    patches.set_fetch_max_wait(37)  # idempotent: wraps the original once, not the wrapper
    assert not hasattr(thread._create_worker_consumer.__wrapped__, "__wrapped__")


async def test_committed_offsets_and_highwaters_read_as_faust_and_aiokafka_keep_them() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1")
    app = faust_app(settings, "127.0.0.1:1")
    tp = TP("fundflow.transactions.v1", 0)
    assert patches.committed_offset(app.consumer, tp) is None  # nothing committed yet
    app.consumer._committed_offset[tp] = 41
    assert patches.committed_offset(app.consumer, tp) == 41
    # not started, and (aiokafka asserts the assignment) not assigned: unknown, never an error
    assert patches.highwater(app.consumer, tp) is None
    app.consumer._thread.thread_loop.close()
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    try:
        assert patches.highwater(consumer, tp) is None
        assert "assert self._subscription.is_assigned(partition)" in inspect.getsource(AIOKafkaConsumer.highwater)
    finally:
        await consumer.stop()


def test_faust_still_hands_records_to_channels_as_the_intake_assumes() -> None:
    """``BatchIntake`` relies on how the conductor delivers a record to a channel and how
    flow control clears managed queues on a rebalance; a Faust upgrade that changes
    either must fail here (the end-to-end check is tests/pipeline/test_intake.py)."""
    conductor = inspect.getsource(ConductorCompiler.build)
    assert "await chan.decode(message, propagate=True)" in conductor
    assert "queue = chan.queue" in conductor and "if queue.full():" in conductor
    assert "queue.put_nowait_enhanced(" in conductor
    assert "dest_chan.put(dest_event)" in conductor  # a full queue: awaited put
    assert "self._compile_decode()" in inspect.getsource(faust.Topic.__init__)
    assert "self.decode = " in inspect.getsource(faust.Topic._compile_decode)
    assert "queue.clear()" in inspect.getsource(FlowControlEvent.clear)
    assert "self.clear()" in inspect.getsource(FlowControlEvent.resume)
    assert "on_final_ack" in inspect.getsource(Message.ack)
    stream = inspect.getsource(faust.Stream._py_aiter)  # what the intake does as a stream does
    assert "message.generation_id != self.app.consumer_generation_id" in stream
    assert "not self.app.flow_control.is_active()" in stream
    assert "add_unacked(message)" in stream
    assert "self._unacked_messages.add(message)" in inspect.getsource(Consumer.track_message)
    assert "consumer.ack(self)" in inspect.getsource(ConsumerMessage.on_final_ack)


def test_faust_still_lists_its_own_pages_where_drop_faust_pages_looks() -> None:
    """``drop_faust_pages`` empties the private ``BlueprintManager._enabled`` of every built-in
    blueprint (all named under ``faust.web.apps.``) before the web driver applies it. An
    upgrade that renames, moves or adds a built-in page elsewhere must fail here."""
    built_in = [
        *web_base.DEFAULT_BLUEPRINTS,
        *web_base.PRODUCTION_BLUEPRINTS,
        *web_base.DEBUG_BLUEPRINTS,
        *web_base.OPTIONAL_BLUEPRINTS,
    ]
    assert {bp for _, bp in built_in} == {
        "faust.web.apps.router:blueprint",
        "faust.web.apps.tables.blueprint",
        "faust.web.apps.production_index:blueprint",
        "faust.web.apps.graph:blueprint",
        "faust.web.apps.stats:blueprint",
        "faust.web.apps.metrics:blueprint",
    }
    assert all(isinstance(bp, str) and bp.startswith(patches.FAUST_PAGES) for _, bp in built_in)
    source = inspect.getsource(web_base.BlueprintManager.apply)
    assert "for prefix, blueprint in self._enabled:" in source


def test_drop_faust_pages_leaves_no_built_in_page_and_refuses_once_applied() -> None:
    app = faust_app(Settings(), "127.0.0.1:1")
    stock = app.web.blueprints._enabled
    assert ("", "faust.web.apps.production_index:blueprint") in stock  # no setting turns this one off
    app.web.blueprints.add("/ours", "tests.unit.test_patches:OURS")  # a blueprint of our own would stay
    patches.drop_faust_pages(app)
    assert app.web.blueprints._enabled == [("/ours", "tests.unit.test_patches:OURS")]
    app.web.blueprints.applied = True
    with pytest.raises(RuntimeError, match="already applied"):
        patches.drop_faust_pages(app)


def test_the_worker_app_turns_faust_pages_off_and_binds_loopback() -> None:
    conf = faust_app(Settings(), "127.0.0.1:1").conf
    assert conf.web_bind == "127.0.0.1"
    assert not any(
        (conf.web_router_enabled, conf.web_tables_enabled, conf.web_stats_enabled, conf.web_graph_enabled,
         conf.web_metrics_enabled)
    )  # fmt: skip


def test_a_stopping_worker_can_give_back_what_it_never_acked() -> None:
    """Faust's wait_empty waits while ``_unacked_messages`` holds anything, and commits
    from the acked offsets only: forgetting the unacked ends the wait, commits nothing more."""
    source = inspect.getsource(Consumer.wait_empty)
    assert "while not self.should_stop and self._unacked_messages:" in source
    assert "_unacked_messages" not in inspect.getsource(Consumer._new_offset)
    settings = Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1")
    app = faust_app(settings, "127.0.0.1:1")
    try:

        class Message:  # (a WeakSet holds only what can be weakly referenced)
            pass

        held = [Message(), Message()]
        app.consumer._unacked_messages.update(held)
        assert patches.give_back_unacked(app.consumer) == 2
        assert not app.consumer._unacked_messages
    finally:
        app.consumer._thread.thread_loop.close()


@pytest.mark.parametrize("loglevel", ["warning", "info"])
def test_the_worker_logs_at_its_loglevel_not_at_debug_for_a_spinner(loglevel: str) -> None:
    """Faust's worker turns a start-up spinner with every log message: it set the root
    logger to DEBUG for the life of the process, so every debug call of aiokafka, Faust and
    mode built a record nobody saw (~7% of a worker's CPU at half load)."""
    import logging

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        worker = patches.StoppingWorker(faust_app(Settings(), "localhost:9"), loglevel=loglevel, quiet=True)
        worker._setup_logging()
        assert root.level == logging.getLevelName(loglevel.upper())
        assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_mode_still_stops_through_the_handlers_the_stopping_worker_overrides() -> None:
    """``StoppingWorker`` arms the watchdog in ``_on_sigint`` / ``_on_sigterm``, the methods
    mode installs as the event loop's signal handlers, and drops the spinner Faust's worker
    makes in ``__init__``. An upgrade that renames them, installs other handlers, or makes
    the spinner elsewhere must fail here (the end-to-end check is tests/connected/test_signals.py)."""
    from faust.worker import Worker as FaustWorker
    from mode.worker import Worker as ModeWorker

    installed = inspect.getsource(ModeWorker._install_signal_handlers_unix)
    assert "add_signal_handler(signal.SIGINT, self._on_sigint)" in installed
    assert "add_signal_handler(signal.SIGTERM, self._on_sigterm)" in installed
    for name in ("_on_sigint", "_on_sigterm"):
        for worker in (ModeWorker, FaustWorker):
            assert list(inspect.signature(getattr(worker, name)).parameters) == ["self"], (worker, name)
        assert "self._schedule_shutdown(signal.SIG" in inspect.getsource(getattr(ModeWorker, name))
    assert issubclass(patches.StoppingWorker, FaustWorker)
    assert "self.spinner = terminal.Spinner(" in inspect.getsource(FaustWorker.__init__)
    assert "if self.spinner:" in inspect.getsource(FaustWorker._setup_spinner_handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_arms_the_watchdog_then_starts_fausts_stop(signum: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from mode.worker import Worker as ModeWorker

    calls: list[tuple[str, int]] = []
    # (the real ``begin`` arms a watchdog that ends the process; the real shutdown stops a loop)
    monkeypatch.setattr(patches.stopping, "begin", lambda number: calls.append(("watchdog", number)))
    monkeypatch.setattr(ModeWorker, "_schedule_shutdown", lambda self, number: calls.append(("shutdown", number)))
    app = faust_app(Settings(), "localhost:9")
    try:
        worker = patches.StoppingWorker(app, loglevel="warning", quiet=True)
        handler = worker._on_sigint if signum == signal.SIGINT else worker._on_sigterm
        handler()
        assert calls == [("watchdog", signum), ("shutdown", signum)]
        assert worker.spinner is None
    finally:
        app.consumer._thread.thread_loop.close()


def test_redis_py_still_packs_through_the_method_the_hiredis_packing_overrides() -> None:
    """``pack_commands_in_c`` swaps the pool's ``connection_class`` for a subclass whose
    ``pack_command`` calls hiredis. That holds while the pool builds its connections from
    ``connection_class``, a command and a pipeline are both packed by ``pack_command(*args)``,
    hiredis takes a tuple and refuses a ``bytearray`` with ``TypeError`` (the cue to copy),
    and redis-py splits a command name as the patch does (tests/pipeline/test_pipeline.py
    compares the bytes)."""
    import hiredis
    from redis.asyncio.connection import AbstractConnection, ConnectionPool
    from redis.connection import HiredisRespSerializer

    from streams.clients import connect

    assert list(inspect.signature(AbstractConnection.pack_command).parameters) == ["self", "args"]
    assert "self.pack_command(*args)" in inspect.getsource(AbstractConnection.send_command)
    assert "self.pack_command(*cmd)" in inspect.getsource(AbstractConnection.pack_commands)
    assert "self.connection_class(" in inspect.getsource(ConnectionPool.make_connection)
    serializer = inspect.getsource(HiredisRespSerializer.pack)
    assert "args = tuple(args[0].encode().split()) + args[1:]" in serializer
    assert "args = tuple(args[0].split()) + args[1:]" in serializer
    assert hiredis.pack_command(("SET", b"k", memoryview(b"v"), 1, 0.5)) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$1\r\n1\r\n$3\r\n0.5\r\n"
    )
    with pytest.raises(TypeError):
        hiredis.pack_command(("SET", bytearray(b"k")))
    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///nonexistent.sock"):
        pool = connect(url).connection_pool
        assert issubclass(pool.connection_class, patches.HiredisPacking), url
        assert isinstance(pool.make_connection(), patches.HiredisPacking), url


async def test_a_fetch_is_timed_less_the_wait_it_asked_for_when_it_came_back_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetcher sends its fetches through ``AIOKafkaClient.send`` and a ``FetchRequest``
    keeps its max wait in ``_max_wait_ms``; a partition's records are the last field of its
    response tuple. An aiokafka that moves any of these must fail here, not leave the
    broker's fetch cost (and its alert) silently at zero."""
    assert "await self._client.send(node_id, request)" in inspect.getsource(Fetcher._proc_fetch_request)
    assert FetchRequest(250, 1, 1, 0, [])._max_wait_ms == 250
    for version in range(4, 12):  # the versions this aiokafka speaks above v3: records last
        schema = getattr(aiokafka_fetch, f"FetchResponse_v{version}").SCHEMA
        topics = schema.fields[schema.names.index("topics")].array_of
        partitions = topics.fields[topics.names.index("partitions")].array_of
        assert partitions.names[-1] == "message_set", version

    def response(records: bytes | None) -> Any:
        return FetchResponse_v4(0, [("t", [(0, 0, 10, 10, [], records)])])

    answers = iter([response(None), response(b"batch"), response(None)])

    async def send(self: Any, node_id: Any, request: Any, **kwargs: Any) -> Any:
        if isinstance(request, FetchRequest):
            await asyncio.sleep(0.06)
        return next(answers)

    monkeypatch.setattr(AIOKafkaClient, "send", send)
    costs: list[float] = []
    patches.time_fetches(costs.append)
    client = AIOKafkaClient.__new__(AIOKafkaClient)
    await client.send(0, FetchRequest(50, 1, 1, 0, []))  # empty after its 50 ms wait: ~10 ms its own
    await client.send(0, FetchRequest(50, 1, 1, 0, []))  # records: all of its 60 ms is cost
    await client.send(0, object())  # not a fetch: not timed
    assert len(costs) == 2
    assert costs[0] < 0.04 <= 0.055 <= costs[1]
    patches.time_fetches(costs.append)  # idempotent: wraps the original once, not the wrapper
    assert AIOKafkaClient.send.__wrapped__ is send


def test_fausts_rebalance_wait_still_collects_through_its_module_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    """``young_collections_on_rebalance`` replaces the ``gc`` that ``Consumer.wait_empty`` calls
    ``collect()`` on: the call must still be there, through the module's name ``gc``, and
    after the patch it collects the young generations, never the whole heap."""
    from faust.transport import consumer as faust_consumer

    source = inspect.getsource(Consumer.wait_empty)
    assert "gc.collect()" in source
    calls = re.findall(r"\bgc\.\w+", inspect.getsource(faust_consumer))
    assert calls == ["gc.collect"]  # nothing else of the module's gc to stand in for
    patches.young_collections_on_rebalance()
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: collected.append(generation) or 0)
    faust_consumer.gc.collect()
    assert collected == [1]
    assert faust_consumer.gc is not gc  # (the patched module: what wait_empty finds under ``gc``)


def test_a_cluster_pipeline_is_freed_when_dropped_not_by_the_collector() -> None:
    """``cluster_pipelines_free_by_refcount``: redis-py's cluster pipeline strategy still
    keeps its pipeline as ``_pipe`` (set in ``AbstractStrategy.__init__``), and once patched
    a dropped pipeline is gone with the collector off; the patch applies once."""
    import weakref

    from redis.asyncio.cluster import AbstractStrategy, RedisCluster

    assert "self._pipe" in inspect.getsource(AbstractStrategy.__init__)
    patches.cluster_pipelines_free_by_refcount()
    installed = vars(AbstractStrategy)["_pipe"]
    patches.cluster_pipelines_free_by_refcount()
    assert vars(AbstractStrategy)["_pipe"] is installed
    client = RedisCluster(host="127.0.0.1", port=1)  # (never connects: a pipeline is built, not run)
    gc.disable()
    try:
        pipe = client.pipeline(transaction=False)
        pipe.set("k", 1)
        assert pipe._execution_strategy._pipe is pipe
        dropped = weakref.ref(pipe)
        del pipe
        assert dropped() is None
    finally:
        gc.enable()
