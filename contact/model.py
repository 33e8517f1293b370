"""Consent and complaints, pure: what a person said about being contacted, and whether a
push to them may leave FundFlow now (no Redis, no clock: ``now`` is always given).

A **record** says one thing a customer said, at a time (``at``, Unix seconds: when they
said it, which an import may date in the past):

* ``opt_out`` / ``opt_in`` of a channel: ``push`` (app notifications), ``sms``, or
  ``all`` (every channel, the ones FundFlow has today and any it gains later);
* ``complaint`` (投诉): every push is held for ``complaint_quiet_days`` after it.

A customer's ``Consent`` keeps, per scope (push, sms, all), only the latest record (by
``at``; at the same second an opt-out wins), and the latest complaint. So the state is a
function of the set of records, whatever order they arrive in (an import of last year's
opt-outs after today's opt-in through the API does not undo the opt-in), and applying a
record twice changes nothing: an import run again is a no-op. Whether a channel is opted
out is decided by the later of its own record and the ``all`` record: "opt out of
everything" in March, "push is fine again" in May leaves push allowed and SMS refused.

Packed for Redis (``pack``): 21 bytes, the flags (bit 0 push out, 1 sms out, 2 all out)
and five unsigned 32-bit numbers: the three scopes' ``at``, the complaint's ``at`` and the
source of the last change (0: the API, N: import N). 0 is "never"; ``contact/lua/merge.lua``
merges the same bytes the same way (``tests/pipeline/test_contact_store.py`` holds it to
``Consent.apply``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal
from zoneinfo import ZoneInfo

Channel = Literal["push", "sms"]
Scope = Literal["push", "sms", "all"]
Kind = Literal["opt_out", "opt_in", "complaint"]

CHANNELS: tuple[Channel, ...] = ("push", "sms")
SCOPES: tuple[Scope, ...] = ("push", "sms", "all")
KINDS: tuple[Kind, ...] = ("opt_out", "opt_in", "complaint")
PACKED = struct.Struct(">BIIIII")
LATEST_AT = 2**32 - 1  # the packed times are unsigned 32-bit seconds (until 2106)
MAX_CUSTOMER_ID = 64  # docs/events.md: customer_id is 1-64 characters
DAY = 86_400
_BIT = {"push": 1, "sms": 2, "all": 4}


@dataclass(frozen=True, slots=True)
class Record:
    customer_id: str
    kind: Kind
    scope: Scope  # "all" for a complaint
    at: int  # Unix seconds: when the customer said it
    source: int = 0  # 0: recorded through the API; N: import N


@dataclass(frozen=True, slots=True)
class Consent:
    """The latest record per scope ((at, opted out); at 0: none) and the latest complaint."""

    push: tuple[int, bool] = (0, False)
    sms: tuple[int, bool] = (0, False)
    all: tuple[int, bool] = (0, False)
    complaint_at: int = 0
    source: int = 0  # where the last change came from

    def apply(self, record: Record) -> Consent:
        """This state with ``record`` merged in (the state itself when it changes nothing)."""
        if record.kind == "complaint":
            if record.at <= self.complaint_at:
                return self
            return replace(self, complaint_at=record.at, source=record.source)
        new = (record.at, record.kind == "opt_out")
        if new <= self.scope(record.scope):  # older, or the same second and not stricter
            return self
        if record.scope == "push":
            return replace(self, push=new, source=record.source)
        if record.scope == "sms":
            return replace(self, sms=new, source=record.source)
        return replace(self, all=new, source=record.source)

    def scope(self, scope: Scope) -> tuple[int, bool]:
        return self.push if scope == "push" else self.sms if scope == "sms" else self.all

    def opted_out(self, channel: Channel) -> bool:
        latest = max(self.scope(channel), self.all)
        return latest[0] > 0 and latest[1]

    def complaint_until(self, quiet_days: int) -> int | None:
        """Until when (Unix seconds) the latest complaint holds pushes, or None."""
        return self.complaint_at + quiet_days * DAY if self.complaint_at else None

    def held(self, channel: Channel, now: int, quiet_days: int) -> str | None:
        """Why a contact on ``channel`` at ``now`` may not go out (``opt_out:<channel>``,
        ``complaint``), or None."""
        if self.opted_out(channel):
            return f"opt_out:{channel}"
        until = self.complaint_until(quiet_days)
        if until is not None and self.complaint_at <= now < until:
            return "complaint"
        return None

    def pack(self) -> bytes:
        flags = sum(_BIT[s] for s in SCOPES if self.scope(s)[1])
        return PACKED.pack(flags, self.push[0], self.sms[0], self.all[0], self.complaint_at, self.source)

    @classmethod
    def unpack(cls, raw: bytes | None) -> Consent:
        if not raw:
            return cls()
        flags, push, sms, every, complaint, source = PACKED.unpack(raw)
        return cls((push, bool(flags & 1)), (sms, bool(flags & 2)), (every, bool(flags & 4)), complaint, source)

    def as_dict(self, now: int, quiet_days: int) -> dict[str, object]:
        """What the API shows: per scope the latest record, the complaint, and per channel
        whether a push would be held now and why."""

        def scope(value: tuple[int, bool]) -> dict[str, object] | None:
            return None if not value[0] else {"status": "opt_out" if value[1] else "opt_in", "at": iso(value[0])}

        until = self.complaint_until(quiet_days)
        return {
            "scopes": {s: scope(self.scope(s)) for s in SCOPES},
            "complaint": None if until is None else {"at": iso(self.complaint_at), "quiet_until": iso(until)},
            "held": {c: self.held(c, now, quiet_days) for c in CHANNELS},
            "source": "api" if self.source == 0 else f"import {self.source}",
        }


def iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def merge(records: Iterable[Record], start: Consent | None = None) -> Consent:
    state = start or Consent()
    for record in records:
        state = state.apply(record)
    return state


# --- the import file ------------------------------------------------------------------

COLUMNS = ("customer_id", "channel", "status", "recorded_at")  # in any order; more: refused
OPTIONAL_COLUMNS = ("note",)  # read and ignored: why a bank recorded it stays in its own files
EARLIEST = dt.datetime(1970, 1, 2, tzinfo=dt.UTC)
BAD_ROWS_SHOWN = 20  # line numbers listed in the summary; every bad row is counted


class ImportFileError(ValueError):
    """The file cannot be imported at all (one line: what is wrong and where)."""


@dataclass(slots=True)
class Parsed:
    rows: int = 0
    bad: int = 0
    problems: list[str] = field(default_factory=list)  # the first BAD_ROWS_SHOWN, "line N: why"

    def refuse(self, line: int, why: str) -> None:
        self.bad += 1
        if len(self.problems) < BAD_ROWS_SHOWN:
            self.problems.append(f"line {line}: {why}")


def parse_time(text: str, zone: ZoneInfo, now: int | None = None) -> int:
    """``YYYY-MM-DD`` (the start of that day in the bank's zone) or RFC 3339 with an offset,
    as Unix seconds; ``ValueError`` (with why) otherwise. ``now``: not later than a day past it."""
    text = text.strip()
    shape = "a date YYYY-MM-DD or an RFC 3339 time with an offset"  # never the value: it may be anything
    try:
        if not text.isascii():  # int() would read other scripts' digits
            raise ValueError(shape)
        if len(text) == 10:
            moment = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), zone)
        elif len(text) < 20 or text[10] not in "Tt ":
            raise ValueError(shape)
        else:
            moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(shape) from None
    if moment.tzinfo is None:
        raise ValueError("an RFC 3339 time needs its offset (Z or +08:00)")
    seconds = int(moment.timestamp())
    if moment < EARLIEST or seconds > LATEST_AT:
        raise ValueError("out of range (1970-01-02 .. 2106)")
    if now is not None and seconds > now + DAY:
        raise ValueError("in the future")
    return seconds


def check_customer_id(value: str) -> str | None:
    """Why ``value`` is not a customer id (docs/events.md), or None."""
    if not value:
        return "customer_id is empty"
    if len(value) > MAX_CUSTOMER_ID:
        return f"customer_id is longer than {MAX_CUSTOMER_ID} characters"
    if not value.isprintable():
        return "customer_id has a control character"
    return None


def parse_csv(lines: Iterable[str], zone: ZoneInfo, now: int, parsed: Parsed) -> Iterator[Record]:
    """The records of an import file (UTF-8 text, a header row naming ``COLUMNS``), lazily:
    a bad row is counted in ``parsed`` with its line number and skipped; a bad file raises
    ``ImportFileError`` before the first record."""
    reader = csv.reader(_numbered(lines, parsed_lines := [0]))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError("empty file: the first line must be the header " + ",".join(COLUMNS)) from None
    except csv.Error as exc:
        raise ImportFileError(f"line 1: not CSV: {exc}") from None
    names = [h.strip().lstrip("\ufeff").lower() for h in header]
    unknown = [n for n in names if n not in COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        known = ", ".join(COLUMNS + OPTIONAL_COLUMNS)
        raise ImportFileError(f"line 1: unknown column {unknown[0]!r} (columns: {known})")
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ImportFileError(f"line 1: missing column {missing[0]!r} (the header names {', '.join(COLUMNS)})")
    if len(set(names)) != len(names):
        raise ImportFileError("line 1: a column is named twice")
    where = {name: names.index(name) for name in COLUMNS}
    width = len(names)
    times: dict[str, int] = {}  # an export repeats its dates: parse each once
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            parsed.rows += 1
            parsed.refuse(parsed_lines[0], f"not CSV: {exc}")
            continue
        line = parsed_lines[0]
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        parsed.rows += 1
        if len(row) != width:
            parsed.refuse(line, f"{len(row)} fields, the header has {width}")
            continue
        customer = row[where["customer_id"]].strip()
        why = check_customer_id(customer)
        status = row[where["status"]].strip().lower()
        channel = row[where["channel"]].strip().lower() or ("all" if status == "complaint" else "")
        if why is None and status not in KINDS:
            why = f"status must be one of {', '.join(KINDS)}"
        if why is None and channel not in SCOPES:
            why = f"channel must be one of {', '.join(SCOPES)}"
        if why is None and status == "complaint" and channel != "all":
            why = "a complaint holds every channel: leave channel empty or write all"
        at = 0
        if why is None:
            text = row[where["recorded_at"]].strip()
            at = times.get(text, -1)
            if at < 0:
                try:
                    at = parse_time(text, zone, now)
                except ValueError as exc:
                    why = f"recorded_at: {exc}"
                else:
                    times[text] = at
        if why is not None:
            parsed.refuse(line, why)
            continue
        yield Record(customer, status, channel, at)  # type: ignore[arg-type]


def _numbered(lines: Iterable[str], counter: list[int]) -> Iterator[str]:
    """The lines, counting them in ``counter[0]`` (the csv reader's line of the row it returns
    counts the lines of a quoted field too; this is the last line read, which is the row's)."""
    for line in lines:
        counter[0] += 1
        yield line


def read_text_lines(data: bytes) -> Iterator[str]:
    """The lines of an import file's bytes (UTF-8, a BOM allowed); ``ImportFileError`` if not text."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise ImportFileError("not a text file (it holds NUL bytes)")
    return iter(io.StringIO(text, newline=""))
