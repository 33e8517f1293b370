"""The declarative mapping of one core-banking table onto TransactionEvents (YAML).

Every bank's ledger table differs: its primary key, its customer and account columns,
how it spells credit and debit, how it writes time, which rows are booked. A mapping
file says so once (``docs/feeds.md``, ``deploy/cdc-mapping.example.yaml``), and
``load_mapping`` checks it at start-up: a mapping that cannot work stops the command
with one line (``ConfigError``) instead of dead-lettering every record later.

Refused at start-up, among others: ``decimal: double`` (Debezium's
``decimal.handling.mode=double`` turns amounts into binary floats: cents are lost before
we see them), direction codes that are both credit and debit, kind codes that are not
FundFlow kinds, a time format we do not know, a source name that cannot be part of a
Redis key.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rules.events import Kind
from streams.errors import ConfigError

TsFormat = Literal["epoch_ms", "epoch_micros", "epoch_seconds", "epoch_days", "iso", "yyyy-MM-dd HH:mm:ss"]
DecimalMode = Literal["precise", "string", "double"]
Column = Annotated[str, Field(min_length=1, max_length=128)]
Code = Annotated[str, Field(min_length=1, max_length=64)]

_STRICT = ConfigDict(extra="forbid", frozen=True)


def _codes(value: Any) -> Any:
    """Codes are compared as text (Canal sends every value as a string; Debezium sends a
    small int column as a number): YAML's ``1`` and ``"1"`` mean the same code."""
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return value


class Amount(BaseModel):
    model_config = _STRICT
    column: Column
    # Debezium ``precise`` without a schema in the envelope (JsonConverter schemas.enable=false):
    # the bytes carry no scale, so the mapping must say it (the column's DECIMAL(p, s) scale).
    scale: int | None = Field(default=None, ge=0, le=18)


class Direction(BaseModel):
    """Either a code column (``column`` + ``credit`` + ``debit`` codes) or the amount's sign
    (``sign_of_amount: true``: a positive amount is a credit, a negative one a debit)."""

    model_config = _STRICT
    column: Column | None = None
    credit: tuple[Code, ...] = ()
    debit: tuple[Code, ...] = ()
    sign_of_amount: bool = False

    _as_text = field_validator("credit", "debit", mode="before")(_codes)

    @model_validator(mode="after")
    def _one_way(self) -> Direction:
        if self.sign_of_amount:
            if self.column or self.credit or self.debit:
                raise ValueError("give either sign_of_amount or a column with credit and debit codes, not both")
            return self
        if not self.column or not self.credit or not self.debit:
            raise ValueError("needs a column with credit and debit codes, or sign_of_amount: true")
        both = set(self.credit) & set(self.debit)
        if both:
            raise ValueError(f"codes both credit and debit: {sorted(both)}")
        return self


class Timestamp(BaseModel):
    model_config = _STRICT
    column: Column
    format: TsFormat
    # Debezium writes DATETIME (MySQL) and timestamp without time zone (Postgres) as the
    # epoch count of the wall-clock value read as if it were UTC: true reads it back as the
    # bank's local time (FUNDFLOW_BANK_TZ or ``zone``). Only for the epoch formats.
    wall_clock: bool = False

    @model_validator(mode="after")
    def _wall_clock_epoch(self) -> Timestamp:
        if self.wall_clock and not self.format.startswith("epoch_"):
            raise ValueError("wall_clock applies to the epoch formats only")
        return self


class KindMap(BaseModel):
    model_config = _STRICT
    column: Column
    codes: dict[Code, Kind]
    # What an unknown code becomes; unset: a row with an unknown code is dead-lettered (unknown_code).
    default: Kind | None = None

    @field_validator("codes", mode="before")
    @classmethod
    def _text_keys(cls, value: Any) -> Any:
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class CounterpartyBank(BaseModel):
    """The counterparty's bank code column. Empty, or one of ``own`` (our own bank's codes):
    not external; anything else: ``external: true`` with ``counterparty_bank`` = the code."""

    model_config = _STRICT
    column: Column
    own: tuple[Code, ...] = ()

    _as_text = field_validator("own", mode="before")(_codes)


class Currency(BaseModel):
    model_config = _STRICT
    column: Column | None = None
    constant: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None

    @model_validator(mode="after")
    def _one(self) -> Currency:
        if (self.column is None) == (self.constant is None):
            raise ValueError("give exactly one of column or constant")
        return self


class Posted(BaseModel):
    model_config = _STRICT
    column: Column
    values: tuple[Code, ...] = Field(min_length=1)

    _as_text = field_validator("values", mode="before")(_codes)


class Mapping(BaseModel):
    """One table's mapping. ``source`` names the feed in Redis keys; ``table`` is the table
    the change topic carries (records of another table are dead-lettered ``other_table``)
    and the middle of every txn_id: ``{txn_id_prefix}{table}:{row id}``."""

    model_config = _STRICT

    source: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    table: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.$-]{1,64}$")]
    txn_id_prefix: Annotated[str, Field(max_length=32, pattern=r"^[\x21-\x7e]*$")] = ""
    decimal: DecimalMode = "precise"
    zone: str | None = None  # default FUNDFLOW_BANK_TZ: for times written without an offset
    row_id: tuple[Column, ...] = Field(min_length=1, max_length=8)
    customer: Column
    account: Column
    amount: Amount
    direction: Direction
    ts: Timestamp
    kind: KindMap | None = None
    counterparty_bank: CounterpartyBank | None = None
    counterparty_customer: Column | None = None
    currency: Currency | None = None
    posted: Posted | None = None

    @field_validator("row_id", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _usable(self) -> Mapping:
        if self.decimal == "double":
            # Checked here, not per record: every amount of such a feed would be dead-lettered.
            raise ValueError(
                "decimal: double loses cents (Debezium decimal.handling.mode=double); "
                "set the connector to precise or string"
            )
        return self

    @property
    def name(self) -> str:
        """The feed's name in Redis keys: ``source``, or the table."""
        return self.source or self.table

    def tz(self, default: str) -> dt.tzinfo:
        return ZoneInfo(self.zone or default)

    def columns(self) -> set[str]:
        """Every column the mapping reads: an update that changes none of them changes nothing."""
        used = {*self.row_id, self.customer, self.account, self.amount.column, self.ts.column}
        optional = (
            self.direction.column,
            self.kind.column if self.kind else None,
            self.counterparty_bank.column if self.counterparty_bank else None,
            self.counterparty_customer,
            self.currency.column if self.currency else None,
            self.posted.column if self.posted else None,
        )
        return used | {c for c in optional if c}


def parse_mapping(data: Any, where: str = "mapping") -> Mapping:
    """A ``Mapping`` from parsed YAML, or a one-line ``ConfigError`` naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a YAML mapping of fields (table, row_id, customer, ...)")
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        more = exc.error_count() - 1
        tail = f" (and {more} more)" if more else ""
        raise ConfigError(f"{where}: {field}: {message}{tail}") from None


def load_mapping(path: Path) -> Mapping:
    """Read and check a mapping file: the adapter's start-up check."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read mapping {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"mapping {path}: not valid YAML{at}") from None
    return parse_mapping(data, f"mapping {path}")
