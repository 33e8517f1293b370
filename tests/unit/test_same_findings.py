"""Same history, same findings (issue 17): every delivery of one history that Kafka allows
gives the same findings, ids and full contents.

A history is a few customers' TransactionEvents (one topic) and LoanEvents (another), each
topic in its own fixed order. A delivery interleaves the two topics in any way that keeps
each topic's order, within the documented lateness bound (``docs/findings.md``: a LoanEvent
may run any distance ahead of the customer's transactions, and up to
``RulesConfig.loan_lateness_days`` behind them), cuts it into batches at any points, and
restarts the worker between batches (the state goes through ``streams.storage.codec`` as it does
through Redis). The findings are the outbox entries of ``streams.rulestep.rules_step``, the
step the worker runs, compared byte for byte after sorting.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.config import RulesConfig
from rules.events import Event, LoanEvent, TransactionEvent
from rules.state import CustomerState
from streams import telemetry
from streams.rulestep import RulesProvider, rules_step
from streams.storage.codec import decode_state, encode_state
from tests.support.deliveries import CONFIG, ZONE, deliveries, histories, in_time_order


def run(events: list[Event], restarts: set[int] = frozenset()) -> list[bytes]:  # type: ignore[assignment]
    """The worker's step over ``events``; at each index in ``restarts`` every state is written
    and read back (a new worker, or a rebalance, picks the customer up from Redis)."""
    step = rules_step(CONFIG, RulesProvider(None))
    states: dict[str, CustomerState] = {}
    published: list[bytes] = []
    for index, event in enumerate(events):
        if index in restarts:
            states = {cid: decode_state(encode_state(state)) for cid, state in states.items()}
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        _, entries = step(state, event)
        published += entries
    return sorted(published)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(histories(), st.data())
def test_every_legal_delivery_gives_the_same_findings(
    history: tuple[list[TransactionEvent], list[LoanEvent]], data: st.DataObject
) -> None:
    txns, loans = history
    expected = run(in_time_order(txns, loans))
    assert run([*loans, *txns]) == expected  # the loans topic read first, as a backtest often does
    delivered = data.draw(deliveries(txns, loans), label="delivery")
    restarts = data.draw(st.sets(st.integers(0, max(len(delivered) - 1, 0)), max_size=4), label="restarts")
    assert run(delivered, restarts) == expected


def loan_report(cid: str, when: dt.datetime, installment: int, months: int, due: str) -> LoanEvent:
    principal = str(installment * months)
    return LoanEvent.model_validate(
        {"loan_id": "L", "customer_id": cid, "account_id": cid, "ts": when.isoformat(), "principal": principal,
         "outstanding": principal, "annual_rate": "0.0435", "installment": str(installment), "next_due": due,
         "status": "active"}
    )  # fmt: skip


def movement(cid: str, n: int, when: dt.datetime, direction: str, amount: str, kind: str = "other") -> TransactionEvent:
    return TransactionEvent.model_validate(
        {"txn_id": f"t{n}", "customer_id": cid, "account_id": cid, "ts": when.isoformat(),
         "direction": direction, "amount": amount, "kind": kind}
    )  # fmt: skip


def test_a_loan_reported_late_is_judged_against_the_transactions_it_missed() -> None:
    """The due date passed on the transaction side before the loan was known: the overdue
    check still runs, on arrival, against the transactions of the due date's window."""
    granted = dt.datetime(2024, 1, 2, 8, tzinfo=ZONE)
    loan = loan_report("late", granted, 1000, 3, "2024-02-01")
    txns = [
        movement("late", 0, granted + dt.timedelta(hours=2), "credit", "100"),
        movement("late", 1, granted + dt.timedelta(days=40), "credit", "100"),
    ]
    loan_first = run([loan, *txns])
    loan_last = run([*txns, loan])
    assert loan_first == loan_last
    assert any(b'"rule":"repayment_overdue"' in entry for entry in loan_last)


def test_sweep_reserves_the_same_whether_the_loan_comes_before_or_after_the_repayment() -> None:
    granted = dt.datetime(2024, 1, 2, 8, tzinfo=ZONE)
    loan = loan_report("sweep", granted, 3660, 2, "2024-02-01")
    txns = [
        movement("sweep", 0, granted + dt.timedelta(hours=1), "credit", "30000"),
        movement("sweep", 1, dt.datetime(2024, 2, 1, 9, 30, tzinfo=ZONE), "debit", "3660", "loan_repayment"),
    ]
    assert run([loan, *txns]) == run([*txns, loan])
    sweep = [e for e in run(txns) if e.startswith(b"fundflow.recommendations")]
    assert sweep and b'"next_instalments_reserved":"3660.00"' in sweep[0]


def test_a_loan_reported_beyond_the_bound_is_suppressed_with_a_reason() -> None:
    granted = dt.datetime(2024, 1, 2, 8, tzinfo=ZONE)
    loan = loan_report("later", granted, 1000, 3, "2024-02-01")
    late_by = dt.timedelta(days=RulesConfig().loan_lateness_days, hours=1)
    step = rules_step(CONFIG, RulesProvider(None))
    state = CustomerState("later")
    step(state, movement("later", 0, granted + late_by, "credit", "100"))
    before = telemetry_count("repayment", "late_loan")
    _, entries = step(state, loan)
    assert entries == [] and state.rule_state.get("dues", {}) == {}
    assert telemetry_count("repayment", "late_loan") == before + 1


def telemetry_count(rule: str, why: str) -> float:
    return telemetry.SUPPRESSED.labels(rule, why)._value.get()  # type: ignore[no-any-return]


def test_berka_loan_5314_is_judged_overdue_whichever_topic_is_read_first() -> None:
    """The one genuine ``repayment_overdue`` of the shipped Berka data: loan 5314 (customer
    1787), granted 1993-07-05, whose next LoanEvent comes after its first repayment on
    1994-03-12 and reports the arrears. A backfill may read the small loans topic first;
    the findings must be those of the natural order all the same."""
    import json
    from pathlib import Path
    from tempfile import TemporaryDirectory

    from streams.tools.berka import convert_berka

    with TemporaryDirectory() as tmp:
        out = Path(tmp) / "events.jsonl"
        convert_berka(None, out, ZONE)
        lines = [json.loads(line) for line in out.read_text().splitlines() if '"1787"' in line]
    txns = [TransactionEvent.model_validate(o) for o in lines if o.get("customer_id") == "1787" and "loan_id" not in o]
    loans = [LoanEvent.model_validate(o) for o in lines if o.get("customer_id") == "1787" and "loan_id" in o]
    assert loans and txns
    natural = run(in_time_order(txns, loans))
    assert any(b'"repayment_overdue"' in entry and b"loan:5314:due:1993-08-05" in entry for entry in natural)
    assert run([*loans, *txns]) == natural
