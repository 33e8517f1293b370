"""camt.053 / camt.054 → TransactionEvents (feeds.camt, docs/feeds.md): both message versions'
shapes, batches, reversals, pending entries, every refusal, hostile XML, the code table, the
accounts mapping, and the Berka history through camt and back."""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from feeds.camt import (
    DEFAULT_CODES,
    CamtFileError,
    CamtOptions,
    Conversion,
    convert,
    convert_files,
    kind_of,
    load_accounts,
    load_codes,
    refused_path,
)
from rules.events import TransactionEvent
from streams.cli.main import main
from streams.errors import ConfigError
from streams.tools.berka import berka_lines
from tests.support.camtgen import BANK_BIC, CODE_OF_KIND, statement

ZONE = ZoneInfo("Asia/Shanghai")
NS08 = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"
NS02 = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"
OPTIONS = CamtOptions(zone=ZONE, bank_bic=BANK_BIC)


def movement(txn_id: str = "T1", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "txn_id": txn_id,
        "customer_id": "ACC1",
        "account_id": "ACC1",
        "ts": "2024-03-01T09:30:00+08:00",
        "direction": "credit",
        "amount": "1234.50",
        "currency": "CNY",
        "kind": "transfer_in",
        "external": False,
    }
    event.update(fields)
    return event


def run(data: bytes, options: CamtOptions = OPTIONS) -> Conversion:
    return convert(data, options)


def document(entries: str, *, ns: str = NS08, account: str = "<Id><Othr><Id>ACC1</Id></Othr></Id>") -> bytes:
    """A camt.053 with one statement of ``entries`` (raw XML, to write what the generator would not)."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Document xmlns="{ns}"><BkToCstmrStmt>'
        f"<GrpHdr><MsgId>M1</MsgId><CreDtTm>2024-03-01T18:00:00</CreDtTm></GrpHdr>"
        f"<Stmt><Id>S1</Id><Acct>{account}</Acct>{entries}</Stmt></BkToCstmrStmt></Document>"
    ).encode()


def ntry(
    *,
    amount: str = '<Amt Ccy="CNY">100.00</Amt>',
    ind: str = "<CdtDbtInd>CRDT</CdtDbtInd>",
    status: str = "<Sts><Cd>BOOK</Cd></Sts>",
    booked: str = "<BookgDt><DtTm>2024-03-01T10:00:00+08:00</DtTm></BookgDt>",
    refs: str = "<AcctSvcrRef>R1</AcctSvcrRef>",
    extra: str = "",
    details: str = "",
) -> str:
    return f"<Ntry>{amount}{ind}{status}{booked}{refs}{extra}{details}</Ntry>"


# --- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", ["053", "054"])
@pytest.mark.parametrize("version", ["08", "02"])
def test_both_messages_and_versions_give_the_same_events(message: str, version: str) -> None:
    events = [
        movement("T1", kind="salary", external=True, counterparty_bank="BKCHCNBJXXX"),
        movement("T2", direction="debit", amount="99.99", kind="transfer_out"),
        movement("T3", account_id="ACC2", customer_id="ACC2", kind="cash_withdrawal", direction="debit"),
    ]
    result = run(statement(events, version=version, message=message))
    assert result.refusals == []
    assert result.message.endswith(f"camt.{message}.001.{version}")
    expected = [{**e, "txn_id": f"{e['account_id']}:{e['txn_id']}"} for e in events]
    assert result.events == expected
    assert result.counts.entries == result.counts.booked == result.counts.events == 3
    for event in result.events:
        TransactionEvent.model_validate(event)  # what the topic carries


def test_v02_and_v08_shapes_are_both_read() -> None:
    """``Sts`` text vs ``Sts/Cd``, ``BIC`` vs ``BICFI``: the same entry either way."""
    agent = "<RltdAgts><DbtrAgt><FinInstnId><{tag}>ICBKCNBJXXX</{tag}></FinInstnId></DbtrAgt></RltdAgts>"
    v08 = ntry(details="<NtryDtls><TxDtls>" + agent.format(tag="BICFI") + "</TxDtls></NtryDtls>")
    v02 = ntry(
        status="<Sts>BOOK</Sts>", details="<NtryDtls><TxDtls>" + agent.format(tag="BIC") + "</TxDtls></NtryDtls>"
    )
    first, second = run(document(v08)).events, run(document(v02, ns=NS02)).events
    assert first == second
    assert first[0]["external"] is True and first[0]["counterparty_bank"] == "ICBKCNBJXXX"


def test_element_names_match_whatever_the_namespace_or_prefix() -> None:
    plain = document(ntry(), ns="")
    prefixed = (
        b'<c:Document xmlns:c="urn:iso:std:iso:20022:tech:xsd:camt.053.001.13"><c:BkToCstmrStmt><c:Stmt>'
        b"<c:Acct><c:Id><c:Othr><c:Id>ACC1</c:Id></c:Othr></c:Id></c:Acct><c:Ntry>"
        b'<c:Amt Ccy="CNY">100.00</c:Amt><c:CdtDbtInd>CRDT</c:CdtDbtInd><c:Sts><c:Cd>BOOK</c:Cd></c:Sts>'
        b"<c:BookgDt><c:DtTm>2024-03-01T10:00:00+08:00</c:DtTm></c:BookgDt><c:AcctSvcrRef>R1</c:AcctSvcrRef>"
        b"</c:Ntry></c:Stmt></c:BkToCstmrStmt></c:Document>"
    )
    assert run(plain).events == run(prefixed).events == run(document(ntry())).events
    assert len(run(plain).events) == 1


def test_the_account_is_the_iban_or_the_other_id() -> None:
    iban = run(document(ntry(), account="<Id><IBAN>DE89370400440532013000</IBAN></Id>")).events[0]
    assert iban["account_id"] == iban["customer_id"] == "DE89370400440532013000"
    assert iban["txn_id"] == "DE89370400440532013000:R1"


# --- time ----------------------------------------------------------------------------------------


def test_a_booking_date_alone_is_noon_in_the_banks_zone() -> None:
    event = run(document(ntry(booked="<BookgDt><Dt>2024-03-01</Dt></BookgDt>"))).events[0]
    assert event["ts"] == "2024-03-01T12:00:00+08:00"
    other = run(document(ntry(booked="<BookgDt><Dt>2024-03-01</Dt></BookgDt>")), CamtOptions(ZoneInfo("UTC")))
    assert other.events[0]["ts"] == "2024-03-01T12:00:00+00:00"


def test_a_date_time_without_offset_is_in_the_banks_zone_and_every_ts_is_written_in_it() -> None:
    local = run(document(ntry(booked="<BookgDt><DtTm>2024-03-01T10:00:00</DtTm></BookgDt>"))).events[0]
    utc = run(document(ntry(booked="<BookgDt><DtTm>2024-03-01T02:00:00Z</DtTm></BookgDt>"))).events[0]
    assert local["ts"] == utc["ts"] == "2024-03-01T10:00:00+08:00"


# --- batches -------------------------------------------------------------------------------------


def tx(amount: str, refs: str = "", extra: str = "", *, v02: bool = False) -> str:
    money = (
        f'<AmtDtls><TxAmt><Amt Ccy="CNY">{amount}</Amt></TxAmt></AmtDtls>' if v02 else f'<Amt Ccy="CNY">{amount}</Amt>'
    )
    return f"<TxDtls><Refs>{refs}</Refs>{money}{extra}</TxDtls>"


@pytest.mark.parametrize("v02", [False, True])
def test_a_batched_entry_gives_one_event_per_transaction(v02: bool) -> None:
    batch = ntry(
        amount='<Amt Ccy="CNY">600.00</Amt>',
        refs="<AcctSvcrRef>BATCH9</AcctSvcrRef>",
        details="<NtryDtls><Btch><NbOfTxs>3</NbOfTxs></Btch>"
        + tx("100.00", "<AcctSvcrRef>A</AcctSvcrRef>", v02=v02)
        + tx("200.00", "<EndToEndId>E2E-2</EndToEndId>", v02=v02)
        + tx("300.00", "<EndToEndId>NOTPROVIDED</EndToEndId>", v02=v02)
        + "</NtryDtls>",
    )
    result = run(document(batch, ns=NS02 if v02 else NS08))
    assert result.refusals == []
    assert [(e["txn_id"], e["amount"]) for e in result.events] == [
        ("ACC1:A", "100.00"),
        ("ACC1:E2E-2", "200.00"),
        ("ACC1:BATCH9:3", "300.00"),  # the entry's reference names the whole batch: the index is added
    ]
    assert result.counts.batched_entries == 1 and result.counts.events == 3


def test_transactions_sharing_a_reference_get_their_index() -> None:
    batch = ntry(
        amount='<Amt Ccy="CNY">30.00</Amt>',
        details="<NtryDtls>"
        + tx("10.00", "<EndToEndId>SAME</EndToEndId>")
        + tx("20.00", "<EndToEndId>SAME</EndToEndId>")
        + "</NtryDtls>",
    )
    assert [e["txn_id"] for e in run(document(batch)).events] == ["ACC1:SAME:1", "ACC1:SAME:2"]


def test_a_single_transaction_entry_uses_the_entry_amount_and_reference() -> None:
    single = ntry(
        refs="<NtryRef>N1</NtryRef>", details="<NtryDtls>" + tx("1.00", "<EndToEndId>E</EndToEndId>") + "</NtryDtls>"
    )
    event = run(document(single)).events[0]
    assert (event["txn_id"], event["amount"]) == ("ACC1:N1", "100.00")


@pytest.mark.parametrize(
    "transactions",
    [
        tx("10.00", "<TxId>A</TxId>") + tx("20.00", "<TxId>B</TxId>"),  # 30 != 100
        tx("50.00", "<TxId>A</TxId>") + '<TxDtls><Refs><TxId>B</TxId></Refs><Amt Ccy="EUR">50.00</Amt></TxDtls>',
    ],
    ids=["total", "currency"],
)
def test_a_batch_that_does_not_add_up_is_refused_whole(transactions: str) -> None:
    result = run(document(ntry(details=f"<NtryDtls>{transactions}</NtryDtls>")))
    assert result.events == []
    assert [(r.position, r.reason) for r in result.refusals] == [("Stmt[1]/Ntry[1]", "batch_inconsistent")]


def test_one_bad_transaction_of_a_batch_is_refused_alone() -> None:
    batch = ntry(
        amount='<Amt Ccy="CNY">30.00</Amt>',
        refs="",
        details="<NtryDtls>" + tx("10.00", "<TxId>A</TxId>") + tx("20.00") + "</NtryDtls>",
    )
    result = run(document(batch))
    assert [e["txn_id"] for e in result.events] == ["ACC1:A"]
    assert [(r.position, r.reason) for r in result.refusals] == [("Stmt[1]/Ntry[1]/TxDtls[2]", "missing_reference")]


# --- reversals -----------------------------------------------------------------------------------


def test_a_reversal_moves_the_money_back_and_names_the_original() -> None:
    """ISO usage rule: CdtDbtInd CRDT with RvslInd true reverses a debit."""
    original = movement("OUT7", direction="debit", kind="transfer_out", external=True, counterparty_bank="BKCHCNBJXXX")
    back = movement("RV1", direction="credit", kind="transfer_out", reverses="OUT7", ts="2024-03-02T09:00:00+08:00",
                    external=True, counterparty_bank="BKCHCNBJXXX")  # fmt: skip
    result = run(statement([original, back]))
    first, second = result.events
    assert first["txn_id"] == "ACC1:OUT7" and first["direction"] == "debit"
    assert second["txn_id"] == "ACC1:OUT7:rvsl"
    assert second["reverses"] == first["txn_id"]
    assert second["direction"] == "credit"  # the opposite of the original: the money goes back
    assert (second["amount"], second["account_id"]) == (first["amount"], first["account_id"])
    assert second["kind"] == "transfer_out"  # the original's code, read for the original's direction
    assert second["counterparty_bank"] == "BKCHCNBJXXX"  # the creditor's agent: the original's counterparty
    assert result.counts.reversals == 1


def test_a_debit_reversal_reverses_a_credit_and_keeps_its_purpose() -> None:
    back = movement("SAL1", direction="debit", kind="salary", reverses="SAL1")
    event = run(statement([back])).events[0]
    assert (event["direction"], event["kind"], event["reverses"]) == ("debit", "salary", "ACC1:SAL1")


def test_rvslind_false_is_not_a_reversal() -> None:
    event = run(document(ntry(extra="", ind="<CdtDbtInd>CRDT</CdtDbtInd><RvslInd>false</RvslInd>"))).events[0]
    assert "reverses" not in event and event["txn_id"] == "ACC1:R1"


# --- status --------------------------------------------------------------------------------------


def test_only_booked_entries_become_events_pending_and_info_are_counted() -> None:
    entries = (
        ntry(refs="<AcctSvcrRef>B</AcctSvcrRef>")
        + ntry(status="<Sts><Cd>PDNG</Cd></Sts>", amount="<Amt>broken</Amt>")  # skipped before anything is read
        + ntry(status="<Sts>PDNG</Sts>")
        + ntry(status="<Sts><Cd>INFO</Cd></Sts>")
        + ntry(status="<Sts><Cd>FUTR</Cd></Sts>")
    )
    result = run(document(entries))
    assert [e["txn_id"] for e in result.events] == ["ACC1:B"]
    counts = result.counts
    assert (counts.entries, counts.booked, counts.pending, counts.info, counts.other_status) == (5, 1, 2, 1, 1)
    assert result.refusals == []


# --- refusals ------------------------------------------------------------------------------------

SECRET_AMOUNT = "7777.777"
SECRET_REF = "SECRETREF"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (ntry(refs=""), "missing_reference"),
        (ntry(refs="<EndToEndId>NOTPROVIDED</EndToEndId>"), "missing_reference"),
        (ntry(refs=f"<AcctSvcrRef>{SECRET_REF}\u200bX</AcctSvcrRef>"), "invalid_reference"),
        (ntry(refs=f"<AcctSvcrRef>{'X' * 130}</AcctSvcrRef>"), "invalid_reference"),
        (ntry(amount=f'<Amt Ccy="CNY">{SECRET_AMOUNT}</Amt>'), "invalid_amount"),
        (ntry(amount='<Amt Ccy="CNY">-5.00</Amt>'), "invalid_amount"),
        (ntry(amount='<Amt Ccy="CNY">0</Amt>'), "invalid_amount"),
        (ntry(amount='<Amt Ccy="CNY">1e3</Amt>'), "invalid_amount"),
        (ntry(amount='<Amt Ccy="CNY">12345678901234567.00</Amt>'), "invalid_amount"),
        (ntry(amount=""), "invalid_amount"),
        (ntry(amount="<Amt>5.00</Amt>"), "invalid_currency"),
        (ntry(amount='<Amt Ccy="yen">5</Amt>'), "invalid_currency"),
        (ntry(ind=""), "invalid_direction"),
        (ntry(ind="<CdtDbtInd>BOTH</CdtDbtInd>"), "invalid_direction"),
        (ntry(ind="<CdtDbtInd>CRDT</CdtDbtInd><RvslInd>maybe</RvslInd>"), "invalid_direction"),
        (ntry(booked=""), "invalid_date"),
        (ntry(booked="<BookgDt><Dt>2024-02-30</Dt></BookgDt>"), "invalid_date"),
        (ntry(booked="<BookgDt><DtTm>yesterday</DtTm></BookgDt>"), "invalid_date"),
        (ntry(status=""), "invalid_status"),
        (
            ntry(
                details="<NtryDtls><TxDtls><RltdAgts><DbtrAgt><FinInstnId><BICFI>"
                + "B" * 70
                + "</BICFI></FinInstnId></DbtrAgt></RltdAgts></TxDtls></NtryDtls>"
            ),
            "invalid_agent",
        ),
    ],
)
def test_a_bad_entry_is_refused_alone_with_its_reason_and_position(entry: str, reason: str) -> None:
    good = ntry(refs="<AcctSvcrRef>GOOD</AcctSvcrRef>")
    result = run(document(good + entry + good.replace("GOOD", "GOOD2")))
    assert [e["txn_id"] for e in result.events] == ["ACC1:GOOD", "ACC1:GOOD2"]
    assert [(r.position, r.reason) for r in result.refusals] == [("Stmt[1]/Ntry[2]", reason)]
    assert result.counts.refused == {reason: 1}
    error = result.refusals[0].error
    assert SECRET_AMOUNT not in error and SECRET_REF not in error and "ACC1" not in error  # no values


def test_amounts_follow_the_currencys_minor_unit() -> None:
    def amount(text: str, currency: str) -> str | None:
        result = run(document(ntry(amount=f'<Amt Ccy="{currency}">{text}</Amt>')))
        return result.events[0]["amount"] if result.events else result.refusals[0].reason

    assert amount("1000", "JPY") == "1000"
    assert amount("1000.00", "JPY") == "1000"  # trailing zeros are not decimals
    assert amount("1000.5", "JPY") == "invalid_amount"
    assert amount("1.234", "BHD") == "1.234"
    assert amount("1.2345", "BHD") == "invalid_amount"
    assert amount("12.30000", "EUR") == "12.30"  # five decimals written, two meant
    assert amount("12.301", "CNY") == "invalid_amount"
    assert amount("7", "USD") == "7.00"


def test_the_currency_is_written_and_never_filtered() -> None:
    event = run(document(ntry(amount='<Amt Ccy="EUR">5.00</Amt>'))).events[0]
    assert (event["currency"], event["amount"]) == ("EUR", "5.00")
    assert Decimal(event["amount"]) == Decimal("5")


def test_an_account_missing_from_the_mapping_refuses_every_booked_entry_of_its_statement() -> None:
    options = CamtOptions(zone=ZONE, accounts={"OTHER": "C9"})
    entries = ntry() + ntry(status="<Sts><Cd>PDNG</Cd></Sts>") + ntry(refs="<AcctSvcrRef>R2</AcctSvcrRef>")
    result = run(document(entries), options)
    assert result.events == []
    assert [(r.position, r.reason) for r in result.refusals] == [
        ("Stmt[1]/Ntry[1]", "unknown_account"),
        ("Stmt[1]/Ntry[3]", "unknown_account"),
    ]
    assert result.counts.pending == 1


@pytest.mark.parametrize("account", ["", "<Id><Othr><Id>" + "9" * 65 + "</Id></Othr></Id>"])
def test_a_statement_without_a_usable_account_is_refused(account: str) -> None:
    result = run(document(ntry(), account=account))
    assert [(r.position, r.reason) for r in result.refusals] == [("Stmt[1]/Ntry[1]", "invalid_account")]


# --- hostile and broken files --------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Document><BkToCstmrStmt><Stmt><Acct><Id><Othr><Id>&lol9;</Id></Othr></Id></Acct></Stmt></BkToCstmrStmt></Document>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Document><BkToCstmrStmt><Stmt><Acct><Id><Othr><Id>&xxe;</Id></Othr></Id></Acct></Stmt></BkToCstmrStmt></Document>"""


@pytest.mark.parametrize(
    "data",
    [BILLION_LAUGHS, XXE, BILLION_LAUGHS.decode().encode("utf-16"), XXE.replace(b'<?xml version="1.0"?>\n', b"")],
    ids=["billion-laughs", "xxe", "utf-16-bomb", "xxe-no-declaration"],
)
def test_entity_declarations_are_refused_fast_without_expanding(data: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(CamtFileError, match="DOCTYPE or ENTITY") as caught:
        run(data)
    assert time.perf_counter() - started < 0.5
    assert "passwd" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"<Document><BkToCstmrStmt>", "not well-formed XML"),
        (b"", "not well-formed XML"),
        (b"\xff\xfe\x00garbage", "not well-formed XML"),
        (document(ntry()).replace(b"R1", b"&undeclared;"), "not well-formed XML"),
        (b"<Document><BkToCstmrAcctRpt/></Document>", "not a camt.053 or camt.054 document"),
        (b"<Invoice><BkToCstmrStmt/></Invoice>", "not a camt.053 or camt.054 document"),
    ],
)
def test_a_file_that_is_not_a_camt_document_is_refused_whole_in_one_line(data: bytes, fragment: str) -> None:
    with pytest.raises(CamtFileError, match=fragment) as caught:
        run(data)
    assert "\n" not in str(caught.value)


# --- kinds ---------------------------------------------------------------------------------------


def code(domain: str, family: str, sub: str) -> str:
    return f"<BkTxCd><Domn><Cd>{domain}</Cd><Fmly><Cd>{family}</Cd><SubFmlyCd>{sub}</SubFmlyCd></Fmly></Domn></BkTxCd>"


@pytest.mark.parametrize(
    ("iso", "credit", "kind"),
    [
        ("PMNT/RCDT/ESCT", True, "transfer_in"),
        ("PMNT/ICDT/DMCT", False, "transfer_out"),
        ("PMNT/RDDT/ESDD", False, "transfer_out"),
        ("PMNT/CNTR/CDPT", True, "cash_deposit"),
        ("PMNT/CNTR/CWDL", False, "cash_withdrawal"),
        ("PMNT/CCRD/POSD", False, "card_payment"),
        ("PMNT/CCRD/CWDL", False, "cash_withdrawal"),
        ("ACMT/MDOP/CHRG", False, "fee"),
        ("ACMT/MCOP/INTR", True, "interest"),
        ("LDAS/CSLN/DDWN", True, "loan_disbursement"),
        ("LDAS/MGLN/PPAY", False, "loan_repayment"),
        ("SECU/SETT/TRAD", True, None),
    ],
)
def test_the_default_code_table(iso: str, credit: bool, kind: str | None) -> None:
    assert kind_of(DEFAULT_CODES, iso, None, None, credit) == kind


def test_purpose_names_salary_and_pension_on_credits_only() -> None:
    assert kind_of(DEFAULT_CODES, "PMNT/RCDT/ESCT", None, "SALA", True) == "salary"
    assert kind_of(DEFAULT_CODES, "PMNT/RCDT/ESCT", None, "PENS", True) == "pension"
    assert kind_of(DEFAULT_CODES, "PMNT/ICDT/ESCT", None, "SALA", False) == "transfer_out"  # the employer paying


def test_an_unknown_code_is_other_and_counted_never_refused() -> None:
    result = run(document(ntry(extra=code("SECU", "SETT", "TRAD")) + ntry(refs="<AcctSvcrRef>R2</AcctSvcrRef>")))
    assert [e["kind"] for e in result.events] == ["other", "other"]
    assert result.counts.unmapped_kind == 2 and result.refusals == []


def test_a_codes_file_overrides_and_extends_the_table(tmp_path: Path) -> None:
    path = tmp_path / "codes.yaml"
    path.write_text('"PMNT/RCDT/ESCT": salary\n"SECU/*/*": other\n"Prtry:ZK01": fee\n"Purp:GOVT": pension\n')
    codes = load_codes(path)
    options = CamtOptions(zone=ZONE, codes=codes)
    entries = (
        ntry(extra=code("PMNT", "RCDT", "ESCT"))
        + ntry(refs="<AcctSvcrRef>R2</AcctSvcrRef>", extra="<BkTxCd><Prtry><Cd>ZK01</Cd></Prtry></BkTxCd>")
        + ntry(refs="<AcctSvcrRef>R3</AcctSvcrRef>", extra=code("PMNT", "RCDT", "DMCT"))
    )
    result = run(document(entries), options)
    assert [e["kind"] for e in result.events] == ["salary", "fee", "transfer_in"]
    assert codes["SECU/*/*"] == "other" and codes["PMNT/CNTR/CDPT"] == "cash_deposit"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("PMNT/RCDT: salary\n", "is not DOMN/FMLY/SUBF"),
        ('"PMNT/RCDT/ESCT": wages\n', "is not one of"),
        ("- a\n", "mapping"),
    ],
)
def test_a_bad_codes_file_is_one_config_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "codes.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_codes(path)


def test_a_transactions_own_code_wins_over_the_entrys() -> None:
    entry = ntry(extra=code("PMNT", "RCDT", "ESCT"),
                 details="<NtryDtls><TxDtls>" + code("PMNT", "CNTR", "CDPT") + "</TxDtls></NtryDtls>")  # fmt: skip
    assert run(document(entry)).events[0]["kind"] == "cash_deposit"


# --- banks and customers -------------------------------------------------------------------------


def agents(debtor: str | None, creditor: str | None) -> str:
    parts = [f"<{role}Agt><FinInstnId><BICFI>{bic}</BICFI></FinInstnId></{role}Agt>"
             for role, bic in (("Dbtr", debtor), ("Cdtr", creditor)) if bic]  # fmt: skip
    return f"<NtryDtls><TxDtls><RltdAgts>{''.join(parts)}</RltdAgts></TxDtls></NtryDtls>"


@pytest.mark.parametrize(
    ("indicator", "details", "bank_bic", "external"),
    [
        ("CRDT", agents("BKCHCNBJXXX", BANK_BIC), BANK_BIC, "BKCHCNBJXXX"),  # credit: the debtor's agent
        ("DBIT", agents(BANK_BIC, "BKCHCNBJ"), BANK_BIC, "BKCHCNBJ"),  # debit: the creditor's agent
        ("CRDT", agents("FFLWCNSH", None), BANK_BIC, None),  # our BIC8 is our BIC11's institution
        ("CRDT", agents("BKCHCNBJXXX", None), None, None),  # no --bank-bic: never external
        ("CRDT", "", BANK_BIC, None),  # no agent: not external
        ("CRDT", agents(None, BANK_BIC), BANK_BIC, None),  # only our own agent
    ],
)
def test_external_compares_the_counterpartys_agent_with_our_bic(
    indicator: str, details: str, bank_bic: str | None, external: str | None
) -> None:
    entry = ntry(ind=f"<CdtDbtInd>{indicator}</CdtDbtInd>", details=details)
    event = run(document(entry), CamtOptions(zone=ZONE, bank_bic=bank_bic)).events[0]
    assert event["external"] is (external is not None)
    assert event.get("counterparty_bank") == external


def parties(debtor_account: str | None, creditor_account: str | None) -> str:
    parts = [f"<{role}Acct><Id><Othr><Id>{acct}</Id></Othr></Id></{role}Acct>"
             for role, acct in (("Dbtr", debtor_account), ("Cdtr", creditor_account)) if acct]  # fmt: skip
    return f"<NtryDtls><TxDtls><RltdPties>{''.join(parts)}</RltdPties><Purp><Cd>SALA</Cd></Purp></TxDtls></NtryDtls>"


@pytest.mark.parametrize("suffix", [".csv", ".yaml"])
def test_the_accounts_mapping_names_customers_and_own_account_transfers(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"accounts{suffix}"
    rows = {"ACC1": "CUST1", "ACC2": "CUST1", "EMPLOYER": "CORP9", "123": "CUST3"}
    if suffix == ".csv":
        path.write_text("account_id,customer_id\n" + "".join(f"{a},{c}\n" for a, c in rows.items()))
    else:
        path.write_text("".join(f"{a}: {c}\n" for a, c in rows.items()).replace("123: CUST3", "123: CUST3"))
    accounts = load_accounts(path)
    assert accounts == rows
    options = CamtOptions(zone=ZONE, accounts=accounts)
    entries = (
        ntry(refs="<AcctSvcrRef>OWN</AcctSvcrRef>", details=parties("ACC2", "ACC1"))  # from the same customer
        + ntry(refs="<AcctSvcrRef>PAY</AcctSvcrRef>", details=parties("EMPLOYER", "ACC1"))  # salary from a customer
        + ntry(refs="<AcctSvcrRef>OUT</AcctSvcrRef>", details=parties("ELSEWHERE", "ACC1"))  # not ours
    )
    own, pay, out = run(document(entries), options).events
    assert own["customer_id"] == "CUST1" and own["counterparty_customer_id"] == "CUST1"
    assert pay["kind"] == "salary" and pay["counterparty_customer_id"] == pay["payer_customer_id"] == "CORP9"
    assert "counterparty_customer_id" not in out and "payer_customer_id" not in out
    assert run(document(entries), options).counts.own_account == 1


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("a.csv", "account,customer\nA,B\n", "header account_id,customer_id"),
        ("a.csv", "account_id,customer_id\nA,\n", "1-64 printable"),
        ("a.csv", "account_id,customer_id\nA,B\nA,C\n", "listed twice"),
        ("a.yaml", "[A, B]\n", "mapping"),
        ("a.txt", "A,B\n", "must be .csv"),
    ],
)
def test_a_bad_accounts_file_is_one_config_error(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_accounts(path)


# --- the Berka history through camt and back -----------------------------------------------------

ROUND_TRIP = 3000


@pytest.fixture(scope="module")
def berka_movements() -> list[dict[str, Any]]:
    objects = [json.loads(line) for line in berka_lines(None, ZONE)]
    return [o for o in objects if "txn_id" in o][:ROUND_TRIP]


@pytest.mark.parametrize("version", ["08", "02"])
def test_berka_through_camt053_and_back_is_the_same_history(
    berka_movements: list[dict[str, Any]], version: str
) -> None:
    result = run(statement(berka_movements, version=version))
    assert result.refusals == [] and result.counts.events == len(berka_movements) == ROUND_TRIP
    back = {e["txn_id"]: e for e in result.events}
    assert len(back) == ROUND_TRIP
    mapped = {kind for kind, (domain, *_rest) in CODE_OF_KIND.items() if kind != "other"}
    for original in berka_movements:
        event = back[f"{original['account_id']}:{original['txn_id']}"]
        for name in ("customer_id", "account_id", "direction", "external"):
            assert event[name] == original[name], (name, original)
        assert event["currency"] == original.get("currency", "CNY")  # camt names one; Berka's events none
        assert dt.datetime.fromisoformat(event["ts"]) == dt.datetime.fromisoformat(original["ts"])
        assert Decimal(event["amount"]) == Decimal(original["amount"])
        assert event.get("counterparty_bank") == original.get("counterparty_bank")
        if original["kind"] in mapped:
            assert event["kind"] == original["kind"], original
        TransactionEvent.model_validate(event)
    kinds = {o["kind"] for o in berka_movements}
    assert {"cash_deposit", "cash_withdrawal", "interest", "pension", "transfer_in", "transfer_out"} <= kinds


# --- the command ---------------------------------------------------------------------------------


def test_the_command_converts_files_and_writes_refusals_beside_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    late = movement("T2", ts="2024-03-05T09:00:00+08:00")
    early = movement("T1", account_id="ACC2", customer_id="ACC2", ts="2024-03-01T09:00:00+08:00")
    (tmp_path / "a.xml").write_bytes(statement([late]))
    (tmp_path / "b.xml").write_bytes(
        document(
            ntry(status="<Sts><Cd>PDNG</Cd></Sts>")
            + ntry(refs="")
            + ntry(booked="<BookgDt><Dt>2024-03-03</Dt></BookgDt>")
        )
    )
    (tmp_path / "c.xml").write_bytes(statement([early], version="02", message="054"))
    out = tmp_path / "out" / "events.jsonl"
    code = main(["convert", "camt", *(str(tmp_path / n) for n in ("a.xml", "b.xml", "c.xml")), "--out", str(out),
                 "--bank-bic", BANK_BIC])  # fmt: skip
    assert code == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1
    assert "3 file(s): 5 entries, 3 events, 1 pending skipped" in summary[0] and "missing_reference 1" in summary[0]
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["txn_id"] for e in events] == ["ACC2:T1", "ACC1:R1", "ACC1:T2"]  # event-time order across files
    refused = [json.loads(line) for line in refused_path(out).read_text().splitlines()]
    assert refused == [{"file": str(tmp_path / "b.xml"), "position": "Stmt[1]/Ntry[2]", "reason": "missing_reference",
                        "error": refused[0]["error"]}]  # fmt: skip
    assert refused_path(out).name == "events.refused.jsonl"


def test_the_command_refuses_a_hostile_file_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.xml", tmp_path / "bomb.xml"
    good.write_bytes(statement([movement()]))
    bad.write_bytes(BILLION_LAUGHS)
    out = tmp_path / "events.jsonl"
    assert main(["convert", "camt", str(good), str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fundflow: error: ") and "bomb.xml" in err[0] and "DOCTYPE" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--zone", "Mars/Olympus"], 2, "unknown time zone"),
        (["--refused", "OUT"], 2, "must be different files"),
        (["--codes", "missing.yaml"], 1, "cannot read the codes file"),
        (["--accounts", "missing.csv"], 1, "cannot read the accounts file"),
    ],
)
def test_the_commands_bad_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, fragment: str
) -> None:
    source = tmp_path / "in.xml"
    source.write_bytes(statement([movement()]))
    out = tmp_path / "out.jsonl"
    args = [str(out) if a == "OUT" else str(tmp_path / a) if a.endswith((".yaml", ".csv")) else a for a in args]
    assert main(["convert", "camt", str(source), "--out", str(out), *args]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_convert_files_sorts_by_instant_not_by_text(tmp_path: Path) -> None:
    """An offset written differently must not reorder the file: ts are compared as instants."""
    one = tmp_path / "one.xml"
    one.write_bytes(document(ntry(booked="<BookgDt><DtTm>2024-03-01T01:00:00Z</DtTm></BookgDt>")
                             + ntry(refs="<AcctSvcrRef>R2</AcctSvcrRef>",
                                    booked="<BookgDt><DtTm>2024-03-01T08:30:00+08:00</DtTm></BookgDt>")))  # fmt: skip
    out = tmp_path / "e.jsonl"
    convert_files([one], out, refused_path(out), OPTIONS)
    assert [json.loads(line)["txn_id"] for line in out.read_text().splitlines()] == ["ACC1:R2", "ACC1:R1"]
