"""Numbers written for people: the one formatting of what a person reads.

Finding messages (both languages), webhooks (they carry the message), the console, the 看板
and the command line show numbers through these functions, so one amount reads the same
everywhere. Evidence fields and every other machine-readable value keep their wire form
(``rules.money.money``, ``rules.engine.ratio``): a program reads those, a person reads these.

* ``percent``: a ratio as a percentage, half-up to ``places`` decimals (whole percent by
  default): ``1.8914`` -> ``189%``, ``0.0534`` -> ``5%``, with one place ``5.3%``.
* ``amount``: money with the currency's ISO 4217 minor digits (``rules.money.minor_digits``:
  2 for CNY, 0 for JPY, 3 for BHD), half-up as ``metrics.md`` rounds, and a comma between
  thousands (千分位, the same in Chinese and English text): ``-44170`` -> ``-44,170.00``.
* ``number``: any decimal with thousands separators and a fixed number of places.

A result of zero is never ``-0``; a negative number starts with ``-`` (ASCII, so a copied
figure still parses). Pure: no locale, no clock.
"""

from __future__ import annotations

from decimal import Decimal

from rules.money import minor_digits, rounded

Number = Decimal | int | str


def _decimal(value: Number | float) -> Decimal:
    # a float goes through its shortest repr, so 0.1 is 0.1 and not its binary expansion
    return value if isinstance(value, Decimal) else Decimal(str(value))


def number(value: Number | float, places: int = 0) -> str:
    """``value`` half-up to ``places`` decimals, with a comma between thousands."""
    if places < 0:
        raise ValueError("places must be >= 0")
    exact = rounded(_decimal(value), places)
    sign = "-" if exact < 0 else ""
    digits = f"{abs(exact):f}"
    whole, _, fraction = digits.partition(".")
    groups = [whole[max(i - 3, 0) : i] for i in range(len(whole), 0, -3)][::-1]
    return sign + ",".join(groups) + (f".{fraction}" if fraction else "")


def amount(value: Number | float, currency: str = "CNY") -> str:
    """Money for a person: the currency's minor digits, thousands separated (``12,345.60``)."""
    return number(value, minor_digits(currency))


def percent(ratio: Number | float, places: int = 0) -> str:
    """A ratio as a percentage: ``1.8914`` -> ``189%`` (half-up to ``places`` decimals)."""
    return number(_decimal(ratio) * 100, places) + "%"
