"""Bytes from Kafka -> a validated event, once, at the edge; or a dead letter.

Every failure becomes ``InvalidEvent(reason, error)``: ``reason`` is a short,
bounded code (a metric label: ``not_utf8``, ``not_json``, ``too_large``,
``too_deep``, ``not_an_object``, ``duplicate_key``, ``missing_<field>``,
``invalid_<field>``, ``implausible_timestamp``, ``key_mismatch``), and ``error``
says what is wrong by field name and rule only: input values (names, account
numbers, amounts) never reach logs, metrics or the error text.
``streams.deadletter`` turns the failure into a dead letter.

Beyond the models of ``rules.events``, the edge checks what only it can see:
the raw bytes (an object with a repeated key is refused, where a JSON parser
would silently keep one of the values), the Kafka record (its key must be the
event's ``customer_id``: the key decides the partition, so the owner, of the
customer) and the time it arrived (event time must lie in ``TimeBounds``, so no
customer's clock can be pushed into the far future or before 1970).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from pydantic import ValidationError

from rules.events import Event, ExponentDecimal, LoanEvent, TransactionEvent
from rules.money import minor_digits
from rules.state import to_us
from streams.deadletter import RawRecord
from streams.errors import InvalidEvent
from streams.topics import LOANS

_TXN_FIELDS = frozenset(TransactionEvent.model_fields)
_LOAN_FIELDS = frozenset(LoanEvent.model_fields)
# Identifiers travel as keys (Kafka, Redis, outbox entries) and into logs.
_TXN_IDS: tuple[str, ...] = (
    "txn_id",
    "customer_id",
    "account_id",
    "counterparty_bank",
    "payer_customer_id",
    "reverses",
    "counterparty_customer_id",
)
_LOAN_IDS: tuple[str, ...] = ("loan_id", "customer_id", "account_id")

US_PER_MS = 1000
EARLIEST = dt.date(1970, 1, 1)
# No setting reaches past this: every date computation of the rules (local days, 90-day
# windows, due dates) stays far inside what Python's datetime can represent.
LATEST_SUPPORTED = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
LATEST_SUPPORTED_US = to_us(LATEST_SUPPORTED)
DEFAULT_MAX_SKEW_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """The event times the monitor accepts (``FUNDFLOW_EVENT_TIME_*``): from ``earliest``
    to ``max_skew_seconds`` past the Kafka record's own timestamp (the wall clock when the
    record has none). A replay of historical data carries historical event time and a
    current record timestamp, so it always passes; an event time that runs ahead of when
    its record was produced by more than the skew is implausible."""

    earliest: dt.date = EARLIEST
    max_skew_seconds: float = DEFAULT_MAX_SKEW_SECONDS
    earliest_us: int = field(init=False, repr=False)
    max_skew_us: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "earliest_us", to_us(dt.datetime.combine(self.earliest, dt.time(), dt.UTC)))
        object.__setattr__(self, "max_skew_us", int(self.max_skew_seconds * 1_000_000))

    def check(self, event: Event, record_ms: int | None, now_ms: int) -> None:
        """Raises ``implausible_timestamp`` for an event time out of bounds. A record
        timestamp of 0 or less is no timestamp (Kafka writes -1; 0 is no real producer)."""
        reference_ms = record_ms if record_ms is not None and record_ms > 0 else now_ms
        latest_us = min(reference_ms * US_PER_MS + self.max_skew_us, LATEST_SUPPORTED_US)
        ts_us = to_us(event.ts)
        if ts_us < self.earliest_us:
            raise InvalidEvent("implausible_timestamp", "ts: event time is before the earliest supported time")
        if ts_us > latest_us:
            raise InvalidEvent("implausible_timestamp", "ts: event time is too far ahead of the record's timestamp")
        if isinstance(event, LoanEvent) and not self.earliest <= event.next_due < LATEST_SUPPORTED.date():
            raise InvalidEvent("implausible_timestamp", "next_due: outside the supported dates")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _exact_number(text: str) -> Decimal:
    return ExponentDecimal(text) if "e" in text or "E" in text else Decimal(text)


class _DuplicateKey(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey("an object has a repeated key")
    return obj


_EXACT = json.JSONDecoder(parse_float=_exact_number, parse_constant=_no_constants, object_pairs_hook=_unique_object)


def _surely_unique_keys(value: bytes, obj: dict[str, Any]) -> bool:
    """True only if ``value`` (which orjson parsed into ``obj``) has no repeated key; False
    when that is not certain (then the exact, slower parser decides). Cheap: compact JSON
    (what orjson, Jackson or ``separators=(",", ":")`` write) re-serialises to itself;
    otherwise a flat object whose every key is followed directly by ``:`` writes ``":``
    at least once per key token, so as often as it has distinct keys only if no key
    repeats (each a fraction of the exact parser's cost: docs/performance.md, "Decode's
    repeated-key check")."""
    try:
        if orjson.dumps(obj) == value:
            return True
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper): be exact
        return False
    return (
        value.count(b'":') == len(obj)
        and value.count(b"{") == 1
        and b"[" not in value
        and b" :" not in value
        and b"\t:" not in value
        and b"\n:" not in value
        and b"\r:" not in value
    )


def parse_json(value: bytes, max_bytes: int) -> Any:
    """JSON with exact decimals; raises InvalidEvent for anything unreadable.

    Fast path: orjson, when the object has no float (amounts sent as strings or
    integers, the usual case) and surely no repeated key. A float, a possible
    repeated key, or anything orjson refuses, is parsed again with the standard
    library, ``parse_float=Decimal`` and a check of every object's keys, so no
    amount ever passes through a binary float and errors are classified precisely.
    """
    if len(value) > max_bytes:
        raise InvalidEvent("too_large", f"record of {len(value)} bytes exceeds {max_bytes}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    else:
        if not isinstance(obj, dict):
            return obj
        if not any(type(v) is float for v in obj.values()) and _surely_unique_keys(value, obj):
            return obj
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return _EXACT.decode(text)
    except RecursionError:
        raise InvalidEvent("too_deep", "JSON nested too deeply") from None
    except _DuplicateKey as exc:
        raise InvalidEvent("duplicate_key", str(exc)) from None
    except ValueError as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else "NaN/Infinity are not numbers"
        raise InvalidEvent("not_json", message) from None


def _describe(exc: ValidationError, fields: frozenset[str]) -> tuple[str, str]:
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    field = str(first["loc"][0]) if first["loc"] else "event"
    field = field if field in fields else "event"
    reason = f"{'missing' if first['type'] == 'missing' else 'invalid'}_{field}"
    detail = "; ".join(f"{'.'.join(str(part) for part in e['loc']) or 'event'}: {e['msg']}" for e in errors[:5])
    return reason, detail


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


DEFAULT_BOUNDS = TimeBounds()


def decode(
    record: RawRecord,
    max_bytes: int,
    bounds: TimeBounds = DEFAULT_BOUNDS,
    now_ms: int | None = None,
    currency: str | None = "CNY",
) -> Event:
    """The event in ``record``, validated against its topic's contract, its Kafka key
    and ``bounds`` (``now_ms``: the wall clock, for records without a timestamp), and its
    money against the deployment's ``currency`` (``FUNDFLOW_CURRENCY``; None: a record that
    was accepted before, replayed from a changelog)."""
    if record.value is None:
        raise InvalidEvent("empty", "record has no value")
    payload = parse_json(record.value, max_bytes)
    if not isinstance(payload, dict):
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(payload).__name__}")
    model: type[TransactionEvent] | type[LoanEvent]
    if record.topic == LOANS:
        model, fields, ids = LoanEvent, _LOAN_FIELDS, _LOAN_IDS
    else:
        model, fields, ids = TransactionEvent, _TXN_FIELDS, _TXN_IDS
    try:
        event = model.model_validate(payload)
    except ValidationError as exc:
        reason, detail = _describe(exc, fields)
        raise InvalidEvent(reason, detail) from None
    for name in ids:
        text = getattr(event, name)
        if text is not None and not text.isprintable():
            raise InvalidEvent(f"invalid_{name}", f"{name}: contains a control or other non-printable character")
    bounds.check(event, record.timestamp_ms, now_ms if now_ms is not None else _wall_clock_ms())
    if currency is not None:
        check_money(event, currency)
    if record.key is None or record.key != event.customer_id.encode():
        missing = "has no key" if record.key is None else "key is not the event's customer_id"
        raise InvalidEvent("key_mismatch", f"the Kafka record {missing}")
    return event


def check_money(event: Event, currency: str) -> None:
    """One reporting currency per deployment (docs/events.md): another is refused, never
    converted at a rate that is the bank's to choose; and no amount carries more decimals
    than the currency's minor unit (ISO 4217: 2 for CNY, 0 for JPY, 3 for BHD)."""
    if isinstance(event, TransactionEvent):
        if event.currency is not None and event.currency != currency:
            raise InvalidEvent("currency_mismatch", f"currency: not the deployment's currency {currency}")
        amounts: tuple[tuple[str, Decimal | None], ...] = (
            ("amount", event.amount),
            ("balance_after", event.balance_after),
        )
    else:
        amounts = (
            ("principal", event.principal),
            ("outstanding", event.outstanding),
            ("installment", event.installment),
        )
    digits = minor_digits(currency)
    for name, value in amounts:
        if value is not None and value.normalize().as_tuple().exponent < -digits:  # type: ignore[operator]
            raise InvalidEvent(f"invalid_{name}", f"{name}: more decimals than {currency}'s {digits}")
