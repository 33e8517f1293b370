"""The incremental state (rules.state + rules.metrics) against the slow reference.

Hypothesis generates nasty single-customer histories (overdrafts, late events,
day and month boundaries in Asia/Shanghai, several offsets for one instant);
every field must equal the reference exactly, at the last event and later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import deque
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.events import TransactionEvent
from rules.metrics import evaluate
from rules.state import (
    LOT_AMOUNT,
    LOT_TS,
    CustomerState,
    Outcome,
    StateConfig,
    apply_transaction,
    content_hash,
    from_us,
    local_day,
    local_day_hour,
    to_us,
)
from streams.storage.codec import decode_state, encode_state
from tests.support.reference import reference_state
from tests.support.strategies import event_sequences_for_cap, histories

ZONE = ZoneInfo("Asia/Shanghai")
FIELDS = [
    "balance", "ledger_balance", "ledger_drift", "daily_avg_balance_mtd", "avg_balance_30d",
    "balance_volatility_30d", "inflow_24h", "inflow_7d", "inflow_30d", "inflow_90d", "outflow_24h",
    "outflow_7d", "outflow_30d", "external_outflow_30d", "external_outflow_share_30d", "txn_count_30d",
    "avg_txn_per_day_30d", "loan_repaid_30d", "external_banks_90d", "net_outflow_streak_days",
    "retention_days_avg_90d", "collection_rate_90d", "segments",
]  # fmt: skip


def run(events: list[TransactionEvent], config: StateConfig, roundtrip: bool = False) -> CustomerState:
    state = CustomerState(events[0].customer_id)
    latest: int | None = None
    for event in events:
        ts = to_us(event.ts)
        outcome = apply_transaction(state, event, config)
        expected = (
            Outcome.TOO_LATE if latest is not None and ts <= latest - config.dedup_horizon_us else Outcome.APPLIED
        )
        assert outcome is expected
        latest = ts if latest is None or ts > latest else latest
        if roundtrip:
            # As the worker does: every commit encodes its live state (the codec caches the
            # stored form of records and lots on it) and goes on with it; on a cache miss it
            # reads the state back from Redis. Alternate both, and end with what Redis holds.
            blob = encode_state(state)
            assert blob == encode_uncached(state)  # written incrementally, and exactly
            if len(state.events) % 2:
                state = decode_state(blob)
    return decode_state(encode_state(state)) if roundtrip else state


def encode_uncached(state: CustomerState) -> bytes:
    """What ``encode_state`` writes for ``state`` from nothing: without the stored forms
    the codec keeps on its records, lots and remembered ids from earlier writes."""
    fresh = dataclasses.replace(
        state,
        events=[dataclasses.replace(record, wire=None) for record in state.events],
        lots=deque([lot[LOT_AMOUNT], lot[LOT_TS], None] for lot in state.lots),
        seen_wire=None,
        seen_wired=0,
        events_wire=None,
    )
    return encode_state(fresh)


def close(a: object, b: object) -> bool:
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return abs(a - b) <= Decimal("1e-18") * max(Decimal(1), abs(b))
    return a == b


def assert_matches(
    state: CustomerState,
    events: list[TransactionEvent],
    as_of: dt.datetime,
    config: StateConfig,
    lot_cap: int | None = None,
) -> None:
    got = evaluate(state, to_us(as_of), config).as_dict()
    want = reference_state(events, as_of, ZONE, lot_cap=lot_cap)
    for name in FIELDS:
        assert close(got[name], want[name]), f"{name}: incremental {got[name]!r} != reference {want[name]!r}"


def accepted(events: list[TransactionEvent], config: StateConfig) -> list[TransactionEvent]:
    """The events the state takes (drops those older than the dedup horizon, as the state does)."""
    kept, latest = [], None
    for event in events:
        ts = to_us(event.ts)
        if latest is not None and ts <= latest - config.dedup_horizon_us:
            continue
        kept.append(event)
        latest = ts if latest is None or ts > latest else latest
    return kept


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_incremental_state_equals_reference(history: tuple[list[TransactionEvent], dt.datetime]) -> None:
    events, as_of = history
    config = StateConfig(ZONE, lot_cap=10_000)
    state = run(events, config)
    assert_matches(state, events=accepted(events, config), as_of=as_of, config=config)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(min_value=0, max_value=200))
def test_state_survives_redis_roundtrip_between_events(
    history: tuple[list[TransactionEvent], dt.datetime], extra_hours: int
) -> None:
    events, as_of = history
    config = StateConfig(ZONE, lot_cap=10_000)
    state = run(events, config, roundtrip=True)
    as_of = as_of + dt.timedelta(hours=extra_hours)
    assert_matches(state, events=accepted(events, config), as_of=as_of, config=config)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences_for_cap(), st.integers(min_value=2, max_value=6), st.booleans())
def test_lot_cap_merges_like_reference(
    history: tuple[list[TransactionEvent], dt.datetime], cap: int, roundtrip: bool
) -> None:
    events, as_of = history
    config = StateConfig(ZONE, lot_cap=cap)
    state = run(events, config, roundtrip=roundtrip)
    assert len(state.lots) <= cap
    assert_matches(state, events=accepted(events, config), as_of=as_of, config=config, lot_cap=cap)


@settings(max_examples=100, deadline=None)
@given(histories())
def test_applying_an_event_twice_changes_nothing(history: tuple[list[TransactionEvent], dt.datetime]) -> None:
    events, _ = history
    config = StateConfig(ZONE, lot_cap=10_000)
    state = run(events, config)
    before = encode_state(state)
    for event in events:
        assert apply_transaction(state, event, config) in (Outcome.DUPLICATE, Outcome.TOO_LATE)
    assert encode_state(state) == before


def test_same_txn_id_with_other_content_is_a_conflict() -> None:
    config = StateConfig(ZONE)
    base = {
        "txn_id": "t1", "customer_id": "c", "account_id": "a", "ts": "2024-01-31T23:30:00+08:00",
        "direction": "credit", "amount": "100.00",
    }  # fmt: skip
    state = CustomerState("c")
    assert apply_transaction(state, TransactionEvent.model_validate(base), config) is Outcome.APPLIED
    same_instant = {**base, "ts": "2024-01-31T15:30:00+00:00", "amount": "100.0"}
    assert apply_transaction(state, TransactionEvent.model_validate(same_instant), config) is Outcome.DUPLICATE
    changed = {**base, "amount": "100.01"}
    assert apply_transaction(state, TransactionEvent.model_validate(changed), config) is Outcome.CONFLICT
    assert state.balance == Decimal("100.00")


def test_fingerprint_ignores_formatting_only() -> None:
    a = TransactionEvent.model_validate(
        {"txn_id": "t", "customer_id": "c", "account_id": "a", "ts": "2024-01-01T00:00:00+08:00",
         "direction": "debit", "amount": "5.5"})  # fmt: skip
    b = a.model_copy(update={"amount": Decimal("5.50"), "ts": dt.datetime(2023, 12, 31, 16, tzinfo=dt.UTC)})
    c = a.model_copy(update={"direction": "credit"})
    assert content_hash(a) == content_hash(b) != content_hash(c)


def test_evaluate_refuses_as_of_before_last_event() -> None:
    config = StateConfig(ZONE)
    state = CustomerState("c")
    event = TransactionEvent.model_validate(
        {"txn_id": "t", "customer_id": "c", "account_id": "a", "ts": "2024-01-01T00:00:00+08:00",
         "direction": "debit", "amount": "5"})  # fmt: skip
    apply_transaction(state, event, config)
    with pytest.raises(ValueError):
        evaluate(state, to_us(event.ts) - 1, config)


def test_cost_and_memory_do_not_grow_with_history() -> None:
    """Five years of daily activity keep the same amount of state as one window.

    This history saves 50 a day, so its lots grow until the lot cap (64 here, so
    that it is reached by day ~400); from then on everything is bounded."""
    config = StateConfig(ZONE, lot_cap=64)
    state = CustomerState("c")
    start = dt.datetime(2020, 1, 1, 9, tzinfo=ZONE)
    sizes = []
    for day in range(5 * 365):
        for i, (direction, amount) in enumerate((("credit", "300.00"), ("debit", "100.00"), ("debit", "150.00"))):
            apply_transaction(state, TransactionEvent.model_validate({
                "txn_id": f"{day}-{i}", "customer_id": "c", "account_id": "a",
                "ts": (start + dt.timedelta(days=day, minutes=i)).isoformat(),
                "direction": direction, "amount": amount}), config)  # fmt: skip
        if day in (600, 1200, 1800):
            sizes.append(len(encode_state(state)))
    assert len(state.lots) == config.lot_cap
    assert len(state.events) <= 3 * 92
    assert len(state.seen) <= 3 * (config.dedup_horizon_days + 2)
    assert max(sizes) <= min(sizes) * 1.05


def test_remembered_ids_written_incrementally_match_a_full_encode_through_prunes() -> None:
    """The codec appends the ids added since its last write to the JSON it wrote then, and
    starts again after a prune: every write must equal a full encode, byte for byte."""
    config = StateConfig(ZONE)
    state = CustomerState("c")
    start = dt.datetime(2024, 1, 1, 9, tzinfo=ZONE)
    pruned = 0
    for day in range(400):
        for i in range(day % 4):  # some days without a transaction: writes with nothing new
            apply_transaction(state, TransactionEvent.model_validate({
                "txn_id": f"{day}-{i}", "customer_id": "c", "account_id": "a",
                "ts": (start + dt.timedelta(days=day, minutes=i)).isoformat(),
                "direction": "credit", "amount": "10.00"}), config)  # fmt: skip
        before = state.seen_wired
        blob = encode_state(state)
        pruned += len(state.seen) < before
        assert blob == encode_uncached(state)
        assert decode_state(blob).seen == state.seen
        if day % 7 == 0:  # as after a cache miss: the next write starts from a decoded state
            state = decode_state(blob)
    assert pruned >= 50  # writes after a prune (ids dropped outnumbered those added that day)


def test_a_loan_event_from_later_does_not_age_out_older_transactions() -> None:
    """LoanEvents come on their own topic: one may be consumed before months of older
    transactions of the same customer, which must still be applied and kept in the windows."""
    from rules.events import LoanEvent
    from rules.state import apply_loan

    config = StateConfig(ZONE)
    state = CustomerState("c")
    loan = LoanEvent.model_validate(
        {"loan_id": "L", "customer_id": "c", "account_id": "a", "ts": "2024-12-01T08:00:00+08:00",
         "principal": "1000", "outstanding": "1000", "annual_rate": "0.05", "installment": "100",
         "next_due": "2025-01-01", "status": "active"})  # fmt: skip
    assert apply_loan(state, loan, config) is Outcome.APPLIED
    for day in range(1, 29):
        event = TransactionEvent.model_validate(
            {"txn_id": f"t{day}", "customer_id": "c", "account_id": "a", "ts": f"2024-02-{day:02d}T09:00:00+08:00",
             "direction": "credit", "amount": "10.00"})  # fmt: skip
        assert apply_transaction(state, event, config) is Outcome.APPLIED
    got = evaluate(state, to_us(dt.datetime(2024, 2, 28, 12, tzinfo=ZONE)), config)
    assert got.inflow_30d == Decimal("280.00") and got.txn_count_30d == 28


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_daily_history_matches_a_forward_replay(case: tuple[list[TransactionEvent], dt.datetime]) -> None:
    """End-of-day balances walked back from today equal the ones summed forward from day one."""
    from rules.metrics import daily_history
    from rules.state import local_day

    events, as_of = case
    config = StateConfig(zone=ZONE)
    state = run(events, config)
    applied, latest = [], None
    for e in events:  # what run() applied: everything not too late for the dedup horizon on arrival
        if latest is None or to_us(e.ts) > latest - config.dedup_horizon_us:
            applied.append(e)
        latest = max(latest or to_us(e.ts), to_us(e.ts))
    rows = daily_history(state, to_us(as_of), ZONE)
    assert rows and rows[-1].day == as_of.astimezone(ZONE).date() and rows[-1].end_balance == state.balance
    assert [r.day for r in rows] == sorted({r.day for r in rows})  # one row per day, in order
    for row in rows:
        today = [e for e in applied if local_day(to_us(e.ts), ZONE) == row.day.toordinal()]
        upto = [e for e in applied if local_day(to_us(e.ts), ZONE) <= row.day.toordinal()]
        signed = [e.amount if e.direction == "credit" else -e.amount for e in upto]
        assert row.end_balance == sum(signed, Decimal(0))
        assert row.inflow == sum((e.amount for e in today if e.direction == "credit"), Decimal(0))
        assert row.outflow == sum((e.amount for e in today if e.direction == "debit"), Decimal(0))
        assert row.txn_count == len(today)


def test_a_timestamp_at_the_edge_of_the_calendar_raises_before_the_state_changes() -> None:
    """Issue 20: 0001-01-01T00:00:00+08:00 raised OverflowError after the txn_id was already
    remembered, leaving a half-applied state. (The edge's time bounds keep it away now.)"""
    config = StateConfig(ZoneInfo("Asia/Shanghai"))
    for ts in ("0001-01-01T00:00:00+08:00", "9999-12-31T16:00:00Z"):
        state = CustomerState("c")
        before = encode_state(state)
        event = TransactionEvent.model_validate(
            {"txn_id": "t", "customer_id": "c", "account_id": "a", "ts": ts, "direction": "credit", "amount": "1"}
        )
        with pytest.raises(OverflowError):
            apply_transaction(state, event, config)
        assert encode_state(state) == before and not state.seen


# zones with DST, half- and quarter-hour offsets, a 30-minute DST shift, and offsets that
# were not whole minutes (Monrovia until 1972, Amsterdam before 1937)
ODD_ZONES = [
    "Asia/Shanghai", "Europe/Prague", "America/New_York", "Asia/Kathmandu", "Asia/Kolkata",
    "Australia/Lord_Howe", "America/St_Johns", "Africa/Monrovia", "Europe/Amsterdam", "Pacific/Chatham", "UTC",
]  # fmt: skip


@given(
    ts_us=st.integers(to_us(dt.datetime(1900, 1, 2, tzinfo=dt.UTC)), to_us(dt.datetime(8999, 12, 31, tzinfo=dt.UTC))),
    zone=st.sampled_from(ODD_ZONES),
    near_transition=st.booleans(),
    shift_us=st.integers(-2 * 3_600_000_000, 2 * 3_600_000_000),
)
def test_local_day_and_hour_by_cached_offset_equal_the_conversion(
    ts_us: int, zone: str, near_transition: bool, shift_us: int
) -> None:
    tz = ZoneInfo(zone)
    if near_transition:  # within two hours of a DST change of that zone's year
        year = from_us(ts_us).year
        probe = dt.datetime(year, 3, 31, 1, tzinfo=dt.UTC)
        if probe.astimezone(tz).dst():
            probe = dt.datetime(year, 10, 31, 1, tzinfo=dt.UTC)
        ts_us = to_us(probe) + shift_us
    exact = from_us(ts_us).astimezone(tz)
    assert local_day_hour(ts_us, tz) == (exact.toordinal(), exact.hour)
    assert local_day(ts_us, tz) == exact.date().toordinal()


def test_local_day_and_hour_across_every_transition_of_a_year() -> None:
    """Every 15 minutes of 2026 in zones with DST, among them Lord Howe's 30-minute shift
    and St John's half-hour offset."""
    for zone in ("Europe/Prague", "America/New_York", "Australia/Lord_Howe", "America/St_Johns", "Asia/Shanghai"):
        tz = ZoneInfo(zone)
        moment = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        while moment.year == 2026:
            ts_us = to_us(moment)
            exact = from_us(ts_us).astimezone(tz)
            assert local_day_hour(ts_us, tz) == (exact.toordinal(), exact.hour), (zone, moment)
            moment += dt.timedelta(minutes=15)
