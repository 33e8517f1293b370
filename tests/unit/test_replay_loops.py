"""The demo's endless replay: every loop is new traffic that continues the last one
(later event time, new ids, the ledger carried on), for the same customers."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson

from rules.events import LoanEvent, TransactionEvent
from rules.state import CustomerState, Outcome, StateConfig, apply_loan, apply_transaction
from streams.tools.berka import berka_lines
from streams.tools.replay import endless, net_flows

ZONE = ZoneInfo("Asia/Shanghai")
CONFIG = StateConfig(zone=ZONE)


def some_customers(lines: list[bytes], count: int) -> list[bytes]:
    keep: set[str] = set()
    for line in lines:
        customer = orjson.loads(line)["customer_id"]
        if len(keep) < count:
            keep.add(customer)
    return [line for line in lines if orjson.loads(line)["customer_id"] in keep]


def test_three_loops_continue_each_other_for_the_same_customers() -> None:
    lines = some_customers(berka_lines(None, ZONE), 25)
    loops = 3
    replayed = list(itertools.islice(endless(lines), loops * len(lines)))
    assert replayed[: len(lines)] == lines  # the first loop is the data as it is
    states: dict[str, CustomerState] = {}
    span: dict[tuple[int, str], list[dt.datetime]] = defaultdict(list)  # (loop, customer) -> times
    drift_after_loop: list[dict[str, Decimal]] = []
    ids: set[str] = set()
    for n, line in enumerate(replayed):
        obj = orjson.loads(line)
        customer = obj["customer_id"]
        state = states.setdefault(customer, CustomerState(customer))
        if "loan_id" in obj:
            apply_loan(state, LoanEvent.model_validate(obj), CONFIG)
        else:
            event = TransactionEvent.model_validate(obj)
            assert event.txn_id not in ids
            ids.add(event.txn_id)
            assert apply_transaction(state, event, CONFIG) == Outcome.APPLIED
            span[n // len(lines), customer].append(event.ts)
        if (n + 1) % len(lines) == 0:
            drift_after_loop.append(
                {c: s.balance - sum((v for _, v in s.ledger.values()), Decimal(0)) for c, s in states.items()}
            )
    for (loop, customer), times in span.items():  # a loop starts after the previous one ended
        if loop:
            assert min(times) > max(span[loop - 1, customer])
    assert len(ids) == loops * sum(1 for line in lines if b'"loan_id"' not in line)
    # the ledger moves on with the balance: no reconciliation break appears at a loop's seam
    assert drift_after_loop[1] == drift_after_loop[0] and drift_after_loop[2] == drift_after_loop[0]
    assert set(net_flows(lines)) == {orjson.loads(line)["account_id"] for line in lines if b"txn_id" in line}
