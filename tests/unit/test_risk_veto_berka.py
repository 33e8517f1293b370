"""The risk veto on the shipped Berka data (issue 32): the rules over every customer, in
process, as the worker runs them; no push reaches a customer within ``risk_veto_days`` after
an outflow-risk or repayment finding of theirs, and the veto removed pushes."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pytest

from rules.config import RulesConfig, SweepRule
from rules.engine import RISK_CATEGORIES
from tests.support.berka_rules import SWEEP_BEFORE, ZONE, judge_berka


@pytest.mark.parametrize("sweep", [SweepRule(), SWEEP_BEFORE], ids=["default-sweep", "sweep-before-the-buffer"])
def test_no_push_within_risk_veto_days_after_a_risk_finding_on_berka(sweep: SweepRule) -> None:
    rules = RulesConfig(sweep=sweep)
    run = judge_berka(rules)
    findings = run.findings
    vetoes = Counter({key: n for key, n in run.suppressed.items() if key[1].startswith("risk_veto:")})
    window = dt.timedelta(days=rules.marketing.risk_veto_days).total_seconds() * 1_000_000
    risks: dict[str, list[int]] = {}
    for f in findings:
        if f.kind != "push" and f.category in RISK_CATEGORIES:
            risks.setdefault(f.customer_id, []).append(f.ts_us)
    pushes = [f for f in findings if f.kind == "push"]
    too_soon = [p for p in pushes if any(0 <= p.ts_us - ts <= window for ts in risks.get(p.customer_id, ()))]
    assert pushes and too_soon == []
    if sweep == SWEEP_BEFORE:  # the veto at work on real data: the history buffer sweeps neither 1603 nor 1787
        assert sum(n for (rule, _), n in vetoes.items() if rule.startswith("push_")) >= 1, vetoes
        assert vetoes[("post_repayment_sweep", "risk_veto:repayment_overdue")] >= 1, vetoes  # loan 5314, in arrears


def test_the_backtest_counts_the_vetoes_from_the_file() -> None:
    """``summary.json``'s ``risk_vetoes``: the pure rules over the lines, a dead letter left out."""
    from streams.settings import Settings
    from streams.tools.backtest import risk_vetoes

    def line(n: int, day: int, direction: str, amount: int, **extra: object) -> bytes:
        when = dt.datetime(2024, 3, day, 10, tzinfo=ZONE).isoformat()
        return json.dumps(
            {"txn_id": f"t{n}", "customer_id": "c", "account_id": "c", "ts": when, "direction": direction,
             "amount": str(amount), **extra}
        ).encode()  # fmt: skip

    lines = [
        line(0, 1, "credit", 200_000),
        line(1, 6, "credit", 10_000),
        b'{"not": "an event"}',
        line(2, 7, "debit", 9_000, kind="loan_repayment", external=True),  # fast-in-fast-out, then the sweep
    ]
    summary = risk_vetoes(lines, Settings(rules_file="defaults"), RulesConfig())
    assert summary["pushes_vetoed"] == 1 and summary["sweeps_not_made"] == 0
    assert summary["by_rule"] == {"push_sweep": {"risk_veto:fast_in_fast_out": 1}}
