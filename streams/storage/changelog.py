"""A customer's changelog: the records committed since its last full state.

Encoding a customer's whole state (and compressing it) was a large share of a
worker's own CPU per event (docs/performance.md, "State encode costs"). So most commits
write only what the batch brought: one log entry per
customer per batch, the input records its step ran over, in partition order, exactly
as Kafka delivered them (no encode at all). A customer's first commit, every
``snapshot_every``-th, and a fold once its log has been quiet (``BatchProcessor.fold``,
``fundflow fold``) write the full state and drop the log (docs/changelog.md).

A state is then the snapshot plus the log, replayed through the same pure step, with
its findings dropped (they were committed to the outbox when the records were): the
step is deterministic in the state, the event and the rules, so the replay gives the
state the worker had. An entry names the rules its records ran under (their
fingerprint: of the version timeline, which judges each record under the version in force
at its event time, and of the shadow run beside it, ``streams.rulestep.Timeline``): the
worker stores each timeline it commits under, by fingerprint, and replays an entry under
its own timeline after a promotion. Readers (the API, ``fundflow snapshot``) replay the
same way, learning the timelines from Redis (``streams.rulestep.reader_store``).

An entry is ``rules-fingerprint\\n`` and then per record a header line
``topic partition offset timestamp key-length value-length\\n`` followed by the key and
the value bytes (the commit script puts the customer's 归集率 bucket and a newline in
front: ``streams.storage.store``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from rules.events import Event
from rules.state import CustomerState, Outcome, StateConfig, apply_event
from streams.deadletter import RawRecord
from streams.decode import TimeBounds, decode
from streams.errors import InvalidEvent

Step = Callable[[CustomerState, Event], tuple[Outcome, list[bytes]]]

SEEN_OFFSET: Final = 0  # a customer's position in a partition: [highest offset seen,
SEEN_STAMP: Final = 1  # latest Kafka timestamp seen]
REPLAY_MAX_BYTES: Final = 1 << 30  # a record once applied is applied again, whatever the limit is now


class _AnyTime(TimeBounds):
    """A replayed record passed the bounds when it was applied: it is not judged again."""

    def check(self, event: Event, record_ms: int | None, now_ms: int) -> None:
        return None


ANY_TIME: Final = _AnyTime(dt.date(1, 1, 1))


@runtime_checkable
class Rulebook(Protocol):
    """The rules a step runs under, as a changelog needs them (``streams.rulestep.RulesStep``)."""

    def refresh(self) -> str:
        """The fingerprint of the rules the step runs under until the next call."""

    def rules_json(self, fp: str) -> bytes | None:
        """The JSON of rules this process knows by fingerprint (to store them)."""

    def replay_step(self, fp: str) -> Step | None:
        """The step under rules ``fp``, findings not counted; None when not known here."""

    def learn(self, text: bytes) -> str:
        """Know the rules of ``text`` (stored by another process); their fingerprint."""


class FixedRules:
    """A step without rules of its own to name (tests, readers): one fingerprint, ``-``."""

    def __init__(self, step: Step) -> None:
        self.step = step

    def refresh(self) -> str:
        return "-"

    def rules_json(self, fp: str) -> bytes | None:
        return None

    def replay_step(self, fp: str) -> Step | None:
        return self.step

    def learn(self, text: bytes) -> str:
        return "-"


def plain_step(config: StateConfig) -> Step:
    """The state step with no business rules attached."""

    def step(state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
        return apply_event(state, event, config), []

    return step


def redelivered(state: CustomerState, record: RawRecord) -> bool:
    """The same record again: at or below the highest offset of its partition this customer
    has seen, and produced no later than the latest record seen there. A topic recreated
    after a broker loss restarts its offsets, but what is sent anew has later timestamps,
    so it is judged as new input (a too-late one is still dead-lettered)."""
    seen = state.offsets.get(f"{record.topic}:{record.partition}")
    return (
        seen is not None
        and record.offset <= seen[SEEN_OFFSET]
        and record.timestamp_ms is not None
        and record.timestamp_ms <= seen[SEEN_STAMP]
    )


def note_position(state: CustomerState, record: RawRecord) -> None:
    where = f"{record.topic}:{record.partition}"
    seen = state.offsets.get(where)
    stamp = record.timestamp_ms if record.timestamp_ms is not None else -1
    if seen is None or (record.offset <= seen[SEEN_OFFSET] and stamp > seen[SEEN_STAMP]):
        # first record here, or offsets went back while time went on: a new incarnation of
        # the topic (broker loss); positions of the old one mean nothing any more
        state.offsets[where] = [record.offset, stamp]
    else:
        seen[SEEN_OFFSET] = max(seen[SEEN_OFFSET], record.offset)
        seen[SEEN_STAMP] = max(seen[SEEN_STAMP], stamp)


def step_record(state: CustomerState, record: RawRecord, event: Event, step: Step) -> tuple[Outcome, list[bytes]]:
    """One record through the step, as the worker runs it: a too-late record this state has
    already gone past is a repeat; the record's position is noted whatever its outcome."""
    outcome, findings = step(state, event)
    if outcome is Outcome.TOO_LATE and redelivered(state, record):
        # a record this customer's state already went past, back after a crash,
        # its txn_id aged out of the dedup horizon meanwhile: a repeat, not late input
        outcome = Outcome.DUPLICATE
    note_position(state, record)
    return outcome, findings


def encode_entry(rules: str, records: Sequence[RawRecord]) -> bytes:
    """The log entry of one customer's records in one commit (their step ran under ``rules``)."""
    parts = [rules.encode(), b"\n"]
    for r in records:
        key, value = r.key, r.value
        stamp = -1 if r.timestamp_ms is None else r.timestamp_ms
        key_len = -1 if key is None else len(key)  # (-1: none)
        value_len = -1 if value is None else len(value)
        parts.append(b"%s %d %d %d %d %d\n" % (r.topic.encode(), r.partition, r.offset, stamp, key_len, value_len))
        parts.append(key or b"")
        parts.append(value or b"")
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Entry:
    rules: str
    records: list[RawRecord]


def _field(data: bytes, at: int, length: int) -> tuple[bytes | None, int]:
    if length < 0:
        return None, at
    if at + length > len(data):
        raise ValueError("entry is cut short")
    return data[at : at + length], at + length


def decode_entry(data: bytes) -> Entry:
    """An entry as the log holds it (the bucket line first). ``ValueError`` if damaged."""
    try:
        at = data.index(b"\n") + 1  # (the bucket)
        end = data.index(b"\n", at)
        rules = data[at:end].decode()
        at = end + 1
        records: list[RawRecord] = []
        while at < len(data):
            end = data.index(b"\n", at)
            topic, partition, offset, stamp, key_len, value_len = data[at:end].split(b" ")
            at = end + 1
            key, at = _field(data, at, int(key_len))
            value, at = _field(data, at, int(value_len))
            ts = int(stamp)
            records.append(RawRecord(topic.decode(), int(partition), int(offset), key, value, None if ts < 0 else ts))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"changelog entry cannot be read: {exc}") from None
    return Entry(rules, records)


def replay(state: CustomerState, entries: Sequence[bytes], step_for: Callable[[str], Step | None]) -> CustomerState:
    """``state`` (a snapshot) brought up to date with its log ``entries``: each entry's
    records through the step of its rules (``step_for``), findings dropped. ``ValueError``
    when an entry cannot be read or a record of it cannot be decoded any more."""
    for raw in entries:
        entry = decode_entry(raw)
        step = step_for(entry.rules)
        if step is None:
            raise ValueError(f"the rules {entry.rules!r} an entry ran under are not known")
        for record in entry.records:
            try:
                event = decode(record, REPLAY_MAX_BYTES, ANY_TIME, 0, currency=None)
            except InvalidEvent as exc:
                raise ValueError(f"a logged record cannot be decoded any more: {exc.reason}") from None
            step_record(state, record, event, step)
    return state
