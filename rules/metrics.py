"""The fields of ``metrics.md`` (Balances, Flows, Retention, Segments), evaluated
from a ``CustomerState`` at any ``as_of`` at or after the customer's latest event.

One walk over the kept events (at most the days of the 90-day window) and one
over the lots; no history beyond that is needed. Values are exact Decimals;
rounding to 2 decimals happens only where they are shown (``present``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from rules.money import rounded, to_cent
from rules.state import (
    CREDIT,
    EXTERNAL,
    FEE,
    LOAN_REPAYMENT,
    NO_FLOW,
    US_PER_DAY,
    ZERO,
    CustomerState,
    StateConfig,
    local_day,
    remaining_since,
)

WINDOW_24H = US_PER_DAY
WINDOW_7D = 7 * US_PER_DAY
WINDOW_30D = 30 * US_PER_DAY
WINDOW_90D = 90 * US_PER_DAY

SEGMENT_ORDER = ("high_activity", "low_activity", "high_repayment", "dispersed_funds")


@dataclass(frozen=True, slots=True)
class SegmentThresholds:
    high_activity_txn_per_day: Decimal = Decimal(5)
    low_activity_txn_per_day: Decimal = Decimal(2)
    high_repayment_30d: Decimal = Decimal(100000)
    dispersed_funds_banks_90d: int = 3


@dataclass(frozen=True, slots=True)
class Metrics:
    """One customer's metrics as of a moment, named and defined exactly as in
    ``docs/metrics.md``; amounts exact (``Decimal``, unrounded: ``present`` rounds them
    for people)."""

    balance: Decimal
    ledger_balance: Decimal | None
    ledger_drift: Decimal | None
    daily_avg_balance_mtd: Decimal
    avg_balance_30d: Decimal
    balance_volatility_30d: Decimal
    inflow_24h: Decimal
    inflow_7d: Decimal
    inflow_30d: Decimal
    inflow_90d: Decimal
    outflow_24h: Decimal
    outflow_7d: Decimal
    outflow_30d: Decimal
    external_outflow_30d: Decimal
    external_outflow_share_30d: Decimal
    txn_count_30d: int
    avg_txn_per_day_30d: Decimal
    loan_repaid_30d: Decimal
    fee_debits_30d: Decimal
    external_banks_90d: int
    net_outflow_streak_days: int
    retention_days_avg_90d: Decimal | None
    collection_rate_90d: Decimal | None
    segments: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in METRIC_NAMES}


METRIC_NAMES = tuple(field.name for field in dataclasses.fields(Metrics))


def evaluate(
    state: CustomerState,
    as_of_us: int,
    config: StateConfig,
    thresholds: SegmentThresholds = SegmentThresholds(),
) -> Metrics:
    """Every metric of the customer at ``as_of_us`` (µs since the epoch, >= its last event)."""
    if state.last_txn_us is not None and as_of_us < state.last_txn_us:
        raise ValueError("as_of is before the customer's latest transaction")
    as_of_day = local_day(as_of_us, config.zone)
    start_24h = as_of_us - WINDOW_24H
    start_7d = as_of_us - WINDOW_7D
    start_30d = as_of_us - WINDOW_30D
    start_90d = as_of_us - WINDOW_90D

    inflow_24h = inflow_7d = inflow_30d = inflow_90d = ZERO
    outflow_24h = outflow_7d = outflow_30d = ZERO
    external_outflow_30d = loan_repaid_30d = fee_30d = ZERO
    txn_count_30d = 0
    banks_90d: set[str] = set()
    consumed_90d = weighted_90d = ZERO
    day_net: dict[int, Decimal] = {}  # every record's: the balances
    flow_net: dict[int, Decimal] = {}  # the flows': the streak

    for record in reversed(state.events):
        ts = record.ts_us
        amount = record.amount
        day_net[record.day] = day_net.get(record.day, ZERO) + amount
        flags = record.flags
        if flags & NO_FLOW:  # a reversal, a reversed transaction, an own-account transfer
            continue
        flow_net[record.day] = flow_net.get(record.day, ZERO) + amount
        if ts <= start_90d:
            continue
        if flags & EXTERNAL and record.bank is not None:
            banks_90d.add(record.bank)
        if flags & CREDIT:
            inflow_90d += amount
            if ts > start_30d:
                inflow_30d += amount
                txn_count_30d += 1
                if ts > start_7d:
                    inflow_7d += amount
                    if ts > start_24h:
                        inflow_24h += amount
        else:
            consumed_90d += record.consumed
            weighted_90d += record.weighted_age_us
            if ts > start_30d:
                out = -amount
                outflow_30d += out
                txn_count_30d += 1
                if flags & EXTERNAL:
                    external_outflow_30d += out
                if flags & LOAN_REPAYMENT:
                    loan_repaid_30d += out
                if flags & FEE:
                    fee_30d += out
                if ts > start_7d:
                    outflow_7d += out
                    if ts > start_24h:
                        outflow_24h += out

    first_day = state.first_day if state.first_day is not None else as_of_day
    month_start = dt.date.fromordinal(as_of_day).replace(day=1).toordinal()
    end_of_day = _end_of_day_balances(state.balance, day_net, as_of_day, max(first_day, as_of_day - 30))
    mtd = [end_of_day[d] for d in range(max(month_start, first_day), as_of_day + 1)]
    last30 = [end_of_day[d] for d in range(max(as_of_day - 29, first_day), as_of_day + 1)]

    with localcontext() as ctx:
        ctx.prec = 34
        daily_avg_mtd = sum(mtd, ZERO) / len(mtd)
        avg_30d = sum(last30, ZERO) / len(last30)
        variance = sum(((b - avg_30d) ** 2 for b in last30), ZERO) / len(last30)
        volatility = variance.sqrt()
        external_share = external_outflow_30d / outflow_30d if outflow_30d else ZERO
        avg_txn_per_day = Decimal(txn_count_30d) / 30
        retention = weighted_90d / consumed_90d / US_PER_DAY if consumed_90d else None
        remaining_90d = remaining_since(state, start_90d)
        collection_rate = remaining_90d / inflow_90d if inflow_90d else None

    ledger_balance = sum((entry[1] for entry in state.ledger.values()), ZERO) if state.ledger else None
    segments = []
    if avg_txn_per_day > thresholds.high_activity_txn_per_day:
        segments.append("high_activity")
    if avg_txn_per_day < thresholds.low_activity_txn_per_day:
        segments.append("low_activity")
    if loan_repaid_30d > thresholds.high_repayment_30d:
        segments.append("high_repayment")
    if len(banks_90d) > thresholds.dispersed_funds_banks_90d:
        segments.append("dispersed_funds")

    return Metrics(
        balance=state.balance,
        ledger_balance=ledger_balance,
        ledger_drift=state.balance - ledger_balance if ledger_balance is not None else None,
        daily_avg_balance_mtd=daily_avg_mtd,
        avg_balance_30d=avg_30d,
        balance_volatility_30d=volatility,
        inflow_24h=inflow_24h,
        inflow_7d=inflow_7d,
        inflow_30d=inflow_30d,
        inflow_90d=inflow_90d,
        outflow_24h=outflow_24h,
        outflow_7d=outflow_7d,
        outflow_30d=outflow_30d,
        external_outflow_30d=external_outflow_30d,
        external_outflow_share_30d=external_share,
        txn_count_30d=txn_count_30d,
        avg_txn_per_day_30d=avg_txn_per_day,
        loan_repaid_30d=loan_repaid_30d,
        fee_debits_30d=fee_30d,
        external_banks_90d=len(banks_90d),
        net_outflow_streak_days=_streak(state, flow_net, as_of_day),
        retention_days_avg_90d=retention,
        collection_rate_90d=collection_rate,
        segments=segments,
    )


def _end_of_day_balances(
    balance: Decimal, day_net: dict[int, Decimal], as_of_day: int, from_day: int
) -> dict[int, Decimal]:
    """End-of-day balance of each day from ``from_day`` to ``as_of_day``: walking back
    from today's balance, each earlier day ends at the later one minus the later one's net."""
    result = {as_of_day: balance}
    running = balance
    for day in range(as_of_day, from_day, -1):
        running -= day_net.get(day, ZERO)
        result[day - 1] = running
    return result


@dataclass(frozen=True, slots=True)
class DayRow:
    day: dt.date  # local calendar day in the bank's zone
    end_balance: Decimal
    inflow: Decimal
    outflow: Decimal
    txn_count: int


def daily_history(state: CustomerState, as_of_us: int, zone: Any) -> list[DayRow]:
    """End-of-day balance and the day's flows for every local day the state still
    keeps (the longest window), oldest first, through ``as_of``'s day.

    ``as_of_us`` must be at or after the customer's last event; days before the
    first kept day are pruned from the state and not reported.
    """
    if state.first_day is None:
        return []
    as_of_day = local_day(as_of_us, zone)
    start = max(state.first_day, state.kept_from_day or state.first_day, as_of_day - 90)
    inflow: dict[int, Decimal] = {}
    outflow: dict[int, Decimal] = {}
    net: dict[int, Decimal] = {}
    count: dict[int, int] = {}
    for record in state.events:
        net[record.day] = net.get(record.day, ZERO) + record.amount
        if record.flags & NO_FLOW:
            continue
        count[record.day] = count.get(record.day, 0) + 1
        if record.amount > 0:
            inflow[record.day] = inflow.get(record.day, ZERO) + record.amount
        else:
            outflow[record.day] = outflow.get(record.day, ZERO) - record.amount
    balances = _end_of_day_balances(state.balance, net, as_of_day, start)
    return [
        DayRow(
            dt.date.fromordinal(day), balances[day], inflow.get(day, ZERO), outflow.get(day, ZERO), count.get(day, 0)
        )
        for day in range(start, as_of_day + 1)
    ]


def _streak(state: CustomerState, day_net: dict[int, Decimal], as_of_day: int) -> int:
    streak = 0
    day = as_of_day
    while True:
        net = day_net.get(day)
        if net is None:
            if day == state.carry_day:  # the streak runs on into pruned days
                streak += state.carry_streak
            return streak
        if net >= 0:
            return streak
        streak += 1
        day -= 1


PERCENT_FIELDS = ("external_outflow_share_30d", "collection_rate_90d")


def present(metrics: Metrics) -> dict[str, Any]:
    """The metrics as shown to people and written to ``state.jsonl``: amounts as
    strings rounded half-up to the cent, ratios to 6 decimals, days to 4."""
    shown: dict[str, Any] = {}
    for name, value in metrics.as_dict().items():
        if isinstance(value, Decimal):
            if name in PERCENT_FIELDS:
                value = rounded(value, 6)
            elif name in ("retention_days_avg_90d", "avg_txn_per_day_30d"):
                value = rounded(value, 4)
            else:
                value = to_cent(value)
            shown[name] = str(value)
        else:
            shown[name] = value
    return shown
