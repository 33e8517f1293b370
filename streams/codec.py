"""``CustomerState`` <-> the compact JSON blob stored in Redis (``ff:{C}:state`` field ``s``).

Money is written as decimal strings and read back with ``Decimal``: no float
ever touches a stored amount. The blob carries a format number ``f``; a reader
that meets a newer format refuses it (``ValueError``) rather than misreading
money. ``compress=True`` (what the worker writes, ``FUNDFLOW_COMPRESS_STATE``)
stores the JSON as a Zstandard frame at level 1 with a dictionary trained on
states (``streams.tools.statedict``): about 3.5x smaller than the JSON (2.6x without
the dictionary) and ~35% faster to compress than without one (zlib, which
earlier versions wrote, took 3x as long for a larger blob). The reader tells
the kinds apart by their first bytes (``{`` is JSON, the zstd frame magic, else
zlib) and a zstd frame by the dictionary id in its header (0: none), so blobs
written any way, before or after a change of the setting or the version, stay
readable; a frame that names a dictionary this version does not ship is
refused, not misread.
"""

from __future__ import annotations

import threading
import zlib
from collections import deque
from collections.abc import Sequence
from decimal import Decimal
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import zstandard

from rules.state import LOT_AMOUNT, LOT_TS, LOT_WIRE, ZERO, CustomerState, EventRecord, LoanPoint

FORMAT = 1
ZSTD_LEVEL = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DICTIONARIES = Path(__file__).with_name("zdict")  # every dictionary ever shipped: state-<id>.zdict
WRITE_DICTIONARY = 1362451315  # the one new blobs are written with (streams.tools.statedict)
_codecs = threading.local()  # zstd (de)compressors are not safe to share between threads


@cache
def dictionaries() -> dict[int, zstandard.ZstdCompressionDict]:
    """The shipped dictionaries by id, each read once and prepared for level-1 compression."""
    found: dict[int, zstandard.ZstdCompressionDict] = {}
    for path in sorted(DICTIONARIES.glob("state-*.zdict")):
        dictionary = zstandard.ZstdCompressionDict(path.read_bytes())
        dictionary.precompute_compress(level=ZSTD_LEVEL)
        found[dictionary.dict_id()] = dictionary
    if WRITE_DICTIONARY not in found:
        raise RuntimeError(f"zstd dictionary {WRITE_DICTIONARY} is missing from {DICTIONARIES}")
    return found


def _compressor() -> zstandard.ZstdCompressor:
    compressor = getattr(_codecs, "compressor", None)
    if compressor is None:
        dictionary = dictionaries()[WRITE_DICTIONARY]
        compressor = _codecs.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=dictionary)
    return compressor


def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    by_id: dict[int, zstandard.ZstdDecompressor] | None = getattr(_codecs, "decompressors", None)
    if by_id is None:
        by_id = _codecs.decompressors = {}
    decompressor = by_id.get(dict_id)
    if decompressor is None:
        if dict_id == 0:
            decompressor = zstandard.ZstdDecompressor()
        elif dict_id in dictionaries():
            decompressor = zstandard.ZstdDecompressor(dict_data=dictionaries()[dict_id])
        else:
            raise ValueError(f"state blob was written with zstd dictionary {dict_id}, which this version lacks")
        by_id[dict_id] = decompressor
    return decompressor


def _compress(data: bytes) -> bytes:
    return _compressor().compress(data)


def _decompress(data: bytes) -> bytes:
    if data[:4] == ZSTD_MAGIC:
        try:
            decompressor = _decompressor(zstandard.get_frame_parameters(data).dict_id)
            return decompressor.decompress(data)
        except zstandard.ZstdError as exc:
            raise ValueError(f"state blob is a broken zstd frame: {exc}") from None
    try:
        return zlib.decompress(data)
    except zlib.error as exc:
        raise ValueError(f"state blob is neither JSON, zstd nor zlib: {exc}") from None


def _dec(value: Decimal) -> str:
    return str(value)


def _event_row(r: EventRecord) -> list[Any]:
    if r.consumed or r.weighted_age_us:
        return [r.ts_us, r.day, str(r.amount), r.flags, r.bank, str(r.consumed), str(r.weighted_age_us)]
    if r.bank is not None:
        return [r.ts_us, r.day, str(r.amount), r.flags, r.bank]
    return [r.ts_us, r.day, str(r.amount), r.flags]


def _lot_wire(lot: list[Any]) -> orjson.Fragment:
    wire = lot[LOT_WIRE] = orjson.Fragment(b'["%s",%d]' % (str(lot[LOT_AMOUNT]).encode(), lot[LOT_TS]))
    return wire


def _seen_wire(state: CustomerState) -> bytes:
    """``orjson.dumps(state.seen)``, byte for byte, from the last one written plus the ids
    added since. The remembered ids are the largest part of a long-lived customer's state
    (360 ids: 15 KB of 35 KB): re-encoding them all for every commit took ~25 µs of a
    ~90 µs encode."""
    seen = state.seen
    wire, wired, n = state.seen_wire, state.seen_wired, len(seen)
    if wire is None or n < wired:
        wire = orjson.dumps(seen)
    elif n > wired:
        added = list(islice(reversed(seen.items()), n - wired))
        added.reverse()
        tail = orjson.dumps(dict(added))
        wire = wire[:-1] + b"," + tail[1:] if wired else tail
    state.seen_wire, state.seen_wired = wire, n
    return wire


def encode_state(state: CustomerState, *, compress: bool = False) -> bytes:
    # The hot path of every commit: plain loops, no per-field helper calls.
    events: list[orjson.Fragment] = []
    append = events.append
    for r in state.events:
        wire = r.wire
        if wire is None:
            wire = r.wire = orjson.Fragment(orjson.dumps(_event_row(r)))
        append(wire)
    blob: dict[str, Any] = {
        "f": FORMAT,
        "c": state.customer_id,
        "b": _dec(state.balance),
        "fu": state.first_us,
        "fd": state.first_day,
        "lu": state.last_us,
        "lt": state.last_txn_us,
        "e": events,
        "s": orjson.Fragment(_seen_wire(state)),  # txn_id -> (hash, ts) as {"id":["hash",ts],...}
        "l": [lot[LOT_WIRE] or _lot_wire(lot) for lot in state.lots],
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
    return _compress(data) if compress else data


def encode_states(states: Sequence[CustomerState], *, compress: bool = False) -> list[bytes]:
    """Many states, as ``encode_state`` writes each, compressed in one call. A compressor
    releases the GIL while it works, and Faust's consumer thread takes it each time and
    holds it until it blocks: once per blob, that stalled a worker by ~20%; once per batch
    it costs nothing."""
    plain: list[bytes | bytearray | memoryview] = [encode_state(state) for state in states]
    if not compress or not plain:
        return [bytes(blob) for blob in plain]
    frames = _compressor().multi_compress_to_buffer(plain)
    return [frames[i].tobytes() for i in range(len(frames))]


def decode_state(data: bytes) -> CustomerState:
    if data[:1] != b"{":
        data = _decompress(data)
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
    state.lots = deque([Decimal(amount), ts, None] for amount, ts in blob["l"])
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
