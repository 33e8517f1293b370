"""ISO 20022 camt.053 (statement) and camt.054 (debit/credit notification) → TransactionEvents.

``fundflow convert camt FILE... --out EVENTS.jsonl``; the mapping, the txn_id and reversal
rules, what is refused and the code table are in ``docs/feeds.md`` (section camt.053 / camt.054).

``convert`` is pure: the bytes of one XML file in, the events (the JSON objects the topic
carries), the refused entries (position, reason, error text without values) and counts out.
A file that is not a camt document at all (malformed XML, another root, a DOCTYPE: the
entity-expansion and external-entity attacks live there) raises ``CamtFileError`` with one
line; one bad entry in a good file is refused alone and the rest converts.

Element names are matched by local name (``{urn:...camt.053.001.08}Ntry`` is ``Ntry``), so
every message version reads the same way; the shapes that differ between versions (``Sts``
text or ``Sts/Cd``, ``BIC`` or ``BICFI``, ``Dbtr/Nm`` or ``Dbtr/Pty/Nm``) are read both ways.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, get_args
from xml.parsers import expat
from zoneinfo import ZoneInfo

import orjson
import yaml

from rules.events import Kind
from rules.money import minor_digits
from streams.errors import ConfigError, FundFlowError

KINDS = frozenset(get_args(Kind))
MAX_TXN_ID = 128
MAX_ID = 64
MAX_AMOUNT_DIGITS = 18  # rules.events: 16 integer digits and 2 decimals is far beyond any balance
REVERSAL_SUFFIX = ":rvsl"
# A date without a time is booked "some time that day": noon in the bank's zone is at most 12 h
# from the truth, and it keeps the local day even when read in a zone up to 11 h away (midnight
# would move to the day before under any westward slip).
DATE_ONLY_TIME = dt.time(12, 0)
# SEPA's placeholder for "the originator gave no end-to-end reference": never an identity.
NOT_PROVIDED = "NOTPROVIDED"

# Which kind a bank transaction code (Domain/Family/SubFamily, the ISO external code list) or a
# purpose (``Purp:CODE``, credits only) means. ``*`` matches any code at its level; the most
# specific row wins (docs/feeds.md). A ``--codes`` YAML file adds rows and overrides these.
DEFAULT_CODES: Mapping[str, str] = {
    "PMNT/RCDT/*": "transfer_in",  # received credit transfers
    "PMNT/RRCT/*": "transfer_in",  # received real-time (instant) credit transfers
    "PMNT/ICDT/*": "transfer_out",  # issued credit transfers
    "PMNT/IRCT/*": "transfer_out",  # issued real-time (instant) credit transfers
    "PMNT/RDDT/*": "transfer_out",  # a direct debit received: collected from this account
    "PMNT/IDDT/*": "transfer_in",  # a direct debit this account holder issued: collected for it
    "PMNT/CNTR/CDPT": "cash_deposit",  # counter transactions: cash deposit
    "PMNT/CNTR/CWDL": "cash_withdrawal",  # counter transactions: cash withdrawal
    "PMNT/CCRD/*": "card_payment",  # customer card transactions
    "PMNT/CCRD/CWDL": "cash_withdrawal",  # ... but a card's ATM withdrawal is cash
    "PMNT/CCRD/CDPT": "cash_deposit",  # ... and its ATM deposit too
    "ACMT/MDOP/CHRG": "fee",  # miscellaneous debit operations: charges
    "ACMT/MDOP/FEES": "fee",
    "PMNT/MDOP/CHRG": "fee",
    "PMNT/MDOP/FEES": "fee",
    "ACMT/MCOP/INTR": "interest",  # miscellaneous credit operations: interest
    "PMNT/MCOP/INTR": "interest",
    "LDAS/*/DDWN": "loan_disbursement",  # drawdown of a loan (consumer, mortgage, fixed term, notice)
    "LDAS/*/PPAY": "loan_repayment",  # principal payment
    "LDAS/*/RPMT": "loan_repayment",  # repayment
    "Purp:SALA": "salary",
    "Purp:PENS": "pension",
}
_CODE_KEY = re.compile(r"(?:(?:\*|[A-Z0-9]{4})/(?:\*|[A-Z0-9]{4})/(?:\*|[A-Z0-9]{4})|(?:Purp|Prtry):\S{1,35})\Z")
# xs:decimal as ISO 20022 amounts use it: digits with an optional point, no sign or exponent.
_AMOUNT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
_CURRENCY = re.compile(r"[A-Z]{3}\Z")
_DATE_WITH_OFFSET = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(?:Z|[+-][0-9]{2}:[0-9]{2})?\Z")
MESSAGES = {"BkToCstmrStmt": ("Stmt", "camt.053"), "BkToCstmrDbtCdtNtfctn": ("Ntfctn", "camt.054")}
DIRECTIONS = {"CRDT": "credit", "DBIT": "debit"}
OPPOSITE = {"credit": "debit", "debit": "credit"}


class CamtFileError(FundFlowError):
    """The whole file is refused (one line, no values from the file)."""


class _Refused(Exception):
    """One entry (or one of its transactions) is refused: ``reason`` is a stable code."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


@dataclass(frozen=True, slots=True)
class Refusal:
    position: str  # 1-based, XPath-like: ``Stmt[1]/Ntry[3]`` or ``Stmt[1]/Ntry[3]/TxDtls[2]``
    reason: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"position": self.position, "reason": self.reason, "error": self.error}


@dataclass(slots=True)
class Counts:
    entries: int = 0  # every Ntry, whatever its status
    booked: int = 0
    pending: int = 0  # Sts PDNG: counted, skipped
    info: int = 0  # Sts INFO: counted, skipped
    other_status: int = 0  # any other status (FUTR...): counted, skipped
    events: int = 0
    reversals: int = 0
    batched_entries: int = 0  # entries that carried several TxDtls (one event each)
    unmapped_kind: int = 0  # events whose code the table does not know: kind ``other``
    own_account: int = 0  # events whose counterparty account is the same customer's
    refused: Counter[str] = field(default_factory=Counter)  # refused events by reason

    def add(self, other: Counts) -> None:
        for name in self.__slots__:
            if name == "refused":
                self.refused.update(other.refused)
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True, slots=True)
class Conversion:
    message: str  # the root's namespace, e.g. ``urn:iso:std:iso:20022:tech:xsd:camt.053.001.08``
    events: list[dict[str, Any]]
    refusals: list[Refusal]
    counts: Counts


@dataclass(frozen=True, slots=True)
class CamtOptions:
    zone: ZoneInfo
    bank_bic: str | None = None  # our BIC: an agent that is not it makes the movement external
    accounts: Mapping[str, str] | None = None  # account -> customer; None: the account is the customer
    codes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CODES))


# --- safe XML -----------------------------------------------------------------------------------

_DECLARATION_REFUSED = (
    "refused: the file declares a DOCTYPE or ENTITY (entity expansion and external entities are not allowed)"
)


def _no_declarations(*_: Any) -> None:
    raise CamtFileError(_DECLARATION_REFUSED)


def parse_xml(data: bytes) -> tuple[ET.Element, str]:
    """The document's tree with namespace-free tags (and the root's namespace), parsed by expat
    with no DTD at all: a DOCTYPE is refused before anything in it is read, so no entity is ever
    declared, expanded (billion laughs) or fetched (XXE); an undeclared ``&name;`` is malformed."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise CamtFileError(_DECLARATION_REFUSED)  # the common case, before parsing; the handlers catch the rest
    builder = ET.TreeBuilder()
    namespace = [""]
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def start(name: str, attributes: dict[str, str]) -> None:
        uri, _, local = name.rpartition(" ")
        if not namespace[0]:
            namespace[0] = uri or " "
        builder.start(local, {key.rpartition(" ")[2]: value for key, value in attributes.items()})

    def end(name: str) -> None:
        builder.end(name.rpartition(" ")[2])

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _no_declarations
    parser.EntityDeclHandler = _no_declarations
    parser.ExternalEntityRefHandler = _no_declarations  # type: ignore[assignment]
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise CamtFileError(f"not well-formed XML: {expat.errors.messages[exc.code]} (line {exc.lineno})") from None
    return builder.close(), namespace[0].strip()


# --- the conversion ------------------------------------------------------------------------------


def convert(data: bytes, options: CamtOptions) -> Conversion:
    """One camt.053 / camt.054 file's booked entries as TransactionEvent dicts (file order)."""
    root, namespace = parse_xml(data)
    body = next((child for child in root if child.tag in MESSAGES), None) if root.tag == "Document" else None
    if body is None:
        raise CamtFileError(
            "not a camt.053 or camt.054 document (expected Document/BkToCstmrStmt or Document/BkToCstmrDbtCdtNtfctn)"
        )
    report_tag, _ = MESSAGES[body.tag]
    events: list[dict[str, Any]] = []
    refusals: list[Refusal] = []
    counts = Counts()
    for s, report in enumerate(body.findall(report_tag), start=1):
        try:
            account, customer = _account(report, options)
            problem = None
        except _Refused as exc:
            account = customer = ""
            problem = exc
        for n, entry in enumerate(report.findall("Ntry"), start=1):
            where = f"{report_tag}[{s}]/Ntry[{n}]"
            counts.entries += 1
            try:
                if not _booked(entry, counts):
                    continue
                counts.booked += 1
                if problem is not None:
                    raise problem
                made = _entry_events(entry, account, customer, options, where, counts)
            except _Refused as exc:
                refusals.append(Refusal(where, exc.reason, exc.error))
                counts.refused[exc.reason] += 1
                continue
            for position, event in made:
                if isinstance(event, _Refused):
                    refusals.append(Refusal(position, event.reason, event.error))
                    counts.refused[event.reason] += 1
                else:
                    events.append(event)
    counts.events = len(events)
    return Conversion(namespace, events, refusals, counts)


def _text(element: ET.Element | None, path: str) -> str | None:
    """The stripped text at ``path`` under ``element``, None when absent or empty."""
    if element is None:
        return None
    text = element.findtext(path)
    text = text.strip() if text is not None else None
    return text or None


def _account_id(account: ET.Element | None) -> str | None:
    return _text(account, "Id/IBAN") or _text(account, "Id/Othr/Id")


def _account(report: ET.Element, options: CamtOptions) -> tuple[str, str]:
    account = _account_id(report.find("Acct"))
    if account is None:
        raise _Refused("invalid_account", "the statement has no Acct/Id/IBAN or Acct/Id/Othr/Id")
    if len(account) > MAX_ID or not account.isprintable():
        raise _Refused("invalid_account", f"the account id is longer than {MAX_ID} characters or not printable")
    if options.accounts is None:
        return account, account
    customer = options.accounts.get(account)
    if customer is None:
        raise _Refused("unknown_account", "the statement's account is not in the accounts mapping")
    return account, customer


def _booked(entry: ET.Element, counts: Counts) -> bool:
    """True for a booked entry; counts and skips PDNG / INFO / others; refuses a missing status."""
    status = entry.find("Sts")
    code = (_text(status, "Cd") or _text(status, "Prtry") or (status.text or "").strip()) if status is not None else ""
    if not code:
        raise _Refused("invalid_status", "the entry has no Sts (v02: Sts text; v08: Sts/Cd)")
    if code == "BOOK":
        return True
    if code == "PDNG":
        counts.pending += 1
    elif code == "INFO":
        counts.info += 1
    else:
        counts.other_status += 1
    return False


def _direction(element: ET.Element, default: str | None = None) -> str:
    code = _text(element, "CdtDbtInd")
    if code is None and default is not None:
        return default
    direction = DIRECTIONS.get(code or "")
    if direction is None:
        raise _Refused("invalid_direction", "CdtDbtInd is missing or not CRDT / DBIT")
    return direction


def _reversal(entry: ET.Element) -> bool:
    text = _text(entry, "RvslInd")
    if text is None or text in ("false", "0"):
        return False
    if text in ("true", "1"):
        return True
    raise _Refused("invalid_direction", "RvslInd is not a boolean (true / false)")


def _timestamp(entry: ET.Element, zone: ZoneInfo) -> str:
    """``BookgDt/DtTm`` (no offset: the bank's zone) or ``BookgDt/Dt`` at noon in the bank's zone."""
    stamp = _text(entry, "BookgDt/DtTm")
    try:
        if stamp is not None:
            moment = dt.datetime.fromisoformat(stamp)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            return moment.astimezone(zone).isoformat()
        day = _text(entry, "BookgDt/Dt")
        match = _DATE_WITH_OFFSET.match(day or "")
        if match is None:
            raise _Refused("invalid_date", "a booked entry needs BookgDt/DtTm or BookgDt/Dt (YYYY-MM-DD)")
        return dt.datetime.combine(dt.date.fromisoformat(match.group(1)), DATE_ONLY_TIME, zone).isoformat()
    except (ValueError, OverflowError):
        raise _Refused("invalid_date", "BookgDt is not an ISO 8601 date or date-time") from None


def _amount(holder: ET.Element | None, path: str) -> tuple[Decimal, str] | None:
    """The amount at ``path`` (exact, from its text) and its ``Ccy``; None when absent.
    More decimals than the currency's ISO 4217 minor unit is refused (trailing zeros are not
    decimals: ``100.00`` JPY is 100)."""
    element = holder.find(path) if holder is not None else None
    if element is None:
        return None
    currency = (element.get("Ccy") or "").strip()
    if _CURRENCY.match(currency) is None:
        raise _Refused("invalid_currency", "the amount has no Ccy of three capital letters")
    text = (element.text or "").strip()
    if _AMOUNT.match(text) is None:
        raise _Refused("invalid_amount", "the amount is not a decimal of digits with an optional point")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _Refused("invalid_amount", "the amount is not a decimal") from None
    if value <= 0:
        raise _Refused("invalid_amount", "the amount must be > 0")
    exponent = value.normalize().as_tuple().exponent
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    places = minor_digits(currency)
    if decimals > places:
        raise _Refused("invalid_amount", "the amount has more decimals than its currency's minor unit (ISO 4217)")
    # Exact: the value has at most ``places`` decimals, so quantize only writes the currency's form.
    value = value.quantize(Decimal(1).scaleb(-places))
    if len(value.as_tuple().digits) > MAX_AMOUNT_DIGITS:
        raise _Refused("invalid_amount", f"the amount has more than {MAX_AMOUNT_DIGITS} digits")
    return value, currency


def _details_amount(details: ET.Element) -> tuple[Decimal, str]:
    found = _amount(details, "Amt") or _amount(details, "AmtDtls/TxAmt/Amt")
    if found is None:
        raise _Refused("invalid_amount", "a transaction of a batch has no Amt nor AmtDtls/TxAmt/Amt")
    return found


def _code_key(holder: ET.Element | None) -> tuple[str | None, str | None]:
    """(``Domn/Fmly/SubFmly``, proprietary code) of a ``BkTxCd`` under ``holder``."""
    if holder is None:
        return None, None
    code = holder.find("BkTxCd")
    if code is None:
        return None, None
    domain, family, sub = (_text(code, p) for p in ("Domn/Cd", "Domn/Fmly/Cd", "Domn/Fmly/SubFmlyCd"))
    iso = f"{domain}/{family}/{sub}" if domain and family and sub else None
    return iso, _text(code, "Prtry/Cd")


def kind_of(
    codes: Mapping[str, str], iso: str | None, proprietary: str | None, purpose: str | None, credit: bool
) -> str | None:
    """The kind the table gives (purpose first, on credits; then the most specific code row;
    then the proprietary code), or None when no row matches."""
    if purpose and credit and f"Purp:{purpose}" in codes:
        return codes[f"Purp:{purpose}"]
    if iso:
        domain, family, sub = iso.split("/")
        for key in (iso, f"{domain}/{family}/*", f"{domain}/*/{sub}", f"*/{family}/{sub}", f"{domain}/*/*"):
            if key in codes:
                return codes[key]
    if proprietary and f"Prtry:{proprietary}" in codes:
        return codes[f"Prtry:{proprietary}"]
    return None


def _same_bank(agent: str, ours: str) -> bool:
    """One institution: BICs compare on their first 8 characters (a BIC11 names a branch)."""
    a, b = agent.upper(), ours.upper()
    if len(a) in (8, 11) and len(b) in (8, 11):
        return a[:8] == b[:8]
    return a == b


def _agent(details: ET.Element | None, role: str) -> str | None:
    if details is None:
        return None
    return _text(details, f"RltdAgts/{role}/FinInstnId/BICFI") or _text(details, f"RltdAgts/{role}/FinInstnId/BIC")


def _checked_ref(value: str) -> str:
    if not value.isprintable():
        raise _Refused("invalid_reference", "a reference holds control or other non-printable characters")
    return value


def _refs(entry: ET.Element, details: ET.Element | None, batched: bool) -> tuple[str, bool]:
    """The reference that names this movement, and whether it names the whole entry (so a
    batch's transactions need their index). Docs: the txn_id rule."""
    found = (_text(details, f"Refs/{name}") for name in ("AcctSvcrRef", "EndToEndId", "TxId", "InstrId"))
    own = [ref for ref in found if ref and ref != NOT_PROVIDED]
    entry_refs = [ref for ref in (_text(entry, "AcctSvcrRef"), _text(entry, "NtryRef")) if ref]
    if batched:
        chain = [(ref, False) for ref in own] + [(ref, True) for ref in entry_refs]
    else:
        servicer, entry_ref = _text(entry, "AcctSvcrRef"), _text(entry, "NtryRef")
        tx_servicer = _text(details, "Refs/AcctSvcrRef")
        rest = [r for r in own if r != tx_servicer]
        chain = [(ref, False) for ref in (servicer, tx_servicer, entry_ref, *rest) if ref]
    if not chain:
        raise _Refused("missing_reference", "no AcctSvcrRef, NtryRef, EndToEndId, TxId or InstrId")
    ref, whole = chain[0]
    return _checked_ref(ref), whole


def _entry_events(
    entry: ET.Element, account: str, customer: str, options: CamtOptions, where: str, counts: Counts
) -> list[tuple[str, dict[str, Any] | _Refused]]:
    direction = _direction(entry)
    reversal = _reversal(entry)
    ts = _timestamp(entry, options.zone)
    total = _amount(entry, "Amt")
    if total is None:
        raise _Refused("invalid_amount", "the entry has no Amt")
    entry_iso, entry_prtry = _code_key(entry)
    transactions = entry.findall("NtryDtls/TxDtls")
    batched = len(transactions) > 1
    if not batched:
        single = transactions[0] if transactions else None
        parts: list[tuple[str, ET.Element | None, Decimal, str]] = [(where, single, total[0], direction)]
    else:
        counts.batched_entries += 1
        parts = []
        signed = Decimal(0)
        for k, transaction in enumerate(transactions, start=1):
            value, currency = _details_amount(transaction)
            if currency != total[1]:
                raise _Refused("batch_inconsistent", "a transaction of the batch is in another currency than the entry")
            own_direction = _direction(transaction, default=direction)
            signed += value if own_direction == "credit" else -value
            parts.append((f"{where}/TxDtls[{k}]", transaction, value, own_direction))
        if signed != (total[0] if direction == "credit" else -total[0]):
            raise _Refused("batch_inconsistent", "the transactions of the batch do not add up to the entry's Amt")
    made: list[tuple[str, dict[str, Any] | _Refused]] = []
    chosen: list[tuple[str, bool]] = []
    for position, details, _, _ in parts:
        try:
            chosen.append(_refs(entry, details, batched))
        except _Refused as exc:
            chosen.append(("", False))
            made.append((position, exc))
    shared = Counter(ref for ref, _ in chosen if ref)
    for k, ((position, details, value, part_direction), (ref, whole)) in enumerate(zip(parts, chosen, strict=True), 1):
        if not ref:
            continue
        try:
            event = _event(
                entry, details, account, customer, options, ts, part_direction, reversal, value, total[1],
                ref if not batched or (not whole and shared[ref] == 1) else f"{ref}:{k}",
                (entry_iso, entry_prtry), counts,
            )  # fmt: skip
        except _Refused as exc:
            made.append((position, exc))
            continue
        made.append((position, event))
    made.sort(key=lambda item: _position_order(item[0]))
    return made


def _position_order(position: str) -> int:
    match = re.search(r"TxDtls\[([0-9]+)\]\Z", position)
    return int(match.group(1)) if match else 0


def _event(
    entry: ET.Element,
    details: ET.Element | None,
    account: str,
    customer: str,
    options: CamtOptions,
    ts: str,
    direction: str,
    reversal: bool,
    amount: Decimal,
    currency: str,
    ref: str,
    entry_code: tuple[str | None, str | None],
    counts: Counts,
) -> dict[str, Any]:
    base = f"{account}:{ref}"
    txn_id = base + REVERSAL_SUFFIX if reversal else base
    if len(txn_id) > MAX_TXN_ID:
        raise _Refused("invalid_reference", f"account and reference make a txn_id longer than {MAX_TXN_ID} characters")
    # ISO usage rule of RvslInd: CRDT + reversal means the original was a debit (and DBIT a credit).
    # The event moves the money back, in CdtDbtInd's direction; the parties and the kind are the
    # original movement's, so they are read for the original's direction.
    original = OPPOSITE[direction] if reversal else direction
    iso, proprietary = _code_key(details)
    if iso is None and proprietary is None:
        iso, proprietary = entry_code
    kind = kind_of(options.codes, iso, proprietary, _text(details, "Purp/Cd"), original == "credit")
    if kind is None:
        counts.unmapped_kind += 1
        kind = "other"
    event: dict[str, Any] = {
        "txn_id": txn_id,
        "customer_id": customer,
        "account_id": account,
        "ts": ts,
        "direction": direction,
        "amount": str(amount),
        "currency": currency,
        "kind": kind,
        "external": False,
    }
    # The counterparty: the debtor's side on a credit, the creditor's on a debit.
    side, other_side = ("Dbtr", "Cdtr") if original == "credit" else ("Cdtr", "Dbtr")
    agent = _agent(details, f"{side}Agt") or _agent(details, f"{other_side}Agt")
    if options.bank_bic and agent and not _same_bank(agent, options.bank_bic):
        if len(agent) > MAX_ID or not agent.isprintable():
            raise _Refused("invalid_agent", "the counterparty agent's BIC is too long or not printable")
        event["external"] = True
        event["counterparty_bank"] = agent
    if options.accounts is not None and details is not None:
        theirs = _account_id(details.find(f"RltdPties/{side}Acct"))
        other_customer = options.accounts.get(theirs) if theirs else None
        if other_customer is not None:
            event["counterparty_customer_id"] = other_customer
            if other_customer == customer:
                counts.own_account += 1
            elif kind == "salary":
                event["payer_customer_id"] = other_customer
    if reversal:
        event["reverses"] = base
        counts.reversals += 1
    return event


# --- files: the accounts and codes mappings, the command's body ----------------------------------


def _checked_id(value: object, what: str, path: Path) -> str:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text or len(text) > MAX_ID or not text.isprintable():
        raise ConfigError(f"{path}: every {what} must be 1-{MAX_ID} printable characters")
    return text


def load_accounts(path: Path) -> dict[str, str]:
    """Account -> customer: a CSV file with the header ``account_id,customer_id``, or a YAML
    mapping ``{account: customer}`` (``.yaml`` / ``.yml``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the accounts file {path}: {exc.__class__.__name__}") from None
    pairs: Iterable[tuple[object, object]]
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"{path}: not valid YAML") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the accounts file must be a mapping account: customer")
        pairs = loaded.items()
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or not {"account_id", "customer_id"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}: the CSV needs the header account_id,customer_id")
        pairs = [(row.get("account_id"), row.get("customer_id")) for row in reader]
    else:
        raise ConfigError(f"{path}: the accounts file must be .csv (account_id,customer_id) or .yaml")
    accounts: dict[str, str] = {}
    for account, customer in pairs:
        key = _checked_id(account, "account", path)
        if key in accounts:
            raise ConfigError(f"{path}: an account is listed twice")
        accounts[key] = _checked_id(customer, "customer", path)
    return accounts


def load_codes(path: Path | None) -> dict[str, str]:
    """The default code table with the rows of a YAML file (``{"PMNT/RCDT/ESCT": "transfer_in"}``) over it."""
    codes = dict(DEFAULT_CODES)
    if path is None:
        return codes
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the codes file {path}: {exc.__class__.__name__}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the codes file must be a mapping CODE: kind")
    for key, kind in loaded.items():
        if not isinstance(key, str) or _CODE_KEY.match(key) is None:
            raise ConfigError(f"{path}: {key!r} is not DOMN/FMLY/SUBF (* for any), Purp:CODE or Prtry:CODE")
        if kind not in KINDS:
            raise ConfigError(f"{path}: {key}: {kind!r} is not one of {', '.join(sorted(KINDS))}")
        codes[key] = kind
    return codes


@dataclass(frozen=True, slots=True)
class ConvertSummary:
    files: int
    counts: Counts

    def line(self, out: Path, refused: Path) -> str:
        c = self.counts
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(c.refused.items()))
        return (
            f"{self.files} file(s): {c.entries} entries, {c.events} events, {c.pending} pending skipped, "
            f"{c.info + c.other_status} info/other skipped, {c.reversals} reversals, "
            f"refused {sum(c.refused.values())}{f' ({by_reason})' if by_reason else ''}; "
            f"wrote {out} and {refused}"
        )


def refused_path(out: Path) -> Path:
    """``EVENTS.jsonl`` -> ``EVENTS.refused.jsonl`` beside it."""
    return out.with_name(f"{out.stem}.refused{out.suffix or '.jsonl'}")


def convert_files(paths: Sequence[Path], out: Path, refused: Path, options: CamtOptions) -> ConvertSummary:
    """Convert every file (a bad file stops everything before anything is written), then write
    the events in event-time order (ties keep file order) and the refusals in file order."""
    events: list[tuple[dt.datetime, int, dict[str, Any]]] = []
    refusals: list[dict[str, str]] = []
    total = Counts()
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
        try:
            result = convert(data, options)
        except CamtFileError as exc:
            raise CamtFileError(f"{path}: {exc}") from None
        total.add(result.counts)
        for event in result.events:
            events.append((dt.datetime.fromisoformat(event["ts"]), len(events), event))
        refusals.extend({"file": str(path), **refusal.as_dict()} for refusal in result.refusals)
    events.sort(key=lambda item: (item[0], item[1]))
    for target in (out, refused):
        target.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"".join(orjson.dumps(event) + b"\n" for _, _, event in events))
    refused.write_bytes(b"".join(orjson.dumps(refusal) + b"\n" for refusal in refusals))
    return ConvertSummary(len(paths), total)
