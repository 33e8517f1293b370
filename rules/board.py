"""The 看板's bank-level numbers, as pure functions of what the worker applies.

For every event it APPLIES and every finding it commits, the worker adds a
``BoardDelta`` to the bank-level aggregates in the same atomic Redis step as the
customer's state (``streams.storage.store``). A redelivered event is a duplicate: it
applies nothing, so it adds nothing, and the aggregates are exactly-once. The
cells are integers (money in cents: amounts have at most two decimals, so this
is exact) so that adding them in Redis is exact too.

``recompute`` gives the same cells from stored states (``fundflow board
--check``): flows and net outflow of the days every state still keeps (a state
keeps whole days back to 90 days before its latest transaction), findings from
the customers' recent-findings lists, and the 归集率 distribution from each
state as of its latest event.

Cells:

- flows, per local day (bank zone): ``HH|in|kind|ext`` (or ``out``, ``int``) -> cents;
- findings, per local day of their event time: ``HH|type|category|rule`` -> count;
- net outflow, per local day: customer -> outflow minus inflow, in cents;
- collection: the bucket of each customer's ``collection_rate_90d`` as of its
  latest event (``0`` .. ``9`` for 0-10% .. 90-100%, ``none`` without inflow)
  -> customers.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from rules.events import TransactionEvent
from rules.state import (
    CREDIT,
    EXTERNAL,
    NO_FLOW,
    WINDOW_90D_US,
    CustomerState,
    EventRecord,
    inflow_since,
    local_day_hour,
    midnight_us,
    record_kind,
    remaining_since,
)

NO_RATE = "none"  # the collection bucket of a customer with no inflow in 90 days
BUCKETS: tuple[str, ...] = (*(str(b) for b in range(10)), NO_RATE)

Cells = dict[str, dict[str, int]]  # day (ISO) -> cell -> integer


def cents(amount: Decimal) -> int:
    """An amount in cents, exactly for a currency of at most two decimals (a three-decimal
    currency's thousandths are cut: the cells are in cents, as stored since the start)."""
    return int(amount.scaleb(2))


def flow_cell(hour: int, credit: bool, kind: str, external: bool) -> str:
    return f"{hour:02d}|{'in' if credit else 'out'}|{kind}|{'ext' if external else 'int'}"


def finding_cell(hour: int, kind: str, category: str, rule: str) -> str:
    return f"{hour:02d}|{kind}|{category}|{rule}"


@functools.lru_cache(maxsize=1024)
def iso_day(ordinal: int) -> str:
    """``YYYY-MM-DD`` of a day ordinal (the 看板's day keys)."""
    return dt.date.fromordinal(ordinal).isoformat()


@functools.lru_cache(maxsize=1024)
def day_ordinal(day: str) -> int:
    """The day ordinal of a ``YYYY-MM-DD`` day key (``iso_day``'s inverse)."""
    return dt.date.fromisoformat(day).toordinal()


def _add(cells: Cells, day: str, cell: str, value: int) -> None:
    row = cells.setdefault(day, {})
    row[cell] = row.get(cell, 0) + value


@dataclass(slots=True)
class BoardDelta:
    """What one customer's applied events and committed findings of a batch add."""

    flows: Cells = field(default_factory=dict)
    findings: Cells = field(default_factory=dict)
    net: dict[str, int] = field(default_factory=dict)  # day -> this customer's net outflow (cents)
    latest_us: int | None = None  # the latest event time applied
    zone: ZoneInfo | None = None  # the bank's, whose days the cells count

    def add_transaction(
        self, event: TransactionEvent, ts_us: int, zone: ZoneInfo, state: CustomerState | None = None
    ) -> None:
        """An applied transaction's flow (``state``: the customer's, just stepped by it). A
        reversal is no flow, and takes the reversed transaction's flow out of its own day
        (when the state still kept it: ``state.undone``); an own-account transfer is no flow."""
        self.note_time(ts_us)
        self.zone = zone
        if event.reverses is not None:
            undone = state.undone if state is not None else None
            if undone is not None:
                credit, external = bool(undone.flags & CREDIT), bool(undone.flags & EXTERNAL)
                self._flow(undone.ts_us, credit, record_kind(undone), external, -abs(cents(undone.amount)), zone)
            return
        if event.counterparty_customer_id is not None and event.counterparty_customer_id == event.customer_id:
            return
        self._flow(ts_us, event.direction == "credit", event.kind, event.external, cents(event.amount), zone)

    def _flow(self, ts_us: int, credit: bool, kind: str, external: bool, amount: int, zone: ZoneInfo) -> None:
        ordinal, hour = local_day_hour(ts_us, zone)
        day = iso_day(ordinal)
        _add(self.flows, day, flow_cell(hour, credit, kind, external), amount)
        self.net[day] = self.net.get(day, 0) + (-amount if credit else amount)

    def note_time(self, ts_us: int) -> None:
        if self.latest_us is None or ts_us > self.latest_us:
            self.latest_us = ts_us

    def add_finding(self, finding: Any) -> None:
        """A finding as published (``type``, ``category``, ``rule``, ``ts`` in the bank zone);
        anything else (a test's stand-in) is not counted, nor is a retraction: the cells count
        findings as they were made (docs/board.md)."""
        if isinstance(finding, Mapping) and "retracts" in finding:
            return
        try:
            ts = finding["ts"]
            cell = finding_cell(int(ts[11:13]), finding["type"], finding["category"], finding["rule"])
        except (KeyError, TypeError, ValueError):
            return
        _add(self.findings, ts[:10], cell, 1)

    def __bool__(self) -> bool:
        return bool(self.flows or self.findings or self.net)


def day_net(state: CustomerState, ordinal: int, zone: ZoneInfo) -> int | None:
    """The customer's net outflow (cents) of local day ``ordinal`` in ``zone``, from the records
    its state keeps: what the ``net`` deltas of every event of that day add up to (``recompute``
    counts the same way). None when the state may no longer keep that day whole (it keeps
    whole days of its own zone from ``kept_from_day`` on: a day later, whatever the zones).
    The commit sends it for the 看板's closed days, whose sets keep only their top
    (``streams.board.trim``): a customer no longer in one comes back with its whole net."""
    if state.kept_from_day is not None and ordinal <= state.kept_from_day:
        return None
    events = state.events
    start, end = _day_bounds(ordinal, zone)
    # (nearly every commit is of the customer's latest day: walked back from the end, that
    # is its last few records, no search; an older day is found by bisection)
    i = len(events)
    if i and events[-1].ts_us >= end:
        i = bisect.bisect_left(events, end, key=_ts_of)
    net = 0
    while i:
        i -= 1
        record = events[i]
        if record.ts_us < start:
            break
        if not record.flags & NO_FLOW:
            amount = abs(cents(record.amount))
            net += -amount if record.flags & CREDIT else amount
    return net


@functools.lru_cache(maxsize=1024)
def _day_bounds(ordinal: int, zone: ZoneInfo) -> tuple[int, int]:
    """The µs of the local midnights that start and end day ``ordinal`` in ``zone``."""
    return midnight_us(ordinal, zone), midnight_us(ordinal + 1, zone)


def _ts_of(record: EventRecord) -> int:
    return record.ts_us


def floor_value(nets: Iterable[int], kept: int) -> int:
    """The floor of a closed 看板 day whose net outflows (cents) are ``nets`` (every customer's,
    or each shard's top ``kept``: the same answer): the ``kept``-th largest, so the day keeps
    its top ``kept`` and whoever ties the last of them; never below 1 cent, as the 看板 shows
    only a positive net outflow (``streams.board.trim``)."""
    ordered = sorted(nets, reverse=True)
    return max(1, ordered[kept - 1]) if len(ordered) >= kept else 1


def collection_bucket(state: CustomerState) -> str:
    """The bucket of ``collection_rate_90d`` as of the customer's latest event: what
    ``rules.metrics.evaluate(state, state.last_us)`` gives, without the other metrics."""
    if state.last_us is None:
        return NO_RATE
    start_us = state.last_us - WINDOW_90D_US
    inflow = inflow_since(state, start_us)
    if not inflow:
        return NO_RATE
    rate = remaining_since(state, start_us) / inflow
    return str(min(9, max(0, int(rate * 10))))


@dataclass(slots=True)
class Board:
    """Every aggregate cell, as stored (``streams.board``) or recomputed."""

    flows: Cells = field(default_factory=dict)
    findings: Cells = field(default_factory=dict)
    net: dict[str, dict[str, int]] = field(default_factory=dict)  # day -> customer -> cents
    collection: dict[str, int] = field(default_factory=dict)  # bucket -> customers

    def add(self, customer_id: str, delta: BoardDelta) -> None:
        """Count ``delta``, one customer's cells, as the commit script does."""
        for into, cells in ((self.flows, delta.flows), (self.findings, delta.findings)):
            for day, row in cells.items():
                for cell, value in row.items():
                    _add(into, day, cell, value)
        for day, value in delta.net.items():
            _add(self.net, day, customer_id, value)

    def count(self, bucket: str) -> None:
        self.collection[bucket] = self.collection.get(bucket, 0) + 1


def recompute(
    states: Iterable[CustomerState],
    findings: Iterable[Mapping[str, Any]],
    zone: ZoneInfo,
) -> tuple[Board, str | None]:
    """The board from stored states and the findings kept with them, and the first day
    whose flows are complete (every state keeps its events from that day on)."""
    board = Board()
    complete_from: int | None = None
    for state in states:
        if state.kept_from_day is not None:
            complete_from = max(complete_from or state.kept_from_day, state.kept_from_day)
        board.count(collection_bucket(state))
        for record in state.events:
            if record.flags & NO_FLOW:
                continue
            ordinal, hour = local_day_hour(record.ts_us, zone)
            day = iso_day(ordinal)
            credit = bool(record.flags & CREDIT)
            amount = abs(cents(record.amount))
            cell = flow_cell(hour, credit, record_kind(record), bool(record.flags & EXTERNAL))
            _add(board.flows, day, cell, amount)
            _add(board.net, day, state.customer_id, -amount if credit else amount)
    delta = BoardDelta()
    for finding in findings:
        delta.add_finding(finding)
    board.findings = delta.findings
    first = dt.date.fromordinal(complete_from).isoformat() if complete_from is not None else None
    return board, first


# The 看板's histogram of a day's positive net outflows (Redis Cluster, ``streams.board``):
# quarter-octave buckets, bucket 4·o + q holding the amounts v (cents) with
# 2^o·R[q] <= v < 2^o·R[q+1]. The constants are the doubles the commit script compares with
# (``streams.storage.store.COMMIT_LUA``), written the same way, so both sides agree on every amount.
_RUNGS = (1.0, 1.189207115002721, 1.4142135623730951, 1.681792830507429)


def hist_bucket(cents: int) -> int:
    """The bucket of a positive net outflow ``cents`` (as the commit script computes it)."""
    if cents < 1:
        raise ValueError("only a positive net outflow has a bucket")
    octave = cents.bit_length() - 1
    x = cents / float(1 << octave)
    step = 3 if x >= _RUNGS[3] else 2 if x >= _RUNGS[2] else 1 if x >= _RUNGS[1] else 0
    return 4 * octave + step


def hist_low(bucket: int) -> int:
    """The least amount (cents) of ``bucket``: every amount in it is at least this much."""
    octave, step = divmod(bucket, 4)
    return math.ceil(float(1 << octave) * _RUNGS[step])


def floor_from_hist(counts: dict[int, int], kept: int) -> int:
    """A closed day's floor from its histogram: the least amount of the bucket where the
    customers counted from the top reach ``kept`` (1 cent when fewer are positive). Never
    above the ``kept``-th largest net outflow, so at least ``kept`` stay at or above it; the
    bucket's others (a quarter of an octave) stay too."""
    total = 0
    for bucket in sorted(counts, reverse=True):
        total += counts[bucket]
        if total >= kept:
            return max(1, hist_low(bucket))
    return 1
