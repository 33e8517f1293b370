"""``fundflow convert-berka DIR OUT.jsonl``: the PKDD'99 "Berka" data set as FundFlow events.

The data ship with the project (``streams/tools/berka_data/``, xz-compressed,
provenance and checksums in its README.md): ``SHIPPED_BERKA`` is the default
everywhere; ``--berka DIR`` takes another copy, compressed or not.

Mapping (``streams/tools/berka_data/README.md``):

* customer_id = account_id = the Berka ``account_id`` (one owner per account);
  txn_id = ``trans_id``.
* ``PRIJEM`` → credit; ``VYDAJ`` / ``VYBER`` → debit.
* kind, by ``k_symbol`` first: ``UVER`` loan_repayment, ``DUCHOD`` pension,
  ``UROK`` interest, ``SLUZBY`` / ``SANKC. UROK`` fee; otherwise by
  ``operation``: ``PREVOD Z UCTU`` transfer_in, ``PREVOD NA UCET``
  transfer_out, ``VKLAD`` cash_deposit, ``VYBER`` / ``VYBER KARTOU``
  cash_withdrawal; anything else ``other``.
* external = the operation is a transfer with another bank (``PREVOD Z UCTU``,
  ``PREVOD NA UCET``); counterparty_bank = ``bank`` when present.
* balance_after = ``balance`` (the bank's ledger balance after the transaction).
* ts: the date at 09:00 in the bank's zone; one account's transactions of a
  day one second apart, **in their real order**, which the balance column
  gives back: each transaction's balance equals the previous balance plus its
  signed amount. The order is found by a depth-first search from the previous
  day's closing balance (0 before an account's first day), exact to the cent
  first, then within the data set's 0.1 CZK rounding (1 CZK); a day with no
  consistent chain keeps the file's order and is counted as ``ambiguous_days``.

Loans (``loan.asc``, only those granted by the last transaction date): a
LoanEvent at 08:00 of the grant date (principal = outstanding = ``amount``,
installment = ``payments``, next_due one month later), and one at 23:00 of each
day with a ``UVER`` repayment on the loan's account (outstanding reduced by the
repayment, next_due moved a month on, ``closed`` when nothing is left). In
Berka ``amount`` equals ``duration × payments`` exactly, so the file implies
no interest rate; loans carry ``BERKA_LOAN_RATE`` (4.35%, the PBoC 1–5 year
benchmark) as their contract rate for the contribution model.

The output is deterministic: one compact JSON object per line, in event-time
order (ties: account, then sequence), byte-identical for the same input.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import gzip
import json
import lzma
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from rules.money import to_cent
from streams.errors import ConfigError

SHIPPED_BERKA = Path(__file__).resolve().parent / "berka_data"
BERKA_LOAN_RATE = Decimal("0.0435")
EXACT = Decimal("0.005")
ROUNDING = Decimal("1.00")  # the README: amounts carry 0.1 CZK rounding, drifting up to ~1 CZK

KIND_BY_SYMBOL = {
    "UVER": "loan_repayment",
    "DUCHOD": "pension",
    "UROK": "interest",
    "SLUZBY": "fee",
    "SANKC. UROK": "fee",
}
KIND_BY_OPERATION = {
    "PREVOD Z UCTU": "transfer_in",
    "PREVOD NA UCET": "transfer_out",
    "VKLAD": "cash_deposit",
    "VYBER": "cash_withdrawal",
    "VYBER KARTOU": "cash_withdrawal",
}
EXTERNAL_OPERATIONS = frozenset({"PREVOD Z UCTU", "PREVOD NA UCET"})
DIRECTIONS = {"PRIJEM": "credit", "VYDAJ": "debit", "VYBER": "debit"}


@dataclass(frozen=True, slots=True)
class ConversionStats:
    transactions: int
    loan_events: int
    loans: int
    accounts: int
    days: int
    ambiguous_days: int
    rounded_days: int
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Row:
    trans_id: str
    account_id: str
    day: dt.date
    direction: str
    kind: str
    amount: Decimal
    balance: Decimal
    external: bool
    bank: str | None

    @property
    def signed(self) -> Decimal:
        return self.amount if self.direction == "credit" else -self.amount


def parse_date(text: str) -> dt.date:
    if len(text) != 6 or not text.isdigit():
        raise ValueError(f"bad date {text!r}")
    return dt.date(1900 + int(text[:2]), int(text[2:4]), int(text[4:6]))


def berka_file(berka_dir: Path, name: str) -> Path | None:
    """``name`` in ``berka_dir`` as it is, or xz- or gzip-compressed; None if absent."""
    for candidate in (name, f"{name}.xz", f"{name}.gz"):
        path = berka_dir / candidate
        if path.is_file():
            return path
    return None


@contextmanager
def open_text(path: Path) -> Iterator[IO[str]]:
    """A Berka file for ``csv``, decompressed on the fly when it ends in .xz or .gz."""
    if path.suffix == ".xz":
        with lzma.open(path, "rt", encoding="latin-1", newline="") as handle:
            yield handle
    elif path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="latin-1", newline="") as handle:
            yield handle
    else:
        with path.open(encoding="latin-1", newline="") as handle:
            yield handle


def _rows(path: Path, skipped: dict[str, int]) -> Iterator[Row]:
    with open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter=";")
        for record in reader:
            try:
                direction = DIRECTIONS[(record.get("type") or "").strip()]
                operation = (record.get("operation") or "").strip()
                symbol = (record.get("k_symbol") or "").strip()
                amount = to_cent(Decimal((record.get("amount") or "").strip()))
                balance = to_cent(Decimal((record.get("balance") or "").strip()))
                if amount <= 0 or not amount.is_finite() or not balance.is_finite():
                    raise ValueError("amount must be > 0")
                bank = (record.get("bank") or "").strip() or None
                yield Row(
                    trans_id=(record.get("trans_id") or "").strip(),
                    account_id=(record.get("account_id") or "").strip(),
                    day=parse_date((record.get("date") or "").strip()),
                    direction=direction,
                    kind=KIND_BY_SYMBOL.get(symbol) or KIND_BY_OPERATION.get(operation) or "other",
                    amount=amount,
                    balance=balance,
                    external=operation in EXTERNAL_OPERATIONS,
                    bank=bank,
                )
            except (KeyError, ValueError, InvalidOperation, TypeError):
                skipped["bad_transaction_row"] = skipped.get("bad_transaction_row", 0) + 1


def chain_order(rows: list[Row], opening: Decimal, tolerance: Decimal) -> list[Row] | None:
    """The order in which each balance is the previous one plus its signed amount, or None."""
    count = len(rows)
    used = [False] * count
    order: list[Row] = []

    def search(balance: Decimal) -> bool:
        if len(order) == count:
            return True
        candidates = [
            i for i in range(count) if not used[i] and abs(balance + rows[i].signed - rows[i].balance) <= tolerance
        ]
        candidates.sort(key=lambda i: abs(balance + rows[i].signed - rows[i].balance))
        for i in candidates:
            used[i] = True
            order.append(rows[i])
            if search(rows[i].balance):
                return True
            used[i] = False
            order.pop()
        return False

    return order if search(opening) else None


def _add_month(day: dt.date) -> dt.date:
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return day.replace(year=year, month=month, day=min(day.day, calendar.monthrange(year, month)[1]))


def _at(day: dt.date, hour: int, second: int, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, 0, 0, tzinfo=zone) + dt.timedelta(seconds=second)


def convert_berka(berka_dir: Path | None, out: Path, zone: ZoneInfo) -> ConversionStats:
    """Convert the Berka files in ``berka_dir`` (default: the shipped copy) to ``out``."""
    berka_dir = SHIPPED_BERKA if berka_dir is None else berka_dir
    if not berka_dir.is_dir():
        raise ConfigError(f"no such directory: {berka_dir}")
    trans_path = berka_file(berka_dir, "trans.asc")
    if trans_path is None:
        raise ConfigError(f"{berka_dir} has no trans.asc: is it the Berka data set?")
    skipped: dict[str, int] = {}
    by_account_day: dict[str, dict[dt.date, list[Row]]] = defaultdict(lambda: defaultdict(list))
    seen: set[str] = set()
    for row in _rows(trans_path, skipped):
        if not row.trans_id or not row.account_id or row.trans_id in seen:
            skipped["duplicate_or_missing_id"] = skipped.get("duplicate_or_missing_id", 0) + 1
            continue
        seen.add(row.trans_id)
        by_account_day[row.account_id][row.day].append(row)

    lines: list[tuple[dt.datetime, int, int, bytes]] = []
    ambiguous = rounded = days = 0
    last_day = dt.date.min
    repayments: dict[str, list[tuple[dt.date, Decimal]]] = defaultdict(list)
    for account in sorted(by_account_day, key=_numeric):
        closing = Decimal(0)
        for day in sorted(by_account_day[account]):
            days += 1
            last_day = max(last_day, day)
            rows = sorted(by_account_day[account][day], key=lambda r: _numeric(r.trans_id))
            order = chain_order(rows, closing, EXACT)
            if order is None:
                order = chain_order(rows, closing, ROUNDING)
                if order is None:
                    ambiguous += 1
                    order = rows
                else:
                    rounded += 1
            closing = order[-1].balance
            for seq, row in enumerate(order):
                ts = _at(day, 9, seq, zone)
                lines.append((ts, _numeric(account), seq, _transaction_json(row, ts)))
                if row.kind == "loan_repayment":
                    repayments[account].append((day, row.amount))

    loans = 0
    loan_events = 0
    loan_path = berka_file(berka_dir, "loan.asc")
    if loan_path is not None:
        for event_ts, account_order, seq, payload in _loan_events(loan_path, last_day, repayments, zone, skipped):
            lines.append((event_ts, account_order, seq, payload))
            loan_events += 1
            loans += seq == -1_000_000
    lines.sort(key=lambda item: (item[0], item[1], item[2]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as handle:
        for _, _, _, payload in lines:
            handle.write(payload)
            handle.write(b"\n")
    return ConversionStats(
        transactions=len(seen),
        loan_events=loan_events,
        loans=loans,
        accounts=len(by_account_day),
        days=days,
        ambiguous_days=ambiguous,
        rounded_days=rounded,
        skipped=skipped,
    )


def _numeric(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _transaction_json(row: Row, ts: dt.datetime) -> bytes:
    obj: dict[str, Any] = {
        "txn_id": row.trans_id,
        "customer_id": row.account_id,
        "account_id": row.account_id,
        "ts": ts.isoformat(),
        "direction": row.direction,
        "amount": str(row.amount),
        # no currency: the deployment's. Berka's amounts are CZK, and the demo, the benchmarks
        # and the tests run them as the bank's own currency (FUNDFLOW_CURRENCY, CNY by default):
        # a CZK tag would have every record dead-lettered currency_mismatch there.
        "kind": row.kind,
        "external": row.external,
    }
    if row.bank:
        obj["counterparty_bank"] = row.bank
    obj["balance_after"] = str(row.balance)
    return _dumps(obj)


def _loan_events(
    path: Path,
    last_day: dt.date,
    repayments: dict[str, list[tuple[dt.date, Decimal]]],
    zone: ZoneInfo,
    skipped: dict[str, int],
) -> Iterator[tuple[dt.datetime, int, int, bytes]]:
    with open_text(path) as handle:
        for record in csv.DictReader(handle, delimiter=";"):
            try:
                loan_id = (record.get("loan_id") or "").strip()
                account = (record.get("account_id") or "").strip()
                granted = parse_date((record.get("date") or "").strip())
                principal = to_cent(Decimal((record.get("amount") or "").strip()))
                installment = to_cent(Decimal((record.get("payments") or "").strip()))
                if not loan_id or not account or principal <= 0 or installment <= 0:
                    raise ValueError("incomplete loan")
            except (ValueError, InvalidOperation, TypeError):
                skipped["bad_loan_row"] = skipped.get("bad_loan_row", 0) + 1
                continue
            if granted > last_day:
                continue  # granted after the transactions end: not yet known at any replayed time
            outstanding = principal
            due = _add_month(granted)
            ts = _at(granted, 8, 0, zone)
            yield (
                ts,
                _numeric(account),
                -1_000_000,
                _loan_json(loan_id, account, ts, principal, outstanding, installment, due),
            )
            for n, (day, amount) in enumerate(sorted(repayments.get(account, ()))):
                if day < granted:
                    continue
                outstanding = to_cent(max(outstanding - amount, Decimal(0)))
                due = _add_month(due)
                ts = _at(day, 23, 0, zone)
                payload = _loan_json(loan_id, account, ts, principal, outstanding, min(installment, outstanding), due)
                yield ts, _numeric(account), 1_000_000 + n, payload
                if outstanding == 0:
                    break


def _loan_json(
    loan_id: str,
    account: str,
    ts: dt.datetime,
    principal: Decimal,
    outstanding: Decimal,
    installment: Decimal,
    due: dt.date,
) -> bytes:
    return _dumps(
        {
            "loan_id": loan_id,
            "customer_id": account,
            "account_id": account,
            "ts": ts.isoformat(),
            "principal": str(principal),
            "outstanding": str(outstanding),
            "annual_rate": str(BERKA_LOAN_RATE),
            "installment": str(installment),
            "next_due": due.isoformat(),
            "status": "active" if outstanding > 0 else "closed",
        }
    )


def berka_lines(berka_dir: Path | None, zone: ZoneInfo) -> list[bytes]:
    """The converted events, one JSON line each (``berka_dir`` None: the shipped copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "berka.jsonl"
        convert_berka(berka_dir, out, zone)
        return out.read_bytes().splitlines()
