"""Money and ratios as people see them: the one rounding of ``metrics.md``.

Every amount FundFlow shows (state rows, the API, findings' evidence, webhooks) is a
``Decimal`` rounded **half-up** to the cent; ratios half-up to their stated places.
Python's ``Decimal.quantize`` rounds half-even by default, so a bare ``quantize(Decimal("0.01"))``
shows 0.125 as 0.12 where ``metrics.md`` says 0.13: use these functions, never
``quantize`` on an amount directly. Internally amounts stay exact; rounding happens only
here, at the edge.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def rounded(value: Decimal, places: int) -> Decimal:
    """``value`` half-up to ``places`` decimals; a result of zero is never shown as ``-0``."""
    result = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return result if result else abs(result)


def to_cent(value: Decimal) -> Decimal:
    """``value`` rounded half-up to the cent (``metrics.md``)."""
    return rounded(value, 2)


def money(value: Decimal) -> str:
    """An amount as its wire/display string: half-up to the cent, e.g. ``"1234.57"``."""
    return str(rounded(value, 2))


# ISO 4217 currencies whose minor unit is not the cent (the exponent: digits after the point).
_MINOR_DIGITS: dict[str, int] = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
                     "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4,
    "UYW": 4,
}


def minor_digits(currency: str) -> int:
    """The ISO 4217 exponent of ``currency``: how many decimals its amounts may carry (2 for
    CNY, 0 for JPY, 3 for BHD). A code the table does not name has 2, as most do."""
    return _MINOR_DIGITS.get(currency, 2)
