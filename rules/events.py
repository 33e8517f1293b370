"""The wire contracts of ``docs/events.md`` as frozen pydantic models.

These are the only event types past the decoding edge. Validation is strict
where the contract is strict (amount > 0 with at most 2 decimals, timestamps
with an offset, closed enums); anything that fails becomes a dead letter.
Unknown extra fields are ignored, so producers may add optional fields.

Validate with ``model_validate`` on the output of ``streams.decode`` (JSON
parsed with ``parse_float=Decimal``), never ``model_validate_json``: pydantic's
JSON mode reads numbers as floats and a 17-digit amount would lose its cents.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

MAX_AMOUNT_DIGITS = 18  # 16 integer digits + 2 decimals: far beyond any real balance


def _finite(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    return value


# decimal_places=2 counts significant decimals: "1.50" and "1.500" pass, "1.505" does not.
Money = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=MAX_AMOUNT_DIGITS, decimal_places=2)]
PositiveMoney = Annotated[Money, Field(gt=0)]
NonNegativeMoney = Annotated[Money, Field(ge=0)]
Rate = Annotated[Decimal, Field(ge=0, lt=1, allow_inf_nan=False, max_digits=12), AfterValidator(_finite)]
Id64 = Annotated[str, Field(min_length=1, max_length=64)]


def _text_only(value: object) -> object:
    """Timestamps and dates travel as text; a number is not an RFC 3339 time."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_only)]
DueDate = Annotated[dt.date, BeforeValidator(_text_only)]

Direction = Literal["credit", "debit"]
Kind = Literal[
    "salary",
    "pension",
    "transfer_in",
    "transfer_out",
    "cash_deposit",
    "cash_withdrawal",
    "card_payment",
    "loan_disbursement",
    "loan_repayment",
    "interest",
    "fee",
    "other",
]
LoanStatus = Literal["active", "closed", "overdue"]

_MODEL_CONFIG = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)


class TransactionEvent(BaseModel):
    """One account movement (topic ``fundflow.transactions.v1``)."""

    model_config = _MODEL_CONFIG

    txn_id: Annotated[str, Field(min_length=1, max_length=128)]
    customer_id: Id64
    account_id: Id64
    ts: Timestamp
    direction: Direction
    amount: PositiveMoney
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "CNY"
    kind: Kind = "other"
    external: Annotated[bool, Field(strict=True)] = False
    counterparty_bank: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    balance_after: Money | None = None
    payer_customer_id: Id64 | None = None


class LoanEvent(BaseModel):
    """The state of one loan as of ``ts`` (topic ``fundflow.loans.v1``)."""

    model_config = _MODEL_CONFIG

    loan_id: Id64
    customer_id: Id64
    account_id: Id64
    ts: Timestamp
    principal: NonNegativeMoney
    outstanding: NonNegativeMoney
    annual_rate: Rate
    installment: NonNegativeMoney
    next_due: DueDate
    status: LoanStatus


Event = TransactionEvent | LoanEvent
