"""Bad input at the edge: every case of the contract becomes a dead letter with a
clear, bounded reason and no personal data in the error text."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.events import LoanEvent, TransactionEvent
from streams.deadletter import RawRecord, dead_letter
from streams.decode import decode
from streams.errors import InvalidEvent
from streams.topics import LOANS, TRANSACTIONS

GOOD = {
    "txn_id": "t-1",
    "customer_id": "C-SECRET-NAME",
    "account_id": "6222020200112233",
    "ts": "2024-01-31T23:59:59.5+08:00",
    "direction": "credit",
    "amount": "1234.50",
}
LOAN = {
    "loan_id": "L1",
    "customer_id": "c",
    "account_id": "a",
    "ts": "2024-01-01T08:00:00+08:00",
    "principal": "100000",
    "outstanding": "90000.00",
    "annual_rate": "0.0435",
    "installment": "3000",
    "next_due": "2024-02-01",
    "status": "active",
}


def record(value: bytes | None, topic: str = TRANSACTIONS) -> RawRecord:
    return RawRecord(topic=topic, partition=1, offset=42, key=b"k", value=value, timestamp_ms=1)


def bad(payload: object, reason: str, topic: str = TRANSACTIONS) -> InvalidEvent:
    value = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(InvalidEvent) as caught:
        decode(record(value, topic), max_bytes=64 * 1024)
    assert caught.value.reason == reason, caught.value.error
    for secret in ("C-SECRET-NAME", "6222020200112233", "1234.50"):
        assert secret not in caught.value.error
    return caught.value


def test_good_transaction_and_loan() -> None:
    event = decode(record(json.dumps(GOOD).encode()), 65536)
    assert isinstance(event, TransactionEvent)
    assert event.amount == Decimal("1234.50") and event.currency == "CNY" and event.kind == "other"
    loan = decode(record(json.dumps(LOAN).encode(), LOANS), 65536)
    assert isinstance(loan, LoanEvent) and loan.annual_rate == Decimal("0.0435")


def test_amount_as_json_number_keeps_every_cent() -> None:
    text = json.dumps(GOOD).replace('"1234.50"', "1234567890123456.78").encode()
    event = decode(record(text), 65536)
    assert isinstance(event, TransactionEvent) and event.amount == Decimal("1234567890123456.78")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount": "0"}, "invalid_amount"),
        ({"amount": "-5"}, "invalid_amount"),
        ({"amount": "1.005"}, "invalid_amount"),
        ({"amount": "NaN"}, "invalid_amount"),
        ({"amount": "Infinity"}, "invalid_amount"),
        ({"amount": True}, "invalid_amount"),
        ({"amount": "1" * 40}, "invalid_amount"),
        ({"ts": "2024-01-31T23:59:59"}, "invalid_ts"),
        ({"ts": "2024-01-31"}, "invalid_ts"),
        ({"ts": 1706716799}, "invalid_ts"),
        ({"ts": "yesterday"}, "invalid_ts"),
        ({"direction": "sideways"}, "invalid_direction"),
        ({"kind": "lottery"}, "invalid_kind"),
        ({"external": "yes"}, "invalid_external"),
        ({"currency": "yuan"}, "invalid_currency"),
        ({"txn_id": ""}, "invalid_txn_id"),
        ({"txn_id": "x" * 129}, "invalid_txn_id"),
        ({"txn_id": 7}, "invalid_txn_id"),
        ({"customer_id": "c" * 65}, "invalid_customer_id"),
        ({"account_id": None}, "invalid_account_id"),
    ],
)
def test_each_contract_violation_is_a_dead_letter(change: dict[str, object], reason: str) -> None:
    bad({**GOOD, **change}, reason)


@pytest.mark.parametrize("field", ["txn_id", "customer_id", "account_id", "ts", "direction", "amount"])
def test_missing_required_field(field: str) -> None:
    payload = {k: v for k, v in GOOD.items() if k != field}
    bad(payload, f"missing_{field}")


def test_not_json_not_utf8_not_object_too_deep_too_large_empty() -> None:
    bad(b"{not json", "not_json")
    bad(b'{"amount": NaN}', "not_json")
    bad(b"\xff\xfe{}", "not_utf8")
    bad([GOOD], "not_an_object")
    bad(b"[" * 100_000 + b"]" * 100_000, "too_large")
    bad(b"[" * 5000 + b"]" * 5000, "too_deep")
    with pytest.raises(InvalidEvent) as caught:
        decode(record(None), 65536)
    assert caught.value.reason == "empty"


def test_loan_on_the_transaction_topic_is_invalid() -> None:
    bad(LOAN, "missing_txn_id")
    bad({**LOAN, "status": "forgiven"}, "invalid_status", topic=LOANS)
    bad({**LOAN, "next_due": 20240201}, "invalid_next_due", topic=LOANS)


def test_dead_letter_keeps_original_bytes_and_where_it_came_from() -> None:
    original = b"\xff garbage"
    letter = orjson.loads(dead_letter(record(original), "not_utf8", "invalid UTF-8 at byte 0", 99))
    assert base64.b64decode(letter["value_b64"]) == original
    assert (letter["topic"], letter["partition"], letter["offset"], letter["reason"]) == (
        TRANSACTIONS,
        1,
        42,
        "not_utf8",
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_never_raise_anything_but_invalid_event(value: bytes) -> None:
    try:
        decode(record(value), 65536)
    except InvalidEvent as exc:
        assert exc.reason and " " not in exc.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(GOOD)), json_values, st.sampled_from([TRANSACTIONS, LOANS]))
def test_any_field_replaced_by_any_json_is_an_event_or_a_dead_letter(field: str, value: object, topic: str) -> None:
    base = GOOD if topic == TRANSACTIONS else LOAN
    payload = json.dumps({**base, field: value}, allow_nan=True).encode()
    try:
        event = decode(record(payload, topic), 65536)
    except InvalidEvent as exc:
        assert exc.reason and " " not in exc.reason and len(exc.error) < 500
    else:  # accepted: then it satisfies the contract
        if isinstance(event, TransactionEvent):
            assert event.amount > 0 and event.amount == event.amount.quantize(Decimal("0.01"))
            assert event.ts.tzinfo is not None
