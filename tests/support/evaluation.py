"""Hand-made transactions and alerts for the rule evaluation (hit rate vs base rate)."""

from __future__ import annotations

import datetime as dt
from typing import Any

ZONE = dt.timezone(dt.timedelta(hours=8))


START = dt.datetime(2024, 1, 1, 9, 0, tzinfo=ZONE)


def txn(customer: str, day: int, direction: str, amount: int) -> dict[str, Any]:
    return {
        "txn_id": f"{customer}-{day}-{direction}-{amount}",
        "customer_id": customer,
        "ts": (START + dt.timedelta(days=day)).isoformat(),
        "direction": direction,
        "amount": str(amount),
    }


def alert(rule: str, customer: str, day: int, **evidence: str) -> dict[str, Any]:
    return {"rule": rule, "customer_id": customer, "ts": (START + dt.timedelta(days=day)).isoformat(),
            "evidence": evidence}  # fmt: skip
