"""The 看板 tests' records, processor and reference: the board one application of a batch gives."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

import orjson

from rules.board import Board, BoardDelta, collection_bucket
from rules.events import TransactionEvent
from rules.state import CustomerState, Outcome, to_us
from streams.deadletter import RawRecord
from streams.pipeline import BatchProcessor, Step
from streams.storage.store import StateStore
from streams.topics import TRANSACTIONS
from tests.support.batches import big_credit_step
from tests.support.fakes import Sink

ZONE = ZoneInfo("Asia/Shanghai")


def alert_of(event: TransactionEvent) -> dict[str, object]:
    """A finding shaped like the real ones (the board counts type, category, rule, ts)."""
    ts = event.ts.astimezone(ZONE).isoformat()
    return {"id": f"big-{event.txn_id}", "type": "alert", "category": "collection", "rule": "big_credit", "ts": ts}


def finding_step() -> Step:
    """State step + a toy rule: every credit >= 100 is an alert."""
    return big_credit_step(alert_of)


def txn(
    i: int, customer: str, direction: str, amount: str, when: str, kind: str = "other", **extra: object
) -> RawRecord:
    event = {
        "txn_id": f"t{i}",
        "customer_id": customer,
        "account_id": f"{customer}-acct",
        "ts": when,
        "direction": direction,
        "amount": amount,
        "kind": kind,
        **extra,
    }
    return RawRecord(TRANSACTIONS, 0, i, customer.encode(), json.dumps(event).encode(), 0)


def records() -> list[RawRecord]:
    return [
        txn(1, "alice", "credit", "1000.00", "2024-03-01T09:15:00+08:00", "salary"),
        txn(2, "alice", "debit", "300.50", "2024-03-01T10:05:00+08:00", "fee"),
        txn(3, "bob", "credit", "50.00", "2024-03-01T10:30:00+08:00"),
        txn(4, "bob", "debit", "80.25", "2024-03-01T23:59:00+08:00", external=True, counterparty_bank="B2"),
        txn(5, "carol", "debit", "20.00", "2024-03-02T00:30:00+08:00"),
        txn(6, "carol", "credit", "200.00", "2024-02-29T08:00:00+08:00", "salary"),
    ]


def processor(store: StateStore, sink: Sink | None = None) -> BatchProcessor:
    return BatchProcessor(store, finding_step(), sink or Sink(), retry_initial=0.001, retry_max=0.01, zone=ZONE)


def reference(batch: list[RawRecord]) -> Board:
    """The board one application of ``batch`` gives: the pure step, event by event."""
    states: dict[str, CustomerState] = {}
    board = Board()
    step = finding_step()
    for record in batch:
        event = TransactionEvent.model_validate_json(record.value)
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        outcome, findings = step(state, event)
        assert outcome is Outcome.APPLIED
        delta = BoardDelta()
        delta.add_transaction(event, to_us(event.ts), ZONE)
        for entry in findings:
            delta.add_finding(orjson.loads(entry.split(b"\n", 2)[2]))
        board.add(event.customer_id, delta)
    for state in states.values():
        board.count(collection_bucket(state))
    return board
