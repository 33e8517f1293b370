"""Change records of a core ledger table ``acct_txn`` as Debezium and Canal would write them:
the fixtures of ``feeds.cdc`` and ``feeds.adapter``, written from the formats' field names
(docs/feeds.md), never copied from a connector's output.

The table: ``txn_no`` (primary key, BIGINT), ``cust_no``, ``acct_no``, ``txn_amt``
(DECIMAL(18,2)), ``dc_flag`` (C/D or 1/2), ``txn_time`` (epoch ms for Debezium, local
``yyyy-MM-dd HH:mm:ss`` text for Canal), ``status`` (B booked, P pending), ``txn_code``,
``cp_bank_code``, ``cp_cust_no``, and ``memo``, a column no mapping reads.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

TABLE = "acct_txn"
ZONE = dt.timezone(dt.timedelta(hours=8))  # Asia/Shanghai has had no DST since 1991
OWN_BANK = "102100099996"
KIND_CODES = {"SAL01": "salary", "TRI01": "transfer_in", "TRO01": "transfer_out", "CSW01": "cash_withdrawal"}


def mapping(prefix: str = "", *, ts_format: str = "epoch_ms", decimal: str = "precise", **extra: Any) -> dict[str, Any]:
    """The mapping of ``acct_txn`` (as parsed YAML)."""
    return {
        "table": TABLE,
        "txn_id_prefix": prefix,
        "decimal": decimal,
        "row_id": "txn_no",
        "customer": "cust_no",
        "account": "acct_no",
        "amount": {"column": "txn_amt", "scale": 2},
        "direction": {"column": "dc_flag", "credit": ["C", 1], "debit": ["D", 2]},
        "ts": {"column": "txn_time", "format": ts_format},
        "kind": {"column": "txn_code", "codes": KIND_CODES, "default": "other"},
        "counterparty_bank": {"column": "cp_bank_code", "own": [OWN_BANK]},
        "counterparty_customer": "cp_cust_no",
        "currency": {"constant": "CNY"},
        "posted": {"column": "status", "values": ["B"]},
        **extra,
    }


def precise(amount: Decimal | str, scale: int = 2) -> str:
    """Kafka Connect's Decimal in JSON: base64 of the unscaled value's big-endian two's complement."""
    unscaled = int(Decimal(amount).scaleb(scale))
    size = max(1, (unscaled.bit_length() + 8) // 8)  # room for the sign bit
    return base64.b64encode(unscaled.to_bytes(size, "big", signed=True)).decode()


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """A local time in March 2024."""
    return dt.datetime(2024, 3, day, hour, minute, tzinfo=ZONE)


def row(
    txn_no: int,
    amount: str,
    *,
    cust: str = "C001",
    acct: str = "A001",
    dc: str | int = "C",
    when: dt.datetime | None = None,
    status: str = "B",
    code: str | None = "TRI01",
    cp_bank: str | None = None,
    cp_cust: str | None = None,
    memo: str = "",
) -> dict[str, Any]:
    """A row with its amount as a plain decimal string (``debezium_row``/``canal_row`` encode it)."""
    return {
        "txn_no": txn_no,
        "cust_no": cust,
        "acct_no": acct,
        "txn_amt": amount,
        "dc_flag": dc,
        "txn_time": when or at(1, 9),
        "status": status,
        "txn_code": code,
        "cp_bank_code": cp_bank,
        "cp_cust_no": cp_cust,
        "memo": memo,
    }


def debezium_row(columns: Mapping[str, Any], decimal: str = "precise") -> dict[str, Any]:
    """A row as Debezium's JsonConverter writes it: DECIMAL as precise bytes, a string or a
    float (``decimal.handling.mode``), DATETIME as epoch milliseconds."""
    out = dict(columns)
    amount = Decimal(str(columns["txn_amt"]))
    out["txn_amt"] = {"precise": precise(amount), "string": str(amount), "double": float(amount)}[decimal]
    when = columns["txn_time"]
    out["txn_time"] = int(when.timestamp() * 1000) if isinstance(when, dt.datetime) else when
    return out


def canal_row(columns: Mapping[str, Any]) -> dict[str, str | None]:
    """A row as a Canal flat message writes it: every value a string (NULL as null)."""
    out: dict[str, str | None] = {}
    for name, value in columns.items():
        if isinstance(value, dt.datetime):
            out[name] = value.strftime("%Y-%m-%d %H:%M:%S")
        else:
            out[name] = None if value is None else str(value)
    return out


def _schema(decimal: str) -> dict[str, Any]:
    amounts: dict[str, dict[str, Any]] = {
        "precise": {
            "type": "bytes",
            "name": "org.apache.kafka.connect.data.Decimal",
            "version": 1,
            "parameters": {"scale": "2", "connect.decimal.precision": "18"},
        },
        "string": {"type": "string"},
        "double": {"type": "double"},
    }
    amount = amounts[decimal]
    columns = [
        {"type": "int64", "optional": False, "field": "txn_no"},
        {"type": "string", "optional": False, "field": "cust_no"},
        {"type": "string", "optional": False, "field": "acct_no"},
        {**amount, "optional": False, "field": "txn_amt"},
        {"type": "string", "optional": False, "field": "dc_flag"},
        {"type": "int64", "optional": False, "name": "io.debezium.time.Timestamp", "version": 1, "field": "txn_time"},
        {"type": "string", "optional": False, "field": "status"},
        {"type": "string", "optional": True, "field": "txn_code"},
        {"type": "string", "optional": True, "field": "cp_bank_code"},
        {"type": "string", "optional": True, "field": "cp_cust_no"},
        {"type": "string", "optional": True, "field": "memo"},
    ]
    value = f"corebank.core.{TABLE}.Value"
    return {
        "type": "struct",
        "name": f"corebank.core.{TABLE}.Envelope",
        "optional": False,
        "fields": [
            {"type": "struct", "fields": columns, "optional": True, "name": value, "field": "before"},
            {"type": "struct", "fields": columns, "optional": True, "name": value, "field": "after"},
            {
                "type": "struct",
                "fields": [],
                "optional": False,
                "name": "io.debezium.connector.mysql.Source",
                "field": "source",
            },
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
        ],
    }


def debezium(
    op: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    pos: int = 4,
    row_index: int = 0,
    binlog: str = "mysql-bin.000003",
    lsn: Sequence[int] | None = None,
    changed: dt.datetime | None = None,
    wrapped: bool = True,
    decimal: str = "precise",
    table: str = TABLE,
) -> bytes:
    """A Debezium change event of MySQL (binlog ``binlog``/``pos``/``row_index``) or, with
    ``lsn`` = (last commit LSN, LSN), of Postgres; ``wrapped``: with the JsonConverter's schema."""
    source: dict[str, Any] = {
        "version": "2.5.0.Final",
        "name": "corebank",
        "db": "core",
        "table": table,
        "ts_ms": int((changed or at(1, 9)).timestamp() * 1000),
        "snapshot": "true" if op == "r" else "false",
    }
    if lsn is not None:
        source.update(
            connector="postgresql", schema="public", lsn=lsn[1], sequence=orjson.dumps([str(n) for n in lsn]).decode()
        )
    else:
        source.update(connector="mysql", server_id=1, file=binlog, pos=pos, row=row_index)
    payload = {
        "before": debezium_row(before, decimal) if before is not None else None,
        "after": debezium_row(after, decimal) if after is not None else None,
        "source": source,
        "op": op,
        "ts_ms": int(dt.datetime.now(dt.UTC).timestamp() * 1000),  # differs on every redelivery
        "transaction": None,
    }
    return orjson.dumps({"schema": _schema(decimal), "payload": payload} if wrapped else payload)


def canal(
    kind: str,
    rows: Sequence[Mapping[str, Any]],
    old: Sequence[Mapping[str, Any]] | None = None,
    *,
    batch_id: int = 1,
    es: dt.datetime | None = None,
    is_ddl: bool = False,
    table: str = TABLE,
) -> bytes:
    """A Canal flat message: ``old`` holds, per row, only the changed columns' old values."""
    es_ms = int((es or at(1, 9)).timestamp() * 1000)
    return orjson.dumps(
        {
            "id": batch_id,
            "database": "core",
            "table": table,
            "pkNames": ["txn_no"],
            "isDdl": is_ddl,
            "type": kind,
            "es": es_ms,
            "ts": int(dt.datetime.now(dt.UTC).timestamp() * 1000),
            "sql": "",
            "sqlType": {"txn_no": -5, "txn_amt": 3},
            "mysqlType": {"txn_no": "bigint(20)", "txn_amt": "decimal(18,2)", "txn_time": "datetime"},
            "data": [canal_row(r) for r in rows] if rows else None,
            "old": [canal_row(o) for o in old] if old is not None else None,
        }
    )


def expected(
    txn_id: str,
    columns: Mapping[str, Any],
    *,
    reverses: str | None = None,
    ts: dt.datetime | None = None,
) -> dict[str, Any]:
    """The TransactionEvent a row maps to under ``mapping()`` (a reversal with ``reverses``)."""
    credit = str(columns["dc_flag"]) in ("C", "1")
    event: dict[str, Any] = {
        "txn_id": txn_id,
        "customer_id": columns["cust_no"],
        "account_id": columns["acct_no"],
        "currency": "CNY",
        "amount": str(Decimal(columns["txn_amt"]).quantize(Decimal("0.01"))),
        "direction": "credit" if credit != (reverses is not None) else "debit",
        "ts": (ts or columns["txn_time"]).isoformat(),
        "kind": KIND_CODES.get(columns["txn_code"], "other"),
        "external": bool(columns["cp_bank_code"]) and columns["cp_bank_code"] != OWN_BANK,
    }
    if event["external"]:
        event["counterparty_bank"] = columns["cp_bank_code"]
    if columns["cp_cust_no"]:
        event["counterparty_customer_id"] = columns["cp_cust_no"]
    if reverses is not None:
        event["reverses"] = reverses
    return event
