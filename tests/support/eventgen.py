"""Small, deterministic synthetic event files for the connected tests.

Generated data is for tests only; demos and benchmarks use the Berka data.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal

ZONE_OFFSET = dt.timezone(dt.timedelta(hours=8))
KINDS_IN = ("salary", "transfer_in", "cash_deposit", "interest")
KINDS_OUT = ("transfer_out", "cash_withdrawal", "card_payment", "fee")

GARBAGE: list[bytes] = [
    b"not json at all",
    b'{"txn_id": "g1"}',
    b'{"txn_id":"g2","customer_id":"C1","account_id":"A1","ts":"2024-01-01T09:00:00","direction":"credit",'
    b'"amount":"1.00"}',
    b'{"txn_id":"g3","customer_id":"C1","account_id":"A1","ts":"2024-01-01T09:00:00+08:00","direction":"credit",'
    b'"amount":"-5"}',
    b'{"txn_id":"g4","customer_id":"C1","account_id":"A1","ts":"2024-01-01T09:00:00+08:00","direction":"sideways",'
    b'"amount":"5"}',
    b"\xff\xfe\xfa invalid utf-8",
    b'{"txn_id":"g5","customer_id":"C1","account_id":"A1","ts":"2024-01-01T09:00:00+08:00","direction":"credit",'
    b'"amount":"1.005"}',
    b"[" * 5000 + b"]" * 5000,
]


def transactions(customers: int, per_customer: int, seed: int = 7, prefix: str = "T") -> list[dict[str, object]]:
    """Credits and debits over ~100 days for ``customers`` customers, in event-time order."""
    rng = random.Random(seed)
    start = dt.datetime(2024, 1, 1, 9, 0, tzinfo=ZONE_OFFSET)
    events: list[dict[str, object]] = []
    for c in range(customers):
        customer = f"C{c:04d}"
        moment = start
        for i in range(per_customer):
            moment += dt.timedelta(minutes=rng.randint(30, 60 * 60))
            credit = rng.random() < 0.5 or i == 0
            amount = Decimal(rng.randint(100, 2_000_000)) / 100
            external = rng.random() < 0.3
            event: dict[str, object] = {
                "txn_id": f"{prefix}-{customer}-{i}",
                "customer_id": customer,
                "account_id": f"A{c:04d}",
                "ts": moment.isoformat(),
                "direction": "credit" if credit else "debit",
                "amount": str(amount),
                "kind": rng.choice(KINDS_IN if credit else KINDS_OUT),
                "external": external,
            }
            if external:
                event["counterparty_bank"] = rng.choice(["AB", "CD", "EF", "GH"])
            events.append(event)
    events.sort(key=lambda e: (str(e["ts"]), str(e["txn_id"])))
    return events


def lines(events: list[dict[str, object]]) -> list[bytes]:
    return [json.dumps(e, separators=(",", ":")).encode() for e in events]


def expected_balances(events: list[dict[str, object]]) -> dict[str, Decimal]:
    result: dict[str, Decimal] = {}
    for e in events:
        amount = Decimal(str(e["amount"]))
        sign = 1 if e["direction"] == "credit" else -1
        customer = str(e["customer_id"])
        result[customer] = result.get(customer, Decimal(0)) + sign * amount
    return result
