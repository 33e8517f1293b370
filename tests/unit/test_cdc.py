"""``feeds.cdc`` and ``feeds.mapping``: Debezium envelopes and Canal flat messages of a core
ledger table become the TransactionEvents they mean (pure: no broker, no Redis)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from feeds.cdc import (
    Change,
    Context,
    Refusal,
    RowChange,
    RowRecord,
    Skip,
    decimal_value,
    parse_canal,
    parse_debezium,
    translate,
)
from feeds.mapping import load_mapping, parse_mapping
from streams.errors import ConfigError
from tests.support import ROOT
from tests.support.cdcgen import at, canal, debezium, expected, mapping, row

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Ledger:
    """What the adapter keeps per row, in memory: applies changes in order, collects events."""

    def __init__(self, fmt: str = "debezium", **options: Any) -> None:
        self.parse = parse_debezium if fmt == "debezium" else parse_canal
        self.mapping = parse_mapping(mapping(**options))
        self.context = Context(self.mapping, SHANGHAI, "CNY")
        self.rows: dict[str, RowRecord] = {}

    def apply(self, value: bytes | None) -> tuple[list[dict[str, Any]], list[Refusal], list[str]]:
        """Events, refusals and per-row outcomes of one record (a Skip: its outcome only)."""
        parsed = self.parse(value, self.mapping)
        if isinstance(parsed, Skip):
            return [], [], [parsed.outcome]
        if isinstance(parsed, Refusal):
            return [], [parsed], ["dead_letter"]
        events: list[dict[str, Any]] = []
        refusals: list[Refusal] = []
        outcomes: list[str] = []
        for change in parsed.rows:
            if isinstance(change, Refusal):
                refusals.append(change)
                outcomes.append("dead_letter")
                continue
            done = translate(change, self.rows.get(change.row_id), parsed, self.context)
            if isinstance(done, Refusal):
                refusals.append(done)
                outcomes.append("dead_letter")
                continue
            self.rows[change.row_id] = done.record
            events.extend(done.events)
            outcomes.append(done.outcome)
        return events, refusals, outcomes

    def events(self, value: bytes | None) -> list[dict[str, Any]]:
        events, refusals, _ = self.apply(value)
        assert refusals == []
        return events

    def refusal(self, value: bytes | None) -> Refusal:
        _, refusals, _ = self.apply(value)
        assert len(refusals) == 1, refusals
        return refusals[0]


# --- Debezium -----------------------------------------------------------------------


def test_create_update_delete_become_event_reversal_and_new_version() -> None:
    ledger = Ledger(prefix="CB:")
    first = row(1, "1234.50")
    assert ledger.events(debezium("c", None, first, pos=100)) == [expected("CB:acct_txn:1", first)]

    corrected = {**first, "txn_amt": "1243.50"}
    fixed_at = at(1, 10)
    assert ledger.events(debezium("u", first, corrected, pos=200, changed=fixed_at)) == [
        expected("CB:acct_txn:1:rev", first, reverses="CB:acct_txn:1", ts=fixed_at),
        expected("CB:acct_txn:1~2", corrected),
    ]
    deleted_at = at(2, 8)
    assert ledger.events(debezium("d", corrected, None, pos=300, changed=deleted_at)) == [
        expected("CB:acct_txn:1~2:rev", corrected, reverses="CB:acct_txn:1~2", ts=deleted_at)
    ]
    assert ledger.apply(None) == ([], [], ["tombstone"])  # the delete's tombstone
    # the id comes back (a new insert with the same key): a new version, never a reused txn_id
    again = row(1, "5.00", dc="D")
    assert ledger.events(debezium("c", None, again, pos=400)) == [expected("CB:acct_txn:1~3", again)]


def test_a_reversal_is_never_dated_before_what_it_reverses() -> None:
    ledger = Ledger()
    late = row(2, "10.00", when=at(5, 9))
    ledger.events(debezium("c", None, late))
    [rev] = ledger.events(debezium("d", late, None, changed=at(1, 8)))  # a clock behind the row's time
    assert rev["ts"] == at(5, 9).isoformat() and rev["reverses"] == "acct_txn:2" and rev["direction"] == "debit"


def test_an_update_of_no_mapped_column_changes_nothing() -> None:
    ledger = Ledger()
    first = row(3, "88.00")
    ledger.events(debezium("c", None, first))
    events, refusals, outcomes = ledger.apply(debezium("u", first, {**first, "memo": "seen by ops"}))
    assert (events, refusals, outcomes) == ([], [], ["unchanged"])


def test_posting_and_unposting_a_row() -> None:
    ledger = Ledger()
    pending = row(4, "300.00", status="P")
    assert ledger.apply(debezium("c", None, pending)) == ([], [], ["not_posted"])
    booked = {**pending, "status": "B"}
    assert ledger.events(debezium("u", pending, booked)) == [expected("acct_txn:4", booked)]
    undone = {**booked, "status": "P"}
    assert ledger.events(debezium("u", booked, undone, changed=at(1, 12))) == [
        expected("acct_txn:4:rev", booked, reverses="acct_txn:4", ts=at(1, 12))
    ]
    assert ledger.apply(debezium("d", undone, None)) == ([], [], ["nothing"])  # nothing live to reverse


def test_snapshot_rows_are_history_and_a_second_snapshot_publishes_nothing() -> None:
    ledger = Ledger()
    rows = [row(10 + i, f"{i + 1}00.00", cust=f"C{i}") for i in range(3)]
    first = [e for r in rows for e in ledger.events(debezium("r", None, r))]
    assert first == [expected(f"acct_txn:{10 + i}", r) for i, r in enumerate(rows)]
    assert all(ledger.apply(debezium("r", None, r))[2] == ["unchanged"] for r in rows)
    snap = parse_debezium(debezium("r", None, rows[0]), ledger.mapping)
    assert isinstance(snap, Change) and snap.snapshot and snap.position is None  # no position orders a snapshot


def test_truncate_and_message_are_ignored_and_tombstones_too() -> None:
    ledger = Ledger()
    truncate = orjson.dumps({"payload": {"op": "t", "before": None, "after": None, "source": {}}, "schema": None})
    assert ledger.apply(truncate)[2] == ["ignored"]
    assert ledger.apply(orjson.dumps({"op": "m", "message": {"prefix": "x"}}))[2] == ["ignored"]
    assert ledger.apply(None)[2] == ["tombstone"]
    assert ledger.apply(b"null")[2] == ["tombstone"]
    assert ledger.apply(orjson.dumps({"schema": None, "payload": None}))[2] == ["tombstone"]


@pytest.mark.parametrize("wrapped", [True, False])
@pytest.mark.parametrize("mode", ["precise", "string"])
def test_precise_and_string_decimals_with_or_without_the_schema(mode: str, wrapped: bool) -> None:
    ledger = Ledger(decimal=mode)
    big = row(5, "123456789012345.67")
    [event] = ledger.events(debezium("c", None, big, decimal=mode, wrapped=wrapped))
    assert event["amount"] == "123456789012345.67"


def test_precise_bytes_are_the_big_endian_twos_complement_of_the_unscaled_value() -> None:
    """Hand-computed: 1234.50 at scale 2 is 123450 = 0x01E23A; -0.01 is -1 = 0xFF."""
    change = parse_debezium(debezium("c", None, row(6, "1.00"), wrapped=False), parse_mapping(mapping()))
    assert isinstance(change, Change)
    m = parse_mapping(mapping())
    assert decimal_value("AeI6", "txn_amt", change, m) == Decimal("1234.50")
    assert decimal_value("/w==", "txn_amt", change, m) == Decimal("-0.01")
    assert decimal_value("AA==", "txn_amt", change, m) == Decimal("0.00")
    variable = {"scale": 3, "value": "AeI6"}  # io.debezium.data.VariableScaleDecimal
    assert decimal_value(variable, "txn_amt", change, m) == Decimal("123.450")


def test_precise_without_a_schema_needs_the_scale_from_the_mapping() -> None:
    ledger = Ledger(amount={"column": "txn_amt"})
    refusal = ledger.refusal(debezium("c", None, row(7, "9.99"), wrapped=False))
    assert refusal.reason == "amount_scale_unknown" and "amount.scale" in refusal.error
    # with the schema, the scale comes from the field's parameters
    assert ledger.events(debezium("c", None, row(7, "9.99")))[0]["amount"] == "9.99"


def test_double_is_refused_at_start_up_and_a_float_per_record() -> None:
    with pytest.raises(ConfigError, match=r"decimal: double loses cents"):
        parse_mapping(mapping(decimal="double"))
    ledger = Ledger()
    for wrapped in (True, False):
        refusal = ledger.refusal(debezium("c", None, row(8, "10.10"), decimal="double", wrapped=wrapped))
        assert refusal.reason == "amount_not_exact"
        assert "10.1" not in refusal.error  # the error names the column, never the value


def test_an_amount_with_more_decimals_than_the_currency_is_refused() -> None:
    ledger = Ledger(decimal="string")
    payload = orjson.loads(debezium("c", None, row(9, "1.00"), decimal="string", wrapped=False))
    payload["after"]["txn_amt"] = "1.005"
    assert ledger.refusal(orjson.dumps(payload)).reason == "amount_precision"
    payload["after"]["txn_amt"] = "1.500"  # trailing zeros are exact
    assert ledger.events(orjson.dumps(payload))[0]["amount"] == "1.50"


def test_unknown_codes_missing_columns_and_other_tables_are_refusals() -> None:
    ledger = Ledger()
    assert ledger.refusal(debezium("c", None, row(11, "1.00", dc="X"))).reason == "unknown_code"
    # a kind code the table does not list: the mapping's default, or a refusal without one
    assert ledger.events(debezium("c", None, row(12, "1.00", code="ZZZ99")))[0]["kind"] == "other"
    strict = Ledger(kind={"column": "txn_code", "codes": {"TRI01": "transfer_in"}})
    assert strict.refusal(debezium("c", None, row(12, "1.00", code="ZZZ99"))).reason == "unknown_code"
    no_account = {k: v for k, v in row(13, "1.00").items() if k != "acct_no"}
    refusal = ledger.refusal(debezium("c", None, no_account, wrapped=False))
    assert (refusal.reason, refusal.error) == ("missing_column", "column 'acct_no' is not in the row")
    assert ledger.refusal(debezium("c", None, row(14, "1.00"), table="loans")).reason == "other_table"
    assert ledger.refusal(b"{not json").reason == "not_json"
    assert ledger.refusal(orjson.dumps({"id": 1})).reason == "not_an_envelope"
    assert ledger.refusal(debezium("c", None, row(15, "0.00"))).reason == "bad_amount"
    no_key = {k: v for k, v in row(16, "1.00").items() if k != "txn_no"}
    assert ledger.refusal(debezium("c", None, no_key, wrapped=False)).reason == "missing_column"


def test_an_update_of_a_row_never_seen_uses_the_before_image_or_is_refused() -> None:
    """Postgres without REPLICA IDENTITY FULL sends only the key in ``before``."""
    first = row(20, "50.00")
    changed = {**first, "txn_amt": "60.00"}
    full = Ledger()
    assert full.events(debezium("u", first, changed)) == [
        expected("acct_txn:20:rev", first, reverses="acct_txn:20"),
        expected("acct_txn:20~2", changed),
    ]
    key_only = Ledger()
    payload = orjson.loads(debezium("u", first, changed, lsn=(900, 950), wrapped=False))
    payload["before"] = {"txn_no": 20}
    refusal = key_only.refusal(orjson.dumps(payload))
    assert refusal.reason == "unknown_row" and "REPLICA IDENTITY FULL" in refusal.error
    # the adapter saw the insert: the record says what is live, the before image is not needed
    key_only.events(debezium("c", None, first, lsn=(800, 850)))
    assert [e["txn_id"] for e in key_only.events(orjson.dumps(payload))] == ["acct_txn:20:rev", "acct_txn:20~2"]


def test_source_positions() -> None:
    m = parse_mapping(mapping())
    mysql = parse_debezium(debezium("c", None, row(1, "1.00"), binlog="mysql-bin.000012", pos=777, row_index=3), m)
    postgres = parse_debezium(debezium("c", None, row(1, "1.00"), lsn=(4000, 4100)), m)
    assert isinstance(mysql, Change) and mysql.position == (12, 777, 3)
    assert isinstance(postgres, Change) and postgres.position == (4000, 4100)
    # a redelivery differs in its top-level ts_ms only: the same digest
    again = parse_debezium(debezium("c", None, row(1, "1.00"), lsn=(4000, 4100)), m)
    assert isinstance(again, Change) and again.digest == postgres.digest
    no_sequence = orjson.loads(debezium("c", None, row(1, "1.00"), lsn=(4000, 4100), wrapped=False))
    del no_sequence["source"]["sequence"]  # lsn alone is not an order (concurrent transactions interleave)
    bare = parse_debezium(orjson.dumps(no_sequence), m)
    assert isinstance(bare, Change) and bare.position is None


def test_counterparties_and_time_formats() -> None:
    ledger = Ledger()
    out = row(30, "70.00", dc="D", code="TRO01", cp_bank="105100000017", cp_cust="C777")
    [event] = ledger.events(debezium("c", None, out))
    assert event["external"] is True and event["counterparty_bank"] == "105100000017"
    assert event["counterparty_customer_id"] == "C777" and event["direction"] == "debit"
    own = row(31, "70.00", cp_bank="102100099996", cp_cust="C001")  # our bank, the same customer
    [event] = ledger.events(debezium("c", None, own))
    assert (
        event["external"] is False and "counterparty_bank" not in event and event["counterparty_customer_id"] == "C001"
    )

    local_ms = int(dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.UTC).timestamp() * 1000)  # 09:30 local, "as UTC"
    wall = Ledger(ts={"column": "txn_time", "format": "epoch_ms", "wall_clock": True})
    [event] = wall.events(debezium("c", None, row(32, "1.00", when=local_ms)))  # type: ignore[arg-type]
    assert event["ts"] == "2024-03-01T09:30:00+08:00"
    days = Ledger(ts={"column": "txn_time", "format": "epoch_days"})
    [event] = days.events(debezium("c", None, row(33, "1.00", when=19783)))  # type: ignore[arg-type]
    assert event["ts"] == "2024-03-01T00:00:00+08:00"
    iso = Ledger(ts={"column": "txn_time", "format": "iso"})
    [event] = iso.events(debezium("c", None, row(34, "1.00", when="2024-03-01T01:30:00Z")))  # type: ignore[arg-type]
    assert dt.datetime.fromisoformat(event["ts"]) == at(1, 9, 30)
    assert iso.refusal(debezium("c", None, row(35, "1.00", when="yesterday"))).reason == "bad_timestamp"  # type: ignore[arg-type]


def test_row_ids_that_would_make_txn_ids_alike_are_escaped() -> None:
    ledger = Ledger(decimal="string")
    payload = orjson.loads(debezium("c", None, row(1, "1.00"), decimal="string", wrapped=False))
    payload["after"]["txn_no"] = "5~2"
    assert ledger.events(orjson.dumps(payload))[0]["txn_id"] == "acct_txn:5%7E2"
    payload["after"]["txn_no"] = "5:rev"
    assert ledger.events(orjson.dumps(payload))[0]["txn_id"] == "acct_txn:5%3Arev"


# --- Canal --------------------------------------------------------------------------


def test_canal_several_rows_per_message_and_the_old_overlay() -> None:
    ledger = Ledger("canal", ts_format="yyyy-MM-dd HH:mm:ss")
    a, b = row(40, "100.00", cust="C1"), row(41, "200.00", cust="C2", dc="2")
    assert ledger.events(canal("INSERT", [a, b])) == [expected("acct_txn:40", a), expected("acct_txn:41", b)]
    # UPDATE: data holds the new rows, old only the changed columns' old values
    a2, b2 = {**a, "txn_amt": "110.00"}, {**b, "memo": "note"}
    events = ledger.events(canal("UPDATE", [a2, b2], [{"txn_amt": "100.00"}, {"memo": ""}], es=at(1, 11)))
    assert events == [
        expected("acct_txn:40:rev", a, reverses="acct_txn:40", ts=at(1, 11)),
        expected("acct_txn:40~2", a2),
    ]  # row 41 changed only an unmapped column
    assert ledger.events(canal("DELETE", [b2], es=at(2, 9))) == [
        expected("acct_txn:41:rev", b, reverses="acct_txn:41", ts=at(2, 9))
    ]


def test_canal_an_update_of_a_row_never_seen_uses_the_overlaid_old_row() -> None:
    ledger = Ledger("canal", ts_format="yyyy-MM-dd HH:mm:ss")
    before = row(42, "10.00", status="P")
    after = {**before, "status": "B"}
    assert ledger.events(canal("UPDATE", [after], [{"status": "P"}])) == [expected("acct_txn:42", after)]


def test_canal_ddl_other_types_bad_rows_and_floats() -> None:
    ledger = Ledger("canal", ts_format="yyyy-MM-dd HH:mm:ss")
    assert ledger.apply(canal("ALTER", [], is_ddl=True))[2] == ["ignored"]
    assert ledger.apply(canal("INSERT", [row(50, "1.00")], table="other"))[1][0].reason == "other_table"
    # one bad row among good ones: the good rows still count, the bad one is named by its index
    events, refusals, outcomes = ledger.apply(canal("INSERT", [row(51, "1.00"), row(52, "1.00", dc="Q")]))
    assert [e["txn_id"] for e in events] == ["acct_txn:51"] and outcomes == ["published", "dead_letter"]
    assert refusals[0].reason == "unknown_code"
    message = orjson.loads(canal("INSERT", [row(53, "1.10")]))
    message["mysqlType"]["txn_amt"] = "double"
    assert ledger.refusal(orjson.dumps(message)).reason == "amount_not_exact"
    update = orjson.loads(canal("UPDATE", [row(54, "1.00")], [{}]))
    update["old"] = None
    assert ledger.refusal(orjson.dumps(update)).reason == "not_a_flat_message"


def test_canal_a_primary_key_change_is_a_delete_and_an_insert() -> None:
    ledger = Ledger("canal", ts_format="yyyy-MM-dd HH:mm:ss")
    first = row(60, "9.00")
    ledger.events(canal("INSERT", [first]))
    moved = {**first, "txn_no": 61}
    events = ledger.events(canal("UPDATE", [moved], [{"txn_no": "60"}]))
    assert [(e["txn_id"], e.get("reverses")) for e in events] == [
        ("acct_txn:60:rev", "acct_txn:60"),
        ("acct_txn:61", None),
    ]


def test_canal_digests_ignore_what_a_redelivery_changes() -> None:
    m = parse_mapping(mapping(ts_format="yyyy-MM-dd HH:mm:ss"))
    one = parse_canal(canal("INSERT", [row(70, "1.00")], batch_id=5), m)
    again = parse_canal(canal("INSERT", [row(70, "1.00")], batch_id=1), m)  # Canal restarted: ids from 1
    other = parse_canal(canal("INSERT", [row(71, "1.00")], batch_id=5), m)
    assert isinstance(one, Change) and isinstance(again, Change) and isinstance(other, Change)
    assert one.digest == again.digest != other.digest and one.position is None


# --- the mapping file ---------------------------------------------------------------


def test_the_shipped_example_mapping_loads() -> None:
    example = load_mapping(ROOT / "deploy/cdc-mapping.example.yaml")
    assert example.name == "corebank-acct-txn" and example.row_id == ("txn_no",)
    assert example.direction.credit == ("C", "1") and example.ts.wall_clock


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"direction": {"column": "dc", "credit": ["C"], "debit": ["C"]}}, "codes both credit and debit"),
        ({"direction": {"sign_of_amount": True, "column": "dc"}}, "not both"),
        ({"ts": {"column": "t", "format": "iso", "wall_clock": True}}, "epoch formats only"),
        ({"ts": {"column": "t", "format": "dd/MM/yyyy"}}, "ts.format"),
        ({"kind": {"column": "k", "codes": {"X": "bonus"}}}, "kind.codes.X"),
        ({"zone": "Mars/Olympus"}, "unknown time zone"),
        ({"source": "a b"}, "source"),
        ({"currency": {"column": "ccy", "constant": "CNY"}}, "exactly one of column or constant"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_mapping_is_one_line(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_mapping(mapping(**change))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_mapping_file_that_is_not_yaml_or_missing(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("table: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_mapping(bad)
    with pytest.raises(ConfigError, match="cannot read mapping"):
        load_mapping(tmp_path / "absent.yaml")
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_mapping(bad)


def test_row_changes_keep_their_order_in_one_record() -> None:
    change = parse_canal(canal("INSERT", [row(80, "1.00"), row(81, "2.00")]), parse_mapping(mapping()))
    assert isinstance(change, Change)
    assert [r.row_id for r in change.rows if isinstance(r, RowChange)] == ["80", "81"]
