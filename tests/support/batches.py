"""A BatchProcessor on a toy step (the state step plus: every credit >= 100 is a finding) and its records."""

from __future__ import annotations

import json
from collections.abc import Callable
from zoneinfo import ZoneInfo

from rules.events import Event, TransactionEvent
from rules.state import CustomerState, Outcome, StateConfig, apply_loan, apply_transaction
from streams.deadletter import RawRecord
from streams.pipeline import BatchProcessor, Step, outbox_entry
from streams.storage.store import StateStore
from streams.topics import ALERTS, TRANSACTIONS
from tests.support.fakes import Sink

ZONE = ZoneInfo("Asia/Shanghai")


CONFIG = StateConfig(ZONE)


def toy_finding(event: TransactionEvent) -> dict[str, object]:
    return {"id": f"big-{event.txn_id}", "rule": "big"}


def big_credit_step(finding: Callable[[TransactionEvent], dict[str, object]] = toy_finding) -> Step:
    """State step + a toy rule: every credit >= 100 is a finding (``finding(event)``)."""

    def step(state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
        if not isinstance(event, TransactionEvent):
            return apply_loan(state, event, CONFIG), []
        outcome = apply_transaction(state, event, CONFIG)
        findings = []
        if outcome is Outcome.APPLIED and event.direction == "credit" and event.amount >= 100:
            value = json.dumps(finding(event)).encode()
            findings.append(outbox_entry(ALERTS, event.customer_id, value))
        return outcome, findings

    return step


def txn(i: int, customer: str, direction: str, amount: str, day: int = 1) -> RawRecord:
    event = {
        "txn_id": f"t{i}",
        "customer_id": customer,
        "account_id": f"{customer}-acct",
        "ts": f"2024-03-{day:02d}T09:00:{i % 60:02d}+08:00",
        "direction": direction,
        "amount": amount,
    }
    return RawRecord(TRANSACTIONS, 0, i, customer.encode(), json.dumps(event).encode(), 0)


def processor(store: StateStore, sink: Sink, step: Step | None = None) -> BatchProcessor:
    return BatchProcessor(store, step or big_credit_step(), sink, retry_initial=0.001, retry_max=0.01)
