"""A history of savers and drainers for ``fundflow tune``, and writing it as events."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

ZONE = ZoneInfo("Asia/Shanghai")


START = dt.datetime(2024, 1, 1, 10, tzinfo=ZONE)


def history(customers: int = 40) -> list[dict[str, Any]]:
    """Savers who keep their money, and every fourth customer draining it after day 60."""
    events: list[dict[str, Any]] = []
    for n in range(customers):
        cid = f"c{n}"

        def txn(day: float, direction: str, amount: int, cid: str = cid, **extra: Any) -> None:
            events.append({"txn_id": f"{cid}-{len(events)}", "customer_id": cid, "account_id": cid,
                           "ts": (START + dt.timedelta(days=day)).isoformat(), "direction": direction,
                           "amount": str(amount), **extra})  # fmt: skip

        txn(0, "credit", 100_000 + 1_000 * n)
        for day in range(1, 150, 7):
            txn(day, "credit", 2_000)
            txn(day + 2, "debit", 1_500)
        if n % 4 == 0:
            txn(60, "debit", 90_000 + 1_000 * n, external=True, counterparty_bank="CMB")
            for day in range(61, 70):
                txn(day, "debit", 300)
    events.sort(key=lambda e: e["ts"])
    return events


def write(path: Path, events: list[dict[str, Any]], extra: list[bytes] = ()) -> Path:  # type: ignore[assignment]
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events) + b"".join(line + b"\n" for line in extra))
    return path


def sweep_history(customers: int = 12, spend: int = 45_000) -> list[dict[str, Any]]:
    """Customers paid monthly who repay a loan after each salary (a sweep each time), every
    fourth of them spending ``spend`` at once in month four: the more a setting sweeps, the more
    of them it leaves short."""
    events: list[dict[str, Any]] = []
    for n in range(customers):
        cid = f"s{n}"

        def txn(day: float, direction: str, amount: int, cid: str = cid, **extra: Any) -> None:
            events.append({"txn_id": f"{cid}-{len(events)}", "customer_id": cid, "account_id": cid,
                           "ts": (START + dt.timedelta(days=day)).isoformat(), "direction": direction,
                           "amount": str(amount), **extra})  # fmt: skip

        txn(0, "credit", 100_000)
        for month in range(6):
            day = 5 + 30 * month
            txn(day, "credit", 10_000, kind="salary")
            txn(day + 1, "debit", 2_000, kind="loan_repayment")
            txn(day + 10, "debit", 8_000)
            if n % 4 == 0 and month == 3:
                txn(day + 5, "debit", spend)
    events.sort(key=lambda e: e["ts"])
    return events
