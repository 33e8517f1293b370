"""综合贡献度 (FTP contribution) and 客户分层 (quartile tiers), from metrics.md.

Yearly figures. All rates come from ``ContributionRates`` (built from
settings). ``contribution`` needs one customer's state and its evaluated
metrics; ``indirect_contributions`` and ``tiers`` need every customer, so
they run over a snapshot (backtest, ``fundflow tiers``) or over the sorted
set the worker keeps live (``streams.tiers``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from rules.metrics import Metrics
from rules.state import ZERO, CustomerState, LoanPoint, local_day

TIERS = ("I", "II", "III", "IV")


@dataclass(frozen=True, slots=True)
class ContributionRates:
    ftp_deposit_price: Decimal = Decimal("0.025")
    deposit_rate_paid: Decimal = Decimal("0.0035")
    ftp_loan_price: Decimal = Decimal("0.025")
    vat_rate: Decimal = Decimal("0.06")
    risk_cost_rate: Decimal = Decimal("0.01")
    income_tax_rate: Decimal = Decimal("0.25")
    capital_ratio: Decimal = Decimal("0.08")
    hurdle_rate: Decimal = Decimal("0.12")


def _point_on(points: list[LoanPoint], day: int, zone: Any) -> LoanPoint | None:
    """The loan's latest point whose local day is <= ``day`` (ties: the later arrival)."""
    found = None
    for point in points:  # sorted by ts, arrival order within equal ts
        if local_day(point.ts_us, zone) <= day:
            found = point
        else:
            break
    return found


def _open(point: LoanPoint | None) -> bool:
    return point is not None and point.status != "closed"


def contribution(
    state: CustomerState, metrics: Metrics, as_of_us: int, zone: Any, rates: ContributionRates
) -> dict[str, Decimal]:
    """The parts and the total of the customer's yearly contribution at ``as_of_us``."""
    as_of_day = local_day(as_of_us, zone)
    first_day = state.first_day if state.first_day is not None else as_of_day
    days = range(max(as_of_day - 29, first_day), as_of_day + 1)
    one_minus_vat = 1 - rates.vat_rate
    with localcontext() as ctx:
        ctx.prec = 34
        deposit = max(metrics.avg_balance_30d, ZERO) * (rates.ftp_deposit_price - rates.deposit_rate_paid)
        loan = ZERO
        outstanding = ZERO
        for points in state.loans.values():
            latest = points[-1]
            if _open(latest):
                outstanding += latest.outstanding
            daily = [_point_on(points, day, zone) for day in days]
            avg_outstanding = sum((p.outstanding for p in daily if p is not None and _open(p)), ZERO) / len(days)
            if avg_outstanding:
                loan += avg_outstanding * (latest.annual_rate * one_minus_vat - rates.ftp_loan_price)
        fee = metrics.fee_debits_30d * 12 * one_minus_vat
        gross = deposit + loan + fee
        risk_cost = outstanding * rates.risk_cost_rate
        income_tax = rates.income_tax_rate * max(gross - risk_cost, ZERO)
        capital_cost = outstanding * rates.capital_ratio * rates.hurdle_rate
        total = gross - risk_cost - income_tax - capital_cost
    return {
        "deposit_contribution": deposit,
        "loan_contribution": loan,
        "fee_contribution": fee,
        "gross_contribution": gross,
        "risk_cost": risk_cost,
        "income_tax": income_tax,
        "capital_cost": capital_cost,
        "loan_outstanding": outstanding,
        "contribution": total,
    }


def indirect_contributions(
    contributions: Mapping[str, Decimal], salary_payers: Mapping[str, str | None]
) -> dict[str, Decimal]:
    """公私联动: each payer's sum of the contributions of the customers whose latest
    salary it paid. Customers that pay nobody get 0."""
    result = {customer: ZERO for customer in contributions}
    for employee, payer in salary_payers.items():
        if payer is not None and employee in contributions:
            result[payer] = result.get(payer, ZERO) + contributions[employee]
    return result


def quartile_cuts(values: Iterable[Decimal]) -> tuple[Decimal, Decimal, Decimal] | None:
    """Q1 <= Q2 <= Q3 as ``statistics.quantiles(n=4, method="inclusive")``; None under 2 values."""
    data = sorted(values)
    if len(data) < 2:
        return None
    with localcontext() as ctx:
        ctx.prec = 34
        q1, q2, q3 = statistics.quantiles(data, n=4, method="inclusive")
    return q1, q2, q3


def tier_of(value: Decimal, cuts: tuple[Decimal, Decimal, Decimal] | None) -> str:
    """``I`` >= Q3; ``II`` in [Q2, Q3); ``III`` in [Q1, Q2); ``IV`` < Q1 (one customer: ``I``)."""
    if cuts is None:
        return "I"
    q1, q2, q3 = cuts
    if value >= q3:
        return "I"
    if value >= q2:
        return "II"
    if value >= q1:
        return "III"
    return "IV"
