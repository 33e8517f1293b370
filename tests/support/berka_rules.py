"""The pure rules over the shipped Berka data, in the file's order (event time: a legal delivery
of both topics), as the worker judges them: for the tests that hold a rule's figures on real data."""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from zoneinfo import ZoneInfo

from rules.config import RulesConfig, SweepRule
from rules.engine import Finding, judge
from rules.events import LoanEvent, TransactionEvent
from rules.state import CustomerState, Outcome, StateConfig, apply_event
from streams.tools.berka import convert_berka

ZONE = ZoneInfo("Asia/Shanghai")
# The sweep rule before issue 32's history buffer (one month of the last 30 days' outflow, no
# floor): the README's "before".
SWEEP_BEFORE = SweepRule(buffer_months_of_outflow=Decimal(1), buffer_history_days=30, idle_floor_share=None)


@dataclass(frozen=True, slots=True)
class BerkaRun:
    findings: list[Finding]
    suppressed: Counter[tuple[str, str]]  # (rule, why)


@functools.cache
def berka_events() -> tuple[dict[str, Any], ...]:
    """The shipped Berka data converted, one object per event, in the file's order."""
    with TemporaryDirectory() as tmp:
        out = Path(tmp) / "events.jsonl"
        convert_berka(None, out, ZONE)
        return tuple(json.loads(line) for line in out.read_text().splitlines())


def judge_berka(rules: RulesConfig) -> BerkaRun:
    """Every finding and refusal of ``rules`` over the Berka data."""
    config = StateConfig(ZONE)
    states: dict[str, CustomerState] = {}
    findings: list[Finding] = []
    suppressed: Counter[tuple[str, str]] = Counter()
    for obj in berka_events():
        event = LoanEvent.model_validate(obj) if "loan_id" in obj else TransactionEvent.model_validate(obj)
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        before = state.balance
        if apply_event(state, event, config) is not Outcome.APPLIED:
            continue
        judgement = judge(state, event, before, rules, config)
        findings += judgement.findings
        suppressed.update(judgement.suppressed)
    return BerkaRun(findings, suppressed)
