"""The Berka converter: mapping, order recovery from the balance column, loans."""

from __future__ import annotations

import gzip
import json
import lzma
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rules.events import LoanEvent, TransactionEvent
from streams.errors import ConfigError
from streams.tools.berka import SHIPPED_BERKA, berka_lines, convert_berka

ZONE = ZoneInfo("Asia/Shanghai")
BERKA = SHIPPED_BERKA
HEADER = '"trans_id";"account_id";"date";"type";"operation";"amount";"balance";"k_symbol";"bank";"account"\n'
LOAN_HEADER = '"loan_id";"account_id";"date";"amount";"duration";"payments";"status"\n'


def write(tmp: Path, rows: list[str], loans: list[str] = ()) -> Path:  # type: ignore[assignment]
    (tmp / "trans.asc").write_text(HEADER + "".join(r + "\n" for r in rows), encoding="latin-1")
    if loans:
        (tmp / "loan.asc").write_text(LOAN_HEADER + "".join(r + "\n" for r in loans), encoding="latin-1")
    return tmp


def convert(tmp: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    out = tmp / "out.jsonl"
    stats = convert_berka(tmp, out, ZONE).as_dict()
    return [json.loads(line) for line in out.read_text().splitlines()], stats


def test_real_order_within_a_day_comes_from_the_balance_chain(tmp_path: Path) -> None:
    rows = [
        '1;7;930101;"PRIJEM";"VKLAD";1000.00;1000.00;"";;',
        # same day, file (id) order is NOT the real order: 12 happened before 11
        '11;7;930102;"VYDAJ";"VYBER";300.00;900.00;"";;',
        '12;7;930102;"PRIJEM";"PREVOD Z UCTU";200.00;1200.00;"DUCHOD";"AB";"123"',
        '13;7;930102;"VYDAJ";"PREVOD NA UCET";100.00;800.00;"SIPO";"CD";"9"',
    ]
    events, stats = convert(write(tmp_path, rows))
    assert [e["txn_id"] for e in events] == ["1", "12", "11", "13"]
    assert [e["ts"] for e in events[1:]] == [
        "1993-01-02T09:00:00+08:00",
        "1993-01-02T09:00:01+08:00",
        "1993-01-02T09:00:02+08:00",
    ]
    assert stats["ambiguous_days"] == 0 and stats["transactions"] == 4


def test_mapping_of_kinds_directions_and_banks(tmp_path: Path) -> None:
    rows = [
        '1;7;930101;"PRIJEM";"VKLAD";1000.00;1000.00;"";;',
        '2;7;930102;"PRIJEM";"PREVOD Z UCTU";200.00;1200.00;"DUCHOD";"AB";"123"',
        '3;7;930103;"VYDAJ";"PREVOD NA UCET";100.00;1100.00;"UVER";"CD";"9"',
        '4;7;930104;"VYDAJ";"VYBER";14.60;1085.40;"SLUZBY";;',
        '5;7;930105;"PRIJEM";;5.40;1090.80;"UROK";;',
        '6;7;930106;"VYBER";"VYBER";90.80;1000.00;"";;',
        '7;7;930107;"VYDAJ";"VYBER KARTOU";100.00;900.00;" ";;',
        '8;7;930108;"VYDAJ";"VYBER";10.00;890.00;"SANKC. UROK";;',
    ]
    events, _ = convert(write(tmp_path, rows))
    got = [(e["kind"], e["direction"], e["external"], e.get("counterparty_bank")) for e in events]
    assert got == [
        ("cash_deposit", "credit", False, None),
        ("pension", "credit", True, "AB"),
        ("loan_repayment", "debit", True, "CD"),
        ("fee", "debit", False, None),
        ("interest", "credit", False, None),
        ("cash_withdrawal", "debit", False, None),
        ("cash_withdrawal", "debit", False, None),
        ("fee", "debit", False, None),
    ]
    assert events[3]["amount"] == "14.60" and events[3]["balance_after"] == "1085.40"


def test_loans_granted_and_repaid(tmp_path: Path) -> None:
    rows = [
        '1;7;930101;"PRIJEM";"VKLAD";10000.00;10000.00;"";;',
        '2;7;930210;"VYDAJ";"PREVOD NA UCET";1000.00;9000.00;"UVER";"CD";"9"',
        '3;7;930310;"VYDAJ";"PREVOD NA UCET";1000.00;8000.00;"UVER";"CD";"9"',
    ]
    loans = ['50;7;930105;2000;2;1000.00;"A"', '51;8;990101;5000;5;1000.00;"C"']
    events, stats = convert(write(tmp_path, rows, loans))
    loan_events = [LoanEvent.model_validate(e) for e in events if "loan_id" in e]
    assert [(str(e.outstanding), e.next_due.isoformat(), e.status) for e in loan_events] == [
        ("2000.00", "1993-02-05", "active"),
        ("1000.00", "1993-03-05", "active"),
        ("0.00", "1993-04-05", "closed"),
    ]
    assert loan_events[0].ts.isoformat() == "1993-01-05T08:00:00+08:00"
    assert stats["loans"] == 1  # loan 51 is granted after the transactions end


def test_bad_rows_are_counted_not_fatal_and_output_is_deterministic(tmp_path: Path) -> None:
    rows = [
        '1;7;930101;"PRIJEM";"VKLAD";1000.00;1000.00;"";;',
        '2;7;93013x;"PRIJEM";"VKLAD";1.00;1001.00;"";;',
        '3;7;930102;"SIDEWAYS";"VKLAD";1.00;1001.00;"";;',
        '4;7;930102;"PRIJEM";"VKLAD";-5;995.00;"";;',
        '1;7;930103;"PRIJEM";"VKLAD";1.00;1001.00;"";;',
    ]
    first, stats = convert(write(tmp_path, rows))
    assert len(first) == 1
    assert stats["skipped"] == {"bad_transaction_row": 3, "duplicate_or_missing_id": 1}
    again, _ = convert(tmp_path)
    assert again == first


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        convert_berka(tmp_path / "nope", tmp_path / "o.jsonl", ZONE)
    with pytest.raises(ConfigError, match=r"no trans\.asc"):
        convert_berka(tmp_path, tmp_path / "o.jsonl", ZONE)


def test_compressed_and_plain_copies_convert_alike(tmp_path: Path) -> None:
    rows = [
        '"1";"7";"930101";"PRIJEM";"VKLAD";"100.0";"100.0";"";"";""',
        '"2";"7";"930102";"VYDAJ";"PREVOD NA UCET";"40.0";"60.0";"";"AB";"123"',
    ]
    loans = ['"5";"7";"930101";"1200";"12";"100.00";"A"']
    (tmp_path / "plain").mkdir()
    plain, _ = convert(write(tmp_path / "plain", rows, loans))
    for suffix, compress in ((".xz", lzma.compress), (".gz", gzip.compress)):
        packed = tmp_path / suffix[1:]
        packed.mkdir()
        for name in ("trans.asc", "loan.asc"):
            (packed / f"{name}{suffix}").write_bytes(compress((tmp_path / "plain" / name).read_bytes()))
        again, _ = convert(packed)
        assert again == plain and any("loan_id" in obj for obj in again)


def test_the_real_data_set(tmp_path: Path) -> None:
    out = tmp_path / "berka.jsonl"
    stats = convert_berka(None, out, ZONE).as_dict()  # None: the copy shipped in the package
    assert stats["transactions"] == 49_102 and stats["accounts"] == 1_229 and stats["days"] == 39_960
    assert stats["ambiguous_days"] <= 40 and stats["skipped"] == {}
    lines = out.read_bytes().splitlines()
    running: dict[str, Decimal] = {}
    off_by_more_than_rounding = 0
    last_ts = ""
    for line in lines:
        obj = json.loads(line)
        assert obj["ts"] >= last_ts  # global event-time order (one offset throughout)
        last_ts = obj["ts"]
        if "loan_id" in obj:
            LoanEvent.model_validate(obj)
            continue
        event = TransactionEvent.model_validate(obj)
        signed = event.amount if event.direction == "credit" else -event.amount
        running[event.account_id] = running.get(event.account_id, Decimal(0)) + signed
        assert event.balance_after is not None
        if abs(running[event.account_id] - event.balance_after) > 1:
            off_by_more_than_rounding += 1
            running[event.account_id] = event.balance_after  # a real reconciliation break: resync
    assert off_by_more_than_rounding <= 40
    assert out.read_bytes() == (
        convert_berka(BERKA, tmp_path / "again.jsonl", ZONE) and (tmp_path / "again.jsonl").read_bytes()
    )


def test_the_shipped_state_dictionary_earns_its_place_on_customers_it_never_saw() -> None:
    """The dictionary in ``streams/storage/zdict`` was trained on half the Berka customers
    (``streams.tools.statedict``); on the states of the other half, as today's code writes
    them, it must still make blobs clearly smaller than no dictionary does."""
    import zlib

    import zstandard

    from streams.settings import Settings
    from streams.storage.codec import WRITE_DICTIONARY, ZSTD_LEVEL, dictionaries
    from streams.tools.statedict import sample_states

    settings = Settings(bank_tz="Asia/Shanghai")
    held_out = [
        blob
        for cid, blob in sample_states(berka_lines(BERKA, settings.zone), settings)
        if zlib.crc32(cid.encode()) % 2 == 1
    ]
    shipped = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=dictionaries()[WRITE_DICTIONARY])
    plain = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    with_dictionary = sum(len(shipped.compress(blob)) for blob in held_out)
    without = sum(len(plain.compress(blob)) for blob in held_out)
    assert len(held_out) > 1000 and with_dictionary < 0.8 * without
