"""Every customer's live state, evaluated at one common ``as_of``.

The format of ``state.jsonl`` (backtest) and ``fundflow snapshot``: one JSON
object per customer, sorted by customer_id, with the fields of ``metrics.md``
(amounts as decimal strings rounded half-up to the cent). ``as_of`` defaults to
the latest event time of any customer, so two runs over the same events give
byte-identical files whatever the wall clock says. A state that cannot be
evaluated (stored before event time had bounds, with a clock in year 9999, say)
is left out and logged: it never fails the snapshot of everyone else.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from rules.contribution import contribution, indirect_contributions, quartile_cuts, tier_of
from rules.metrics import evaluate, present
from rules.money import money
from rules.state import CustomerState, from_us, latest_loans, to_us
from streams.decode import LATEST_SUPPORTED_US
from streams.settings import Settings, rates, state_config, thresholds
from streams.storage.store import StateStore

log = logging.getLogger(__name__)


def iso(ts_us: int, settings: Settings) -> str:
    return from_us(ts_us).astimezone(settings.zone).isoformat()


def customer_row(state: CustomerState, as_of_us: int, settings: Settings) -> dict[str, Any]:
    """One customer's ``state.jsonl`` object (without the fields that need every
    customer: ``indirect_contribution`` and ``tier``, see ``rows``)."""
    exact = evaluate(state, as_of_us, state_config(settings), thresholds(settings))
    parts = contribution(state, exact, as_of_us, settings.zone, rates(settings))
    metrics = present(exact)
    loans = [
        {
            "loan_id": loan_id,
            "outstanding": str(p.outstanding),
            "installment": str(p.installment),
            "annual_rate": str(p.annual_rate),
            "next_due": dt.date.fromordinal(p.next_due).isoformat(),
            "status": p.status,
        }
        for loan_id, p in sorted(latest_loans(state).items())
    ]
    return {
        "customer_id": state.customer_id,
        "as_of": iso(as_of_us, settings),
        **metrics,
        "contribution": money(parts["contribution"]),
        "contribution_parts": {name: money(value) for name, value in parts.items() if name != "contribution"},
        "first_event_at": iso(state.first_us, settings) if state.first_us is not None else None,
        "last_event_at": iso(state.last_us, settings) if state.last_us is not None else None,
        "txn_count_total": state.applied_total,
        "loans": loans,
        "salary_payer_customer_id": state.salary_payer,
    }


AS_OF_YEARS = (1970, 2100)  # the years an as_of may name (UTC and in its own offset)


def parse_as_of(text: str) -> int:
    """An RFC 3339 time with an offset, in ``AS_OF_YEARS``, as epoch microseconds.
    Anything else is a ``ValueError`` with one line that says why without quoting the
    input (it goes to API clients and logs), never an ``OverflowError`` later."""
    shape = "as_of must be an RFC 3339 time with an offset, e.g. 1994-03-31T23:59:59+08:00"
    if not text.isascii():
        raise ValueError(shape)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(shape) from None
    if moment.tzinfo is None:
        raise ValueError(shape)
    first, last = AS_OF_YEARS
    try:
        utc_year = moment.astimezone(dt.UTC).year
    except OverflowError:
        utc_year = 0
    if not (first <= moment.year <= last and first <= utc_year <= last):
        raise ValueError(f"as_of must be in the years {first} to {last}")
    return to_us(moment)


async def load_all(store: StateStore) -> list[CustomerState]:
    states = [state async for state in store.scan_states()]
    states.sort(key=lambda s: s.customer_id)
    return states


def rows(states: Iterable[CustomerState], as_of_us: int | None, settings: Settings) -> list[dict[str, Any]]:
    every = list(states)
    usable = [s for s in every if s.last_us is None or s.last_us <= LATEST_SUPPORTED_US]
    left_out = ["a clock past the supported range"] * (len(every) - len(usable))
    if as_of_us is None:
        as_of_us = max((s.last_us for s in usable if s.last_us is not None), default=0)
    result = []
    kept = []
    for state in usable:
        if state.last_us is not None and as_of_us < state.last_us:
            raise ValueError(
                f"--as-of is before the latest event of customer {state.customer_id}: "
                "state is kept for as_of at or after each customer's last event"
            )
        try:
            result.append(customer_row(state, as_of_us, settings))
        except (ArithmeticError, ValueError) as exc:  # (OverflowError: a date out of range)
            left_out.append(type(exc).__name__)
        else:
            kept.append(state)
    if left_out:
        log.warning("snapshot: %d customers left out, their state cannot be evaluated (%s)", len(left_out), left_out[0])
    add_tiers(result, {s.customer_id: s.salary_payer for s in kept})
    return result


def add_tiers(result: list[dict[str, Any]], salary_payers: dict[str, str | None]) -> None:
    """``indirect_contribution`` and ``tier`` need every customer: quartiles of the
    (shown, cent-rounded) contributions, exactly as metrics.md computes them."""
    contributions = {row["customer_id"]: Decimal(row["contribution"]) for row in result}
    indirect = indirect_contributions(contributions, salary_payers)
    cuts = quartile_cuts(contributions.values())
    for row in result:
        row["indirect_contribution"] = money(indirect.get(row["customer_id"], Decimal(0)))
        row["tier"] = tier_of(contributions[row["customer_id"]], cuts)


def write_jsonl(path: Path, objects: Iterable[dict[str, Any]]) -> int:
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for obj in objects:
            handle.write(orjson.dumps(obj))
            handle.write(b"\n")
            count += 1
    return count
