"""TransactionEvent dicts written as an ISO 20022 camt.053 statement (or camt.054 notification),
one ``Stmt`` per account, in message version .08 or .02: the fixtures of ``feeds.camt``'s tests,
written from the schema's element names (docs/feeds.md), never copied from a bank's file.

What comes back from ``feeds.camt.convert`` (with ``bank_bic=BANK_BIC``) is the same movement:
customer = account (no accounts mapping), ts, direction, amount, currency, the kind (through
``CODE_OF_KIND``), external and counterparty_bank; the txn_id comes back scoped by its account
(``{account}:{txn_id}``), and a dict with ``reverses`` becomes a reversal entry carrying the
reversed movement's reference (``RvslInd``), which converts to ``{account}:{reverses}:rvsl``.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any

BANK_BIC = "FFLWCNSHXXX"  # "our" bank in these fixtures
NAMESPACES = {
    ("053", "08"): "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08",
    ("053", "02"): "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02",
    ("054", "08"): "urn:iso:std:iso:20022:tech:xsd:camt.054.001.08",
    ("054", "02"): "urn:iso:std:iso:20022:tech:xsd:camt.054.001.02",
}
MESSAGE = {"053": ("BkToCstmrStmt", "Stmt"), "054": ("BkToCstmrDbtCdtNtfctn", "Ntfctn")}
# kind -> (Domain, Family, SubFamily, Purpose): a code the default table maps back to the kind.
CODE_OF_KIND: Mapping[str, tuple[str, str, str, str | None]] = {
    "transfer_in": ("PMNT", "RCDT", "DMCT", None),
    "transfer_out": ("PMNT", "ICDT", "DMCT", None),
    "cash_deposit": ("PMNT", "CNTR", "CDPT", None),
    "cash_withdrawal": ("PMNT", "CNTR", "CWDL", None),
    "card_payment": ("PMNT", "CCRD", "POSD", None),
    "fee": ("ACMT", "MDOP", "CHRG", None),
    "interest": ("ACMT", "MCOP", "INTR", None),
    "loan_repayment": ("LDAS", "CSLN", "PPAY", None),
    "loan_disbursement": ("LDAS", "CSLN", "DDWN", None),
    "salary": ("PMNT", "RCDT", "DMCT", "SALA"),
    "pension": ("PMNT", "RCDT", "DMCT", "PENS"),
    "other": ("XTND", "NTAV", "NTAV", None),  # "not available": no table row, comes back as other
}


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def _path(parent: ET.Element, path: str, text: str) -> ET.Element:
    """``A/B/C`` under ``parent`` (new elements), ``C`` holding ``text``."""
    element = parent
    for tag in path.split("/"):
        element = _sub(element, tag)
    element.text = text
    return element


def _account(parent: ET.Element, tag: str, account: str) -> None:
    _path(_sub(parent, tag), "Id/Othr/Id", account)


def _agent(parent: ET.Element, tag: str, bic: str, version: str) -> None:
    _path(_sub(parent, tag), f"FinInstnId/{'BICFI' if version == '08' else 'BIC'}", bic)


def _party(parent: ET.Element, tag: str, name: str, version: str) -> None:
    _path(_sub(parent, tag), "Pty/Nm" if version == "08" else "Nm", name)


def entry_element(event: Mapping[str, Any], version: str = "08", status: str = "BOOK") -> ET.Element:
    """One ``Ntry`` (without namespace: the document's default namespace applies)."""
    credit = event["direction"] == "credit"
    reversal = bool(event.get("reverses"))
    # A reversal names the original movement; its parties are the original's (docs/feeds.md).
    original_credit = (not credit) if reversal else credit
    ref = str(event["reverses"] if reversal else event["txn_id"])
    ntry = ET.Element("Ntry")
    _sub(ntry, "NtryRef", ref)
    _sub(ntry, "Amt", str(event["amount"]), Ccy=str(event.get("currency", "CNY")))
    _sub(ntry, "CdtDbtInd", "CRDT" if credit else "DBIT")
    if reversal:
        _sub(ntry, "RvslInd", "true")
    if version == "08":
        _path(ntry, "Sts/Cd", status)
    else:
        _sub(ntry, "Sts", status)
    ts = dt.datetime.fromisoformat(str(event["ts"]))
    _path(ntry, "BookgDt/DtTm", ts.isoformat())
    _path(ntry, "ValDt/Dt", ts.date().isoformat())
    _sub(ntry, "AcctSvcrRef", ref)
    domain, family, sub, purpose = CODE_OF_KIND[str(event.get("kind", "other"))]
    code = _sub(ntry, "BkTxCd")
    domn = _sub(code, "Domn")
    _sub(domn, "Cd", domain)
    fmly = _sub(domn, "Fmly")
    _sub(fmly, "Cd", family)
    _sub(fmly, "SubFmlyCd", sub)
    details = _sub(_sub(ntry, "NtryDtls"), "TxDtls")
    refs = _sub(details, "Refs")
    _sub(refs, "EndToEndId", "NOTPROVIDED")
    own = "Cdtr" if original_credit else "Dbtr"  # the account holder's side of the original movement
    parties = _sub(details, "RltdPties")
    for role in ("Dbtr", "Cdtr"):  # the schema's order: Dbtr, DbtrAcct, Cdtr, CdtrAcct
        _party(parties, role, f"owner of {event['account_id']}" if role == own else "counterparty", version)
        account = event["account_id"] if role == own else event.get("counterparty_account")
        if account:
            _account(parties, f"{role}Acct", str(account))
    # An external movement with no known bank still names another bank than ours.
    theirs = str(event.get("counterparty_bank") or "UNKNXXXXXXX") if event.get("external") else BANK_BIC
    agents = _sub(details, "RltdAgts")
    for role in ("Dbtr", "Cdtr"):
        _agent(agents, f"{role}Agt", BANK_BIC if role == own else theirs, version)
    if purpose:
        _path(details, "Purp/Cd", purpose)
    return ntry


def statement(
    events: Iterable[Mapping[str, Any]], version: str = "08", message: str = "053", status: str = "BOOK"
) -> bytes:
    """``events`` as one document with a ``Stmt`` (``Ntfctn``) per account, accounts in first-seen
    order, each account's entries in the order given."""
    namespace = NAMESPACES[(message, version)]
    body_tag, report_tag = MESSAGE[message]
    by_account: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        by_account.setdefault(str(event["account_id"]), []).append(event)
    document = ET.Element("Document", xmlns=namespace)
    body = _sub(document, body_tag)
    header = _sub(body, "GrpHdr")
    _sub(header, "MsgId", f"FUNDFLOW-TEST-{message}-{version}")
    _sub(header, "CreDtTm", "2024-01-01T00:00:00+08:00")
    for n, (account, entries) in enumerate(by_account.items(), start=1):
        report = _sub(body, report_tag)
        _sub(report, "Id", f"{report_tag}-{n}")
        _sub(report, "CreDtTm", "2024-01-01T00:00:00+08:00")
        acct = _sub(report, "Acct")
        _path(acct, "Id/Othr/Id", account)
        _path(acct, f"Svcr/FinInstnId/{'BICFI' if version == '08' else 'BIC'}", BANK_BIC)
        for event in entries:
            report.append(entry_element(event, version, status))
    return bytes(ET.tostring(document, encoding="utf-8", xml_declaration=True))
