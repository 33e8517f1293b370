"""The drain pattern: each customer a big credit, then most of it leaves to another bank an hour later."""

from __future__ import annotations

import datetime as dt

CUSTOMERS = [f"WH{i:02d}" for i in range(6)]


ZONE = dt.timezone(dt.timedelta(hours=8))


def drain_events() -> list[dict[str, object]]:
    """Each customer: a big credit, then most of it leaves to another bank an hour later."""
    start = dt.datetime(2024, 3, 1, 9, 0, tzinfo=ZONE)
    events: list[dict[str, object]] = []
    for i, customer in enumerate(CUSTOMERS):
        base = {"customer_id": customer, "account_id": f"A-{customer}"}
        events.append(
            {
                **base,
                "txn_id": f"{customer}-1",
                "ts": (start + dt.timedelta(minutes=i)).isoformat(),
                "direction": "credit",
                "amount": "250000.00",
                "kind": "transfer_in",
            }
        )
        events.append(
            {
                **base,
                "txn_id": f"{customer}-2",
                "ts": (start + dt.timedelta(hours=1, minutes=i)).isoformat(),
                "direction": "debit",
                "amount": "240000.00",
                "kind": "transfer_out",
                "external": True,
                "counterparty_bank": "B07",
            }
        )
    return events
