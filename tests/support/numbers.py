"""Slow, obvious references for how numbers are written: the half-up rounding of ``metrics.md``
(``rules.money``) and the thousands separators of ``rules.fmt``, built from strings."""

from __future__ import annotations

from decimal import Decimal


def half_up_reference(value: Decimal, places: int) -> str:
    """Slow and obvious: scale to an integer count of units, add half a unit away from
    zero, truncate."""
    scaled = value.scaleb(places)
    units = int(abs(scaled) + Decimal("0.5"))
    sign = "-" if value < 0 and units else ""
    text = str(units).rjust(places + 1, "0")
    return f"{sign}{text[:-places]}.{text[-places:]}" if places else f"{sign}{text}"


def grouped_reference(text: str) -> str:
    """Slow and obvious: insert a comma before every third digit from the right of the whole part."""
    sign, body = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, dot, fraction = body.partition(".")
    out = ""
    for i, digit in enumerate(reversed(whole)):
        if i and i % 3 == 0:
            out = "," + out
        out = digit + out
    return sign + out + dot + fraction
