"""Histories of a few customers on two topics, and every delivery of them Kafka allows
(``tests/unit/test_same_findings.py`` and the shadow's tests hold the findings to them).

A history is a few customers' TransactionEvents (one topic) and LoanEvents (another), each
topic in its own fixed order. A delivery interleaves the two topics in any way that keeps
each topic's order, within the documented lateness bound (``docs/findings.md``: a LoanEvent
may run any distance ahead of the customer's transactions, and up to
``RulesConfig.loan_lateness_days`` behind them), and sends a few events twice.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from rules.config import RulesConfig
from rules.events import Event, LoanEvent, TransactionEvent
from rules.state import StateConfig, to_us

ZONE = ZoneInfo("Asia/Shanghai")
CONFIG = StateConfig(ZONE)
START = dt.datetime(2024, 1, 1, tzinfo=ZONE)
# How far behind the transactions a delivery here lets a LoanEvent run (inside the bound).
BEHIND = dt.timedelta(days=RulesConfig().loan_lateness_days - 5)


@st.composite
def customer_history(draw: st.DrawFn, cid: str) -> tuple[list[TransactionEvent], list[LoanEvent]]:
    """One customer: an opening credit, a few everyday movements, and up to two monthly loans
    repaid on time, a little late, early, or not at all, each repayment followed (as the
    loan system does) by a LoanEvent with the next due date, like the Berka conversion."""
    txns: list[dict[str, Any]] = []
    loans: list[dict[str, Any]] = []

    def txn(when: dt.datetime, direction: str, amount: int, **extra: Any) -> None:
        txns.append(
            {"customer_id": cid, "account_id": cid, "ts": when, "direction": direction, "amount": str(amount), **extra}
        )

    opening = draw(st.sampled_from([800, 3_000, 25_000, 60_000, 150_000]))
    txn(START + dt.timedelta(hours=9), "credit", opening, kind="salary")
    for day, hour, credit, amount, external in draw(
        st.lists(
            st.tuples(
                st.integers(0, 150),
                st.integers(0, 23),
                st.booleans(),
                st.sampled_from([50, 700, 2_500, 9_000, 40_000]),
                st.booleans(),
            ),
            max_size=14,
        )
    ):
        kind = "transfer_in" if credit else "transfer_out"
        txn(
            START + dt.timedelta(days=day, hours=hour, minutes=7),
            "credit" if credit else "debit",
            amount,
            kind=kind,
            external=external,
        )
    for number in range(draw(st.integers(0, 2))):
        loan_id = f"{cid}-L{number}"
        granted = START + dt.timedelta(days=draw(st.integers(0, 40)), hours=8)
        installment = draw(st.sampled_from([600, 1_500, 3_660, 5_000]))
        months = draw(st.integers(1, 4))
        outstanding = installment * months

        def point(
            when: dt.datetime,
            due: dt.date,
            left: int,
            loan_id: str = loan_id,
            installment: int = installment,
            months: int = months,
        ) -> None:
            loans.append(
                {
                    "loan_id": loan_id,
                    "customer_id": cid,
                    "account_id": cid,
                    "ts": when,
                    "principal": str(installment * months),
                    "outstanding": str(left),
                    "annual_rate": "0.0435",
                    "installment": str(installment),
                    "next_due": due.isoformat(),
                    "status": "active" if left else "closed",
                }
            )

        due = granted.date() + dt.timedelta(days=30)
        point(granted, due, outstanding)
        for _ in range(months):
            delay = draw(st.sampled_from([0, 0, -2, 1, 6, None]))
            if delay is None:  # missed: nothing is paid, the loan system says nothing
                break
            paid = dt.datetime.combine(due + dt.timedelta(days=delay), dt.time(9, 30), ZONE)
            txn(paid, "debit", installment, kind="loan_repayment")
            outstanding -= installment
            due += dt.timedelta(days=30)
            point(paid.replace(hour=23), due, outstanding)
    txns.sort(key=lambda t: t["ts"])
    loans.sort(key=lambda p: p["ts"])
    for n, t in enumerate(txns):
        t["txn_id"] = f"{cid}-t{n}"
    return (
        [TransactionEvent.model_validate({**t, "ts": t["ts"].isoformat()}) for t in txns],
        [LoanEvent.model_validate({**p, "ts": p["ts"].isoformat()}) for p in loans],
    )


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[TransactionEvent], list[LoanEvent]]:
    """A few customers; each topic holds them all, merged by event time as a producer would."""
    txns: list[TransactionEvent] = []
    loans: list[LoanEvent] = []
    for n in range(draw(st.integers(1, 3))):
        t, loan_events = draw(customer_history(f"C{n}"))
        txns += t
        loans += loan_events
    txns.sort(key=lambda e: to_us(e.ts))
    loans.sort(key=lambda e: to_us(e.ts))
    return txns, loans


def in_time_order(txns: list[TransactionEvent], loans: list[LoanEvent]) -> list[Event]:
    both: list[Event] = [*loans, *txns]
    return sorted(both, key=lambda e: to_us(e.ts))  # stable: a loan before a transaction at the same instant


@st.composite
def deliveries(draw: st.DrawFn, txns: list[TransactionEvent], loans: list[LoanEvent]) -> list[Event]:
    """Any interleaving of the two topics that keeps each one's order, with the loans topic
    never more than ``BEHIND`` behind the transactions (any distance ahead), and a few events
    sent twice."""
    order: list[Event] = []
    t = n = 0
    while t < len(txns) or n < len(loans):
        if n == len(loans):
            take_loan = False
        elif t == len(txns) or txns[t].ts - loans[n].ts > BEHIND:
            take_loan = True
        else:
            take_loan = draw(st.booleans())
        if take_loan:
            order.append(loans[n])
            n += 1
        else:
            order.append(txns[t])
            t += 1
    # A producer that re-sends (the same event again, later on its topic) changes nothing.
    for source, later in draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=3)):
        if order:
            i = source % len(order)
            order.insert(i + 1 + later % (len(order) - i), order[i])
    return order
