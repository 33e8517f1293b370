"""The rule evaluation (hit rate vs base rate) on hand-made histories."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson

from cases.model import RulePrecision
from rules.money import to_cent
from streams.tools.evaluate import duration, evaluate, low_precision, render, run_evaluate
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


def sweep(customer: str, day: int, amount: str, trigger: str, instalment: str = "1000.00") -> dict[str, object]:
    return {
        **alert("post_repayment_sweep", customer, day, next_instalments_reserved=instalment),
        "id": f"sweep-{customer}-{day}",
        "type": "recommendation",
        "trigger_txn_id": trigger,
        "amount": amount,
        "product_rate": "0.022",
        "deposit_rate": "0.0035",
    }


def test_sweeps_are_judged_by_their_outcome(tmp_path: Path) -> None:
    """Issue 32: each sweep replayed against the customer's next 30 days with the amount taken
    out: the share short, the depth, the headroom, and the gain net of redemptions."""
    events = [
        txn("short", 0, "credit", 50_000),
        {**txn("short", 10, "debit", 1_000), "kind": "loan_repayment"},  # the sweep: 40,000 of 49,000
        txn("short", 20, "debit", 15_000),  # 49,000 - 40,000 - 15,000 = -6,000: short, 6,000 redeemed
        txn("fine", 0, "credit", 50_000),
        {**txn("fine", 10, "debit", 1_000), "kind": "loan_repayment"},  # swept 20,000 of 49,000
        txn("fine", 20, "debit", 15_000),  # 14,000 left
        txn("late", 0, "credit", 50_000),
        {**txn("late", 95, "debit", 1_000), "kind": "loan_repayment"},  # 5 days of data after it
        txn("z", 100, "credit", 1),
    ]
    recommendations = [
        sweep("short", 10, "40000.00", "short-10-debit-1000"),
        sweep("fine", 10, "20000.00", "fine-10-debit-1000"),
        sweep("late", 95, "10000.00", "late-95-debit-1000"),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    backtest = tmp_path / "bt"
    backtest.mkdir()
    (backtest / "alerts.jsonl").write_bytes(b"")
    (backtest / "recommendations.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recommendations))
    result = run_evaluate(path, backtest, 30, Decimal(5_000))
    sweeps = result["sweeps"]
    assert (sweeps["made"], sweeps["judged"], sweeps["partial_horizon"], sweeps["short"]) == (3, 3, 1, 1)
    assert sweeps["short_share"] == 0.3333 and sweeps["redeemed"] == 1
    assert (sweeps["depth_lowest"], sweeps["depth_median"]) == ("-6000.00", "-6000.00")
    assert sweeps["headroom_median"] == "14000.00"  # -6,000 · 14,000 · 39,000
    # 0.0185 a year for 30 days: 70,000 held = 106.44; the short sweep keeps 34,000 for its last 20 days
    spread = Decimal("0.0185")
    held = spread * 70_000 * 30 / 365
    lost = spread * 6_000 * 20 / 365
    assert sweeps["gain_if_held"] == str(to_cent(held)) and sweeps["gain"] == str(to_cent(held - lost))
    text = render(result)
    assert "3 of 3 post-repayment sweeps" in text and "below zero within 30 days: 1 (33.3%)" in text
    assert "shortfall lowest -6,000.00" in text and "median headroom 14,000.00" in text
    (backtest / "recommendations.jsonl").unlink()
    assert "sweeps" not in run_evaluate(path, backtest, 30, Decimal(5_000))  # an older backtest: alerts only
