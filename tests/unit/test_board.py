"""rules.board: the 看板's cells, against slow and obvious references."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.board import (
    NO_RATE,
    BoardDelta,
    cents,
    collection_bucket,
    day_net,
    day_ordinal,
    floor_from_hist,
    floor_value,
    hist_bucket,
    hist_low,
    recompute,
)
from rules.events import TransactionEvent
from rules.metrics import evaluate
from rules.state import CustomerState, Outcome, StateConfig, apply_transaction, to_us
from tests.support.strategies import histories

ZONE = ZoneInfo("Asia/Shanghai")
CONFIG = StateConfig(ZONE)


def applied(events: list[TransactionEvent]) -> tuple[CustomerState, list[TransactionEvent]]:
    state = CustomerState(events[0].customer_id)
    kept = [e for e in events if apply_transaction(state, e, CONFIG) is Outcome.APPLIED]
    return state, kept


@settings(deadline=None)
@given(histories())
def test_the_collection_bucket_is_the_bucket_of_the_metric(case: tuple[list[TransactionEvent], dt.datetime]) -> None:
    state, _ = applied(case[0])
    assert state.last_us is not None
    rate = evaluate(state, state.last_us, CONFIG).collection_rate_90d
    expected = NO_RATE if rate is None else str(min(9, max(0, int(rate * 10))))
    assert collection_bucket(state) == expected


@settings(deadline=None)
@given(histories())
def test_flows_recomputed_from_the_state_equal_the_deltas_of_the_events(
    case: tuple[list[TransactionEvent], dt.datetime],
) -> None:
    """What the worker adds event by event equals what a recomputation from the stored state
    finds, for the days the state still keeps (and, day by day, the plain sum of amounts)."""
    state, kept = applied(case[0])
    delta = BoardDelta()
    for event in kept:
        delta.add_transaction(event, to_us(event.ts), ZONE)
    board, complete_from = recompute([state], [], ZONE)
    days = {d for d in delta.flows if complete_from is None or d >= complete_from}
    by_kind_flag = {d: _coarse(delta.flows[d]) for d in days}
    assert {d: _coarse(board.flows[d]) for d in days} == by_kind_flag
    for day in days:
        inflow = sum(e.amount for e in kept if _day(e) == day and e.direction == "credit")
        outflow = sum(e.amount for e in kept if _day(e) == day and e.direction == "debit")
        assert sum(v for c, v in delta.flows[day].items() if "|in|" in c) == cents(Decimal(inflow))
        assert delta.net[day] == cents(Decimal(outflow) - Decimal(inflow)) == board.net[day][state.customer_id]


def _day(event: TransactionEvent) -> str:
    return event.ts.astimezone(ZONE).date().isoformat()


def _coarse(cells: dict[str, int]) -> dict[str, int]:
    """Cells by hour, direction and place (the kind is checked where the state keeps it)."""
    out: dict[str, int] = {}
    for cell, value in cells.items():
        hour, direction, _, place = cell.split("|")
        out[f"{hour}|{direction}|{place}"] = out.get(f"{hour}|{direction}|{place}", 0) + value
    return out


def test_a_finding_counts_in_its_own_local_day_and_hour() -> None:
    delta = BoardDelta()
    delta.add_finding({"type": "alert", "category": "outflow_risk", "rule": "drain", "ts": "2024-03-01T23:59:59+08:00"})
    delta.add_finding({"type": "push", "category": "sweep", "rule": "sweep", "ts": "2024-03-02T00:00:00+08:00"})
    delta.add_finding({"id": "a stand-in without the fields"})
    assert delta.findings == {
        "2024-03-01": {"23|alert|outflow_risk|drain": 1},
        "2024-03-02": {"00|push|sweep|sweep": 1},
    }


@given(st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999999999999999.99"), places=2))
def test_cents_are_exact(amount: Decimal) -> None:
    assert Decimal(cents(amount)) / 100 == amount


@settings(deadline=None, max_examples=40)
@given(histories(), st.sampled_from([ZONE, ZoneInfo("UTC"), ZoneInfo("America/New_York")]))
def test_a_days_whole_net_from_the_state_is_the_sum_of_the_deltas_of_its_events(
    case: tuple[list[TransactionEvent], dt.datetime], zone: ZoneInfo
) -> None:
    """``day_net`` (what a commit sends for a closed 看板 day) equals what the worker's deltas
    added to that day, in any bank zone, for every day the state still keeps whole; a day
    it may not keep whole is None, never a wrong number."""
    state = CustomerState(case[0][0].customer_id)
    delta = BoardDelta()
    for event in case[0]:
        if apply_transaction(state, event, CONFIG) is Outcome.APPLIED:
            delta.add_transaction(event, to_us(event.ts), zone, state)
    compared = 0
    for day, net in delta.net.items():
        whole = day_net(state, day_ordinal(day), zone)
        if state.kept_from_day is None or day_ordinal(day) > state.kept_from_day:
            assert whole == net
            compared += 1
        else:
            assert whole is None
    assert compared or state.kept_from_day is not None


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**15))
def test_an_amounts_histogram_bucket_starts_at_or_below_it_and_the_next_starts_above(amount: int) -> None:
    """A quarter-octave bucket holds [low(b), low(b+1)): against the plain definition
    2^o·2^(q/4) <= v < 2^o·2^((q+1)/4), with exact rationals away from the float rungs."""
    bucket = hist_bucket(amount)
    assert hist_low(bucket) <= amount < hist_low(bucket + 1)
    octave, step = divmod(bucket, 4)
    assert 2**octave <= amount < 2 ** (octave + 1)
    # the rung 2^(q/4) as a float is within 1e-15 of the real one: only amounts that close to
    # a rung may fall either way
    ratio = amount / 2**octave
    assert 2 ** (step / 4) - 1e-12 <= ratio < 2 ** ((step + 1) / 4) + 1e-12


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-10**9, 10**9), max_size=300), st.integers(1, 50))
def test_a_floor_from_the_histogram_keeps_at_least_kept_and_at_most_one_bucket_more(nets: list[int], kept: int) -> None:
    """Against the exact floor (the kept-th largest, ``floor_value``): never above it, so at
    least ``kept`` positive nets (or every one) stay; the others kept share the floor's bucket."""
    counts = Counter(hist_bucket(v) for v in nets if v > 0)
    floor = floor_from_hist(counts, kept)
    exact = floor_value(nets, kept)
    assert 1 <= floor <= exact
    staying = [v for v in nets if v >= floor]
    positive = [v for v in nets if v > 0]
    assert len(staying) >= min(kept, len(positive))
    extra = [v for v in staying if v < exact]
    assert all(hist_bucket(v) == hist_bucket(floor) for v in extra)
