"""``streams.storage.snapshot.rows``: one state that cannot be evaluated never fails everyone's snapshot."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from rules.events import TransactionEvent
from rules.state import CustomerState, StateConfig, apply_transaction, to_us
from streams.settings import Settings
from streams.storage.snapshot import rows

CONFIG = StateConfig(ZoneInfo("Asia/Shanghai"))


def state(customer: str, amount: str) -> CustomerState:
    result = CustomerState(customer)
    event = TransactionEvent.model_validate(
        {
            "txn_id": f"t-{customer}",
            "customer_id": customer,
            "account_id": "a",
            "ts": "2024-03-01T09:00:00+08:00",
            "direction": "credit",
            "amount": amount,
        }
    )
    apply_transaction(result, event, CONFIG)
    return result


def test_a_state_with_a_clock_out_of_range_is_left_out_not_fatal() -> None:
    """Issue 20 row 3: a half-applied year-9999 state made `fundflow snapshot` fail for
    every customer (and moved the common as_of to year 9999)."""
    settings = Settings(kafka_bootstrap="unused:9092", redis_url="unused")
    good = [state("A", "100.00"), state("B", "200.00")]
    broken = state("Z", "5.00")
    broken.last_us = broken.last_txn_us = to_us(dt.datetime(9999, 12, 31, 16, tzinfo=dt.UTC))
    result = rows([*good, broken], None, settings)
    assert [row["customer_id"] for row in result] == ["A", "B"]
    assert result == rows(good, None, settings)  # the others exactly as without it
