"""The rule evaluation (hit rate vs base rate) on hand-made histories."""

from __future__ import annotations

from decimal import Decimal

from cases.model import RulePrecision
from streams.tools.evaluate import duration, evaluate, low_precision, render
from tests.support.evaluation import alert, txn


def test_drained_and_kept_customers_give_hit_and_base_rates() -> None:
    events = []
    for customer in ("drains", "stays"):
        events.append(txn(customer, 0, "credit", 10_000))
        events.append(txn(customer, 40, "debit", 1_000))  # the trigger, day 40
    events.append(txn("drains", 45, "debit", 8_500))  # 500 left of an average 10,000: drained
    events.append(txn("stays", 45, "credit", 100))
    events.append(txn("later", 200, "credit", 1))  # the data runs to day 200: day 40 has a full horizon
    alerts = [alert("large_external_outflow", "drains", 40), alert("large_external_outflow", "stays", 40)]
    result = evaluate(events, alerts, horizon=30, collection_min=Decimal(5_000))
    rule = result["rules"]["large_external_outflow"]
    assert (rule["fired"], rule["customers"], rule["judged"], rule["hit_rate"]) == (2, 2, 2, 0.5)
    # base, every debit: drains' on day 40 and day 45 both end at 500 thirty days on, against an
    # average near 10,000 (drained); stays' day-40 debit ends at 9,100 (not)
    assert result["base"]["debits"] == {"n": 3, "rate": round(2 / 3, 4)}
    assert rule["lift"] == round(0.5 / round(2 / 3, 4), 2)
    assert "large_external_outflow" in render(result)


def test_collection_alert_hit_when_most_of_the_inflow_leaves() -> None:
    events = [
        txn("a", 0, "credit", 1_000),
        txn("a", 10, "credit", 50_000),  # trigger
        txn("a", 12, "debit", 40_000),  # most of it leaves within 30 days
        txn("b", 0, "credit", 1_000),
        txn("b", 10, "credit", 50_000),  # stays
        txn("z", 100, "credit", 1),
    ]
    alerts = [alert("collection_opportunity", "a", 10, amount="50000.00")]
    result = evaluate(events, alerts, horizon=30, collection_min=Decimal(50_000))
    rule = result["rules"]["collection_opportunity"]
    assert (rule["judged"], rule["hit_rate"]) == (1, 1.0)
    assert result["base"]["large_credits"] == {"n": 2, "rate": 0.5}
    assert rule["lift"] == 2.0


def test_triggers_without_a_full_horizon_are_not_judged() -> None:
    events = [txn("a", 0, "credit", 10_000), txn("a", 20, "debit", 9_000)]
    result = evaluate(events, [alert("balance_drawdown", "a", 20)], horizon=30, collection_min=Decimal(1))
    rule = result["rules"]["balance_drawdown"]
    assert rule["fired"] == 1 and rule["judged"] == 0 and rule["hit_rate"] is None


def test_low_precision_needs_enough_resolved_cases_and_durations_read_well() -> None:
    def row(rule: str, resolved: int, confirmed: int) -> RulePrecision:
        precision = round(confirmed / resolved, 4) if resolved else None
        return RulePrecision(rule, resolved, resolved, resolved, confirmed, 0, precision, None, None)

    rows = [row("wrong", 20, 5), row("right", 20, 15), row("few", 3, 0), row("none", 0, 0), row("edge", 20, 10)]
    assert [r.rule for r in low_precision(rows, 0.5, 20)] == ["wrong"]  # 0.5 itself is not below 0.5
    assert [r.rule for r in low_precision(rows, 0.5, 3)] == ["wrong", "few"]
    assert [duration(s) for s in (None, 42, 720, 5400, 3 * 86400)] == ["—", "42 s", "12 min", "1.5 h", "3.0 d"]
