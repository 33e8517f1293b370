"""The reference itself, against hand arithmetic from metrics.md."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

from rules.events import TransactionEvent
from tests.support.reference import reference_state

ZONE = ZoneInfo("Asia/Shanghai")


def ev(n: int, when: str, direction: str, amount: str, **extra: object) -> TransactionEvent:
    return TransactionEvent.model_validate(
        {"txn_id": f"t{n}", "customer_id": "c", "account_id": extra.pop("account_id", "a"), "ts": when,
         "direction": direction, "amount": amount, **extra}
    )  # fmt: skip


def close(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) < Decimal("1e-20")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_balances_and_daily_averages() -> None:
    events = [
        ev(1, "2024-03-30T10:00:00+08:00", "credit", "300.00"),
        ev(2, "2024-03-31T10:00:00+08:00", "debit", "100.00"),
        ev(3, "2024-04-02T23:59:59+08:00", "credit", "50.00", balance_after="260.00"),
        # 2024-04-02T16:30Z is 2024-04-03 00:30 in Shanghai: the next local day
        ev(4, "2024-04-02T16:30:00+00:00", "debit", "20.00", account_id="b", balance_after="-5.00"),
    ]
    got = reference_state(events, at("2024-04-03T12:00:00+08:00"), ZONE)
    assert got["balance"] == Decimal("230.00")
    assert got["ledger_balance"] == Decimal("255.00") and got["ledger_drift"] == Decimal("-25.00")
    # April to date: Apr 1 = 200, Apr 2 = 250, Apr 3 = 230 -> 680 / 3
    assert close(got["daily_avg_balance_mtd"], Decimal(680) / 3)
    # 30 days ending Apr 3, from the first-event day Mar 30: 300, 200, 200, 250, 230
    assert got["avg_balance_30d"] == Decimal(1180) / 5
    mean = Decimal(1180) / 5
    variance = sum((b - mean) ** 2 for b in map(Decimal, (300, 200, 200, 250, 230))) / 5
    assert abs(got["balance_volatility_30d"] - variance.sqrt()) < Decimal("1e-20")


def test_windows_are_open_at_the_start_and_closed_at_as_of() -> None:
    events = [
        ev(1, "2024-01-01T09:00:00+08:00", "credit", "10.00"),  # exactly 24h before as_of: outside 24h
        ev(2, "2024-01-01T09:00:01+08:00", "credit", "20.00"),
        ev(3, "2024-01-02T09:00:00+08:00", "debit", "5.00", external=True, counterparty_bank="ICBC"),
    ]
    got = reference_state(events, at("2024-01-02T09:00:00+08:00"), ZONE)
    assert got["inflow_24h"] == Decimal("20.00") and got["inflow_7d"] == Decimal("30.00")
    assert got["outflow_24h"] == Decimal("5.00") and got["external_outflow_share_30d"] == 1
    assert got["txn_count_30d"] == 3 and close(got["avg_txn_per_day_30d"], Decimal(3) / 30)
    assert got["external_banks_90d"] == 1 and got["segments"] == ["low_activity"]


def test_fifo_retention_overdraft_and_collection_rate() -> None:
    events = [
        ev(1, "2024-01-01T00:00:00+08:00", "credit", "100.00"),
        ev(2, "2024-01-03T00:00:00+08:00", "credit", "50.00"),
        ev(3, "2024-01-05T00:00:00+08:00", "debit", "120.00"),  # 100 aged 4 days, 20 aged 2 days
        ev(4, "2024-01-06T00:00:00+08:00", "debit", "100.00"),  # 30 aged 3 days, 70 overdraft
        ev(5, "2024-01-07T00:00:00+08:00", "credit", "100.00"),  # repays 70, lot of 30
    ]
    got = reference_state(events, at("2024-01-08T00:00:00+08:00"), ZONE)
    assert close(got["retention_days_avg_90d"], Decimal(100 * 4 + 20 * 2 + 30 * 3) / 150)
    assert close(got["collection_rate_90d"], Decimal(30) / 250)
    assert got["balance"] == Decimal("30.00")


def test_net_outflow_streak_stops_at_a_day_without_events() -> None:
    events = [
        ev(1, "2024-01-01T10:00:00+08:00", "debit", "1.00"),
        ev(2, "2024-01-03T10:00:00+08:00", "debit", "1.00"),
        ev(3, "2024-01-04T10:00:00+08:00", "debit", "3.00"),
        ev(4, "2024-01-04T11:00:00+08:00", "credit", "1.00"),
    ]
    assert reference_state(events, at("2024-01-04T12:00:00+08:00"), ZONE)["net_outflow_streak_days"] == 2


def test_lot_cap_merges_the_two_oldest_at_the_weighted_mean_time() -> None:
    events = [
        ev(1, "2024-01-01T00:00:00+08:00", "credit", "30.00"),
        ev(2, "2024-01-04T00:00:00+08:00", "credit", "10.00"),
        ev(3, "2024-01-05T00:00:00+08:00", "credit", "10.00"),  # cap 2: lots 1 and 2 merge, mean day 1.75
        ev(4, "2024-01-09T00:00:00+08:00", "debit", "40.00"),
    ]
    got = reference_state(events, at("2024-01-09T00:00:00+08:00"), ZONE, lot_cap=2)
    assert got["retention_days_avg_90d"] == Decimal("8") - Decimal("0.75")
