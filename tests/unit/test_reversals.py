"""Reversals (冲正) and own-account transfers against the slow reference, and the findings
a reversal takes back (docs/events.md, "Reversals", "Retractions"; metrics.md)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.config import RulesConfig
from rules.engine import judge
from rules.events import TransactionEvent
from rules.metrics import evaluate
from rules.state import CustomerState, Outcome, StateConfig, apply_transaction, to_us
from streams.storage.codec import decode_state, encode_state
from tests.support.reference import reference_state
from tests.support.strategies import histories, histories_with_corrections, reversal_of

ZONE = ZoneInfo("Asia/Shanghai")
CONFIG = StateConfig(ZONE, lot_cap=10_000)
FLOW_FIELDS = [
    "balance", "inflow_24h", "inflow_7d", "inflow_30d", "inflow_90d", "outflow_24h", "outflow_7d", "outflow_30d",
    "external_outflow_30d", "external_outflow_share_30d", "txn_count_30d", "avg_txn_per_day_30d",
    "loan_repaid_30d", "external_banks_90d", "net_outflow_streak_days", "segments",
]  # fmt: skip
ALL_FIELDS = [
    *FLOW_FIELDS, "ledger_balance", "ledger_drift", "daily_avg_balance_mtd", "avg_balance_30d",
    "balance_volatility_30d", "retention_days_avg_90d", "collection_rate_90d",
]  # fmt: skip


def close(a: object, b: object) -> bool:
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return abs(a - b) <= Decimal("1e-18") * max(Decimal(1), abs(b))
    return a == b


def run(events: list[TransactionEvent], config: StateConfig = CONFIG, roundtrip: bool = False) -> CustomerState:
    state = CustomerState("c")
    for event in events:
        apply_transaction(state, event, config)
        if roundtrip:
            state = decode_state(encode_state(state))
    return state


def applied(events: list[TransactionEvent], config: StateConfig = CONFIG) -> list[TransactionEvent]:
    """The events the state applies (an event older than the dedup horizon is refused)."""
    kept: list[TransactionEvent] = []
    latest: int | None = None
    for event in events:
        ts = to_us(event.ts)
        if latest is None or ts > latest - config.dedup_horizon_us:
            kept.append(event)
        latest = ts if latest is None else max(latest, ts)
    return kept


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories_with_corrections(), st.booleans())
def test_state_with_corrections_equals_the_reference(
    history: tuple[list[TransactionEvent], dt.datetime], roundtrip: bool
) -> None:
    events, as_of = history
    state = run(events, roundtrip=roundtrip)
    got = evaluate(state, to_us(as_of), CONFIG).as_dict()
    want = reference_state(applied(events), as_of, ZONE)
    for name in ALL_FIELDS:
        assert close(got[name], want[name]), f"{name}: state {got[name]!r} != reference {want[name]!r}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(max_events=30), st.data())
def test_a_reversal_leaves_every_flow_as_if_the_transaction_never_happened(
    history: tuple[list[TransactionEvent], dt.datetime], data: st.DataObject
) -> None:
    events, as_of = history
    events = applied(events)
    index = data.draw(st.integers(min_value=0, max_value=len(events) - 1))
    original = events[index]
    latest = max(e.ts for e in events)
    if latest - original.ts > dt.timedelta(days=80):  # reversible only while kept (metrics.md)
        return
    at = latest + dt.timedelta(seconds=data.draw(st.integers(min_value=0, max_value=86_400)))
    as_of = max(as_of, at)
    with_reversal = run([*events, reversal_of(original, "r", at)])
    never = run([e for e in events if e is not original])
    got = evaluate(with_reversal, to_us(as_of), CONFIG).as_dict()
    want = evaluate(never, to_us(as_of), CONFIG).as_dict() if len(events) > 1 else None
    for name in FLOW_FIELDS:
        if want is None:  # the only transaction, undone: nothing flowed
            assert got[name] in (0, Decimal(0), [], ["low_activity"]), name
        else:
            assert close(got[name], want[name]), f"{name}: reversed {got[name]!r} != never {want[name]!r}"


def event(txn_id: str, ts: str, direction: str, amount: str, **extra: object) -> TransactionEvent:
    return TransactionEvent.model_validate(
        {"txn_id": txn_id, "customer_id": "c", "account_id": "a", "ts": ts, "direction": direction,
         "amount": amount, **extra}
    )  # fmt: skip


def test_what_a_reversal_may_not_do() -> None:
    state = run([event("t1", "2024-03-01T10:00:00+08:00", "credit", "100")])
    at = dt.datetime.fromisoformat("2024-03-02T10:00:00+08:00")
    original = event("t1", "2024-03-01T10:00:00+08:00", "credit", "100")
    unknown = reversal_of(original, "r0", at).model_copy(update={"reverses": "nope"})
    assert apply_transaction(state, unknown, CONFIG) is Outcome.UNKNOWN_REVERSED
    wrong_amount = reversal_of(original, "r1", at).model_copy(update={"amount": Decimal("99")})
    assert apply_transaction(state, wrong_amount, CONFIG) is Outcome.REVERSAL_MISMATCH
    same_direction = reversal_of(original, "r2", at).model_copy(update={"direction": "credit"})
    assert apply_transaction(state, same_direction, CONFIG) is Outcome.REVERSAL_MISMATCH
    assert state.balance == 100  # none of them touched it
    assert apply_transaction(state, reversal_of(original, "r3", at), CONFIG) is Outcome.APPLIED
    assert state.balance == 0
    assert apply_transaction(state, reversal_of(original, "r3", at), CONFIG) is Outcome.DUPLICATE  # redelivered
    assert apply_transaction(state, reversal_of(original, "r4", at), CONFIG) is Outcome.DUPLICATE  # a second one
    assert apply_transaction(state, original, CONFIG) is Outcome.DUPLICATE  # the original, redelivered
    of_reversal = reversal_of(reversal_of(original, "r3", at), "r5", at)
    assert apply_transaction(state, of_reversal, CONFIG) is Outcome.REVERSAL_MISMATCH
    assert state.balance == 0


def test_the_days_the_money_sat_keep_it() -> None:
    """日均余额 counts the days the reversed money was really there."""
    events = [
        event("t1", "2024-03-01T10:00:00+08:00", "credit", "300"),
        reversal_of(event("t1", "2024-03-01T10:00:00+08:00", "credit", "300"), "r1",
                    dt.datetime.fromisoformat("2024-03-03T10:00:00+08:00")),
    ]  # fmt: skip
    metrics = evaluate(run(events), to_us(dt.datetime.fromisoformat("2024-03-03T12:00:00+08:00")), CONFIG)
    assert metrics.balance == 0 and metrics.inflow_30d == 0 and metrics.txn_count_30d == 0
    assert metrics.daily_avg_balance_mtd == 200  # 300 on the 1st and 2nd, 0 on the 3rd


def test_an_own_account_transfer_is_neither_inflow_nor_outflow() -> None:
    own = {"counterparty_customer_id": "c"}
    events = [
        event("t1", "2024-03-01T10:00:00+08:00", "credit", "500"),
        event("t2", "2024-03-01T11:00:00+08:00", "debit", "200", **own),
        event("t3", "2024-03-01T11:00:00+08:00", "credit", "200", account_id="b", **own),
    ]
    metrics = evaluate(run(events), to_us(dt.datetime.fromisoformat("2024-03-01T12:00:00+08:00")), CONFIG)
    assert metrics.balance == 500 and metrics.inflow_24h == 500 and metrics.outflow_24h == 0
    assert metrics.txn_count_30d == 1 and metrics.collection_rate_90d == 1


def findings_of(events: list[TransactionEvent], rules: RulesConfig) -> list[dict[str, object]]:
    state = CustomerState("c")
    out: list[dict[str, object]] = []
    for e in events:
        before = state.balance
        if apply_transaction(state, e, CONFIG) is Outcome.APPLIED:
            judged = judge(state, e, before, rules, CONFIG).findings
            out.extend(orjson.loads(orjson.dumps(f.as_dict(ZONE))) for f in judged)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories_with_corrections(max_events=30))
def test_every_finding_of_a_reversed_transaction_is_retracted_exactly_once(
    history: tuple[list[TransactionEvent], dt.datetime],
) -> None:
    events, _ = history
    rules = RulesConfig()
    found = findings_of(events, rules)
    reversed_ids = {e.reverses for e in applied(events) if e.reverses is not None}
    retractions = [f for f in found if "retracts" in f]
    originals = {f["id"]: f for f in found if "retracts" not in f}
    # every retraction names a finding of a reversed transaction, and each such finding is retracted once
    retracted = [f["retracts"] for f in retractions]
    assert len(retracted) == len(set(retracted))
    for f in retractions:
        assert originals[f["retracts"]]["trigger_txn_id"] in reversed_ids
        assert f["reason"] == "trigger_reversed" and f["trigger_txn_id"] != originals[f["retracts"]]["trigger_txn_id"]
    due = {i for i, f in originals.items() if f["trigger_txn_id"] in reversed_ids}
    assert set(retracted) == due
    # a reversal fires nothing itself but its retractions
    reversal_ids = {e.txn_id for e in events if e.reverses is not None}
    assert all("retracts" in f for f in found if f["trigger_txn_id"] in reversal_ids)
    # the same history, the same ids
    assert [f["id"] for f in findings_of(events, rules)] == [f["id"] for f in found]


def test_a_retraction_takes_back_a_collection_alert() -> None:
    """A large credit at a customer whose money leaves fast fires a collection opportunity
    and its push; its reversal takes both back."""
    events = []
    for i in range(1, 8):
        events.append(event(f"c{i}", f"2024-03-0{i}T10:00:00+08:00", "credit", "5000"))
        events.append(event(f"d{i}", f"2024-03-0{i}T12:00:00+08:00", "debit", "5000"))
    big = event("big", "2024-03-09T10:00:00+08:00", "credit", "900000")
    found = findings_of([*events, big], RulesConfig())
    fired = [f for f in found if f["trigger_txn_id"] == "big"]
    assert fired, "the large credit fires something to take back"
    reversal = reversal_of(big, "rev", dt.datetime.fromisoformat("2024-03-09T11:00:00+08:00"))
    found = findings_of([*events, big, reversal], RulesConfig())
    taken_back = [f for f in found if f.get("retracts")]
    assert sorted(f["retracts"] for f in taken_back) == sorted(f["id"] for f in fired)
    assert {f["type"] for f in taken_back} == {f["type"] for f in fired} == {"alert", "push"}
    again = findings_of([*events, big, reversal, reversal_of(big, "rev2", reversal.ts)], RulesConfig())
    assert [f["id"] for f in again] == [f["id"] for f in found]  # a second reversal takes back nothing more


def test_the_retraction_of_a_history_finding_is_history_too() -> None:
    """Go-live between a finding and its reversal: nobody was shown the finding, so nobody is
    sent its retraction (docs/events.md, "History")."""
    from streams.rulestep import RulesProvider, RulesStep
    from streams.topics import HISTORY

    events = []
    for i in range(1, 8):
        events.append(event(f"c{i}", f"2024-03-0{i}T10:00:00+08:00", "credit", "5000"))
        events.append(event(f"d{i}", f"2024-03-0{i}T12:00:00+08:00", "debit", "5000"))
    big = event("big", "2024-03-09T10:00:00+08:00", "credit", "900000")
    reversal = reversal_of(big, "rev", dt.datetime.fromisoformat("2024-03-09T11:00:00+08:00"))
    live_from = to_us(dt.datetime.fromisoformat("2024-03-09T10:30:00+08:00"))
    step = RulesStep(CONFIG, RulesProvider(None), live_from_us=live_from)
    state = CustomerState("c")
    topics: dict[str, list[dict[str, object]]] = {}
    for e in [*events, big, reversal]:
        for entry in step(state, e)[1]:
            topic, _, value = entry.split(b"\n", 2)
            topics.setdefault(topic.decode(), []).append(orjson.loads(value))
    history = topics.pop(HISTORY)
    assert {f["trigger_txn_id"] for f in history if "retracts" not in f} == {"big"}
    assert len([f for f in history if "retracts" in f]) == len([f for f in history if "retracts" not in f]) >= 2
    assert all(f["history"] is True for f in history)
    assert not any("retracts" in f for found in topics.values() for f in found)  # nothing live to take back


@pytest.mark.xfail(
    strict=True,
    reason="a reversal finds its original by time, amount and direction: of two such records in "
    "one microsecond it may undo the other (found by hypothesis, 2026-12-05; not fixed yet)",
)
def test_a_reversal_undoes_its_own_original_among_twins_of_the_same_microsecond() -> None:
    """Two credits of the same amount in the same microsecond, one from another bank: reversing
    that one leaves no other bank in the 90 days. The state keeps no id per record, so today it
    may take back the other twin's record (the flows agree; the bank, salary or pension flags of
    the two may not). When this passes, take the mark off."""
    at = "2024-01-31T23:00:00+08:00"
    events = [
        event("t11", at, "credit", "0.01"),
        event("t12", at, "credit", "0.01", external=True, counterparty_bank="ICBC"),
        event("r2", at, "debit", "0.01", reverses="t12"),
    ]
    state = run(events)
    assert evaluate(state, to_us(dt.datetime.fromisoformat(at)), CONFIG).as_dict()["external_banks_90d"] == 0
