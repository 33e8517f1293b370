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
import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

MAX_AMOUNT_DIGITS = 19  # 16 integer digits and up to 3 decimals: far beyond any real balance
# The most decimals any amount may carry here (BHD, KWD: 3). The deployment's currency
# decides how many it really may (``rules.money.minor_digits``, checked by ``streams.decode``).
MAX_MINOR_DIGITS = 3


def _finite(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    return value


class ExponentDecimal(Decimal):
    """A JSON number written with an exponent (``1e2``): ``streams.decode`` parses numbers
    into this type when they have one, so a field that must not can tell."""

    __slots__ = ()


# ASCII digits, at most one ".", an optional leading "-" (a negative amount is then refused
# by its range, a ledger balance may be negative): no "+", exponent, "_", space, or the
# other Unicode digits Python's Decimal() would happily read ("１００" is 100 to it).
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")


def _plain_decimal(value: object) -> object:
    """Decimals as ``events.md`` writes them: a JSON string of ASCII digits, or a JSON number."""
    if isinstance(value, str):
        if _DECIMAL_TEXT.match(value) is None:
            raise ValueError("must be a decimal of ASCII digits with an optional '.', no sign, exponent, '_' or space")
        return value
    if isinstance(value, bool):
        raise ValueError("must be a decimal, not a boolean")
    if isinstance(value, ExponentDecimal):
        raise ValueError("must be written without an exponent")
    return value


# decimal_places counts significant decimals: at 2, "1.50" and "1.500" pass, "1.505" does not.
# (The text check comes last in each Annotated: before the constraints it would make
# pydantic check them in Python, a cost on every event: docs/performance.md, "Money
# validation order".)
_Money = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=MAX_AMOUNT_DIGITS, decimal_places=MAX_MINOR_DIGITS)]
_PlainDecimal = BeforeValidator(_plain_decimal)
Money = Annotated[_Money, _PlainDecimal]
PositiveMoney = Annotated[_Money, Field(gt=0), _PlainDecimal]
NonNegativeMoney = Annotated[_Money, Field(ge=0), _PlainDecimal]
Rate = Annotated[Decimal, Field(ge=0, lt=1, allow_inf_nan=False, max_digits=12), AfterValidator(_finite), _PlainDecimal]
# Identifiers are keys (Kafka, Redis, outbox entries, logs): ``streams.decode`` refuses
# control and other non-printable characters in them (str.isprintable: cheaper than a pattern).
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
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None  # None: the deployment's
    kind: Kind = "other"
    external: Annotated[bool, Field(strict=True)] = False
    counterparty_bank: Id64 | None = None
    balance_after: Money | None = None
    payer_customer_id: Id64 | None = None
    reverses: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    counterparty_customer_id: Id64 | None = None


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
