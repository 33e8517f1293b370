"""One batch of Kafka records -> state committed in Redis -> findings published.

The order of effects is what makes a crash anywhere harmless:

1. decode every record once; bad ones become dead letters (never retried);
2. load the states this worker has not cached (one Redis round trip);
3. apply the pure step per customer, in partition order (``rules/``); a record
   the step fails on (it raises, or leaves a state that cannot be encoded)
   becomes a dead letter (``step_failed`` / ``encode_failed``), and its customer
   is redone from Redis without it: a half-applied step is never committed;
4. commit all customers' new states + findings atomically per customer,
   with a version check (one round trip, which also carries the batch's
   statistics); a customer whose version moved (another owner wrote it) is
   re-read and recomputed. Most commits append the customer's records to its
   changelog instead of writing its whole state; a load replays them
   (``streams.storage.changelog``, docs/changelog.md);
5. publish findings and dead letters to Kafka and wait for the acks;
6. remove the published findings from the outboxes.

Steps 1-3 (``prepare``) of the next batch may run while this one's steps 3-6
(``complete``) are under way, for the customers this one does not hold; the
rest wait for ``complete`` (``prepare`` says why that is safe). Only after
``complete`` returns does the Faust agent ack the records, so
offsets are committed after step 6. A crash before that redelivers the batch:
the txn_ids in the stored state make every event a no-op, and the outbox a
predecessor left behind is found at load time and published again (same
deterministic ids, so downstream drops the repeat). Redis or Kafka failures
raise ``TransientError`` inside (Redis errors of any kind are treated alike);
the batch is retried with capped exponential backoff and never dropped. Only
those are retried: one record never stops a batch (a poison pill is a dead
letter, never a stall). A batch retried longer than ``stalled_after_seconds``
marks its partitions stalled (``stalled_partitions``: ``/readyz`` and
``fundflow_partition_stalled``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo

import orjson
from redis.exceptions import RedisError

from rules.board import BoardDelta, collection_bucket
from rules.events import Event, TransactionEvent
from rules.state import CustomerState, Outcome, event_time
from streams import telemetry
from streams.deadletter import RawRecord, dead_letter, dead_letter_key
from streams.decode import DEFAULT_BOUNDS, TimeBounds, decode
from streams.errors import Abandoned, InvalidEvent, TransientError
from streams.retry import RetryPolicy, wait
from streams.storage.changelog import FixedRules, Rulebook, encode_entry, replay, step_record
from streams.storage.changelog import Step as Step  # (re-exported: the step's type, where it always was)
from streams.storage.codec import encode_state
from streams.storage.store import SHADOW_ENTRY, Commit, StateStore, Tally
from streams.topics import DLQ

log = logging.getLogger(__name__)
UTC = ZoneInfo("UTC")
# quiet customers are folded this many at a time: a batch with a customer in the chunk being
# written waits for that chunk alone (its encodes and a round trip), not for all the
# customers that went quiet together
FOLD_CHUNK = 32
FOLD_LIMIT = 512  # customers a fold timer run folds while batches flow
FOLD_IDLE_LIMIT = 8192  # ... and when no batch completed since the last run, until one arrives
EVICTED_QUEUED_MAX = 100_000  # customers queued for the fold after the cache let them go (ids only)

Message = tuple[str, bytes | None, bytes]  # topic, key, value
T = TypeVar("T")

_OUTCOME_ERRORS = {
    Outcome.CONFLICT: "txn_id was already applied with different content; refused",
    Outcome.TOO_LATE: "event is older than the customer's dedup horizon; cannot be applied exactly once",
    Outcome.UNKNOWN_REVERSED: "reverses a txn_id this customer never applied, or applied past the dedup horizon",
    Outcome.REVERSAL_MISMATCH: "does not undo the transaction it names (amount, direction, or it is a reversal)",
}


class Emitter(Protocol):
    async def send_all(self, messages: Sequence[Message]) -> None:
        """Publish and wait for every ack; raise TransientError when Kafka fails."""


def outbox_entry(topic: str, key: str, value: bytes) -> bytes:
    """An outbox entry: the topic and key travel with the finding, one line each, then
    the value. The key line is the key as a JSON string, so no key can add a line (a
    ``\n`` in a customer_id is written ``\\n``) and every reader that takes the topic
    from the first line and the value after the second still reads them right."""
    return b"%s\n%s\n%s" % (topic.encode(), orjson.dumps(key), value)


def outbox_message(entry: bytes) -> Message:
    topic, key, value = entry.split(b"\n", 2)
    if key[:1] == b'"':
        try:
            text = orjson.loads(key)
        except orjson.JSONDecodeError:
            pass  # an entry of an earlier version, whose key begins with a quote
        else:
            if isinstance(text, str):
                return topic.decode(), text.encode(), value
    return topic.decode(), key, value  # an entry of an earlier version: the key as it was


def _coordinates(record: RawRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


def _being_cancelled() -> bool:
    """Whether the running task is asked to stop: redis-py can answer a cancelled round trip
    with a timeout error, or retry it and return, so the cancel never reaches the caller."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _finding_of(entry: bytes) -> object:
    """The JSON value of an outbox entry (None when it is not JSON)."""
    try:
        return orjson.loads(entry.split(b"\n", 2)[-1])
    except orjson.JSONDecodeError:
        return None


@dataclass(slots=True)
class BatchReport:
    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    findings: int = 0
    republished: int = 0
    retries: int = 0
    conflicts: int = 0
    applied_records: set[int] = field(default_factory=set)  # id() of records committed as applied
    duplicate_records: set[int] = field(default_factory=set)


STEP_FAILED = "step_failed"  # the pure step raised on this event
ENCODE_FAILED = "encode_failed"  # the step left a state that cannot be stored
DECODE_FAILED = "decode_failed"  # decoding raised something other than InvalidEvent (a bug)


def _where(exc: BaseException) -> str:
    """Where ``exc`` was raised (file:line in function), for a log line: the message of an
    exception may quote input values, the place never does."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"


def _encodes(state: CustomerState) -> bool:
    try:
        encode_state(state)
    except Exception:
        return False
    return True


def _grown(items: list[T] | tuple[()], more: Iterable[T]) -> list[T]:
    """``items`` with ``more`` after them: the list itself, or a new one for the empty tuple
    a ``CustomerRun`` starts with."""
    if isinstance(items, list):
        items.extend(more)
        return items
    return list(more)


@dataclass(slots=True)
class CustomerRun:
    """One customer's part of a batch attempt, between the step and the commit."""

    version: int  # the state's version when loaded: the commit's compare-and-set
    state: CustomerState
    # (the three below stay an empty tuple until their first entry, as they do for most
    # customers of a batch: a list each was three of the ~28 objects a record leaves for the
    # young collections to walk: docs/scale.md, "Pipelines a worker kept, and what young
    # collections walk")
    findings: list[bytes] | tuple[()] = ()
    applied_ids: list[int] = field(default_factory=list)  # id() of the records applied
    duplicate_ids: list[int] | tuple[()] = ()
    refused: list[tuple[RawRecord, Outcome]] | tuple[()] = ()  # conflict / too late
    produced_ms: list[int] = field(default_factory=list)  # Kafka timestamps of the applied records
    board: BoardDelta = field(default_factory=BoardDelta)  # what the applied records add to the 看板
    records: list[RawRecord] = field(default_factory=list)  # every record stepped, in order
    tail: int = 0  # changelog entries after the full state stored (-1: none is stored)
    rules: str = "-"  # the fingerprint of the rules the step ran under
    appends: bool = False  # its commit appends the records to the changelog (else: the whole state)


@dataclass(slots=True)
class _Attempt:
    """What one attempt at a batch carries between its stages."""

    by_customer: dict[str, list[tuple[RawRecord, Event]]]
    letters: list[Message]
    rejected: list[tuple[RawRecord, str, str]]
    report: BatchReport
    to_publish: dict[str, list[bytes]] = field(default_factory=dict)
    careful: set[str] = field(default_factory=set)  # states that failed to encode: checked after every step
    outcome_letters: list[Message] = field(default_factory=list)
    latencies: list[int] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class Prepared:
    """A batch after ``BatchProcessor.prepare``: decoded, and stepped but for ``later``."""

    records: Sequence[RawRecord]
    attempt: _Attempt
    later: list[str]  # customers of the batch before it, stepped in ``complete``
    started: float = field(default_factory=time.perf_counter)
    runs: dict[str, CustomerRun] = field(default_factory=dict)
    redo: list[str] = field(default_factory=list)  # a record failed in the step: redone


class BatchProcessor:
    def __init__(
        self,
        store: StateStore,
        step: Step,
        emitter: Emitter,
        *,
        max_event_bytes: int = 64 * 1024,
        bounds: TimeBounds = DEFAULT_BOUNDS,
        currency: str = "CNY",
        cache_size: int = 200_000,
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
        stalled_after_seconds: float = 30.0,
        wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
        on_commit: Callable[[list[CustomerState]], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        zone: ZoneInfo = UTC,
        snapshot_every: int = 1,
        rulebook: Rulebook | None = None,
    ) -> None:
        self.store = store
        self.zone = zone  # the bank's: the 看板's days and hours
        self.step = step
        self.emitter = emitter
        self.max_event_bytes = max_event_bytes
        self.bounds = bounds
        self.currency = currency  # the deployment's one reporting currency (FUNDFLOW_CURRENCY)
        self.cache_size = cache_size
        self.retry_policy = RetryPolicy(retry_initial, retry_max)  # the worker's: FUNDFLOW_RETRY_* (outage_policy)
        self.stalled_after_seconds = stalled_after_seconds
        self.wall_clock_ms = wall_clock_ms
        self.monotonic = monotonic
        self.on_commit = on_commit  # told which states were committed (live tiers)
        self.should_stop = should_stop  # the worker is shutting down: stop retrying
        # a customer's commits write its full state every ``snapshot_every``-th time (and the
        # first, and when the worker folds it once it went quiet); the others append the records to
        # its changelog (``streams.storage.changelog``). 1: always the full state.
        self.snapshot_every = snapshot_every
        # the rules the step runs under, by fingerprint (the step's own when it has them)
        self.rulebook: Rulebook = rulebook or (step if isinstance(step, Rulebook) else FixedRules(step))
        store.rulebook = self.rulebook  # (its readers replay a changelog as this processor wrote it)
        self._rules_saved: set[str] = set()  # fingerprints known to be stored in Redis
        # customer -> (version, state, changelog entries after its stored full state; -1: none stored)
        self.cache: OrderedDict[str, tuple[int, CustomerState, int]] = OrderedDict()
        # cached customers that may have a changelog -> (when it last grew (monotonic), their
        # input partition), oldest first
        self._logged: dict[str, tuple[float, int]] = {}
        # customers the cache let go with a changelog not yet folded are queued for the fold
        # with a takeover's (``_orphans``), up to this many queued in all; past it, a log stays
        # in Redis until the customer's next commits or a takeover
        self._evicted_max = EVICTED_QUEUED_MAX
        self._completed = 0  # batches completed, and as of the last fold's run
        self._completed_at_fold = 0
        self._folding = asyncio.Lock()  # held by ``fold``: one fold at a time
        # the customers of the fold chunk being written, and when it is written: no batch
        # steps them before (``prepare`` leaves them to ``complete``, which waits for it)
        self._folding_now: frozenset[str] = frozenset()
        self._chunk_written: asyncio.Future[None] | None = None
        # the batch being retried: since when (monotonic), and its input partitions
        self._failing_since: float | None = None
        self._failing: set[tuple[str, int]] = set()
        self._flagged: set[tuple[str, int]] = set()  # partitions fundflow_partition_stalled shows as 1
        self._unfinished: list[Prepared] = []  # prepared, not yet completed (at most two: overlap)
        # input partitions this processor owns, and the customers of them found with a changelog
        # when it took them over (``adopt``), not cached here: their logs are folded (``fold``)
        # once they stayed quiet after the takeover, so a dead owner's logs never stay behind
        self._adopted: frozenset[int] = frozenset()
        self._orphans: dict[int, list[str]] = {}
        self._orphans_since = 0.0  # (monotonic) when the last partitions were adopted
        self._rules_current: str | None = None  # the fingerprint last written as the rules in force

    def _in_flight(self) -> set[str]:
        """The customers of the batches prepared and not yet completed."""
        busy: set[str] = set()
        for unfinished in self._unfinished:
            busy.update(unfinished.attempt.by_customer)
        return busy

    async def _after_fold(self, customers: list[str]) -> None:
        """Until the fold chunk being written holds none of ``customers``."""
        while (written := self._chunk_written) is not None and not self._folding_now.isdisjoint(customers):
            await asyncio.shield(written)

    def _appends(self, tail: int) -> bool:
        """Whether the next commit of a customer with ``tail`` changelog entries appends one."""
        return tail >= 0 and tail + 1 < self.snapshot_every

    def cached_state(self, customer_id: str) -> CustomerState | None:
        entry = self.cache.get(customer_id)
        return entry[1] if entry is not None else None

    def forget_all(self) -> None:
        """Drop every cached state (on rebalance: Redis is the truth)."""
        self.cache.clear()
        self._logged.clear()
        self._adopted = frozenset()  # (the logs it held uncommitted-to are found again by ``adopt``)

    async def adopt(self, partitions: frozenset[int]) -> int:
        """The input partitions this processor owns now: for those it did not own, the
        customers holding a changelog (the commit script's index: a predecessor that died left
        them) are queued for ``fold``; those of partitions it gave up are dropped. Returns the
        customers queued. A Redis failure is raised (the caller tries again later)."""
        new = partitions - self._adopted
        found = await self.store.logged_customers(new) if new else {}
        self._orphans = {p: cids for p, cids in self._orphans.items() if p in partitions}
        for partition, customers in found.items():
            self._orphans[partition] = customers
        self._adopted = partitions
        if new:
            self._orphans_since = self.monotonic()
        queued = sum(len(cids) for cids in found.values())
        if queued:
            log.info("%d customers of partitions %s hold a changelog: folded once quiet", queued, sorted(new))
        return queued

    async def note_rules_in_force(self) -> None:
        """Keep the rules this processor runs under in Redis as the last good ones
        (``FUNDFLOW_RULES_FALLBACK=last-good``), once per change."""
        fp = self.rulebook.refresh()
        if fp == self._rules_current:
            return
        text = self.rulebook.rules_json(fp)
        if text is not None:
            await self.store.save_current_rules(fp, text)
            self._rules_saved.add(fp)
        self._rules_current = fp

    def _note_logged(self, cid: str, partition: int) -> None:
        self._logged.pop(cid, None)  # (re-inserted: the dict stays in order of when logs grew)
        self._logged[cid] = (self.monotonic(), partition)

    def stalled_partitions(self) -> list[str]:
        """``topic:partition`` of every input partition whose batch has been retried for
        ``stalled_after_seconds`` or more (no progress there until Redis or Kafka is back);
        also sets ``fundflow_partition_stalled`` for them (asked by /readyz, a timer and
        every retry, so the gauge follows within seconds)."""
        since = self._failing_since
        if since is None or self.monotonic() - since < self.stalled_after_seconds:
            return []
        for topic, partition in self._failing - self._flagged:
            telemetry.PARTITION_STALLED.labels(topic, str(partition)).set(1)
        self._flagged |= self._failing
        return sorted(f"{topic}:{partition}" for topic, partition in self._failing)

    def _note_failing(self, records: Sequence[RawRecord]) -> None:
        if self._failing_since is None:
            self._failing_since = self.monotonic()
            self._failing = {(r.topic, r.partition) for r in records}
        self.stalled_partitions()

    def _note_progress(self) -> None:
        for topic, partition in self._flagged:
            telemetry.PARTITION_STALLED.labels(topic, str(partition)).set(0)
        self._failing_since, self._failing, self._flagged = None, set(), set()

    async def process(self, records: Sequence[RawRecord]) -> BatchReport:
        """Steps 1-6 for one batch (``prepare`` then ``complete``)."""
        return await self.complete(await self.prepare(records))

    async def prepare(self, records: Sequence[RawRecord]) -> Prepared:
        """Steps 1-3 of a batch, as far as they can go while the batch before it completes:
        decode every record; load and step the customers that batch does not hold. Its
        customers' states are still being committed (a lost version check redoes them from
        Redis), so their records wait for ``complete``, which runs them after it. A step
        changes only its own customer's state, so the rest is the same as after that batch.
        Customers a fold is writing wait for ``complete`` too. A load that fails here is
        left to ``complete``'s retries."""
        by_customer, rejected = self._decode(records)
        attempt = self._attempt(len(records), by_customer, rejected, retries=0)
        busy = self._in_flight() | self._folding_now
        ready = [cid for cid in by_customer if cid not in busy]
        prepared = Prepared(records, attempt, [cid for cid in by_customer if cid in busy])
        self._unfinished.append(prepared)
        try:
            if ready:
                await self._load_missing(ready, attempt)
                prepared.runs, prepared.redo = self._run_all(ready, attempt)
        except (TransientError, RedisError):
            prepared.runs, prepared.redo, prepared.later = {}, [], list(by_customer)
        except BaseException:
            self._unfinished.remove(prepared)
            raise
        return prepared

    def _attempt(
        self,
        records: int,
        by_customer: dict[str, list[tuple[RawRecord, Event]]],
        rejected: list[tuple[RawRecord, str, str]],
        retries: int,
    ) -> _Attempt:
        """A fresh attempt at a batch: its report, and a dead letter for each record given up on."""
        report = BatchReport(records=records, retries=retries)
        letters = [self._letter(r, reason, error, report) for r, reason, error in rejected]
        return _Attempt(by_customer, letters, rejected, report)

    def _decode(
        self, records: Sequence[RawRecord]
    ) -> tuple[dict[str, list[tuple[RawRecord, Event]]], list[tuple[RawRecord, str, str]]]:
        """Step 1: each customer's events in partition order, and the records given up on."""
        rejected: list[tuple[RawRecord, str, str]] = []  # records given up on: (record, reason, error)
        by_customer: dict[str, list[tuple[RawRecord, Event]]] = {}
        now_ms = self.wall_clock_ms()
        for record in records:
            try:
                event = decode(record, self.max_event_bytes, self.bounds, now_ms, self.currency)
            except InvalidEvent as exc:
                rejected.append((record, exc.reason, exc.error))
                continue
            except Exception as exc:  # a bug met by one record: that record's dead letter, not the batch's end
                where = _where(exc)
                log.warning("decoding %s[%d]@%d raised %s at %s", *_coordinates(record), type(exc).__name__, where)
                rejected.append((record, DECODE_FAILED, f"decoding raised {type(exc).__name__}"))
                continue
            by_customer.setdefault(event.customer_id, []).append((record, event))
        return by_customer, rejected

    async def complete(self, prepared: Prepared) -> BatchReport:
        """Steps 3-6 of a prepared batch: the customers ``prepare`` left, the commit, the
        publish, with retries. Call in the order the batches were prepared, one at a time."""
        try:
            return await self._complete(prepared)
        finally:
            self._unfinished.remove(prepared)
            self._completed += 1

    async def _complete(self, prepared: Prepared) -> BatchReport:
        records = prepared.records
        attempt = prepared.attempt
        by_customer, rejected = attempt.by_customer, attempt.rejected
        first: Prepared | None = prepared
        retries = 0
        applied_before: set[int] = set()  # committed by an attempt that failed later (e.g. publishing)
        try:
            while True:
                try:
                    findings = await self._apply(attempt, first)
                    await self._publish(findings, attempt.letters)
                    break
                except (TransientError, RedisError) as exc:
                    applied_before |= attempt.report.applied_records
                    retries += 1
                    telemetry.TRANSIENT_RETRIES.inc()
                    self._note_failing(records)
                    for cid in by_customer:
                        self.cache.pop(cid, None)
                    delay = self.retry_policy.backoff(retries)
                    log.warning("batch of %d records will be retried in %.2fs: %s", len(records), delay, exc)
                    if await wait(delay, self.should_stop):
                        raise Abandoned(f"stopping with a batch of {len(records)} records unfinished: {exc}") from exc
                # Each attempt starts from Redis' truth: after a failure, what was committed
                # is now a duplicate and its findings come back from the outbox.
                first = None
                attempt = self._attempt(len(records), by_customer, rejected, retries)
        finally:
            self._note_progress()
        report = attempt.report
        # An event a failed attempt committed comes back as a duplicate: it was applied once.
        again = applied_before & report.duplicate_records
        report.applied += len(again)
        report.duplicates -= len(again)
        record_batch(report)
        return report

    def _letter(self, record: RawRecord, reason: str, error: str, report: BatchReport) -> Message:
        report.dead_letters[reason] = report.dead_letters.get(reason, 0) + 1
        log.info("dead letter %s[%d]@%d: %s: %s", *_coordinates(record), reason, error)
        return DLQ, dead_letter_key(record), dead_letter(record, reason, error, self.wall_clock_ms())

    async def _apply(self, attempt: _Attempt, prepared: Prepared | None = None) -> dict[str, list[bytes]]:
        """Steps 2-4, in rounds until every customer is committed: load what is not cached,
        run each customer's records through the step, commit, settle. Returns each customer's
        findings still to publish (new and left over from a predecessor's outbox).

        A customer leaves a round unfinished when its commit lost the version check (another
        owner wrote it: re-read and recompute), when the step failed on one of its records
        (that record is dead-lettered and the customer redone from Redis without it), or when
        its state cannot be encoded (the round is redone with the state checked after every
        step, to find the record). The first round's steps may be ``prepared`` already."""
        pending = list(attempt.by_customer)
        while pending:
            if prepared is not None:  # the first round, stepped in ``prepare`` but for ``later``
                runs, redo, later = prepared.runs, prepared.redo, prepared.later
                prepared = None
            else:
                runs, redo, later = {}, [], pending
            if later:
                await self._after_fold(later)
                await self._load_missing(later, attempt)
                more, more_redo = self._run_all(later, attempt)
                runs.update(more)
                redo += more_redo
            failed = await self._commit(runs, pending, attempt)
            if failed is None:  # a state could not be encoded: every customer of the round again
                continue
            self._settle(runs, failed, attempt)
            pending = [cid for cid in pending if cid in failed] + redo
        attempt.letters.extend(attempt.outcome_letters)
        self._evict()
        telemetry.observe_latencies(attempt.latencies)
        return attempt.to_publish

    def _evict(self) -> None:
        """The cache back to its size, least recently used first. A customer whose changelog
        is not folded yet is queued for the fold as a takeover's are (``_fold_orphans``: read,
        replayed and written whole from Redis): at a bank a customer's next event comes hours
        later, and without this every event of a customer the cache let go before its log went
        quiet left that log in Redis for its next ``snapshot_every`` commits. Its id only: a
        state kept aside cost a worker ~20 times what its log costs Redis."""
        room: int | None = None
        while len(self.cache) > self.cache_size:
            cid, entry = self.cache.popitem(last=False)
            logged = self._logged.pop(cid, None)
            if entry[2] <= 0 or logged is None:
                continue
            if room is None:
                room = self._evicted_max - self._queued()
            if room <= 0:
                telemetry.CHANGELOG_LEFT.inc()
                continue
            self._orphans.setdefault(logged[1], []).append(cid)
            room -= 1

    def _queued(self) -> int:
        """Customers queued for the fold by id (let go by the cache, or a takeover's)."""
        return sum(map(len, self._orphans.values()))

    async def _load_missing(self, pending: list[str], attempt: _Attempt) -> None:
        """Step 2: one round trip for the customers not cached; an outbox a predecessor left
        behind is published again (each entry once, also when loaded again after a redo)."""
        missing = [cid for cid in pending if cid not in self.cache]
        loaded_all = await self.store.load(missing)
        await self.store.learn_rules(entry for loaded in loaded_all.values() for entry in loaded.log)
        for cid, loaded in loaded_all.items():
            state = loaded.state or CustomerState(cid)
            if loaded.log:
                try:
                    replay(state, loaded.log, self._replay_step)
                except ValueError as exc:  # as for a state that cannot be read: retried, stalled, said
                    raise TransientError(f"changelog of a customer cannot be replayed: {exc}") from exc
                self._note_logged(cid, attempt.by_customer[cid][-1][0].partition)
                telemetry.CHANGELOG_REPLAYED.inc(len(loaded.log))
            self.cache[cid] = (loaded.version, state, len(loaded.log) if loaded.state is not None else -1)
            if loaded.outbox:
                queued = attempt.to_publish.setdefault(cid, [])
                left_over = [entry for entry in loaded.outbox if entry not in queued]
                queued.extend(left_over)
                attempt.report.republished += len(left_over)

    def _replay_step(self, fp: str) -> Step:
        step = self.rulebook.replay_step(fp)
        if step is None:  # never stored (or removed): the rules in force are the best there is
            log.warning("changelog names rules %s, which are not stored; replayed under the current rules", fp)
            step = self.rulebook.replay_step(self.rulebook.refresh())
        if step is None:
            raise ValueError(f"no rules to replay a changelog under ({fp})")
        return step

    def _run_all(self, customers: list[str], attempt: _Attempt) -> tuple[dict[str, CustomerRun], list[str]]:
        """Step 3 for ``customers`` (loaded): their runs, and those to redo (a record failed)."""
        runs: dict[str, CustomerRun] = {}
        redo: list[str] = []
        rules = self.rulebook.refresh()  # (the rules change only here: one set for each run)
        for cid in customers:
            run = self._run_customer(cid, attempt, rules)
            if run is None:
                redo.append(cid)
            else:
                runs[cid] = run
        return runs, redo

    def _run_customer(self, cid: str, attempt: _Attempt, rules: str) -> CustomerRun | None:
        """Step 3 for one customer: the pure step over its records, in partition order, on
        the cached state. ``None`` when the step failed on a record: that record is
        dead-lettered and taken out, and the half-applied state dropped from the cache."""
        version, state, tail = self.cache[cid]
        careful = cid in attempt.careful
        # the commit appends to the changelog (a careful state is written whole)
        run = CustomerRun(version, state, tail=tail, rules=rules, appends=self._appends(tail) and not careful)
        for record, event in attempt.by_customer[cid]:
            checking = careful  # (an exception now means the state cannot be encoded)
            try:
                outcome, findings = step_record(state, record, event, self.step)
                if outcome is Outcome.APPLIED and (careful or run.appends):
                    checking = True
                    if careful:
                        encode_state(state)
                    else:  # the rules' own part of the state: free-form, so checked (the rest is typed)
                        orjson.dumps(state.rule_state)
            except Exception as exc:
                self._reject(record, exc, ENCODE_FAILED if checking else STEP_FAILED, attempt)
                attempt.by_customer[cid] = [(r, e) for r, e in attempt.by_customer[cid] if r is not record]
                self.cache.pop(cid, None)  # half-applied: never committed, never reused
                return None
            run.records.append(record)
            if outcome is Outcome.APPLIED:
                run.applied_ids.append(id(record))
                if findings:
                    run.findings = _grown(run.findings, findings)
                if isinstance(event, TransactionEvent):
                    run.board.add_transaction(event, event_time(event, self.zone)[0], self.zone, state)
                for entry in findings:
                    if not entry.startswith(SHADOW_ENTRY):  # (a shadow run's record: not a finding)
                        run.board.add_finding(_finding_of(entry))
                if record.timestamp_ms is not None:
                    run.produced_ms.append(record.timestamp_ms)
            elif outcome is Outcome.DUPLICATE:
                run.duplicate_ids = _grown(run.duplicate_ids, (id(record),))
            else:
                run.refused = _grown(run.refused, ((record, outcome),))
        return run

    async def _commit(self, runs: dict[str, CustomerRun], pending: list[str], attempt: _Attempt) -> set[str] | None:
        """Step 4: one atomic compare-and-set per changed customer, all in one round trip
        that also counts the applied events. Returns the customers whose version moved, or
        ``None`` when a state could not be encoded (nothing was sent): those customers are
        marked careful and the round's customers dropped from the cache, to be redone."""
        commits = [
            Commit(
                cid,
                run.version,
                run.state,
                run.findings,
                run.board,
                collection_bucket(run.state),
                encode_entry(run.rules, run.records) if run.appends else None,
                run.records[-1].partition if run.records else None,
            )
            for cid, run in runs.items()
            if run.applied_ids
        ]
        await self._save_rules({runs[c.customer_id].rules for c in commits if c.log is not None})
        tally = Tally(0, [], self.wall_clock_ms)
        for run in runs.values():
            if run.applied_ids:
                tally.applied += len(run.applied_ids)
                tally.produced_ms.extend(run.produced_ms)
        try:
            failed = await self.store.commit(commits, tally)
        except (TransientError, RedisError):
            raise
        except Exception as exc:
            unencodable = {c.customer_id for c in commits if not _encodes(c.state)}
            if not unencodable or unencodable <= attempt.careful:
                raise
            log.warning("%d states could not be encoded (%s at %s)", len(unencodable), type(exc).__name__, _where(exc))
            attempt.careful |= unencodable
            for cid in pending:
                self.cache.pop(cid, None)
            return None
        attempt.latencies.extend(tally.latencies_ms)
        attempt.report.conflicts += len(failed)
        appended = sum(1 for c in commits if c.log is not None and c.customer_id not in failed)
        telemetry.CHANGELOG_COMMITS.labels("log").inc(appended)
        telemetry.CHANGELOG_COMMITS.labels("state").inc(len(commits) - len(failed) - appended)
        if failed:  # counted as applied in the commit's round trip; they will be redone
            lost = sum(len(runs[cid].applied_ids) for cid in failed)
            await self.store.count(Tally(-lost, [], self.wall_clock_ms))
        if self.on_commit is not None:
            self.on_commit([c.state for c in commits if c.customer_id not in failed])
        return failed

    def _settle(self, runs: dict[str, CustomerRun], failed: set[str], attempt: _Attempt) -> None:
        """After the commit: committed states become the cache's truth and their findings go
        to publishing; a customer that lost the version check leaves the cache (redone)."""
        report = attempt.report
        for cid, run in runs.items():
            if cid in failed:
                self.cache.pop(cid, None)
                continue
            if run.applied_ids:
                tail = run.tail + 1 if run.appends else 0
                self.cache[cid] = (run.version + 1, run.state, tail)
                self.cache.move_to_end(cid)
                if tail:
                    self._note_logged(cid, run.records[-1].partition)
                if run.findings:
                    attempt.to_publish.setdefault(cid, []).extend(run.findings)
                    report.findings += sum(1 for entry in run.findings if not entry.startswith(SHADOW_ENTRY))
            elif run.records and cid in self.cache:
                # stepped, nothing committed (duplicates, refusals): the partition positions
                # they noted are in the cached state only, and in no log entry, so the next
                # commit writes the state whole (a replay would miss them)
                self.cache[cid] = (run.version, run.state, -1)
            report.applied += len(run.applied_ids)
            report.duplicates += len(run.duplicate_ids)
            report.applied_records.update(run.applied_ids)
            report.duplicate_records.update(run.duplicate_ids)
            for record, outcome in run.refused:
                attempt.outcome_letters.append(self._letter(record, outcome.value, _OUTCOME_ERRORS[outcome], report))

    async def _save_rules(self, fingerprints: set[str]) -> None:
        """Store the rules that changelog entries about to be committed name, once per process."""
        for fp in fingerprints - self._rules_saved:
            text = self.rulebook.rules_json(fp)
            if text is not None:
                await self.store.save_rules(fp, text)
            self._rules_saved.add(fp)

    async def fold(
        self,
        quiet_seconds: float = 10.0,
        limit: int = FOLD_LIMIT,
        chunk: int = FOLD_CHUNK,
        idle_limit: int = FOLD_IDLE_LIMIT,
    ) -> int:
        """Write the full state of up to ``limit`` cached customers whose changelog has not
        grown for ``quiet_seconds`` (then of those queued by ``_evict`` and ``adopt``), and drop their
        logs (the worker's timer calls this every second): a customer in a burst of events
        pays one encode for the burst, and a quiet one costs Redis its state alone. When no
        batch completed since the last call, up to ``idle_limit``, until a batch arrives:
        after a catch-up, the logs of the hundreds of thousands of customers it touched are
        folded in a minute instead of ten. Customers a batch in flight holds are left to it
        (its commit may be under way: ``tests/pipeline/test_changelog.py`` fails otherwise).
        They are written ``chunk`` at a time, and no batch steps a customer of the chunk being
        written before it is written: ``prepare`` leaves them to ``complete``, which waits for
        the chunk (only a batch with such a customer waits, and only for one chunk). Under
        load, the hundreds of customers of a burst go quiet together; folded in one go, every
        batch arriving meanwhile waited for all of them, and a chunk under the lock still held
        batches back (its round trip ends only when the event loop gets to it): traced in
        docs/performance.md, "Folds beside batches". Each write is a compare-and-set of the
        version cached, as a batch's commit is. Returns the customers folded. A failure is
        logged, never raised: the logs stay, and are as good as a full state."""
        cutoff = self.monotonic() - quiet_seconds
        idle = self._completed == self._completed_at_fold and not self._unfinished
        self._completed_at_fold = self._completed
        most = max(limit, idle_limit) if idle else limit
        folded = tried = 0
        while tried < most:
            if tried >= limit and self._unfinished:
                break  # (idle no more: a batch came)
            async with self._folding:
                chosen, written = await self._fold(cutoff, min(chunk, most - tried))
            tried += chosen
            folded += written
            if _being_cancelled():  # (stopping: redis-py may have retried the cancelled round trip)
                raise asyncio.CancelledError
            if chosen == 0 or written < 0:
                break
        if self._orphans and self._orphans_since <= cutoff:
            while tried < most:
                if tried >= limit and self._unfinished:
                    break
                async with self._folding:
                    chosen, written = await self._fold_orphans(min(chunk, most - tried))
                tried += chosen
                folded += max(written, 0)
                if _being_cancelled():
                    raise asyncio.CancelledError
                if chosen == 0 or written < 0:
                    break
        telemetry.CHANGELOG_HELD.set(len(self._logged) + self._queued())
        return folded

    async def _fold_orphans(self, limit: int) -> tuple[int, int]:
        """A chunk of the adopted customers' logs folded (``adopt``): (chosen, folded; -1: the
        write failed, and they are queued again). One a batch holds or has cached is left to
        the fold of cached customers; each write is a compare-and-set of the version loaded."""
        busy = self._in_flight()
        chosen: list[str] = []
        partition_of: dict[str, int] = {}
        for partition in list(self._orphans):
            queue = self._orphans[partition]
            while queue and len(chosen) < limit:
                cid = queue.pop()
                if cid not in busy and cid not in self.cache:
                    chosen.append(cid)
                    partition_of[cid] = partition
            if not queue:
                del self._orphans[partition]
            if len(chosen) >= limit:
                break
        if not chosen:
            return 0, 0
        self._folding_now = frozenset(chosen)  # (a batch arriving meanwhile waits for the chunk)
        written = self._chunk_written = asyncio.get_running_loop().create_future()
        try:
            try:
                loaded = await self.store.load(chosen)
                await self.store.learn_rules(entry for one in loaded.values() for entry in one.log)
                commits, gone = [], []
                for cid, one in loaded.items():
                    if not one.log:  # (its log went meanwhile, or a version without the index dropped it)
                        gone.append(cid)
                        continue
                    try:
                        state = replay(one.state or CustomerState(cid), one.log, self._replay_step)
                    except ValueError as exc:  # left as it is: a load by a batch says so, and retries
                        log.warning("changelog of a customer left unfolded: %s", exc)
                        continue
                    commits.append(Commit(cid, one.version, state))
                if gone:
                    await self.store.unindex(gone)
                failed = await self.store.commit(commits)
            except Exception as exc:
                if _being_cancelled():
                    raise asyncio.CancelledError from exc
                log.warning("changelogs of adopted customers not folded: %s", exc)
                for cid in chosen:  # (queued again: their turn comes at the next fold)
                    if partition_of[cid] in self._adopted:
                        self._orphans.setdefault(partition_of[cid], []).append(cid)
                return len(chosen), -1
        finally:
            self._folding_now, self._chunk_written = frozenset(), None
            written.set_result(None)
        telemetry.CHANGELOG_FOLDED.inc(len(commits) - len(failed))
        return len(chosen), len(commits) - len(failed)

    async def _fold(self, cutoff: float, limit: int) -> tuple[int, int]:
        """(customers chosen, customers folded; -1: the write failed)."""
        busy = self._in_flight()
        chosen: list[tuple[str, tuple[int, CustomerState, int]]] = []
        gone: list[str] = []  # (the scan stops at the first not quiet: no copy of the whole index)
        for cid, (when, _) in self._logged.items():
            if when > cutoff or len(chosen) >= limit:
                break
            entry = self.cache.get(cid)
            if entry is None or entry[2] <= 0:
                gone.append(cid)
            elif cid not in busy:
                chosen.append((cid, entry))
        for cid in gone:
            del self._logged[cid]
        if not chosen:
            return 0, 0
        commits = [Commit(cid, version, state) for cid, (version, state, _) in chosen]
        self._folding_now = frozenset(cid for cid, _ in chosen)
        written = self._chunk_written = asyncio.get_running_loop().create_future()
        try:
            try:
                failed = await self.store.commit(commits)
            except Exception as exc:  # (an encode failure included: the log stays, as good as a state)
                if _being_cancelled():  # (stopping: a cancelled round trip can surface as a Redis timeout)
                    raise asyncio.CancelledError from exc
                log.warning("quiet customers not folded into their states: %s", exc)
                return len(chosen), -1
            for cid, entry in chosen:
                self._logged.pop(cid, None)
                if self.cache.get(cid) is not entry:
                    continue  # (taken by a redo meanwhile: its own commit decides)
                if cid in failed:
                    self.cache.pop(cid, None)
                else:
                    self.cache[cid] = (entry[0] + 1, entry[1], 0)
        finally:  # (the cache says what was written before a waiting batch steps them)
            self._folding_now, self._chunk_written = frozenset(), None
            written.set_result(None)
        telemetry.CHANGELOG_FOLDED.inc(len(chosen) - len(failed))
        return len(chosen), len(chosen) - len(failed)

    def _reject(self, record: RawRecord, exc: Exception, reason: str, attempt: _Attempt) -> None:
        """``record`` failed in the step: its dead letter now, and in every retry of the batch."""
        what = "the rules step raised" if reason == STEP_FAILED else "the state after it cannot be encoded:"
        error = f"{what} {type(exc).__name__}"
        log.warning("%s[%d]@%d: %s at %s; dead-lettered", *_coordinates(record), error, _where(exc))
        attempt.rejected.append((record, reason, error))
        attempt.letters.append(self._letter(record, reason, error, attempt.report))

    async def _publish(self, findings: dict[str, list[bytes]], letters: list[Message]) -> None:
        messages: list[Message] = [outbox_message(e) for entries in findings.values() for e in entries]
        messages.extend(letters)
        if messages:
            await self.emitter.send_all(messages)
        await self.store.confirm_published(findings)


def record_batch(report: BatchReport) -> None:
    """The batch's counts into the worker's Prometheus metrics."""
    telemetry.BATCH_SIZE.observe(report.records)
    if report.applied:
        telemetry.EVENTS.labels("applied").inc(report.applied)
    if report.duplicates:
        telemetry.EVENTS.labels("duplicate").inc(report.duplicates)
    for reason, count in report.dead_letters.items():
        telemetry.DEAD_LETTERS.labels(reason).inc(count)
        telemetry.EVENTS.labels("dead_letter").inc(count)
    if report.findings:
        telemetry.FINDINGS.inc(report.findings)
    if report.republished:
        telemetry.REPUBLISHED.inc(report.republished)
    if report.conflicts:
        telemetry.VERSION_CONFLICTS.inc(report.conflicts)
