"""``rules.money``: the one rounding of ``metrics.md`` (half-up to the cent), everywhere."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from rules import engine, metrics, money
from rules.events import TransactionEvent
from rules.state import CustomerState, StateConfig, apply_transaction
from streams.storage import snapshot
from tests.support.numbers import half_up_reference


def test_halves_round_up_not_to_even() -> None:
    assert money.money(Decimal("0.125")) == "0.13"  # half-even would give 0.12
    assert money.money(Decimal("2.675")) == "2.68"
    assert money.money(Decimal("-0.125")) == "-0.13"
    assert money.to_cent(Decimal("10.005")) == Decimal("10.01")
    assert money.rounded(Decimal("0.00005"), 4) == Decimal("0.0001")


@given(st.decimals(min_value=-(10**12), max_value=10**12, places=5, allow_nan=False, allow_infinity=False))
def test_money_matches_the_reference(value: Decimal) -> None:
    assert money.money(value) == half_up_reference(value, 2)
    assert str(money.rounded(value, 4)) == half_up_reference(value, 4)


def test_every_layer_shows_amounts_through_the_one_function() -> None:
    """Findings' evidence (rules.engine), state rows (streams.storage.snapshot) and the shown
    metrics (rules.metrics.present) all round the same way."""
    assert engine.money is money.money
    assert snapshot.money is money.money
    shown = metrics.present(dataclasses.replace(one_customer_metrics(), balance=Decimal("0.125")))
    assert shown["balance"] == "0.13"


def one_customer_metrics() -> metrics.Metrics:
    config = StateConfig(zone=ZoneInfo("Asia/Shanghai"))
    state = CustomerState("c1")
    event = TransactionEvent.model_validate(
        {"txn_id": "t1", "customer_id": "c1", "account_id": "a1", "ts": "2024-01-01T09:00:00+08:00",
         "direction": "credit", "amount": "10.00"}
    )  # fmt: skip
    apply_transaction(state, event, config)
    return metrics.evaluate(state, state.last_us or 0, config)
