"""Per-customer fund-flow state, advanced one event at a time.

``apply_transaction`` / ``apply_loan`` are the pure step of the pipeline: no
I/O, no clock, no Redis. They mutate the ``CustomerState`` they are given (the
caller owns it; the worker drops its cached copy whenever a Redis commit
fails, so a half-applied batch is never reused). ``rules.metrics.evaluate``
turns a state into the fields of ``metrics.md`` at any ``as_of`` at or after
the customer's latest event.

Memory and per-event cost are bounded by the windows, not by the history:
- ``events`` keeps whole calendar days of event records back to the day that
  holds ``latest - 90 days`` (nothing older can ever fall in a window);
- ``seen`` remembers txn_ids for ``dedup_horizon`` of event time; an event
  older than that relative to the customer's latest cannot be checked for a
  repeat, so it is refused (``TOO_LATE``) instead of risking a double apply;
- FIFO ``lots`` are capped (``lot_cap``): past the cap the two oldest merge;
- a streak of net-outflow days that runs past the kept days is carried in
  ``carry_day`` / ``carry_streak``.

What can go wrong here: nothing raises on valid events (``streams.decode``
bounds event time; a ``ts`` at the edge of the calendar would raise
``OverflowError`` before the state changes). A repeat returns ``DUPLICATE``;
the same txn_id with other content returns ``CONFLICT``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import hashlib
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, get_args
from zoneinfo import ZoneInfo

from rules.events import Event, Kind, LoanEvent, TransactionEvent

ZERO = Decimal(0)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ONE_US = dt.timedelta(microseconds=1)
US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND
HOUR_US = 3600 * US_PER_SECOND
WINDOW_90D_US = 90 * US_PER_DAY
LOAN_HISTORY_US = 31 * US_PER_DAY  # contribution averages loan outstanding over 30 end-of-day values
INCOME_MONTHS_KEPT = 13  # salary/pension per month, for the salary-flow anomaly rule

# Event record flags (one int per kept event).
CREDIT = 1
EXTERNAL = 2
LOAN_REPAYMENT = 4
FEE = 8
SALARY = 16
PENSION = 32
# Above the kind code (bits 6-9) and the codec's day code (bits 10-11, stored form only):
# a record that moves the balance but is no flow — a reversed transaction, the reversal
# itself, a leg of an own-account transfer (docs/events.md). Every flow (windows, counts,
# the 看板's flow cells, retention ages) skips it; the balance path keeps it, so the days
# the money sat keep it.
NO_FLOW = 1 << 12
REVERSAL = 1 << 13  # (with NO_FLOW) the record of a reversal: it may not be reversed itself
REVERSED = 1 << 14  # (with NO_FLOW) a transaction a reversal undid

_KIND_FLAGS = {"loan_repayment": LOAN_REPAYMENT, "fee": FEE, "salary": SALARY, "pension": PENSION}
KINDS: Final[tuple[str, ...]] = get_args(Kind)  # every transaction kind of events.md, in its order
# The exact kind rides in the flags too, as a code above the flag bits: 1 + its index in
# KINDS; 0 (a record kept before the code existed, or built without it) reads from the flags.
KIND_SHIFT: Final = 6
KIND_MASK: Final = 0xF << KIND_SHIFT
KIND_CODE: Final[dict[str, int]] = {kind: (i + 1) << KIND_SHIFT for i, kind in enumerate(KINDS)}
_KIND_BITS = {kind: flag | KIND_CODE[kind] for kind, flag in _KIND_FLAGS.items()} | {
    kind: code for kind, code in KIND_CODE.items() if kind not in _KIND_FLAGS
}


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # same txn_id, same content: changes nothing
    CONFLICT = "duplicate_txn_id_conflict"  # same txn_id, other content: refused, dead-lettered
    TOO_LATE = "too_late_to_deduplicate"  # older than the dedup horizon: refused, dead-lettered
    UNKNOWN_REVERSED = "unknown_reversed_txn"  # reverses a txn_id never applied or past the horizon
    REVERSAL_MISMATCH = "reversal_mismatch"  # does not undo what it names (amount, direction, a reversal)


REVERSED_MARK: Final = "~"  # before a remembered txn_id's hash: it has been reversed


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The knobs of the state machine (built from ``streams.settings``)."""

    zone: ZoneInfo
    lot_cap: int = 256
    dedup_horizon_days: int = 120
    currency: str = "CNY"  # the deployment's (FUNDFLOW_CURRENCY): how a finding's message writes money

    @property
    def dedup_horizon_us(self) -> int:
        return self.dedup_horizon_days * US_PER_DAY


@dataclass(slots=True)
class EventRecord:
    """One kept TransactionEvent, as the windows need it."""

    ts_us: int
    day: int  # proleptic ordinal of the local calendar day
    amount: Decimal  # signed: + credit, - debit
    flags: int  # CREDIT | EXTERNAL | the kind's flag, and its KIND_CODE
    bank: str | None  # counterparty bank when external
    consumed: Decimal = ZERO  # debit: lot amount this debit consumed (FIFO)
    weighted_age_us: Decimal = ZERO  # debit: sum of consumed piece * (debit ts - lot ts) in µs
    # The stored form, cached by ``streams.storage.codec`` (a record never changes once kept, and
    # a state is written after every batch); not part of the record's value.
    wire: Any = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class LoanPoint:
    """A loan's state as of ``ts_us`` (from one LoanEvent)."""

    ts_us: int
    principal: Decimal
    outstanding: Decimal
    annual_rate: Decimal
    installment: Decimal
    next_due: int  # date ordinal
    status: str
    account_id: str


# Positions in the hot-path records (mutable lists and tuples, not objects: measured, a lot is
# touched by every debit and a remembered txn_id by every event; docs/performance.md, "Hot-path
# records as lists and tuples").
LOT_AMOUNT: Final = 0  # a FIFO lot: the amount of it still in the account,
LOT_TS: Final = 1  # when it came in (event time, µs),
LOT_WIRE: Final = 2  # its stored form cached by streams.storage.codec (None: changed since)
SEEN_HASH: Final = 0  # a remembered txn_id: its content hash,
SEEN_TS: Final = 1  # its event time (µs)
SEEN_HASH_CHARS: Final = 8  # hex digits of the content hash kept (content_hash)


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    balance: Decimal = ZERO
    first_us: int | None = None  # min ts of any TransactionEvent: history starts on its day
    first_day: int | None = None
    last_us: int | None = None  # max ts of any event (transactions and loans): evaluate at or after it
    # max ts of the TransactionEvents: the dedup horizon and the windows' pruning follow it, not
    # LoanEvents, which arrive on their own topic in no fixed order with the transactions
    last_txn_us: int | None = None
    events: list[EventRecord] = field(default_factory=list)  # sorted by ts_us
    seen: dict[str, tuple[str, int]] = field(default_factory=dict)  # txn_id -> (SEEN_HASH, SEEN_TS)
    # FIFO lots, each [LOT_AMOUNT remaining: Decimal, LOT_TS: int, LOT_WIRE: stored form or None]
    lots: deque[list[Any]] = field(default_factory=deque)
    overdraft: Decimal = ZERO
    ledger: dict[str, tuple[int, Decimal]] = field(default_factory=dict)  # account -> (ts_us, balance_after)
    kept_from_day: int | None = None  # events of earlier days are pruned (outside every window)
    next_prune_us: int = 0  # not stored: the horizon only moves a day at a time, so prune then
    carry_day: int | None = None  # last pruned day, and the net-outflow streak ending on it
    carry_streak: int = 0
    loans: dict[str, list[LoanPoint]] = field(default_factory=dict)  # loan_id -> points sorted by ts
    salary_payer: str | None = None  # payer_customer_id of the latest salary (by ts)
    salary_payer_us: int = -1
    income_months: dict[int, Decimal] = field(default_factory=dict)  # month index -> salary+pension
    applied_total: int = 0  # TransactionEvents applied over the whole history
    # Owned by the business rules (rules.engine): edge-trigger flags, cool-downs, push caps.
    # JSON-serialisable values only; stored with the state, so it commits atomically with it.
    rule_state: dict[str, Any] = field(default_factory=dict)
    # Owned by the pipeline (streams.pipeline): per "topic:partition", the highest input
    # offset and the latest record timestamp (producer time, ms) seen for this customer, so
    # a redelivered record is known as one even when its txn_id has aged out of ``seen``
    # (event time can run months ahead in a replay).
    offsets: dict[str, list[int]] = field(default_factory=dict)
    # Not stored: ``seen`` as ``streams.storage.codec`` last wrote it (its first ``seen_wired``
    # entries). Ids are only ever added at the end and pruned from the front, so the next
    # write appends the new ones to it; a prune clears it.
    seen_wire: Any = field(default=None, compare=False, repr=False)
    # Not stored: ``events`` as ``streams.storage.codec`` last wrote them (it checks that they are
    # still the same records before it appends the ones added since).
    events_wire: Any = field(default=None, compare=False, repr=False)
    seen_wired: int = field(default=0, compare=False, repr=False)
    # Not stored: what the last reversal applied undid (the reversed transaction's record as
    # it counted before, or None when it is no longer kept), for the 看板's delta.
    undone: EventRecord | None = field(default=None, compare=False, repr=False)


def local_day(ts_us: int, zone: ZoneInfo) -> int:
    """The proleptic ordinal of the calendar day in ``zone`` that holds ``ts_us``."""
    return local_day_hour(ts_us, zone)[0]


_EPOCH_ORDINAL: Final = EPOCH.date().toordinal()
_MAX_ORDINAL: Final = dt.date.max.toordinal()


@functools.lru_cache(maxsize=4096)
def _offset_through_hour(hour: int, zone: ZoneInfo) -> int | None:
    """``zone``'s UTC offset in µs throughout the UTC hour ``hour`` (hours since the epoch),
    or ``None`` when it changes within that hour."""
    start = EPOCH + ONE_US * (hour * HOUR_US)
    first = start.astimezone(zone).utcoffset()
    last = (start + ONE_US * (HOUR_US - 1)).astimezone(zone).utcoffset()
    if first is None or first != last:
        return None
    return first // ONE_US


def local_day_hour(ts_us: int, zone: ZoneInfo) -> tuple[int, int]:
    """The ordinal of the local day and the local hour in ``zone`` of ``ts_us``: what
    ``from_us(ts_us).astimezone(zone)`` gives, from the zone's offset for that UTC hour
    (cached) by integer arithmetic. Converting each time was a visible part of the step's
    and the 看板's cost per event (docs/performance.md, "Time conversions in the step");
    an hour with a transition in it, or a day past the calendar's ends
    (which raises, as the conversion does), takes the conversion."""
    offset = _offset_through_hour(ts_us // HOUR_US, zone)
    if offset is not None:
        local = ts_us + offset
        day = local // US_PER_DAY + _EPOCH_ORDINAL
        if 1 <= day <= _MAX_ORDINAL:
            return day, local % US_PER_DAY // HOUR_US
    moment = from_us(ts_us).astimezone(zone)
    return moment.toordinal(), moment.hour


# (event, zone, ts_us, local day) of the transaction ``apply_transaction`` applied last:
# the rules (``rules.engine.judge``) and the 看板 (``streams.pipeline``) ask ``event_time``
# for the same event right after it, and an exact conversion of a pydantic-parsed time is
# costly (its zone is called back for every offset: docs/performance.md, "Time conversions
# in the step"). One tuple, replaced whole: safe to read from any thread.
_LAST_TIME: tuple[object, ZoneInfo | None, int, int] = (None, None, 0, 0)


def event_time(event: Event, zone: ZoneInfo) -> tuple[int, int]:
    """``to_us(event.ts)`` and the ordinal of its local day in ``zone``: the values the step
    computed when ``event`` is the transaction it applied last (events are frozen)."""
    global _LAST_TIME
    last = _LAST_TIME
    if last[0] is event and last[1] is zone:
        return last[2], last[3]
    ts_us = to_us(event.ts)
    day = local_day(ts_us, zone)
    _LAST_TIME = (event, zone, ts_us, day)
    return ts_us, day


@functools.lru_cache(maxsize=1024)
def midnight_us(day: int, zone: ZoneInfo) -> int:
    """``to_us`` of the local midnight that starts ``day`` (an ordinal) in ``zone``."""
    return to_us(dt.datetime.combine(dt.date.fromordinal(day), dt.time(), zone))


def to_us(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime, exactly (no float)."""
    return (moment - EPOCH) // ONE_US  # (timedelta // timedelta: an exact int, in C)


def from_us(ts_us: int) -> dt.datetime:
    """The aware UTC datetime of ``ts_us`` microseconds since the epoch."""
    return EPOCH + ONE_US * ts_us  # (no keyword argument to parse: cheaper, as exact; docs/performance.md)


def content_hash(event: TransactionEvent | LoanEvent, ts_us: int | None = None) -> str:
    """A short fingerprint of what an event says, insensitive to formatting
    (``1.5`` vs ``1.50``, ``+00:00`` vs ``+08:00`` for the same instant).

    32 bits (the first 8 hex digits of a 48-bit BLAKE2b, so the 12 digits that states
    written before kept cut to these). The fingerprint is only ever compared with the one
    remembered for the same txn_id of the same customer: it tells a redelivery
    (DUPLICATE) from other content under a reused id (CONFLICT). A collision can only
    turn such a conflict, itself an upstream error, into a duplicate with probability
    2^-32 (2.3e-10) each; neither is applied, so money is never touched by it."""
    if isinstance(event, TransactionEvent):
        text = "\x1f".join(
            (
                event.txn_id,
                event.customer_id,
                event.account_id,
                str(ts_us if ts_us is not None else to_us(event.ts)),
                event.direction,
                str(event.amount.normalize()),
                event.currency or "CNY",
                event.kind,
                "1" if event.external else "0",
                event.counterparty_bank or "",
                str(event.balance_after.normalize()) if event.balance_after is not None else "",
                event.payer_customer_id or "",
            )
        )
        if event.reverses is not None or event.counterparty_customer_id is not None:
            # (only then: every hash remembered before these fields existed stays the same)
            text += f"\x1fr{event.reverses or ''}\x1fc{event.counterparty_customer_id or ''}"
    else:
        text = "\x1f".join(str(v.normalize() if isinstance(v, Decimal) else v) for _, v in event)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()[:SEEN_HASH_CHARS]


def _month_index(day: int) -> int:
    date = dt.date.fromordinal(day)
    return date.year * 12 + date.month - 1


def apply_transaction(
    state: CustomerState, event: TransactionEvent, config: StateConfig, fingerprint: str | None = None
) -> Outcome:
    """Advance ``state`` by one TransactionEvent (in arrival order)."""
    ts_us = to_us(event.ts)
    fingerprint = fingerprint or content_hash(event, ts_us)
    # A txn_id we still remember is a repeat whatever its age: a redelivery after a crash
    # can carry an event time far behind what the customer has reached since (event time
    # runs fast in a replay), and must not become a dead letter. Only an id we cannot
    # remember, older than the horizon, is refused as too late to tell.
    known = state.seen.get(event.txn_id)
    if known is not None:
        remembered = known[SEEN_HASH]
        if remembered == fingerprint or (remembered[1:] == fingerprint and remembered[0] == REVERSED_MARK):
            return Outcome.DUPLICATE  # (a reversed transaction redelivered changes nothing either)
        return Outcome.CONFLICT
    if state.last_txn_us is not None and ts_us <= state.last_txn_us - config.dedup_horizon_us:
        return Outcome.TOO_LATE
    if event.reverses is not None:
        return _apply_reversal(state, event, config, fingerprint, ts_us)
    # (before any change: at the edges of the calendar this raises OverflowError, which
    # streams.decode's time bounds keep away; the state is then still untouched)
    zone = config.zone
    day = local_day(ts_us, zone)
    global _LAST_TIME
    _LAST_TIME = (event, zone, ts_us, day)
    state.seen[event.txn_id] = (fingerprint, ts_us)

    credit = event.direction == "credit"
    amount = event.amount
    flags = (CREDIT if credit else 0) | _KIND_BITS.get(event.kind, 0)
    bank = None
    if event.external:
        flags |= EXTERNAL
        bank = event.counterparty_bank
    own = event.counterparty_customer_id is not None and event.counterparty_customer_id == event.customer_id
    if own:
        flags |= NO_FLOW  # both legs are the customer's: its money moved between its accounts
    record = EventRecord(ts_us, day, amount if credit else -amount, flags, bank)
    _book(state, event, record, config)
    if own:
        pass  # the money never left the customer: its lots (retention, 归集率) stay as they are
    elif credit:
        _credit_lots(state, amount, ts_us, config.lot_cap)
    else:
        _debit_lots(state, record)

    if credit and not own and event.kind in ("salary", "pension"):
        month = _month_index(day)
        state.income_months[month] = state.income_months.get(month, ZERO) + amount
        if event.kind == "salary" and ts_us >= state.salary_payer_us:
            state.salary_payer = event.payer_customer_id
            state.salary_payer_us = ts_us
    return _kept(state, record, config)


def _book(state: CustomerState, event: TransactionEvent, record: EventRecord, config: StateConfig) -> None:
    """What every applied transaction does: the balance, the clocks, the ledger."""
    ts_us = record.ts_us
    state.balance += record.amount
    state.applied_total += 1
    if state.first_us is None or ts_us < state.first_us:
        state.first_us = ts_us
        state.first_day = record.day
    if state.last_us is None or ts_us > state.last_us:
        state.last_us = ts_us
    if state.last_txn_us is None or ts_us > state.last_txn_us:
        state.last_txn_us = ts_us
    if event.balance_after is not None:
        held = state.ledger.get(event.account_id)
        if held is None or ts_us >= held[0]:
            state.ledger[event.account_id] = (ts_us, event.balance_after)


def _kept(state: CustomerState, record: EventRecord, config: StateConfig) -> Outcome:
    """Keep ``record`` among the events (in ts order) unless it is older than every window."""
    events = state.events
    ts_us = record.ts_us
    if not events or ts_us >= events[-1].ts_us:
        events.append(record)
    elif state.kept_from_day is None or record.day >= state.kept_from_day:
        events.insert(bisect.bisect_right(events, ts_us, key=_ts_of), record)
    # else: a late event older than every window moves balance and lots only
    assert state.last_txn_us is not None
    if state.last_txn_us >= state.next_prune_us:
        _prune(state, config)
    return Outcome.APPLIED


def reversed_record(state: CustomerState, ts_us: int, signed: Decimal, own: bool) -> EventRecord | None:
    """The kept record of a transaction at ``ts_us`` whose signed amount is ``signed``, that
    is neither a reversal nor reversed, and is an own-account leg or a flow as ``own`` says
    (the first such, in ts order), or None."""
    events = state.events
    i = bisect.bisect_left(events, ts_us, key=_ts_of)
    while i < len(events) and events[i].ts_us == ts_us:
        record = events[i]
        flags = record.flags
        if not flags & (REVERSAL | REVERSED) and bool(flags & NO_FLOW) == own and record.amount == signed:
            return record
        i += 1
    return None


def _apply_reversal(
    state: CustomerState, event: TransactionEvent, config: StateConfig, fingerprint: str, ts_us: int
) -> Outcome:
    """Undo the transaction ``event.reverses`` names (docs/events.md, "Reversals"): it stops
    counting as a flow, the balance goes back from ``ts_us`` on, and the lots are as
    metrics.md says. The record of the reversal itself moves the balance and nothing else."""
    assert event.reverses is not None
    target = event.reverses
    known = state.seen.get(target)
    if known is None:
        return Outcome.UNKNOWN_REVERSED
    if known[SEEN_HASH].startswith(REVERSED_MARK):
        return Outcome.DUPLICATE  # reversed already: a second reversal changes nothing
    credit = event.direction == "credit"
    signed = event.amount if credit else -event.amount  # what the reversal moves
    original_us = known[SEEN_TS]
    zone = config.zone
    original_day = local_day(original_us, zone)
    kept = state.kept_from_day is None or original_day >= state.kept_from_day
    # a reversal of an own-account leg is one itself (docs/events.md)
    own = event.counterparty_customer_id is not None and event.counterparty_customer_id == event.customer_id
    original = reversed_record(state, original_us, -signed, own) if kept else None
    if kept and original is None:
        # kept, yet no record there undoes to this: another amount or direction, or a reversal
        return Outcome.REVERSAL_MISMATCH
    day = local_day(ts_us, zone)
    global _LAST_TIME
    _LAST_TIME = (event, zone, ts_us, day)
    state.seen[event.txn_id] = (fingerprint, ts_us)
    state.seen[target] = (REVERSED_MARK + known[SEEN_HASH], original_us)
    state.seen_wire = None  # an entry changed: its stored form is stale
    state.undone = None
    was_flow = not own
    if original is not None:
        flags = original.flags
        if was_flow:
            state.undone = EventRecord(original.ts_us, original.day, original.amount, flags, original.bank)
            if flags & (SALARY | PENSION) and flags & CREDIT:
                month = _month_index(original.day)
                if month in state.income_months:
                    state.income_months[month] -= original.amount
        original.flags = flags | NO_FLOW | REVERSED
        original.wire = None
        state.events_wire = None
    record = EventRecord(ts_us, day, signed, NO_FLOW | REVERSAL | (CREDIT if credit else 0), None)
    _book(state, event, record, config)
    if not was_flow:
        pass  # an own-account leg never touched the lots
    elif credit:
        _return_lots(state, event.amount, original, original_us, config.lot_cap)
    else:
        _take_back_lots(state, event.amount, original_us)
    return _kept(state, record, config)


def _take_back_lots(state: CustomerState, amount: Decimal, original_us: int) -> None:
    """A reversed credit's money leaves the lots as if it had never come (metrics.md): from
    its own lot first (the oldest lot of its time), then from the lots formed after it,
    oldest first; what they do not hold was spent, and becomes overdraft."""
    lots = state.lots
    start = 0
    for i, lot in enumerate(lots):
        if lot[LOT_TS] == original_us:
            start = i
            break
    wanted = amount
    i = start
    while wanted and i < len(lots):
        lot = lots[i]
        remaining: Decimal = lot[LOT_AMOUNT]
        piece = remaining if remaining <= wanted else wanted
        wanted -= piece
        if piece == remaining:
            del lots[i]
        else:
            lot[LOT_AMOUNT] = remaining - piece
            lot[LOT_WIRE] = None
            i += 1
    if wanted:
        state.overdraft += wanted


def _return_lots(
    state: CustomerState, amount: Decimal, original: EventRecord | None, original_us: int, lot_cap: int
) -> None:
    """A reversed debit's money comes back (metrics.md): it repays any overdraft first, as
    every credit does; the rest is old money again, one lot at the front of the queue, dated
    at the mean time of the lots the debit had consumed (the debit's own time when it
    consumed none, or when its record is no longer kept)."""
    amount = _repay_overdraft(state, amount)
    if not amount:
        return
    lot_us = original_us
    if original is not None and original.consumed:
        lot_us = original_us - int((original.weighted_age_us / original.consumed).to_integral_value())
    lots = state.lots
    lots.appendleft([amount, lot_us, None])
    if len(lots) > lot_cap:
        _merge_oldest(lots)


def record_kind(record: EventRecord) -> str:
    """The transaction kind of a kept event record (the 看板's "by kind"), exact from its
    kind code. A record without one (kept by a version before the code) has only the flags
    of the kinds the windows need: those read as their kind, every other kind as ``other``."""
    flags = record.flags
    code = (flags & KIND_MASK) >> KIND_SHIFT
    if code:
        return KINDS[code - 1]
    return kind_of_flags(flags)


def kind_of_flags(flags: int) -> str:
    """The kind that the flag bits alone tell (``salary``, ``pension``, ``loan_repayment``,
    ``fee``), else ``other``: all a record written before the kind code can say."""
    for kind, flag in _KIND_FLAGS.items():
        if flags & flag:
            return kind
    return "other"


def _ts_of(record: EventRecord) -> int:
    return record.ts_us


def _repay_overdraft(state: CustomerState, amount: Decimal) -> Decimal:
    """Money coming in repays the overdraft first (metrics.md); returns what is left of it."""
    if state.overdraft:
        repaid = min(state.overdraft, amount)
        state.overdraft -= repaid
        amount -= repaid
    return amount


def _credit_lots(state: CustomerState, amount: Decimal, ts_us: int, lot_cap: int) -> None:
    amount = _repay_overdraft(state, amount)
    if not amount:
        return
    lots = state.lots
    if len(lots) >= lot_cap:
        _merge_oldest(lots)
    lots.append([amount, ts_us, None])


def _merge_oldest(lots: deque[list[Any]]) -> None:
    """The two oldest lots become one at their amount-weighted mean time (the lot cap)."""
    first = lots.popleft()
    first_amount, first_us = first[0], first[1]
    second = lots[0]
    total: Decimal = first_amount + second[0]
    mean_us: Decimal = (first_amount * first_us + second[0] * second[1]) / total
    second[0] = total
    second[1] = int(mean_us.to_integral_value())
    second[2] = None  # changed: its stored form is stale


def _debit_lots(state: CustomerState, record: EventRecord) -> None:
    wanted = -record.amount
    lots = state.lots
    consumed = ZERO
    weighted = ZERO
    while wanted and lots:
        lot = lots[0]
        remaining: Decimal = lot[LOT_AMOUNT]
        piece = remaining if remaining <= wanted else wanted
        consumed += piece
        weighted += piece * (record.ts_us - lot[LOT_TS])
        wanted -= piece
        if piece == remaining:
            lots.popleft()
        else:
            lot[LOT_AMOUNT] = remaining - piece
            lot[LOT_WIRE] = None  # changed: its stored form is stale
    if wanted:
        state.overdraft += wanted
    record.consumed = consumed
    record.weighted_age_us = weighted


def _prune(state: CustomerState, config: StateConfig) -> None:
    """Drop what can no longer fall in any window, now that ``last_txn_us`` moved."""
    assert state.last_txn_us is not None and state.last_us is not None
    horizon = from_us(state.last_txn_us - WINDOW_90D_US).astimezone(config.zone)
    horizon_day = horizon.date().toordinal()
    state.next_prune_us = midnight_us(horizon_day + 1, config.zone) + WINDOW_90D_US  # when horizon_day moves on
    state.kept_from_day = horizon_day
    events = state.events
    if events and events[0].day < horizon_day:
        cut = 0
        while cut < len(events) and events[cut].day < horizon_day:
            cut += 1
        _carry_streak(state, events[:cut])
        del events[:cut]
    # txn_ids arrive roughly in ts order, so the dict's oldest entries are the oldest
    # in time: drop from the front until one is still inside the horizon (amortised O(1);
    # a late id may outlive the horizon a little, which only widens the dedup).
    horizon_us = state.last_txn_us - config.dedup_horizon_us
    seen = state.seen
    while seen:
        oldest = next(iter(seen))
        if seen[oldest][SEEN_TS] > horizon_us:
            break
        del seen[oldest]
        state.seen_wire = None  # its stored form is stale
    loan_horizon = state.last_us - LOAN_HISTORY_US
    for points in state.loans.values():
        # keep the newest point at or before the horizon: it is the state on the horizon's day
        while len(points) > 1 and points[1].ts_us <= loan_horizon:
            del points[0]
    if len(state.income_months) > INCOME_MONTHS_KEPT:
        newest = max(state.income_months)
        for month in [m for m in state.income_months if m <= newest - INCOME_MONTHS_KEPT]:
            del state.income_months[month]


def _carry_streak(state: CustomerState, pruned: list[EventRecord]) -> None:
    """Remember the net-outflow streak that ends on the last pruned day."""
    nets: dict[int, Decimal] = {}
    for record in pruned:
        if not record.flags & NO_FLOW:
            nets[record.day] = nets.get(record.day, ZERO) + record.amount
    for day in sorted(nets):
        if nets[day] < 0:
            contiguous = state.carry_day is not None and state.carry_day == day - 1
            state.carry_streak = (state.carry_streak if contiguous else 0) + 1
        else:
            state.carry_streak = 0
        state.carry_day = day


def apply_loan(state: CustomerState, event: LoanEvent, config: StateConfig) -> Outcome:
    """Record a loan's new state. Idempotent by content: an identical LoanEvent is a duplicate."""
    ts_us = to_us(event.ts)
    points = state.loans.setdefault(event.loan_id, [])
    point = LoanPoint(
        ts_us=ts_us,
        principal=event.principal,
        outstanding=event.outstanding,
        annual_rate=event.annual_rate,
        installment=event.installment,
        next_due=event.next_due.toordinal(),
        status=event.status,
        account_id=event.account_id,
    )
    for existing in points:
        if existing == point:
            return Outcome.DUPLICATE
    index = bisect.bisect_right(points, ts_us, key=lambda p: p.ts_us)
    points.insert(index, point)
    if state.last_us is None or ts_us > state.last_us:
        state.last_us = ts_us
    loan_horizon = state.last_us - LOAN_HISTORY_US
    while len(points) > 1 and points[1].ts_us <= loan_horizon:
        del points[0]
    return Outcome.APPLIED


def latest_loans(state: CustomerState) -> dict[str, LoanPoint]:
    """Each loan's latest state (by ts; for equal ts, the later arrival)."""
    return {loan_id: points[-1] for loan_id, points in state.loans.items() if points}


def inflow_since(state: CustomerState, start_us: int) -> Decimal:
    """The credits of the event records after ``start_us``, summed newest first (the
    denominator of ``collection_rate_90d``: ``inflow_90d``, in ``evaluate``'s order)."""
    total = ZERO
    for record in reversed(state.events):
        if record.ts_us <= start_us:
            break
        if record.flags & CREDIT and not record.flags & NO_FLOW:
            total += record.amount
    return total


def remaining_since(state: CustomerState, start_us: int) -> Decimal:
    """What is still in the account of the money that came in after ``start_us`` (the FIFO
    lots formed after it: the numerator of ``collection_rate_90d``)."""
    total = ZERO  # (the same additions in the same order as sum() over a generator, without one)
    for lot in state.lots:
        if lot[LOT_TS] > start_us:
            total += lot[LOT_AMOUNT]
    return total


def apply_event(state: CustomerState, event: Event, config: StateConfig) -> Outcome:
    """One event of either topic: ``apply_loan`` for a LoanEvent, else ``apply_transaction``."""
    if isinstance(event, LoanEvent):
        return apply_loan(state, event, config)
    return apply_transaction(state, event, config)
