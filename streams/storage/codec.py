"""``CustomerState`` <-> the compact JSON blob stored in Redis (``ff:{C}:state`` field ``s``).

Money is written as an integer count of cents (when the ``Decimal`` has exactly two
decimals) or as its decimal string, and read back as that ``Decimal``, exponent and
all: no float ever touches a stored amount. The blob carries a format number ``f``:
this version writes 2 and reads 1 and 2; a reader that meets a newer format refuses
it (``ValueError``) rather than misreading money. Format 2 (docs/performance.md,
"State blob size and compression") writes times as steps in whole seconds where it
can, an event's local day as its offset from the UTC day, the events' times and the
remembered ids as columns, and only 32 bits of each id's content hash: a third less
per compressed blob than format 1.
``compress=True`` (what the worker writes, ``FUNDFLOW_COMPRESS_STATE``) stores the
JSON as a Zstandard frame at level 1 with a dictionary trained on states
(``streams.tools.statedict``): a dictionary because each small blob compressed alone
relearns the same shape, which makes it both smaller and faster to compress than
without one, and Zstandard because zlib, which earlier versions wrote, was slower for
a larger blob (figures: docs/performance.md, "State blob size and compression"). The
reader tells the kinds apart
by their first bytes (``{`` is JSON, the zstd frame magic, else zlib) and a zstd
frame by the dictionary id in its header (0: none), so blobs written any way, before
or after a change of the setting or the version, stay readable; a frame that names
a dictionary this version does not ship is refused, not misread.
"""

from __future__ import annotations

import operator
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import cache
from itertools import accumulate, islice
from pathlib import Path
from typing import Any

import orjson
import zstandard

from rules.state import (
    KIND_CODE,
    LOT_AMOUNT,
    LOT_TS,
    LOT_WIRE,
    SEEN_HASH,
    SEEN_HASH_CHARS,
    SEEN_TS,
    US_PER_DAY,
    ZERO,
    CustomerState,
    EventRecord,
    LoanPoint,
    kind_of_flags,
)

FORMAT = 2  # 1: read (_decode_v1), no longer written
ZSTD_LEVEL = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DICTIONARIES = Path(__file__).with_name("zdict")  # every dictionary ever shipped: state-<id>.zdict, finding-<id>.zdict
WRITE_DICTIONARY = 2000339874  # the one new blobs are written with (streams.tools.statedict; format 2)
FINDING_DICTIONARY = 564161543  # the one a customer's recent findings are written with (streams.tools.statedict)
FINDING_LEVEL = 3  # (a finding is written once and read rarely: the better ratio is worth its time)
_codecs = threading.local()  # zstd (de)compressors are not safe to share between threads


@cache
def dictionaries() -> dict[int, zstandard.ZstdCompressionDict]:
    """The shipped dictionaries by id (states' and findings'), each read once and prepared
    for the level it writes at."""
    found: dict[int, zstandard.ZstdCompressionDict] = {}
    for pattern, level in (("state-*.zdict", ZSTD_LEVEL), ("finding-*.zdict", FINDING_LEVEL)):
        for path in sorted(DICTIONARIES.glob(pattern)):
            dictionary = zstandard.ZstdCompressionDict(path.read_bytes())
            dictionary.precompute_compress(level=level)
            found[dictionary.dict_id()] = dictionary
    for wanted in (WRITE_DICTIONARY, FINDING_DICTIONARY):
        if wanted not in found:
            raise RuntimeError(f"zstd dictionary {wanted} is missing from {DICTIONARIES}")
    return found


def _compressor(dict_id: int = WRITE_DICTIONARY, level: int = ZSTD_LEVEL) -> zstandard.ZstdCompressor:
    """This thread's compressor with the dictionary ``dict_id`` at ``level``."""
    by_id: dict[int, zstandard.ZstdCompressor] | None = getattr(_codecs, "compressors", None)
    if by_id is None:
        by_id = _codecs.compressors = {}
    compressor = by_id.get(dict_id)
    if compressor is None:
        compressor = by_id[dict_id] = zstandard.ZstdCompressor(level=level, dict_data=dictionaries()[dict_id])
    return compressor


def compress_finding(entry: bytes) -> bytes:
    """A finding's outbox entry as a customer's recent-findings list keeps it: a zstd frame
    with the findings' dictionary (~680 B -> ~140 B on Berka's: docs/scale.md)."""
    return _compressor(FINDING_DICTIONARY, FINDING_LEVEL).compress(entry)


def finding_entry(stored: bytes) -> bytes:
    """The outbox entry back from what the recent-findings list holds: a zstd frame, or the
    entry itself as versions before 2026-12 wrote it (an entry begins with its topic's name)."""
    if stored[:4] != ZSTD_MAGIC:
        return stored
    try:
        return _decompressor(zstandard.get_frame_parameters(stored).dict_id).decompress(stored)
    except (zstandard.ZstdError, ValueError) as exc:
        raise ValueError(f"a recent finding cannot be read: {exc}") from None


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


# --- format 2 ------------------------------------------------------------------------
# Numbers as the JSON takes them best (docs/performance.md, "State blob size and compression"):
# - money with two decimals (``Decimal`` exponent -2, what every amount of Berka has) as an
#   integer count of cents; any other exponent as its decimal string. Read back as
#   ``Decimal("<cents>E-2")``: the same value and the same exponent, exactly;
# - a time or a span in µs as 2 * seconds when it is whole seconds, else as 2 * µs + 1;
# - times in a list (events, lots, remembered ids) as the step from the one before;
# - an event's local day as its offset from the UTC day of its ts (-1, 0 or +1: any
#   zone), in two bits of its stored flags; the zone-free codec can still give it back.
_INT64 = 1 << 63
_US = 1_000_000
_UTC_DAY0 = 719_163  # date(1970, 1, 1).toordinal()
_DAY_SHIFT = 10  # stored flags only: above the flag bits and the kind code (rules.state)
_DAY_CODE = {0: 0, 1: 1 << _DAY_SHIFT, -1: 2 << _DAY_SHIFT}
_DAY_OFFSET = (0, 1, -1)
_DAY_EXPLICIT = 3 << _DAY_SHIFT  # (never from a real zone) the day follows the flags
_DAY_MASK = 3 << _DAY_SHIFT


def _time(us: int) -> int:
    seconds, rest = divmod(us, _US)
    return seconds << 1 if not rest else (us << 1) | 1


def _steps(times: list[int], before: int) -> list[int]:
    """``_time`` of each time's step from the one before it (the first: from ``before``)."""
    return [
        (step // _US) << 1 if not step % _US else (step << 1) | 1
        for step in map(operator.sub, times, [before, *times[:-1]])
    ]


def _untime(value: int) -> int:
    return value >> 1 if value & 1 else (value >> 1) * _US


def _money(value: Decimal) -> int | str:
    text = str(value)
    if text[-3:-2] == ".":  # exponent -2 (no other finite decimal prints so)
        cents = int(text.replace(".", ""))
        if -_INT64 <= cents < _INT64 and (cents or text[0] != "-"):
            return cents
    return text


def _unmoney(value: int | str) -> Decimal:
    # (not scaleb, which is slower: docs/performance.md, "State encode costs")
    return Decimal(value) if isinstance(value, str) else Decimal(f"{value}E-2")


def _age(value: Decimal) -> int | str:
    """A debit's weighted age (cents x µs) as ``_time`` of its cents, or its decimal string."""
    text = str(value)
    if text[-3:-2] == ".":
        cents = int(text.replace(".", ""))
        if cents or text[0] != "-":
            coded = _time(cents)
            if -_INT64 <= coded < _INT64:
                return coded
    return text


def _unage(value: int | str) -> Decimal:
    return Decimal(value) if isinstance(value, str) else Decimal(f"{_untime(value)}E-2")


def _event_row(r: EventRecord) -> list[Any]:
    """A record as stored, but for its time (``et``: the step from the record before)."""
    offset = r.day - (r.ts_us // US_PER_DAY + _UTC_DAY0)
    day_code = _DAY_CODE.get(offset)
    row: list[Any] = [_money(r.amount)]
    if day_code is None:
        row += [r.flags | _DAY_EXPLICIT, r.day]
    else:
        row.append(r.flags | day_code)
    if r.consumed or r.weighted_age_us:
        row.append(r.bank)
        if str(r.consumed) != str(-r.amount):  # (not only equal: the same exponent)
            row.append(_money(r.consumed))
        row.append(_age(r.weighted_age_us))
    elif r.bank is not None:
        row.append(r.bank)
    return row


def _event_of(ts_us: int, row: list[Any]) -> EventRecord:
    amount = row[0]
    amount = Decimal(amount) if type(amount) is str else Decimal(f"{amount}E-2")
    stored = row[1]
    day_code = stored & _DAY_MASK
    if not day_code:
        record = EventRecord(ts_us, ts_us // US_PER_DAY + _UTC_DAY0, amount, stored, row[2] if len(row) > 2 else None)
        if len(row) < 4:
            return record
        rest = 2
    elif day_code == _DAY_EXPLICIT:
        rest = 3
        record = EventRecord(ts_us, row[2], amount, stored & ~_DAY_MASK, row[3] if len(row) > 3 else None)
    else:
        rest = 2
        day = ts_us // US_PER_DAY + _UTC_DAY0 + _DAY_OFFSET[day_code >> _DAY_SHIFT]
        record = EventRecord(ts_us, day, amount, stored & ~_DAY_MASK, row[2] if len(row) > 2 else None)
    more = len(row) - rest
    if more == 2:
        record.consumed = -amount
        record.weighted_age_us = _unage(row[rest + 1])
    elif more == 3:
        record.consumed = _unmoney(row[rest + 1])
        record.weighted_age_us = _unage(row[rest + 2])
    return record


def _row_wire(r: EventRecord) -> orjson.Fragment:
    wire = r.wire = orjson.Fragment(orjson.dumps(_event_row(r)))
    return wire


def _events_wire(state: CustomerState) -> tuple[bytes, bytes]:
    """The events' times (each the step from the one before) and rows as written last time,
    plus the records appended since. Records are appended at the end; a late one inserted
    before them or a prune changes the records at the front or at the last one written,
    which starts the lists again (from each record's own cached row)."""
    events = state.events
    n = len(events)
    wire = state.events_wire
    if wire is not None:
        wired, first, last, last_us, steps_json, rows_json = wire
        if wired > n or events[0] is not first or events[wired - 1] is not last:
            wire = None
        elif wired == n:
            return steps_json, rows_json
    if wire is None:
        if not n:
            state.events_wire = None
            return b"[]", b"[]"
        wired, last_us = 0, 0
    added = events[wired:] if wired else events
    rows = [r.wire or _row_wire(r) for r in added]
    more_steps = orjson.dumps(_steps([r.ts_us for r in added], last_us))
    more_rows = orjson.dumps(rows)
    last_us = added[-1].ts_us
    if wired:
        steps_json = steps_json[:-1] + b"," + more_steps[1:]
        rows_json = rows_json[:-1] + b"," + more_rows[1:]
    else:
        steps_json, rows_json = more_steps, more_rows
    state.events_wire = (n, events[0], events[-1], last_us, steps_json, rows_json)
    return steps_json, rows_json


def _seen_wire(state: CustomerState) -> tuple[bytes, bytes, bytes]:
    """The remembered ids as written: their ids, their hashes (one string of fixed-width
    hex, or a list if any is not ``SEEN_HASH_CHARS`` wide) and their times (each the step
    from the one before), from the last ones written plus the ids added since. The ids
    are the largest part of a long-lived customer's state; re-encoding them all for every
    commit was a large part of an encode (docs/performance.md, "State encode costs")."""
    seen = state.seen
    wire, wired, n = state.seen_wire, state.seen_wired, len(seen)
    if wire is None or n < wired:
        wire, wired = (b"[]", b"", b"[]", 0, True), 0
    if n > wired:
        ids_json, hashes, times_json, last_us, fixed = wire
        added = list(islice(reversed(seen.items()), n - wired)) if wired else list(seen.items())
        if wired:
            added.reverse()
        ids = [txn for txn, _ in added]
        tail = "".join([entry[SEEN_HASH] for _, entry in added])
        times = [entry[SEEN_TS] for _, entry in added]
        fixed = fixed and len(tail) == SEEN_HASH_CHARS * len(added) and tail.isalnum()
        more_ids, more_times = orjson.dumps(ids), orjson.dumps(_steps(times, last_us))
        ids_json = ids_json[:-1] + b"," + more_ids[1:] if wired else more_ids
        times_json = times_json[:-1] + b"," + more_times[1:] if wired else more_times
        hashes = hashes + tail.encode() if fixed else b""
        wire = (ids_json, hashes, times_json, times[-1], fixed)
    state.seen_wire, state.seen_wired = wire, n
    ids_json, hashes, times_json, _, fixed = wire
    hash_json = b'"%s"' % hashes if fixed else orjson.dumps([entry[SEEN_HASH] for entry in seen.values()])
    return ids_json, hash_json, times_json


def encode_state(state: CustomerState, *, compress: bool = False) -> bytes:
    # The hot path of every commit: the events and the remembered ids as written last time
    # plus what was added since; each lot keeps its stored form with the time it was
    # written after (a step from it; None: changed since).
    steps, events = _events_wire(state)
    lots: list[orjson.Fragment] = []
    append = lots.append
    before = 0
    for lot in state.lots:
        wire = lot[LOT_WIRE]
        ts_us = lot[LOT_TS]
        if wire is None or wire[0] != before:
            fragment = b"[%s,%d]" % (orjson.dumps(_money(lot[LOT_AMOUNT])), _time(ts_us - before))
            wire = lot[LOT_WIRE] = (before, orjson.Fragment(fragment))
        append(wire[1])
        before = ts_us
    ids, hashes, times = _seen_wire(state)
    blob: dict[str, Any] = {
        "f": FORMAT,
        "c": state.customer_id,
        "b": _money(state.balance),
        "fu": state.first_us,
        "fd": state.first_day,
        "lu": state.last_us,
        "et": orjson.Fragment(steps),  # the events' times (a column: it repeats much of "st", which zstd finds)
        "e": orjson.Fragment(events),
        "s": orjson.Fragment(ids),  # remembered txn_ids, oldest first
        "h": orjson.Fragment(hashes),  # their content hashes
        "st": orjson.Fragment(times),  # their event times
        "l": lots,
        "t": state.applied_total,
    }
    if state.last_txn_us != state.last_us:  # (mostly the same: a loan event came last)
        blob["lt"] = state.last_txn_us
    if state.overdraft:
        blob["o"] = _money(state.overdraft)
    if state.ledger:
        blob["g"] = {acct: [ts, _money(bal)] for acct, (ts, bal) in state.ledger.items()}
    if state.kept_from_day is not None:
        blob["kd"] = state.kept_from_day
    if state.carry_day is not None:
        blob["cd"] = [state.carry_day, state.carry_streak]
    if state.loans:
        blob["n"] = {
            loan_id: [
                [
                    p.ts_us,
                    _money(p.principal),
                    _money(p.outstanding),
                    _dec(p.annual_rate),
                    _money(p.installment),
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
        blob["im"] = {str(month): _money(total) for month, total in state.income_months.items()}
    if state.rule_state:
        blob["r"] = state.rule_state
    if state.offsets:
        blob["ko"] = state.offsets
    data = orjson.dumps(blob)
    return _compress(data) if compress else data


def encode_states(states: Sequence[CustomerState], *, compress: bool = False) -> list[bytes]:
    """Many states, as ``encode_state`` writes each, compressed in one call. A compressor
    releases the GIL while it works, and Faust's consumer thread takes it each time and
    holds it until it blocks: once per blob, that stalled a worker measurably; once per
    batch it costs nothing (docs/performance.md, "State encode costs")."""
    plain: list[bytes | bytearray | memoryview] = [encode_state(state) for state in states]
    if not compress or not plain:
        return [bytes(blob) for blob in plain]
    frames = _compressor().multi_compress_to_buffer(plain)
    return [frames[i].tobytes() for i in range(len(frames))]


def decode_state(data: bytes) -> CustomerState:
    if data[:1] != b"{":
        data = _decompress(data)
    blob = orjson.loads(data)
    version = blob.get("f")
    if version == 1:
        return _decode_v1(blob)
    if version != FORMAT:
        raise ValueError(f"unknown state format {version!r}")
    state = _common(blob, _unmoney)
    if "lt" not in blob:
        state.last_txn_us = state.last_us
    # (cache misses only, but a restart reads every state again: inlined, comprehensions)
    times = accumulate([x >> 1 if x & 1 else (x >> 1) * _US for x in blob["et"]])
    state.events = [_event_of(ts_us, row) for ts_us, row in zip(times, blob["e"], strict=True)]
    hashes = blob["h"]
    if isinstance(hashes, str):
        hashes = [hashes[i : i + SEEN_HASH_CHARS] for i in range(0, len(hashes), SEEN_HASH_CHARS)]
    times = accumulate([x >> 1 if x & 1 else (x >> 1) * _US for x in blob["st"]])
    state.seen = dict(zip(blob["s"], zip(hashes, times, strict=True), strict=True))
    lots = blob["l"]
    times = accumulate([x >> 1 if x & 1 else (x >> 1) * _US for _, x in lots])
    state.lots = deque(
        [Decimal(amount) if type(amount) is str else Decimal(f"{amount}E-2"), ts_us, None]
        for (amount, _), ts_us in zip(lots, times, strict=True)
    )
    return state


def _common(blob: dict[str, Any], money: Callable[[Any], Decimal]) -> CustomerState:
    """What formats 1 and 2 write alike (money read with ``money``)."""
    state = CustomerState(
        customer_id=blob["c"],
        balance=money(blob["b"]),
        first_us=blob["fu"],
        first_day=blob["fd"],
        last_us=blob["lu"],
        last_txn_us=blob.get("lt"),
        applied_total=blob["t"],
        overdraft=money(blob["o"]) if "o" in blob else ZERO,
        kept_from_day=blob.get("kd"),
    )
    state.ledger = {acct: (entry[0], money(entry[1])) for acct, entry in blob.get("g", {}).items()}
    if "cd" in blob:
        state.carry_day, state.carry_streak = blob["cd"]
    for loan_id, points in blob.get("n", {}).items():
        state.loans[loan_id] = [
            LoanPoint(p[0], money(p[1]), money(p[2]), Decimal(p[3]), money(p[4]), p[5], p[6], p[7]) for p in points
        ]
    if "sp" in blob:
        state.salary_payer, state.salary_payer_us = blob["sp"]
    state.income_months = {int(month): money(total) for month, total in blob.get("im", {}).items()}
    state.rule_state = blob.get("r", {})
    state.offsets = {tp: seen if isinstance(seen, list) else [seen, -1] for tp, seen in blob.get("ko", {}).items()}
    return state


def _decode_v1(blob: dict[str, Any]) -> CustomerState:
    """A state written by format 1 (money as strings, absolute times, a dict of ids). Its
    records had no kind code: each gets the kind its flags tell (``kind_of_flags``); its
    remembered hashes are cut to the width kept now (``content_hash``)."""
    state = _common(blob, Decimal)
    for row in blob["e"]:
        flags = row[3]
        flags |= KIND_CODE.get(kind_of_flags(flags), 0)
        record = EventRecord(row[0], row[1], Decimal(row[2]), flags, row[4] if len(row) > 4 else None)
        if len(row) > 5:
            record.consumed = Decimal(row[5])
            record.weighted_age_us = Decimal(row[6])
        state.events.append(record)
    state.seen = {txn: (entry[0][:SEEN_HASH_CHARS], entry[1]) for txn, entry in blob["s"].items()}
    state.lots = deque([Decimal(amount), ts, None] for amount, ts in blob["l"])
    return state
