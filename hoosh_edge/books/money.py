"""USD amounts: text or numbers from config, CLI and API to exact integer micro-dollars, and back.

Money is integer micro-dollars everywhere (SQLite stores a signed 64-bit integer); ``Decimal``
only where text meets numbers, and only here. Parsing is exact: an amount finer than a
micro-dollar, negative, not finite or past 64 bits is refused with an ``InvalidRequest`` naming
the field, never rounded. The digits are checked with integer arithmetic on the ``Decimal``'s
own digits, so a context precision of 28 digits can not round ``1.00000000000000000000000001``
into an accepted dollar, and ``1e999999999`` costs no more than ``1``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from hoosh_edge.errors import InvalidRequest

MICRO = 1_000_000
DECIMALS = 6  # micro-dollars
MAX_MICRO_USD = 2**63 - 1  # the ledger's signed 64-bit SQLite integer

# Plain ASCII decimals only: Decimal() alone would also take "Infinity", "1_000" and Arabic digits.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NOT_FINITE = {"nan", "snan", "inf", "infinity"}


def _shown(value: Any) -> str:
    """The value for an error message, cut short: a 5000-digit body is not echoed back."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_decimal(value: Any, field: str, *, floats: bool = True) -> Decimal:
    """A finite number >= 0 from an int, a float (as written: 0.1 is 0.1), a Decimal or text."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise InvalidRequest(f"{field} must be a number or a decimal string", param=field)
    if isinstance(value, float) and not floats:
        raise InvalidRequest(f"{field} must be a decimal string such as '5.00'", param=field)
    if isinstance(value, int):
        amount = Decimal(value)  # exact, and no 4300-digit str() limit in the way
    else:
        # str() of a float is its shortest exact spelling, not its binary neighbour.
        text = str(value).strip()
        if text.lstrip("+-").lower() in _NOT_FINITE:
            raise InvalidRequest(f"{field} must be a finite number >= 0", param=field)
        if not _NUMBER.fullmatch(text):
            raise InvalidRequest(f"{field} is not a number: {_shown(value)}", param=field)
        amount = Decimal(text)
    if not amount.is_finite() or amount.is_signed() and amount != 0:
        raise InvalidRequest(f"{field} must be a finite number >= 0", param=field)
    return amount.copy_abs()  # "-0" is zero; copy_abs, unlike abs(), never rounds


def to_micro(amount: Decimal, field: str) -> int:
    """A non-negative finite Decimal as exact micro-dollars, or ``InvalidRequest``."""
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite: parse_decimal saw to it
    kept = len(digits)
    while kept > 1 and digits[kept - 1] == 0:  # trailing zeros say nothing about precision
        kept -= 1
    shift = exponent + (len(digits) - kept) + DECIMALS  # the power of ten of the last kept digit
    if digits[:kept] == (0,):
        return 0
    if shift < 0:
        raise InvalidRequest(
            f"{field}: a USD amount has at most {DECIMALS} decimal places", param=field
        )
    if kept + shift > 19:  # at least 10**19 micro-dollars, past 2**63
        raise InvalidRequest(f"{field} {_shown(str(amount))} is too large", param=field)
    micro = int("".join(map(str, digits[:kept]))) * 10**shift
    if micro > MAX_MICRO_USD:
        raise InvalidRequest(f"{field} {_shown(str(amount))} is too large", param=field)
    return micro


def parse_usd(value: Any, field: str, *, floats: bool = True) -> int:
    """A USD amount (number or decimal text) as exact integer micro-dollars; errors name ``field``."""
    return to_micro(parse_decimal(value, field, floats=floats), field)


def format_usd(micro_usd: int) -> str:
    """Micro-dollars as an exact decimal string, e.g. 1500 -> '0.0015', -2 -> '-0.000002'."""
    sign = "-" if micro_usd < 0 else ""
    whole, frac = divmod(abs(int(micro_usd)), MICRO)
    tail = f"{frac:06d}".rstrip("0")
    return f"{sign}{whole}.{tail}" if tail else f"{sign}{whole}"
