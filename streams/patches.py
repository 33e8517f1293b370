"""Every patch FundFlow makes to a dependency's internals, in one place.

Each is guarded by a test in ``tests/unit/test_patches.py`` that fails when the
dependency changes the shape the patch relies on, so an upgrade of Faust or aiokafka
cannot silently undo it (and bring back 1.5 s latencies or per-record tasks).

1. ``install_fast_drain``: Faust's consumer's ``wait_first`` with the delivery run inline.
2. ``set_fetch_max_wait``: the fetch max wait Faust hard-codes for its consumer.
3. ``committed_offset`` / ``highwater``: offsets Faust and aiokafka keep without a public
   accessor.
4. ``BatchIntake``: a channel that takes the records Faust's conductor hands over straight
   into FundFlow's batcher, with no stream and no event object per record.
5. ``drop_faust_pages``: Faust's web server serves none of its own pages, only ours.
6. ``give_back_unacked``: lets a stopping worker leave records unprocessed (no public way).
7. ``pack_commands_in_c``: redis-py's asyncio connections pack commands with hiredis, each
   argument handed to it as it is.
8. ``StoppingWorker``: Faust's worker, with mode's signal handlers arming
   ``streams.stopping``'s watchdog, and no start-up spinner.
9. ``time_fetches``: how long the broker takes to answer a fetch beyond the wait the fetch
   asked for (aiokafka keeps a fetch's max wait private and times nothing).
10. ``young_collections_on_rebalance``: Faust's rebalance wait collects only the young
    generations, not the whole heap.
11. ``cluster_pipelines_free_by_refcount``: a redis-py cluster pipeline and its execution
    strategy no longer hold each other, so a used pipeline is freed when dropped, not by
    the collector.

## 1. Fast drain
Faust hands every record it fetched to the streams through one call per record:

    await self.wait_first(callback(message), self.suspend_flow.wait())

(``faust.transport.consumer.Consumer._drain_messages``), so that a rebalance can interrupt
a delivery blocked on a full stream buffer. ``mode``'s ``Service.wait_first`` makes that
four tasks per record (the delivery, the flow flag, the service's stopped and crashed
flags), waits for the first, and cancels three. A delivery almost never blocks: the
buffer has room, the callback finishes without suspending, and the tasks are pure cost
(a large share of a loaded worker's main thread: docs/performance.md, "Faust's delivery:
four tasks per record").

``install_fast_drain()`` gives Faust's consumer a ``wait_first`` that, when no flag is set, runs the
delivery inline; if it finishes without suspending, that is the answer ``wait_first``
would have given (the delivery won, nothing else was set). If it suspends, the rest of it
goes to the original ``wait_first`` unchanged, so a rebalance interrupts it as before.
"""

from __future__ import annotations

import gc
import signal
import time
import weakref
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any

import faust
import hiredis
import redis.asyncio as aioredis
import redis.asyncio.cluster as redis_cluster
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from faust.exceptions import ConsumerNotStarted
from faust.transport import consumer as faust_consumer
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.worker import Worker
from mode.services import WaitResults
from redis.exceptions import DataError

from streams import stopping
from streams.batcher import Batcher

_INSTALLED = "__fundflow_fast__"


class _Resumed:
    """The rest of a coroutine that already ran to its first suspension (``yielded``):
    awaiting this yields that point to the event loop again and drives the coroutine on."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go into the coroutine
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def install_fast_drain() -> None:
    """Give Faust's consumer the inline ``wait_first`` (once per process)."""
    original = Consumer.wait_first
    if getattr(original, _INSTALLED, False):
        return

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        if (
            len(coros) == 2
            and isinstance(coros[0], Coroutine)
            and isinstance(coros[1], Coroutine)
            and not self.suspend_flow.is_set()
            and not self._stopped.is_set()
            and not self._crashed.is_set()
        ):
            delivery, flag = coros
            try:
                yielded = delivery.send(None)
            except StopIteration as done:
                flag.close()
                return WaitResults([delivery], [done.value], False)
            except BaseException:
                flag.close()
                raise
            return await original(self, _Resumed(delivery, yielded), flag, timeout=timeout)
        return await original(self, *coros, timeout=timeout)

    setattr(wait_first, _INSTALLED, True)
    Consumer.wait_first = wait_first  # type: ignore[method-assign]


def set_fetch_max_wait(milliseconds: int) -> None:
    """Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer. A broker that answers
    a fetch only when that wait runs out, even when records arrive meanwhile (Tansu, the
    embedded broker), then adds up to 1.5 s to every record's latency; Apache Kafka returns
    as soon as ``fetch_min_bytes`` is there, so a shorter wait costs it only idle fetches.
    Too short a wait starves a worker on Tansu instead (``streams.local.servers``).
    Wraps the one method that builds the consumer (once per process) to use our setting:
    aiokafka's ``AIOKafkaConsumer`` reads the private ``_fetch_max_wait_ms`` in ``start()``."""
    thread = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread._create_worker_consumer, "__wrapped__", None) or thread._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = milliseconds
        return consumer

    create.__wrapped__ = original  # type: ignore[attr-defined]
    thread._create_worker_consumer = create  # type: ignore[method-assign]


def time_fetches(observe: Callable[[float], None]) -> None:
    """Calls ``observe`` with each fetch's cost: its round trip, less the max wait it asked
    for when it came back with no records (a broker may hold an empty fetch that long, and
    Tansu holds every one). What remains is the broker's own work plus the network: near
    zero on Apache Kafka, and on the embedded broker the listing of every batch it stores,
    which grows until fetches stop returning (docs/demo.md, "The embedded broker's fetch
    cost grows with the batches it stores"). Wraps aiokafka's one ``AIOKafkaClient.send``
    (the fetcher's and everyone else's requests; only fetches are timed), once."""
    original = getattr(AIOKafkaClient.send, "__wrapped__", None) or AIOKafkaClient.send

    async def send(self: Any, node_id: Any, request: Any, **kwargs: Any) -> Any:
        if not isinstance(request, FetchRequest):
            return await original(self, node_id, request, **kwargs)
        started = time.monotonic()
        response = await original(self, node_id, request, **kwargs)
        cost = time.monotonic() - started
        if not any(part[-1] for _, parts in response.topics for part in parts):
            cost -= request._max_wait_ms / 1000
        observe(max(cost, 0.0))
        return response

    send.__wrapped__ = original  # type: ignore[attr-defined]
    AIOKafkaClient.send = send


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset Faust's consumer last committed for ``tp`` (``None`` before the first
    commit). Faust keeps it in ``Consumer._committed_offset`` and offers no accessor."""
    offset = consumer._committed_offset.get(tp)
    return offset if offset is None else int(offset)


def highwater(consumer: Any, tp: Any) -> int | None:
    """The high watermark of ``tp`` from the consumer's latest fetch, or ``None`` when it
    is not known: not fetched yet, not started, or revoked in a rebalance (aiokafka
    asserts the assignment, and its assignment is ``None`` mid-rebalance)."""
    try:
        high = consumer.highwater(tp)
    except (AssertionError, AttributeError, ConsumerNotStarted):
        return None
    return None if high is None else int(high)


class _IntakeQueue:
    """What Faust's conductor and flow control use of a channel's queue
    (``full``, ``put_nowait_enhanced``, ``clear``), delivering into a ``Batcher``."""

    def __init__(self, batcher: Batcher[Any], admit: Callable[[Any], bool]) -> None:
        self.batcher = batcher
        self.admit = admit

    def full(self) -> bool:
        return self.batcher.full()

    def put_nowait_enhanced(self, value: Any, *, on_pressure_high: Any, on_pressure_drop: Any) -> bool:
        if self.admit(value):
            self.batcher.put_nowait(value)
        return True

    def clear(self) -> None:
        self.batcher.clear()


class BatchIntake(faust.Topic):
    """FundFlow's input channel. Faust's conductor delivers each fetched record to the
    channels of its topic (``faust.transport.conductor.ConductorCompiler.build``):
    ``event = await chan.decode(message, propagate=True)``, then
    ``chan.queue.put_nowait_enhanced(event, ...)`` unless ``chan.queue.full()``, in which
    case it awaits ``chan.put(event)``. A stream then wraps each event, iterates, and acks
    it; a do-nothing Faust agent spends most of its time there. This channel's ``decode``
    (bound in ``Topic._compile_decode``) hands over the ``Message`` itself and its queue
    is the batcher, so a record goes from the consumer to a batch in one append;
    ``drain`` acks each record with ``Message.ack`` after its batch's effects, which is
    what a stream's ack does.

    Rebalances, as a stream does them (``faust.Stream._py_aiter``): a record is admitted
    only while flow control is active and its ``generation_id`` is the consumer's current
    one (a record fetched before a rebalance and handed over after it is dropped: Kafka
    redelivers it from the committed offset, in order); an admitted record is tracked as
    unacked (``Consumer.track_message``), so ``wait_empty`` waits for the batch in flight
    before a rebalance commits and hands partitions over; and the queue is managed by the
    app's flow control (``clear_on_resume``), so records buffered when partitions are
    revoked are dropped (never processed, never acked: redelivered)."""

    def __init__(self, app: faust.App, topics: Sequence[str], batcher: Batcher[Any]) -> None:
        queue: Any = _IntakeQueue(batcher, self.admit)  # duck-typed: the three methods Faust calls
        super().__init__(app, topics=list(topics), key_serializer="raw", value_serializer="raw", queue=queue)
        app.flow_control.manage_queue(queue)
        self.batcher = batcher

    def admit(self, message: Any) -> bool:
        """False for a record from before a rebalance; else track it as unacked."""
        app = self.app
        if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            return False
        if not message.tracked:
            message.tracked = True
            app.consumer.track_message(message)
        return True

    def _compile_decode(self) -> None:
        # faust.Topic.__init__ binds ``self.decode`` to its schema's compiled decoder here
        self.decode = self._the_message_itself  # type: ignore[method-assign]

    async def _the_message_itself(self, message: Any, *, propagate: bool = False) -> Any:
        return message

    async def put(self, value: Any) -> None:
        await self.batcher.wait_for_room()  # the conductor waits here while the batcher is full
        if self.admit(value):  # judged after the wait: a rebalance may have come meanwhile
            self.batcher.put_nowait(value)


FAUST_PAGES = "faust.web.apps."  # where faust-streaming keeps its built-in blueprints


def drop_faust_pages(app: faust.App) -> None:
    """Faust's web server mounts its own blueprints next to the app's pages: ``/router/``
    and ``/table/`` (cluster topology and table contents, unauthenticated), ``/graph/``,
    the statistics at ``/``, ``/performance/``, and, with statistics off, a production
    index at ``/``. Settings turn off all but that index (``streams.app`` sets them too);
    this empties the list of built-ins the web driver will apply when it starts (the
    private ``BlueprintManager._enabled``), so the worker serves only what FundFlow
    documents: ``/healthz``, ``/readyz``, ``/metrics``. Call before the worker starts."""
    manager = app.web.blueprints
    if manager.applied:
        raise RuntimeError("Faust's web server already applied its blueprints")
    manager._enabled = [
        (prefix, blueprint)
        for prefix, blueprint in manager._enabled
        if not (isinstance(blueprint, str) and blueprint.startswith(FAUST_PAGES))
        and not getattr(blueprint, "__module__", "").startswith(FAUST_PAGES)
    ]


def give_back_unacked(consumer: Any) -> int:
    """Forget every record Faust's consumer handed to the streams and saw no ack for; returns
    how many. With ``stream_wait_empty`` a stopping worker waits (``Consumer.wait_empty``)
    until every such record is acked, and a batch that cannot be finished (Redis down) is
    never acked: SIGTERM would wait for the outage to end. A worker that gives its batch up
    (``streams.errors.Abandoned``) forgets them instead: offsets are committed only up to
    acked records, so the ones given back are redelivered to the partition's next owner."""
    unacked = consumer._unacked_messages
    count = len(unacked)
    unacked.clear()
    return count


class HiredisPacking:
    """A redis-py asyncio connection that packs every command in one hiredis call. A commit
    call has thousands of arguments; redis-py packs them in Python, or with hiredis installed
    through ``redis.connection.HiredisRespSerializer``, which first copies every argument
    through its encoder in a Python generator, and packs in Python whenever one argument is
    a ``memoryview``. Here the arguments go to hiredis as they are (it takes str, int,
    float, bytes and memoryview); only a ``bytearray``, which it refuses, is copied, and
    then once. The command name is split as ``HiredisRespSerializer`` splits it."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # a bytearray (hiredis takes str, int, float, bytes, memoryview): copy, once
            plain: Any = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
            try:
                return [hiredis.pack_command(plain)]
            except TypeError as exc:
                raise DataError(str(exc)) from None


def pack_commands_in_c(client: aioredis.Redis) -> None:
    """Make the connections ``client``'s pool opens (plain, TLS or unix socket, by the URL)
    pack with ``HiredisPacking``: redis-py's ``ConnectionPool.make_connection`` builds its
    ``connection_class``, and both a single command (``send_command``) and a pipeline
    (``pack_commands``) go through the connection's ``pack_command``."""
    pool = client.connection_pool
    base = pool.connection_class
    pool.connection_class = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})


class StoppingWorker(Worker):
    """Faust's worker, stopping within ``stopping.GRACE_SECONDS`` of SIGINT / SIGTERM.

    ``mode.Worker`` answers a signal by awaiting ``Service.stop`` of the whole app; with
    the broker gone that stop waits on the consumer, which keeps asking for a group
    coordinator, and SIGTERM was ignored for as long as the broker stayed away. Here the
    signal also arms ``streams.stopping``'s watchdog, which exits (status 0) if Faust's
    orderly stop has not finished in time. mode installs ``_on_sigint`` and ``_on_sigterm``
    as the event loop's signal handlers (``Worker._install_signal_handlers_unix``); there is
    no public hook.

    No start-up spinner: to turn it for every log message, Faust's worker sets the root
    logger to DEBUG and adds a handler that takes everything, for the life of the process,
    whatever ``--loglevel`` says; then every ``log.debug`` in aiokafka, Faust and mode
    (several per fetch and per produce) builds a record that no one shows, a noticeable
    share of a worker's CPU (docs/performance.md, "Faust's log spinner"). Faust makes the spinner in ``__init__``
    and sets up that logging only while ``self.spinner`` is set; without it, the root
    logger stays at ``--loglevel``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None

    def _on_sigint(self) -> None:
        stopping.begin(signal.SIGINT)
        super()._on_sigint()

    def _on_sigterm(self) -> None:
        stopping.begin(signal.SIGTERM)
        super()._on_sigterm()


class _YoungCollections:
    """What ``faust.transport.consumer`` sees as its ``gc`` module: ``collect`` collects the
    young generations only."""

    @staticmethod
    def collect(generation: int = 2) -> int:
        return gc.collect(min(generation, 1))


def young_collections_on_rebalance() -> None:
    """Faust's ``Consumer.wait_empty`` (the rebalance's wait for the records in flight to be
    acked) calls ``gc.collect()`` once a second while it waits, a full collection, so that
    messages only a reference cycle kept alive leave its weak set of unacked ones. A full
    collection walks whatever the worker has not frozen (docs/performance.md, "Collections
    with a full state cache"), and Faust pauses every partition meanwhile. FundFlow's own
    messages are acked, not left to the collector; a young collection still frees the cycles
    of the batch in flight. The module's ``gc`` is
    replaced by ``_YoungCollections`` (Faust imports ``gc`` at the top of the module and
    calls ``gc.collect()`` nowhere else there; once per process)."""
    setattr(faust_consumer, "gc", _YoungCollections)  # noqa: B010 (the module has no attribute for mypy to check)


def _strategy_pipe(self: Any) -> Any:
    return self.__dict__["_pipe_ref"]()


def _set_strategy_pipe(self: Any, pipe: Any) -> None:
    self.__dict__["_pipe_ref"] = weakref.ref(pipe)


def cluster_pipelines_free_by_refcount() -> None:
    """redis-py's asyncio ``ClusterPipeline`` holds its execution strategy and the strategy
    holds the pipeline (``AbstractStrategy._pipe``): every cluster pipeline a worker runs is a
    reference cycle, garbage only the collector can free. A worker freezes what each batch
    leaves (``streams.health``), and a frozen cycle is never collected until the next
    rebalance: a worker on a Redis Cluster kept every pipeline it had run, ~70 a second each
    under load (docs/scale.md, "Pipelines a worker kept"). The strategy now holds its
    pipeline weakly (the pipeline holds the strategy, and whoever runs the pipeline holds
    the pipeline, so the pipeline outlives every use of it); once per process."""
    strategy = redis_cluster.AbstractStrategy
    if not isinstance(vars(strategy).get("_pipe"), property):
        strategy._pipe = property(_strategy_pipe, _set_strategy_pipe)  # type: ignore[assignment]
