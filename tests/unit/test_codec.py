"""The stored form of a state (``streams.storage.codec``): format 2 round trips exactly, and the
states that format 1 wrote (``data/state-v1``: written by the codec before format 2,
from ``events.jsonl``) still read, as the same state."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.events import LoanEvent, TransactionEvent
from rules.metrics import evaluate
from rules.state import (
    KIND_CODE,
    KIND_MASK,
    KINDS,
    SEEN_HASH_CHARS,
    US_PER_DAY,
    CustomerState,
    EventRecord,
    Outcome,
    StateConfig,
    apply_event,
    kind_of_flags,
    record_kind,
)
from streams.storage.codec import (
    _age,
    _money,
    _time,
    _unage,
    _unmoney,
    _untime,
    compress_finding,
    decode_state,
    encode_state,
    finding_entry,
)

V1 = Path(__file__).with_name("data") / "state-v1"
ZONE = ZoneInfo("Asia/Shanghai")
CONFIG = StateConfig(ZONE, lot_cap=8)  # as the fixture was written


def v1_events() -> list[TransactionEvent | LoanEvent]:
    events: list[TransactionEvent | LoanEvent] = []
    for line in (V1 / "events.jsonl").read_bytes().splitlines():
        obj = orjson.loads(line)
        events.append(LoanEvent.model_validate(obj) if "loan_id" in obj else TransactionEvent.model_validate(obj))
    return events


def built_now() -> CustomerState:
    state = CustomerState("c1")
    for event in v1_events():
        apply_event(state, event, CONFIG)
    state.rule_state = {"active": {"x": 1}}
    state.offsets = {"fundflow.transactions.v1:0": [41, 1764000000041]}
    return state


def record_values(record: EventRecord) -> tuple[object, ...]:
    """Every value of a record as text, so that an exponent change shows (``1.5`` vs ``1.50``)."""
    return (record.ts_us, record.day, str(record.amount), record.flags, record.bank)


@pytest.mark.parametrize("name", ["state.json", "state.zst"])
def test_a_state_written_by_format_1_reads_as_the_same_state(name: str) -> None:
    blob = (V1 / name).read_bytes()
    assert orjson.loads(blob if name.endswith(".json") else (V1 / "state.json").read_bytes())["f"] == 1
    old = decode_state(blob)
    now = built_now()
    assert len(old.events) == len(now.events) > 20 and len(old.lots) == len(now.lots) > 1
    for was, is_ in zip(old.events, now.events, strict=True):
        kind = record_kind(is_)
        # format 1 kept the flags of the kinds the windows need, not the kind: those read
        # exactly, every other kind as "other"
        assert record_kind(was) == (kind if kind in ("salary", "pension", "loan_repayment", "fee") else "other")
        assert was.flags & ~KIND_MASK == is_.flags & ~KIND_MASK
        assert (str(was.amount), was.ts_us, was.day, was.bank) == (str(is_.amount), is_.ts_us, is_.day, is_.bank)
        assert (str(was.consumed), str(was.weighted_age_us)) == (str(is_.consumed), str(is_.weighted_age_us))
    # the remembered hashes were cut to the width kept now: a redelivery is still a duplicate
    assert old.seen == now.seen
    for record in now.events:  # the kind as format 1 could tell it...
        record.flags = (record.flags & ~KIND_MASK) | KIND_CODE[kind_of_flags(record.flags)]
        record.wire = None
    assert encode_state(old) == encode_state(now)  # ...and everything else is the same, exactly
    assert now.last_us is not None
    for as_of in (now.last_us, now.last_us + 40 * US_PER_DAY):
        assert evaluate(old, as_of, CONFIG) == evaluate(now, as_of, CONFIG)
    for event in v1_events():
        if isinstance(event, TransactionEvent):
            assert apply_event(old, event, CONFIG) in (Outcome.DUPLICATE, Outcome.TOO_LATE)
    # and it goes on in format 2
    again = decode_state(encode_state(old, compress=True))
    assert encode_state(again) == encode_state(old)
    assert orjson.loads(encode_state(again))["f"] == 2


def test_format_2_keeps_every_kind_and_every_amount_as_it_was() -> None:
    state = built_now()
    kinds = {record_kind(r) for r in state.events}
    assert len(kinds) >= 10  # the fixture has every kind; some aged out of the windows
    back = decode_state(encode_state(state))
    assert [record_kind(r) for r in back.events] == [record_kind(r) for r in state.events]
    assert [record_values(r) for r in back.events] == [record_values(r) for r in state.events]
    assert [(str(r.consumed), str(r.weighted_age_us)) for r in back.events] == [
        (str(r.consumed), str(r.weighted_age_us)) for r in state.events
    ]
    assert [(str(lot[0]), lot[1]) for lot in back.lots] == [(str(lot[0]), lot[1]) for lot in state.lots]
    assert back.seen == state.seen and str(back.balance) == str(state.balance)


def test_every_kind_reads_back_exactly() -> None:
    base = {"customer_id": "c", "account_id": "a", "amount": "1.00"}
    state = CustomerState("c")
    for i, kind in enumerate(KINDS):
        event = TransactionEvent.model_validate(
            base
            | {"txn_id": f"t{i}", "kind": kind, "ts": f"2024-03-01T0{i % 10}:00:0{i % 7}+08:00"}
            | {"direction": "debit" if i % 2 else "credit"}
        )
        assert apply_event(state, event, CONFIG) is Outcome.APPLIED
    assert sorted(record_kind(r) for r in state.events) == sorted(KINDS)
    back = decode_state(encode_state(state, compress=True))
    assert sorted(record_kind(r) for r in back.events) == sorted(KINDS)
    # a record built without a kind code (as by a version before it) reads from its flags
    assert record_kind(EventRecord(0, 719163, Decimal(1), 16, None)) == "salary"
    assert record_kind(EventRecord(0, 719163, Decimal(1), 3, "B")) == "other"


def test_odd_records_round_trip() -> None:
    """A day far from the UTC day of the ts (no zone gives one; stored explicitly), hashes
    of another width than content_hash's (stored as a list), and money of any exponent."""
    state = CustomerState("c", balance=Decimal("-0.00"), overdraft=Decimal("1E+3"))
    state.events = [
        EventRecord(1_000_000, 5, Decimal("-2.5"), 0, None, Decimal("2.50"), Decimal("123456789.123")),
        EventRecord(-86_400_000_001, 719_162, Decimal("7"), 1 | 2, "B"),
        EventRecord(-86_400_000_000, 719_163, Decimal("-0.01"), 0, None, Decimal("0.01"), Decimal("-5.00")),
    ]
    state.seen = {"a": ("0123abcd", 5), "b": ("xyz", -7), "c": ("0123456789ab", 10**15 + 1)}
    state.lots.extend([[Decimal("1.005"), -3, None], [Decimal("10.00"), 10**6, None]])
    back = decode_state(encode_state(state))
    assert [record_values(r) for r in back.events] == [record_values(r) for r in state.events]
    assert [(str(r.consumed), str(r.weighted_age_us)) for r in back.events] == [
        (str(r.consumed), str(r.weighted_age_us)) for r in state.events
    ]
    assert back.seen == state.seen
    assert [(str(lot[0]), lot[1]) for lot in back.lots] == [(str(lot[0]), lot[1]) for lot in state.lots]
    assert (str(back.balance), str(back.overdraft)) == ("-0.00", "1E+3")
    quoted = '"\\"\n""""'  # as wide as a content hash, but not one
    assert len(quoted) == SEEN_HASH_CHARS
    state.seen = {"a": ("0123abcd", 5), "q": (quoted, 6)}
    assert decode_state(encode_state(state)).seen == state.seen


def test_a_newer_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown state format 3"):
        decode_state(b'{"f":3}')


money = st.decimals(allow_nan=False, allow_infinity=False) | st.integers(-(10**30), 10**30).map(
    lambda cents: Decimal(cents).scaleb(-2)
)


@given(money)
def test_money_and_ages_are_stored_exactly(value: Decimal) -> None:
    for encode, decode in ((_money, _unmoney), (_age, _unage)):
        stored = orjson.loads(orjson.dumps(encode(value)))
        assert str(decode(stored)) == str(value)


@given(st.integers(-(2**62), 2**62) | st.integers(-(10**9), 10**9).map(lambda s: s * 1_000_000))
def test_times_are_stored_exactly(us: int) -> None:
    assert _untime(orjson.loads(orjson.dumps(_time(us)))) == us


def test_the_latest_transaction_time_reads_back_when_it_is_not_the_latest_event_time() -> None:
    for last_us, last_txn_us in ((5, 5), (7, 5), (7, None), (None, None)):
        state = CustomerState("c", last_us=last_us, last_txn_us=last_txn_us)
        back = decode_state(encode_state(state))
        assert (back.last_us, back.last_txn_us) == (last_us, last_txn_us)


@given(st.binary(max_size=4000))
def test_a_recent_finding_reads_back_byte_for_byte(body: bytes) -> None:
    entry = b"fundflow.alerts.v1\n" + body
    assert finding_entry(compress_finding(entry)) == entry
    assert finding_entry(entry) == entry  # (kept as it was by versions before 2026-12)


def test_a_broken_recent_finding_is_refused_not_misread() -> None:
    broken = compress_finding(b'fundflow.alerts.v1\n"c1"\n{"id": "x"}')[:-3]
    with pytest.raises(ValueError, match="recent finding"):
        finding_entry(broken)
