"""``rules.fmt``: numbers for people (percent, money in the currency's minor digits, thousands
separators), against a slow reference built from strings, and the table of cases the
console's JavaScript is checked against too (``FORMAT_CASES``)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules import fmt
from rules.config import RulesConfig
from rules.engine import Finding, judge
from rules.events import TransactionEvent
from rules.state import CustomerState, StateConfig, apply_transaction
from streams.api.board import tiles
from tests.support.numbers import grouped_reference, half_up_reference

# (function, value, argument, expected): what a person reads
FORMAT_CASES: list[tuple[str, str, object, str]] = [
    ("percent", "1.8914", 0, "189%"),
    ("percent", "0.0534", 0, "5%"),
    ("percent", "0.0534", 1, "5.3%"),
    ("percent", "0.005", 0, "1%"),  # half-up, not to even
    ("percent", "0.3", 0, "30%"),
    ("percent", "-0.125", 0, "-13%"),
    ("percent", "-0.001", 0, "0%"),  # never -0
    ("percent", "12.5", 0, "1,250%"),
    ("amount", "1234.5", "CNY", "1,234.50"),
    ("amount", "-44170", "CZK", "-44,170.00"),
    ("amount", "0.125", "CNY", "0.13"),
    ("amount", "-0.001", "CNY", "0.00"),
    ("amount", "1234567.5", "JPY", "1,234,568"),
    ("amount", "999.4", "JPY", "999"),
    ("amount", "1234.5675", "BHD", "1,234.568"),
    ("amount", "-1000", "BHD", "-1,000.000"),
    ("amount", "123456789012345.67", "CNY", "123,456,789,012,345.67"),
    ("number", "403.73", 2, "403.73"),
    ("number", "569.035", 2, "569.04"),
    ("number", "797.5775", 2, "797.58"),
    ("number", "1000", 0, "1,000"),
    ("number", "100", 0, "100"),
]


@pytest.mark.parametrize(("function", "value", "argument", "expected"), FORMAT_CASES)
def test_the_table_of_cases(function: str, value: str, argument: object, expected: str) -> None:
    assert getattr(fmt, function)(Decimal(value), argument) == expected


decimals = st.decimals(min_value=-(10**15), max_value=10**15, places=6, allow_nan=False, allow_infinity=False)


@given(decimals, st.integers(min_value=0, max_value=4))
def test_number_is_the_half_up_value_with_its_thousands_separated(value: Decimal, places: int) -> None:
    expected = grouped_reference(half_up_reference(value, places))
    assert fmt.number(value, places) == expected
    assert Decimal(expected.replace(",", "")) == value.quantize(Decimal(1).scaleb(-places), "ROUND_HALF_UP")


@given(decimals)
def test_money_has_the_currencys_minor_digits(value: Decimal) -> None:
    for currency, places in (("CNY", 2), ("JPY", 0), ("BHD", 3)):
        text = fmt.amount(value, currency)
        assert text == grouped_reference(half_up_reference(value, places))
        assert len(text.rpartition(".")[2]) == places if places else "." not in text


@given(st.decimals(min_value=-1000, max_value=1000, places=6, allow_nan=False, allow_infinity=False))
def test_percent_is_the_ratio_times_a_hundred(ratio: Decimal) -> None:
    assert fmt.percent(ratio) == grouped_reference(half_up_reference(ratio * 100, 0)) + "%"
    assert fmt.percent(ratio, 1) == grouped_reference(half_up_reference(ratio * 100, 1)) + "%"


def test_floats_and_ints_read_as_written() -> None:
    assert fmt.percent(0.1) == "10%" and fmt.amount(5) == "5.00" and fmt.number("0.125", 2) == "0.13"
    with pytest.raises(ValueError, match="places"):
        fmt.number(1, -1)


def test_finding_messages_write_numbers_for_people_in_both_languages() -> None:
    """Issue 32: "1.8914 of recent credits" reads "189%"; money in the deployment currency's
    minor digits with thousands separators; the evidence keeps its machine-readable form."""
    zone = ZoneInfo("Asia/Shanghai")
    start = dt.datetime(2024, 3, 1, 10, tzinfo=zone)

    def run(currency: str) -> list[str]:
        config, state = StateConfig(zone, currency=currency), CustomerState("c")
        found: list[Finding] = []
        moves = [("credit", "10000", False), ("debit", "18914", True)]
        for n, (direction, amount, external) in enumerate(moves):
            event = TransactionEvent(
                txn_id=f"t{n}", customer_id="c", account_id="c", ts=start + dt.timedelta(hours=n),
                amount=Decimal(amount), direction=direction, external=external,
                counterparty_bank="CMB" if external else None,
            )  # fmt: skip
            before = state.balance
            apply_transaction(state, event, config)
            found += judge(state, event, before, RulesConfig(), config).findings
        fast = next(f for f in found if f.rule == "fast_in_fast_out")
        assert fast.evidence["share"] == "1.8914" and fast.evidence["credits"] == "10000.00"  # machine-readable
        return [f.message for f in found]

    (message,) = [m for m in run("CNY") if "fast in, fast out" in m]
    assert "189% of recent credits left within 72 h" in message
    assert "10,000.00 入账后 72 小时内 18,914.00 (189%) 转出他行" in message
    assert any("10,000 入账后" in m for m in run("JPY"))  # no minor digits


def test_the_board_tiles_are_written_for_people() -> None:
    flows = {
        "total": {"inflow": "1234567.80", "outflow": "1300000.00", "net": "-65432.20"},
        "external_outflow_share": "0.4567",
    }
    assert tiles(flows, "CNY") == {
        "inflow": "1,234,567.80", "outflow": "1,300,000.00", "net": "-65,432.20", "external_outflow_share": "45.7%",
    }  # fmt: skip
    quiet = {"total": {"inflow": "1500", "outflow": "0", "net": "1500"}, "external_outflow_share": None}
    assert tiles(quiet, "JPY") == {"inflow": "1,500", "outflow": "0", "net": "+1,500", "external_outflow_share": None}
