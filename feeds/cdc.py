"""Change-data-capture records of a core table -> TransactionEvents (pure: no I/O).

Two wire formats, one meaning (``docs/feeds.md``, section "CDC (Debezium, Canal)"):

* **Debezium** change events: ``{before, after, source, op, ts_ms}``, with or without the
  JsonConverter's ``{schema, payload}`` wrapper. ``op`` ``c`` create, ``u`` update,
  ``d`` delete, ``r`` snapshot read; ``t`` truncate and ``m`` message are ignored, and so
  is a tombstone (a null value after a delete: it only tells log compaction to forget).
* **Canal** flat messages (``canal.mq.flatMessage=true``): ``type`` INSERT / UPDATE /
  DELETE with ``data`` (one or more rows, every value a string) and for UPDATE ``old``
  (per row, only the changed columns' old values: the old row is the data row overlaid
  with them). DDL (``isDdl``) is ignored.

``parse_debezium`` / ``parse_canal`` turn one Kafka record into a ``Change`` (its row
changes, where it sits in the source's log, a digest for duplicate detection), a
``Skip`` (counted, nothing to do) or a ``Refusal`` (dead letter: a reason code and an
error text that names fields and rules, never values).

``translate`` applies one row change to what was published for that row so far (its
``RowRecord``: the version number given out last and the event live under it) and says
which TransactionEvents to publish. Every op is the same question: the row's mapped
content before, the row's mapped content now, each either a booked movement or nothing
(not posted, deleted). Something -> nothing: a reversal of the live version. Nothing ->
something: a new version. Something -> something else: a reversal and a new version.
Equal content (an update of an unmapped column, a redelivered snapshot row): nothing.

txn_ids are deterministic, so a record processed twice (a crash between producing and
storing the row record) produces the same txn_ids, which the worker drops: version 1 of
a row is ``{prefix}{table}:{row id}``, version n > 1 ``{prefix}{table}:{row id}~{n}``,
and the reversal of a version is its txn_id + ``:rev``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Mapping as AnyMapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from feeds.mapping import Mapping
from rules.events import TransactionEvent
from rules.money import minor_digits

Format = Literal["debezium", "canal"]
Event = dict[str, Any]

MAX_TXN_ID = 128  # docs/events.md
# Room left in a txn_id for the longest suffix this module adds: "~" + version + ":rev".
_SUFFIX_ROOM = len("~999999:rev")
KAFKA_DECIMAL = "org.apache.kafka.connect.data.Decimal"
_FLOAT_TYPES = frozenset({"float", "double", "float32", "float64"})
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")
_LOCAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?\Z")
_DIGITS = re.compile(r"-?[0-9]{1,20}\Z")
_EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
# Characters of a row id that would make two rows' txn_ids alike ("5~2" and version 2 of
# "5"; "5:rev" and the reversal of "5"), written as %XX.
_ESCAPES = {ord(c): f"%{ord(c):02X}" for c in "%~:|"}
_MYSQL_FILE = re.compile(r".*?([0-9]+)\Z")
# Debezium ``source`` fields that place a change in the database's log: part of a record's digest.
_SOURCE_PLACE = (
    "file",
    "pos",
    "row",
    "lsn",
    "sequence",
    "txId",
    "gtid",
    "scn",
    "change_lsn",
    "commit_lsn",
    "event_serial_no",
    "ts_ms",
    "snapshot",
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A record (or one row of it) that cannot become events: ``reason`` is a short code
    (a metric label, the dead letter's reason), ``error`` names fields, never values."""

    reason: str
    error: str


@dataclass(frozen=True, slots=True)
class Skip:
    """A record with nothing to map: ``tombstone`` or ``ignored`` (truncate, message, DDL)."""

    outcome: Literal["tombstone", "ignored"]


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row's change: its columns before (``None`` for an insert or snapshot read; on
    Postgres without REPLICA IDENTITY FULL only the key) and after (``None`` for a delete)."""

    row_id: str  # the row id, escaped: the middle of its txn_ids and of its Redis key
    old: AnyMapping[str, Any] | None
    new: AnyMapping[str, Any] | None
    change_ts_ms: int | None  # when the change happened in the database


@dataclass(frozen=True, slots=True)
class Change:
    """One Kafka record's row changes, in order. ``rows`` holds a ``Refusal`` in place of
    a row that cannot be read (the other rows still count). ``position``: where the record
    sits in the source's log when that is a total order (MySQL binlog file/pos/row, Postgres
    ``sequence``), else ``None``; ``snapshot``: a snapshot read, which no position orders
    (every row of a MySQL snapshot carries the same binlog position)."""

    format: Format
    rows: list[RowChange | Refusal]
    position: tuple[int, ...] | None
    snapshot: bool
    digest: str
    schema: AnyMapping[str, AnyMapping[str, Any]] = field(default_factory=dict)  # column -> its field schema
    column_types: AnyMapping[str, str] = field(default_factory=dict)  # Canal's mysqlType


@dataclass(frozen=True, slots=True)
class RowRecord:
    """What was published for a row: ``version``, the last version number given out (0: none
    yet), and ``event``, the event live under it (``None``: nothing live, e.g. deleted)."""

    version: int
    event: Event | None

    def to_json(self) -> bytes:
        return orjson.dumps({"v": self.version, "e": self.event})

    @classmethod
    def from_json(cls, raw: bytes) -> RowRecord:
        data = orjson.loads(raw)
        return cls(int(data["v"]), data.get("e"))


@dataclass(frozen=True, slots=True)
class Translation:
    events: list[Event]
    record: RowRecord
    outcome: Literal["published", "unchanged", "not_posted", "nothing"]


@dataclass(frozen=True, slots=True)
class Context:
    """What a translation needs besides the record: the mapping, the bank's time zone (for
    times written without an offset) and the deployment's currency (``FUNDFLOW_CURRENCY``)."""

    mapping: Mapping
    zone: dt.tzinfo
    currency: str = "CNY"


# --- reading the two formats -------------------------------------------------------


def _digest(*parts: Any) -> str:
    """A record's identity for duplicate detection: its place in the source log and its rows,
    without what changes on a redelivery (Debezium's top-level ts_ms, Canal's id and ts)."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _loads(value: bytes) -> Any | Refusal:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return Refusal("not_json", "the record value is not JSON (or has a number out of range)")


def _text(value: Any) -> str | None:
    """A column value as text: Canal sends strings, Debezium numbers for integer columns."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


def row_id_of(columns: AnyMapping[str, Any], mapping: Mapping) -> str | Refusal:
    parts = []
    for column in mapping.row_id:
        if column not in columns or columns[column] is None:
            return Refusal("missing_column", f"row id column {column!r} is missing or null")
        text = _text(columns[column])
        if text is None or text == "" or not text.isprintable():
            return Refusal("bad_row_id", f"row id column {column!r} is not a printable text or integer")
        parts.append(text.translate(_ESCAPES))
    row_id = "|".join(parts)
    if len(base_txn_id(row_id, mapping)) + _SUFFIX_ROOM > MAX_TXN_ID:
        return Refusal("txn_id_too_long", f"txn_id prefix, table and row id exceed {MAX_TXN_ID - _SUFFIX_ROOM} chars")
    return row_id


def base_txn_id(row_id: str, mapping: Mapping) -> str:
    return f"{mapping.txn_id_prefix}{mapping.table}:{row_id}"


def txn_id(row_id: str, version: int, mapping: Mapping) -> str:
    base = base_txn_id(row_id, mapping)
    return base if version == 1 else f"{base}~{version}"


def _field_schemas(schema: Any) -> dict[str, AnyMapping[str, Any]]:
    """The row's column schemas from the JsonConverter's envelope schema (``after``/``before``)."""
    if not isinstance(schema, dict):
        return {}
    for part in schema.get("fields") or ():
        if isinstance(part, dict) and part.get("field") in ("after", "before") and isinstance(part.get("fields"), list):
            return {f["field"]: f for f in part["fields"] if isinstance(f, dict) and isinstance(f.get("field"), str)}
    return {}


def _debezium_position(source: AnyMapping[str, Any]) -> tuple[int, ...] | None:
    """A total order of streamed changes, or ``None``. MySQL: (binlog file number, pos, row).
    Postgres: ``sequence`` = [last commit LSN, LSN]; ``lsn`` alone is NOT an order: the
    changes of concurrent transactions interleave in the WAL but arrive transaction by
    transaction, so a later change can carry a lower LSN."""
    file, pos = source.get("file"), source.get("pos")
    if isinstance(file, str) and isinstance(pos, int):
        number = _MYSQL_FILE.match(file)
        row = source.get("row")
        return (int(number.group(1)) if number else 0, pos, row if isinstance(row, int) else 0)
    sequence = source.get("sequence")
    if isinstance(sequence, str):
        try:
            parts = orjson.loads(sequence)
            if isinstance(parts, list) and len(parts) == 2:
                return tuple(int(p) if p is not None else 0 for p in parts)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None
    return None


def parse_debezium(value: bytes | None, mapping: Mapping) -> Change | Skip | Refusal:
    """One Debezium record value (``None``: a tombstone)."""
    if value is None:
        return Skip("tombstone")
    obj = _loads(value)
    if isinstance(obj, Refusal):
        return obj
    schema = None
    if isinstance(obj, dict) and "payload" in obj and "op" not in obj:
        schema, obj = obj.get("schema"), obj["payload"]
    if obj is None:
        return Skip("tombstone")
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        return Refusal("not_an_envelope", "not a Debezium change event: no op (before, after, source, op)")
    op = obj["op"]
    if op in ("t", "m"):
        return Skip("ignored")
    if op not in ("c", "u", "d", "r"):
        return Refusal("unknown_op", "op is not one of c, u, d, r, t, m")
    source = obj.get("source") if isinstance(obj.get("source"), dict) else {}
    assert isinstance(source, dict)
    if source.get("table") is not None and source.get("table") != mapping.table:
        return Refusal("other_table", f"source.table is not the mapping's table {mapping.table!r}")
    before, after = obj.get("before"), obj.get("after")
    needed = before if op == "d" else after
    if not isinstance(needed, dict) or (before is not None and not isinstance(before, dict)):
        image = "before" if op == "d" else "after"
        return Refusal("not_an_envelope", f"op {op!r} without a row in {image}")
    ts_ms = source.get("ts_ms") if isinstance(source.get("ts_ms"), int) else obj.get("ts_ms")
    change_ts = ts_ms if isinstance(ts_ms, int) and not isinstance(ts_ms, bool) else None
    row_id = row_id_of(needed, mapping)
    rows: list[RowChange | Refusal] = [
        row_id if isinstance(row_id, Refusal) else RowChange(row_id, before, None if op == "d" else after, change_ts)
    ]
    snapshot = op == "r"
    place = {k: source.get(k) for k in _SOURCE_PLACE}
    return Change(
        "debezium",
        rows,
        None if snapshot else _debezium_position(source),
        snapshot,
        _digest("debezium", op, place, before, after),
        _field_schemas(schema),
    )


def parse_canal(value: bytes | None, mapping: Mapping) -> Change | Skip | Refusal:
    """One Canal flat message (``canal.mq.flatMessage=true``)."""
    if value is None:
        return Skip("tombstone")
    obj = _loads(value)
    if isinstance(obj, Refusal):
        return obj
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return Refusal("not_a_flat_message", "not a Canal flat message: no type (database, table, type, data)")
    if obj.get("isDdl") is True or obj["type"] not in ("INSERT", "UPDATE", "DELETE"):
        return Skip("ignored")
    if obj.get("table") != mapping.table:
        return Refusal("other_table", f"table is not the mapping's table {mapping.table!r}")
    data, old = obj.get("data"), obj.get("old")
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
        return Refusal("not_a_flat_message", "data is not a non-empty list of rows")
    kind = obj["type"]
    if kind == "UPDATE" and (
        not isinstance(old, list) or len(old) != len(data) or not all(isinstance(r, dict) for r in old)
    ):
        return Refusal("not_a_flat_message", "an UPDATE without one old entry per data row")
    es = obj.get("es")
    change_ts = es if isinstance(es, int) and not isinstance(es, bool) else None
    olds: list[dict[str, Any]] = old if kind == "UPDATE" and isinstance(old, list) else []
    rows: list[RowChange | Refusal] = []
    for i, row in enumerate(data):
        # UPDATE: the old row is the new row with the changed columns' old values laid over it.
        before = {**row, **olds[i]} if kind == "UPDATE" else (row if kind == "DELETE" else None)
        row_id = row_id_of(row, mapping)
        if isinstance(row_id, Refusal):
            rows.append(Refusal(row_id.reason, f"row {i}: {row_id.error}"))
            continue
        # A primary-key change (the id is among the changed columns) is the old row's
        # delete plus the new row's insert: two rows, as Debezium sends it.
        old_id = row_id_of(before, mapping) if kind == "UPDATE" and before is not None else row_id
        if kind == "UPDATE" and before is not None and old_id != row_id and isinstance(old_id, str):
            rows.append(RowChange(old_id, before, None, change_ts))
            rows.append(RowChange(row_id, None, row, change_ts))
            continue
        rows.append(RowChange(row_id, before, None if kind == "DELETE" else row, change_ts))
    types = obj.get("mysqlType") if isinstance(obj.get("mysqlType"), dict) else {}
    assert isinstance(types, dict)
    digest = _digest("canal", obj.get("database"), obj.get("table"), kind, change_ts, data, old)
    return Change("canal", rows, None, False, digest, column_types={k: str(v) for k, v in types.items()})


# --- mapping one row image ---------------------------------------------------------


def _b64_decimal(text: str, scale: int) -> Decimal | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    # Kafka Connect's Decimal: the unscaled value as big-endian two's complement bytes.
    return Decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-scale)


def decimal_value(value: Any, column: str, change: Change, mapping: Mapping) -> Decimal | Refusal:
    """An exact amount from a column value, however the connector wrote it; a binary float
    (Debezium ``decimal.handling.mode=double``, a FLOAT/DOUBLE column) is refused."""
    schema = change.schema.get(column, {})
    inexact = Refusal("amount_not_exact", f"amount column {column!r} arrives as a binary float: cents are not exact")
    bad = Refusal("bad_amount", f"amount column {column!r} is not a decimal the mapping can read")
    if isinstance(value, float) or str(schema.get("type", "")).lower() in _FLOAT_TYPES:
        return inexact
    if change.format == "canal" and change.column_types.get(column, "").lower().startswith(("float", "double", "real")):
        return inexact
    if isinstance(value, bool):
        return bad
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, dict) and isinstance(value.get("scale"), int) and isinstance(value.get("value"), str):
        decoded = _b64_decimal(value["value"], value["scale"])  # io.debezium.data.VariableScaleDecimal
        return bad if decoded is None else decoded
    if not isinstance(value, str):
        return bad
    if change.format == "canal" or schema.get("type") == "string":
        text_mode = True
    elif schema.get("name") == KAFKA_DECIMAL or schema.get("type") == "bytes":
        text_mode = False
    else:  # no schema in the envelope: the mapping says how the connector writes decimals
        text_mode = mapping.decimal == "string"
    if text_mode:
        return Decimal(value) if _PLAIN_DECIMAL.match(value) else bad
    scale: Any = (schema.get("parameters") or {}).get("scale") if schema else None
    if scale is None:
        scale = mapping.amount.scale
    if scale is None:
        return Refusal(
            "amount_scale_unknown",
            f"amount column {column!r} is precise bytes without a schema: set amount.scale in the mapping",
        )
    try:
        decoded = _b64_decimal(value, int(scale))
    except ValueError:
        return bad
    return bad if decoded is None else decoded


def _timestamp(value: Any, mapping: Mapping, zone: dt.tzinfo) -> dt.datetime | Refusal:
    spec = mapping.ts
    bad = Refusal("bad_timestamp", f"ts column {spec.column!r} is not {spec.format}")
    try:
        if spec.format.startswith("epoch_"):
            text = _text(value)
            if text is None or not _DIGITS.match(text):
                return bad
            count = int(text)
            if spec.format == "epoch_days":
                day = dt.date(1970, 1, 1) + dt.timedelta(days=count)
                return dt.datetime.combine(day, dt.time(), zone)
            per_second = {"epoch_seconds": 1, "epoch_ms": 1000, "epoch_micros": 1_000_000}[spec.format]
            utc = _EARLIEST + dt.timedelta(microseconds=count * (1_000_000 // per_second))
            return utc.replace(tzinfo=zone) if spec.wall_clock else utc.astimezone(zone)
        if not isinstance(value, str):
            return bad
        if spec.format == "iso" or _LOCAL_TIME.match(value):
            parsed = dt.datetime.fromisoformat(value)
        else:
            return bad
    except (ValueError, OverflowError):
        return bad
    return parsed.replace(tzinfo=zone) if parsed.tzinfo is None else parsed


def _column(columns: AnyMapping[str, Any], column: str) -> tuple[Any, Refusal | None]:
    if column not in columns:
        return None, Refusal("missing_column", f"column {column!r} is not in the row")
    return columns[column], None


def map_row(columns: AnyMapping[str, Any], change: Change, ctx: Context) -> Event | Refusal | None:
    """A row image as a TransactionEvent without its txn_id, ``None`` when the row is not a
    posted entry, or why it cannot be mapped."""
    m = ctx.mapping
    if m.posted is not None:
        status, missing = _column(columns, m.posted.column)
        if missing:
            return missing
        if _text(status) not in m.posted.values:
            return None
    event: Event = {}
    for name, column in (("customer_id", m.customer), ("account_id", m.account)):
        value, missing = _column(columns, column)
        if missing:
            return missing
        text = _text(value)
        if text is None or not 0 < len(text) <= 64 or not text.isprintable():
            return Refusal("bad_id", f"{name} column {column!r} is not a printable text or integer of 1-64 chars")
        event[name] = text
    raw_amount, missing = _column(columns, m.amount.column)
    if missing:
        return missing
    if raw_amount is None:
        return Refusal("bad_amount", f"amount column {m.amount.column!r} is null")
    amount = decimal_value(raw_amount, m.amount.column, change, m)
    if isinstance(amount, Refusal):
        return amount
    if m.direction.sign_of_amount:
        direction = "credit" if amount > 0 else "debit"
        amount = abs(amount)
    else:
        assert m.direction.column is not None
        code, missing = _column(columns, m.direction.column)
        if missing:
            return missing
        text = _text(code)
        if text in m.direction.credit:
            direction = "credit"
        elif text in m.direction.debit:
            direction = "debit"
        else:
            return Refusal("unknown_code", f"direction column {m.direction.column!r}: a code the mapping does not list")
        if amount < 0:
            return Refusal("bad_amount", f"amount column {m.amount.column!r} is negative beside a direction code")
    if amount == 0:
        return Refusal("bad_amount", f"amount column {m.amount.column!r} is zero: no money moved")
    currency = ctx.currency
    if m.currency is not None:
        if m.currency.constant:
            currency = m.currency.constant
        else:
            assert m.currency.column is not None
            value, missing = _column(columns, m.currency.column)
            if missing:
                return missing
            text = _text(value)
            if text is None or not re.fullmatch(r"[A-Z]{3}", text):
                return Refusal("bad_currency", f"currency column {m.currency.column!r} is not an ISO 4217 code")
            currency = text
        event["currency"] = currency
    digits = minor_digits(currency)
    exact = amount.quantize(Decimal(1).scaleb(-digits)) if amount.as_tuple().exponent != -digits else amount
    if exact != amount:
        return Refusal("amount_precision", f"amount column {m.amount.column!r}: more decimals than {digits}")
    event["amount"] = format(exact, "f")
    event["direction"] = direction
    raw_ts, missing = _column(columns, m.ts.column)
    if missing:
        return missing
    when = _timestamp(raw_ts, m, ctx.zone)
    if isinstance(when, Refusal):
        return when
    if not _EARLIEST <= when < _LATEST:
        return Refusal("bad_timestamp", f"ts column {m.ts.column!r} is outside 1970-9000")
    event["ts"] = when.isoformat()
    if m.kind is not None:
        code, missing = _column(columns, m.kind.column)
        if missing:
            return missing
        kind = m.kind.codes.get(_text(code) or "", m.kind.default)
        if kind is None:
            return Refusal("unknown_code", f"kind column {m.kind.column!r}: a code the mapping does not list")
        event["kind"] = kind
    event["external"] = False
    if m.counterparty_bank is not None:
        bank, missing = _column(columns, m.counterparty_bank.column)
        if missing:
            return missing
        text = _text(bank)
        if text and text not in m.counterparty_bank.own:
            if len(text) > 64 or not text.isprintable():
                return Refusal("bad_id", f"counterparty bank column {m.counterparty_bank.column!r} is not a bank code")
            event["external"] = True
            event["counterparty_bank"] = text
    if m.counterparty_customer is not None:
        other, missing = _column(columns, m.counterparty_customer)
        if missing:
            return missing
        text = _text(other)
        if text:
            if len(text) > 64 or not text.isprintable():
                return Refusal("bad_id", f"counterparty customer column {m.counterparty_customer!r} is not an id")
            event["counterparty_customer_id"] = text
    return event


def _checked(event: Event) -> Refusal | None:
    """The event against the wire contract: the adapter never publishes what the worker refuses."""
    try:
        TransactionEvent.model_validate(event)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return Refusal("invalid_event", f"{where}: {first['msg']}")
    return None


# --- one row change against what was published -------------------------------------


def reversal(live: Event, change_ts_ms: int | None, zone: dt.tzinfo) -> Event:
    """The event that undoes ``live``: same customer, account and amount, the opposite
    direction, ``reverses`` naming it; at the change's time (never before the original)."""
    event = {k: v for k, v in live.items() if k != "reverses"}
    event["txn_id"] = f"{live['txn_id']}:rev"
    event["reverses"] = live["txn_id"]
    event["direction"] = "debit" if live["direction"] == "credit" else "credit"
    if change_ts_ms is not None:
        changed = (_EARLIEST + dt.timedelta(milliseconds=change_ts_ms)).astimezone(zone)
        if changed > dt.datetime.fromisoformat(live["ts"]):
            event["ts"] = changed.isoformat()
    return event


def _content(event: Event) -> Event:
    return {k: v for k, v in event.items() if k not in ("txn_id", "reverses")}


def translate(row: RowChange, current: RowRecord | None, change: Change, ctx: Context) -> Translation | Refusal:
    """The events one row change publishes, given the row's record (``None``: none kept)."""
    target = map_row(row.new, change, ctx) if row.new is not None else None
    if isinstance(target, Refusal):
        return target
    if current is None:
        live, version = None, 0
        if row.old is not None:
            # No record of this row (it predates the adapter, or its record expired past the
            # dedup horizon): its before image says what was live, as version 1.
            before = map_row(row.old, change, ctx)
            if isinstance(before, Refusal):
                return Refusal(
                    "unknown_row",
                    "update or delete of a row with no record here and an unusable before image "
                    f"({before.reason}; on Postgres set REPLICA IDENTITY FULL)",
                )
            if before is not None:
                live, version = {**before, "txn_id": txn_id(row.row_id, 1, ctx.mapping)}, 1
        current = RowRecord(version, live)
    live, version = current.event, current.version
    if live is not None and target is not None and _content(live) == target:
        return Translation([], current, "unchanged")
    events: list[Event] = []
    if live is not None:
        events.append(reversal(live, row.change_ts_ms, ctx.zone))
    if target is not None:
        version += 1
        event = {"txn_id": txn_id(row.row_id, version, ctx.mapping), **target}
        problem = _checked(event)
        if problem is not None:
            return problem
        events.append(event)
    if not events:
        return Translation([], current, "not_posted" if row.new is not None else "nothing")
    return Translation(events, RowRecord(version, events[-1] if target is not None else None), "published")
