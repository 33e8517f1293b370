"""Every query parameter and header value the HTTP API reads, validated in one place.

A value outside what the API documents is a ``BadRequest`` (400 with one line
naming the parameter and the accepted range; the input itself is never echoed
back or logged). Numbers are ASCII digits only: ``str.isdigit()`` also accepts
``²``, ``①`` and Arabic-Indic digits, and ``int()`` reads some of those, so
neither is used to decide what a number is.

| parameter | where | accepted |
| --- | --- | --- |
| ``limit`` | ``/alerts`` | 1..1000 (default 100) |
| ``top`` | ``/tiers``, ``/board`` | 0..100 (default 10); 0 lists no customers |
| ``day`` | ``/board`` | ``YYYY-MM-DD``, years 1970..2100 |
| ``as_of`` | ``/customers/{id}``, ``/history`` | RFC 3339 with an offset, years 1970..2100 |
| ``since``, ``Last-Event-ID`` | ``/alerts/stream`` | a feed id ``MS`` or ``MS-SEQ``, each 0..2^64-1 |
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Mapping

from streams.storage.snapshot import parse_as_of

_DIGITS = re.compile(r"[0-9]{1,20}")
_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_U64 = (1 << 64) - 1
_DAY = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")

LIMIT = (1, 1000, 100)  # low, high, default
TOP = (0, 100, 10)


class BadRequest(ValueError):
    """A request the API refuses with 400 and this message."""


def integer(query: Mapping[str, str], name: str, bounds: tuple[int, int, int]) -> int:
    """``query[name]`` as an int in ``bounds`` (low, high, default when absent)."""
    low, high, default = bounds
    text = query.get(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be an integer {low}..{high} (ASCII digits)")
    return int(text)


def known(query: Mapping[str, str], names: Collection[str]) -> None:
    """Refuse a parameter the endpoint does not take (a misspelt filter must not be ignored)."""
    unknown = sorted(set(query) - set(names))
    if unknown:
        accepted = ", ".join(sorted(names)) or "none"
        raise BadRequest(f"unknown query parameter; accepted: {accepted}")


def day(query: Mapping[str, str]) -> str | None:
    """``day`` as ``YYYY-MM-DD`` (a real calendar day, years 1970..2100), or None when absent or empty."""
    text = query.get("day")
    if not text:
        return None
    found = _DAY.fullmatch(text)
    try:
        valid = found is not None and 1970 <= int(found[1]) <= 2100 and bool(dt.date.fromisoformat(text))
    except ValueError:
        valid = False
    if not valid:
        raise BadRequest("day must be a calendar day YYYY-MM-DD, years 1970..2100")
    return text


def as_of(query: Mapping[str, str]) -> int | None:
    """``as_of`` as epoch microseconds, or None when absent or empty."""
    text = query.get("as_of")
    if not text:
        return None
    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def stream_id(text: str) -> str:
    """A Redis stream id Redis will accept (``MS`` or ``MS-SEQ``, both unsigned 64-bit),
    normalised to ``MS-SEQ``. ``1-`` or a 20-digit number past 2^64-1 is refused here,
    not by Redis on every read of a stream that never ends."""
    found = _STREAM_ID.fullmatch(text)
    if found is None or int(found[1]) > _U64 or int(found[2] or 0) > _U64:
        raise BadRequest("since / Last-Event-ID must be a feed id like 1700000000000-0")
    return f"{int(found[1])}-{int(found[2] or 0)}"


def parse_stream_id(text: str) -> tuple[int, int]:
    """A valid stream id (``stream_id``'s output or Redis's) as a comparable pair."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def bearer(header: str) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when the header
    is absent, of another scheme, or not encodable (invalid UTF-8 arrives as lone
    surrogates): such a request is simply unauthenticated (401), never a 500."""
    if header[:7].lower() != "bearer ":
        return None
    try:
        return header[7:].strip().encode("utf-8")
    except UnicodeEncodeError:
        return None
