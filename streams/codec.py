"""``CustomerState`` <-> the compact JSON blob stored in Redis (``ff:{C}:state`` field ``s``).

Money is written as decimal strings and read back with ``Decimal``: no float
ever touches a stored amount. The blob carries a format number ``f``; a reader
that meets a newer format refuses it (``ValueError``) rather than misreading
money. ``compress=True`` (what the worker writes, ``FUNDFLOW_COMPRESS_STATE``)
stores the JSON zlib-compressed at level 1: about 2.6x smaller for ~15 µs; the
reader tells the two apart by the first byte (``{`` is JSON), so blobs written
either way, before or after a change of the setting, stay readable.
"""

from __future__ import annotations

import zlib
from collections import deque
from decimal import Decimal
from typing import Any

import orjson

from rules.state import ZERO, CustomerState, EventRecord, LoanPoint

FORMAT = 1
ZLIB_LEVEL = 1


def _dec(value: Decimal) -> str:
    return str(value)


def encode_state(state: CustomerState, *, compress: bool = False) -> bytes:
    # The hot path of every commit: plain loops, no per-field helper calls.
    events: list[list[Any]] = []
    append = events.append
    for r in state.events:
        if r.consumed or r.weighted_age_us:
            append([r.ts_us, r.day, str(r.amount), r.flags, r.bank, str(r.consumed), str(r.weighted_age_us)])
        elif r.bank is not None:
            append([r.ts_us, r.day, str(r.amount), r.flags, r.bank])
        else:
            append([r.ts_us, r.day, str(r.amount), r.flags])
    blob: dict[str, Any] = {
        "f": FORMAT,
        "c": state.customer_id,
        "b": _dec(state.balance),
        "fu": state.first_us,
        "fd": state.first_day,
        "lu": state.last_us,
        "lt": state.last_txn_us,
        "e": events,
        "s": state.seen,  # txn_id -> (hash, ts): orjson writes the tuples as arrays
        "l": [[str(lot[0]), lot[1]] for lot in state.lots],
        "t": state.applied_total,
    }
    if state.overdraft:
        blob["o"] = _dec(state.overdraft)
    if state.ledger:
        blob["g"] = {acct: [ts, _dec(bal)] for acct, (ts, bal) in state.ledger.items()}
    if state.kept_from_day is not None:
        blob["kd"] = state.kept_from_day
    if state.carry_day is not None:
        blob["cd"] = [state.carry_day, state.carry_streak]
    if state.loans:
        blob["n"] = {
            loan_id: [
                [
                    p.ts_us,
                    _dec(p.principal),
                    _dec(p.outstanding),
                    _dec(p.annual_rate),
                    _dec(p.installment),
                    p.next_due,
                    p.status,
                    p.account_id,
                ]
                for p in points
            ]
            for loan_id, points in state.loans.items()
        }
    if state.salary_payer_us >= 0:
        blob["sp"] = [state.salary_payer, state.salary_payer_us]
    if state.income_months:
        blob["im"] = {str(month): _dec(total) for month, total in state.income_months.items()}
    if state.rule_state:
        blob["r"] = state.rule_state
    if state.offsets:
        blob["ko"] = state.offsets
    data = orjson.dumps(blob)
    return zlib.compress(data, ZLIB_LEVEL) if compress else data


def decode_state(data: bytes) -> CustomerState:
    if data[:1] != b"{":
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise ValueError(f"state blob is neither JSON nor zlib: {exc}") from None
    blob = orjson.loads(data)
    if blob.get("f") != FORMAT:
        raise ValueError(f"unknown state format {blob.get('f')!r}")
    state = CustomerState(
        customer_id=blob["c"],
        balance=Decimal(blob["b"]),
        first_us=blob["fu"],
        first_day=blob["fd"],
        last_us=blob["lu"],
        last_txn_us=blob.get("lt"),
        applied_total=blob["t"],
        overdraft=Decimal(blob["o"]) if "o" in blob else ZERO,
        kept_from_day=blob.get("kd"),
    )
    for row in blob["e"]:
        record = EventRecord(row[0], row[1], Decimal(row[2]), row[3], row[4] if len(row) > 4 else None)
        if len(row) > 5:
            record.consumed = Decimal(row[5])
            record.weighted_age_us = Decimal(row[6])
        state.events.append(record)
    state.seen = {txn: (entry[0], entry[1]) for txn, entry in blob["s"].items()}
    state.lots = deque([Decimal(amount), ts] for amount, ts in blob["l"])
    state.ledger = {acct: (entry[0], Decimal(entry[1])) for acct, entry in blob.get("g", {}).items()}
    if "cd" in blob:
        state.carry_day, state.carry_streak = blob["cd"]
    for loan_id, points in blob.get("n", {}).items():
        state.loans[loan_id] = [
            LoanPoint(p[0], Decimal(p[1]), Decimal(p[2]), Decimal(p[3]), Decimal(p[4]), p[5], p[6], p[7])
            for p in points
        ]
    if "sp" in blob:
        state.salary_payer, state.salary_payer_us = blob["sp"]
    state.income_months = {int(month): Decimal(total) for month, total in blob.get("im", {}).items()}
    state.rule_state = blob.get("r", {})
    state.offsets = {tp: seen if isinstance(seen, list) else [seen, -1] for tp, seen in blob.get("ko", {}).items()}
    return state
