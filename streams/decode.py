"""Bytes from Kafka -> a validated event, once, at the edge; or a dead letter.

Every failure becomes ``InvalidEvent(reason, error)``: ``reason`` is a short,
bounded code (a metric label: ``not_utf8``, ``not_json``, ``too_large``,
``too_deep``, ``not_an_object``, ``missing_<field>``, ``invalid_<field>``), and
``error`` says what is wrong by field name and rule only: input values (names,
account numbers, amounts) never reach logs, metrics or the error text.
``streams.deadletter`` turns the failure into a dead letter.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
from pydantic import ValidationError

from rules.events import Event, LoanEvent, TransactionEvent
from streams.deadletter import RawRecord
from streams.topics import LOANS

_TXN_FIELDS = frozenset(TransactionEvent.model_fields)
_LOAN_FIELDS = frozenset(LoanEvent.model_fields)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


_EXACT = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constants)


def parse_json(value: bytes, max_bytes: int) -> Any:
    """JSON with exact decimals; raises InvalidEvent for anything unreadable.

    Fast path: orjson, when the object has no float (amounts sent as strings or
    integers, the usual case). A float, or anything orjson refuses, is parsed
    again with the standard library and ``parse_float=Decimal``, so no amount
    ever passes through a binary float and errors are classified precisely.
    """
    from streams.errors import InvalidEvent

    if len(value) > max_bytes:
        raise InvalidEvent("too_large", f"record of {len(value)} bytes exceeds {max_bytes}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    else:
        if not isinstance(obj, dict) or not any(type(v) is float for v in obj.values()):
            return obj
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return _EXACT.decode(text)
    except RecursionError:
        raise InvalidEvent("too_deep", "JSON nested too deeply") from None
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


def decode(record: RawRecord, max_bytes: int) -> Event:
    """The event in ``record``, validated against its topic's contract."""
    from streams.errors import InvalidEvent

    if record.value is None:
        raise InvalidEvent("empty", "record has no value")
    payload = parse_json(record.value, max_bytes)
    if not isinstance(payload, dict):
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(payload).__name__}")
    model: type[TransactionEvent] | type[LoanEvent]
    model, fields = (LoanEvent, _LOAN_FIELDS) if record.topic == LOANS else (TransactionEvent, _TXN_FIELDS)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        reason, detail = _describe(exc, fields)
        raise InvalidEvent(reason, detail) from None
