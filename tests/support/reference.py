"""A slow, obviously correct implementation of metrics.md (Balances, Flows,
Retention, Segments) for ONE customer, from the raw list of its events.

Independent of ``rules.state`` / ``rules.metrics``: no day buckets, no pruning,
no incremental anything. Every number is recomputed from the whole list by
brute force, the way one would check it by hand:

* end-of-day balance of day d = the sum of the signed amounts of the events
  whose local day is <= d; days before the first event's day count for nothing;
* windows are (as_of - W, as_of] on event time in microseconds;
* FIFO lots are built by walking the events in ARRIVAL order (metrics.md: late
  events join the lots in arrival order with their own ts), with the overdraft
  rule, and — when ``lot_cap`` is given — the two oldest lots merged into one
  at their amount-weighted mean ts (rounded half-even to the microsecond) when a
  new lot would exceed the cap;
* ratios are exact (``fractions``/``statistics`` on Decimals), compared with a
  relative tolerance of 1e-18.

Interpretations of points metrics.md leaves open (shared with the engine):
the first-event day is the smallest local day of any event; ``txn_count_30d``
counts credits and debits; ``external_banks_90d`` counts the non-empty
``counterparty_bank`` of external events of either direction; a lot's age may
be negative when a late debit consumes a lot that is younger than it.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable, Mapping
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from cases.model import CONFIRMING, RETRACTED, Case, RulePrecision
from rules.events import TransactionEvent

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
DAY_US = 86_400_000_000
WINDOWS_US = {"24h": DAY_US, "7d": 7 * DAY_US, "30d": 30 * DAY_US, "90d": 90 * DAY_US}
ZERO = Decimal(0)


def micros(moment: dt.datetime) -> int:
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


def signed(event: TransactionEvent) -> Decimal:
    return event.amount if event.direction == "credit" else -event.amount


def in_window(event: TransactionEvent, as_of_us: int, window: str) -> bool:
    return as_of_us - WINDOWS_US[window] < micros(event.ts) <= as_of_us


def own_account(event: TransactionEvent) -> bool:
    return event.counterparty_customer_id is not None and event.counterparty_customer_id == event.customer_id


def flows(events: list[TransactionEvent]) -> list[TransactionEvent]:
    """The events that are flows (docs/events.md): not a reversal, not reversed by one in
    the list, not a leg of an own-account transfer."""
    undone = {e.reverses for e in events if e.reverses is not None}
    return [e for e in events if e.reverses is None and e.txn_id not in undone and not own_account(e)]


def _merge_past_cap(lots: list[list[Any]], lot_cap: int | None, limit: int) -> None:
    """The two oldest lots merged into one at their amount-weighted mean ts while more than
    ``limit`` are kept (``limit``: the cap before a lot is appended, the cap after one is
    put back at the front)."""
    while lot_cap is not None and len(lots) > limit and len(lots) >= 2:
        (a0, t0, _), (a1, t1, _) = lots[0], lots[1]
        mean = (Fraction(a0) * t0 + Fraction(a1) * t1) / Fraction(a0 + a1)
        lots[:2] = [[a0 + a1, round(mean), None]]  # round(): half to even; the merged lot is no one's


def fifo(events: list[TransactionEvent], lot_cap: int | None) -> tuple[list[list[Any]], list[tuple[int, Decimal, int]]]:
    """Lots left [amount, ts_us, txn_id of the credit that formed it] and every consumed piece
    (debit ts, amount, age in µs) of the debits that are still flows.

    Corrections (metrics.md, "Retention under corrections"): an own-account leg touches no
    lot; a reversal of a credit takes its amount back from that credit's lot, then from the
    lots formed after it, oldest first, then as overdraft; a reversal of a debit repays any
    overdraft, and the rest comes back as one lot at the front, dated at the mean time of
    what the debit had consumed (its own time if nothing), and the debit's pieces stop counting."""
    lots: list[list[Any]] = []
    pieces: list[tuple[int, Decimal, int, str]] = []
    overdraft = ZERO
    by_id = {e.txn_id: e for e in events}
    for event in events:  # arrival order
        ts = micros(event.ts)
        if own_account(event):
            continue
        if event.reverses is not None:
            original = by_id[event.reverses]
            if own_account(original):
                continue
            if original.direction == "credit":  # money that came goes back
                wanted = event.amount
                # its lot is the oldest one of its time (metrics.md: money a reversed debit gave
                # back to it comes back at that time too); none left: it was spent, start at the front
                start = next((i for i, lot in enumerate(lots) if lot[1] == micros(original.ts)), 0)
                i = start
                while wanted and i < len(lots):
                    piece = min(lots[i][0], wanted)
                    wanted -= piece
                    lots[i][0] -= piece
                    if lots[i][0] == 0:
                        lots.pop(i)
                    else:
                        i += 1
                overdraft += wanted
            else:  # money that left comes back
                amount = event.amount
                repaid = min(overdraft, amount)
                overdraft -= repaid
                amount -= repaid
                mine = [(a, age) for _, a, age, debit in pieces if debit == original.txn_id]
                pieces = [p for p in pieces if p[3] != original.txn_id]
                if amount == 0:
                    continue
                consumed = sum((a for a, _ in mine), ZERO)
                weighted = sum((a * age for a, age in mine), ZERO)
                lot_ts = micros(original.ts) - (round(Fraction(weighted) / Fraction(consumed)) if consumed else 0)
                lots.insert(0, [amount, lot_ts, None])
                _merge_past_cap(lots, lot_cap, lot_cap or 0)
            continue
        if event.direction == "credit":
            amount = event.amount
            repaid = min(overdraft, amount)
            overdraft -= repaid
            amount -= repaid
            if amount == 0:
                continue
            _merge_past_cap(lots, lot_cap, (lot_cap or 0) - 1)
            lots.append([amount, ts, event.txn_id])
        else:
            wanted = event.amount
            while wanted and lots:
                piece = min(lots[0][0], wanted)
                pieces.append((ts, piece, ts - lots[0][1], event.txn_id))
                wanted -= piece
                lots[0][0] -= piece
                if lots[0][0] == 0:
                    lots.pop(0)
            overdraft += wanted
    return lots, [(ts, amount, age) for ts, amount, age, _ in pieces]


def reference_state(
    events: list[TransactionEvent], as_of: dt.datetime, zone: ZoneInfo, lot_cap: int | None = None
) -> dict[str, Any]:
    as_of_us = micros(as_of)
    as_of_day = as_of.astimezone(zone).date()

    def day(event: TransactionEvent) -> dt.date:
        return event.ts.astimezone(zone).date()

    balance = sum((signed(e) for e in events), ZERO)

    latest: dict[str, tuple[int, int, Decimal]] = {}
    for arrival, e in enumerate(events):
        if e.balance_after is not None:
            key = (micros(e.ts), arrival, e.balance_after)
            if e.account_id not in latest or key[:2] > latest[e.account_id][:2]:
                latest[e.account_id] = key
    ledger = sum((v[2] for v in latest.values()), ZERO) if latest else None

    first_day = min(day(e) for e in events)

    def end_of_day(d: dt.date) -> Decimal:
        return sum((signed(e) for e in events if day(e) <= d), ZERO)

    def days_from(start: dt.date) -> list[dt.date]:
        start = max(start, first_day)
        return [start + dt.timedelta(days=i) for i in range((as_of_day - start).days + 1)]

    mtd = [end_of_day(d) for d in days_from(as_of_day.replace(day=1))]
    last30 = [end_of_day(d) for d in days_from(as_of_day - dt.timedelta(days=29))]

    moved = flows(events)

    def flow(direction: str, window: str, extra: Any = lambda e: True) -> Decimal:
        return sum(
            (e.amount for e in moved if e.direction == direction and in_window(e, as_of_us, window) and extra(e)),
            ZERO,
        )

    inflow = {w: flow("credit", w) for w in WINDOWS_US}
    outflow = {w: flow("debit", w) for w in ("24h", "7d", "30d")}
    external_out = flow("debit", "30d", lambda e: e.external)
    repaid = flow("debit", "30d", lambda e: e.kind == "loan_repayment")
    count_30d = sum(1 for e in moved if in_window(e, as_of_us, "30d"))
    banks = {
        e.counterparty_bank for e in moved if e.external and e.counterparty_bank and in_window(e, as_of_us, "90d")
    }

    streak = 0
    d = as_of_day
    while True:
        todays = [signed(e) for e in moved if day(e) == d]
        if not todays or sum(todays, ZERO) >= 0:
            break
        streak += 1
        d -= dt.timedelta(days=1)

    lots, pieces = fifo(events, lot_cap)
    recent = [(amount, age) for ts, amount, age in pieces if as_of_us - WINDOWS_US["90d"] < ts <= as_of_us]
    consumed = sum((a for a, _ in recent), ZERO)
    remaining = sum((a for a, ts, _ in lots if ts > as_of_us - WINDOWS_US["90d"]), ZERO)

    with localcontext() as ctx:
        ctx.prec = 50
        avg_txn = Decimal(count_30d) / 30
        result: dict[str, Any] = {
            "balance": balance,
            "ledger_balance": ledger,
            "ledger_drift": balance - ledger if ledger is not None else None,
            "daily_avg_balance_mtd": statistics.mean(mtd),
            "avg_balance_30d": statistics.mean(last30),
            "balance_volatility_30d": statistics.pstdev(last30),
            **{f"inflow_{w}": v for w, v in inflow.items()},
            **{f"outflow_{w}": v for w, v in outflow.items()},
            "external_outflow_30d": external_out,
            "external_outflow_share_30d": external_out / outflow["30d"] if outflow["30d"] else ZERO,
            "txn_count_30d": count_30d,
            "avg_txn_per_day_30d": avg_txn,
            "loan_repaid_30d": repaid,
            "external_banks_90d": len(banks),
            "net_outflow_streak_days": streak,
            "retention_days_avg_90d": (
                sum((a * age for a, age in recent), ZERO) / consumed / DAY_US if consumed else None
            ),
            "collection_rate_90d": remaining / inflow["90d"] if inflow["90d"] else None,
        }
    segments = []
    if avg_txn > 5:
        segments.append("high_activity")
    if avg_txn < 2:
        segments.append("low_activity")
    if repaid > 100_000:
        segments.append("high_repayment")
    if len(banks) > 3:
        segments.append("dispersed_funds")
    result["segments"] = segments
    return result


# --- rule precision from analysts' outcomes (cases.store.CaseStore.precision) ------


def rule_precision(
    closed: Iterable[Case], cases_per_rule: Mapping[str, int], findings_per_rule: Mapping[str, int]
) -> list[RulePrecision]:
    """Per rule, from its closed cases read whole: precision (confirmed / judged: resolved, and
    dismissed as false positives), volume,
    medians. What the store's tallies must equal."""
    resolved: dict[str, list[Case]] = {}
    dismissed: dict[str, int] = {}
    wrong: dict[str, int] = {}  # dismissed as false positives: judged, and the rule was wrong
    for case in closed:
        if case.outcome == RETRACTED:  # taken back by the monitor: the rule was neither right nor wrong
            continue
        for rule in case.rules:
            if case.status == "resolved":
                resolved.setdefault(rule, []).append(case)
            elif case.status == "dismissed":
                dismissed[rule] = dismissed.get(rule, 0) + 1
                wrong[rule] = wrong.get(rule, 0) + (case.outcome == "false_positive")
    rows = []
    for rule in sorted(set(cases_per_rule) | set(findings_per_rule) | set(resolved) | set(dismissed)):
        done = resolved.get(rule, [])
        confirmed = sum(1 for c in done if c.outcome in CONFIRMING)
        judged = len(done) + wrong.get(rule, 0)
        first = [(c.first_action_at_ms - c.opened_at_ms) / 1000 for c in done if c.first_action_at_ms is not None]
        closing = [(c.closed_at_ms - c.opened_at_ms) / 1000 for c in done if c.closed_at_ms is not None]
        rows.append(
            RulePrecision(
                rule=rule,
                cases=cases_per_rule.get(rule, 0),
                findings=findings_per_rule.get(rule, 0),
                resolved=len(done),
                confirmed=confirmed,
                dismissed=dismissed.get(rule, 0),
                precision=round(confirmed / judged, 4) if judged else None,
                median_first_action_seconds=statistics.median(first) if first else None,
                median_resolution_seconds=statistics.median(closing) if closing else None,
                judged=judged,
            )
        )
    return rows
