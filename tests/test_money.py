"""USD text and numbers to exact micro-dollars and back: properties first, then the edges."""

from __future__ import annotations

from decimal import MAX_EMAX, MIN_EMIN, Decimal, Inexact, localcontext

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hoosh_edge.books.money import MAX_MICRO_USD, format_usd, parse_decimal, parse_usd
from hoosh_edge.errors import InvalidRequest

micro_amounts = st.integers(min_value=0, max_value=MAX_MICRO_USD)
SPELLINGS = [str, "{:f}".format, " {:f} ".format, "+{:f}".format, "{:E}".format, "{:e}".format,
             lambda d: f"{d:f}" + ("000" if "." in f"{d:f}" else ".000")]  # fmt: skip


def exact_micro(amount: Decimal) -> int | None:
    """The oracle: micro-dollars if ``amount`` is exactly some in 0..2**63-1, worked out exactly."""
    if not amount.is_finite():
        return None
    with localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 100_000, MAX_EMAX, MIN_EMIN
        ctx.traps[Inexact] = True
        scaled = amount.scaleb(6)
        if scaled != scaled.to_integral_value() or not 0 <= scaled <= MAX_MICRO_USD:
            return None
        return int(scaled)


@given(micro_amounts)
@example(0)
@example(MAX_MICRO_USD)
def test_parse_of_format_is_the_identity(micro):
    text = format_usd(micro)
    assert parse_usd(text, "limit") == micro
    assert exact_micro(Decimal(text)) == micro  # the text is the exact amount, not a rounding


@given(
    st.decimals(allow_nan=False, allow_infinity=False, min_value=0, places=6).filter(
        lambda d: exact_micro(d) is not None
    ),
    st.sampled_from(SPELLINGS),
)
def test_format_of_parse_gives_back_the_same_amount(amount, spell):
    micro = parse_usd(spell(amount), "budget_usd")
    assert Decimal(format_usd(micro)) == amount
    assert format_usd(parse_usd(format_usd(micro), "x")) == format_usd(micro)  # a fixed point


@given(st.decimals(allow_nan=True, allow_infinity=True))
@example(Decimal("1.0000000000000000000000000001"))  # rounds to 1 at Decimal's 28 digits
@example(Decimal("9223372036854.775808"))  # 2**63 micro-dollars
@example(Decimal("-0.000001"))
@example(Decimal("1e-999999999"))
@example(Decimal("1e999999999"))
@example(Decimal("sNaN"))
def test_parse_never_accepts_what_it_cannot_hold_exactly(amount):
    expected = exact_micro(amount)
    try:
        micro = parse_usd(str(amount), "limit")
    except InvalidRequest as e:
        assert expected is None, (amount, e.message)
        assert e.param == "limit" and "limit" in e.message
    else:
        assert micro == expected


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_float_means_the_decimal_it_prints_as(value):
    expected = exact_micro(Decimal(repr(value))) if value == value else None
    try:
        micro = parse_usd(value, "limit")
    except InvalidRequest as e:
        assert expected is None and e.param == "limit"
    else:
        assert micro == expected


@given(st.text(max_size=30))
def test_arbitrary_text_is_a_clean_refusal_or_exact(text):
    try:
        micro = parse_usd(text, "usd")
    except InvalidRequest as e:
        assert e.param == "usd" and len(e.message) < 120
    else:
        assert micro == exact_micro(Decimal(text.strip()))


@pytest.mark.parametrize(
    ("value", "micro"),
    [("5.00", 5_000_000), (1, 1_000_000), (0.01, 10_000), ("0.000001", 1), ("-0", 0),
     ("1E+2", 100_000_000), (".5", 500_000), ("3.", 3_000_000), (Decimal("0.10"), 100_000),
     ("9223372036854.775807", MAX_MICRO_USD), ("0." + "0" * 4000, 0)],
)  # fmt: skip
def test_accepted_spellings(value, micro):
    assert parse_usd(value, "limit") == micro


@pytest.mark.parametrize(
    ("value", "says"),
    [("-1", ">= 0"), ("NaN", "finite"), ("-Infinity", "finite"), (float("nan"), "finite"),
     ("0.0000001", "6 decimal places"), ("1" + "0" * 30, "too large"), (2**63, "too large"),
     ("9223372036854.775808", "too large"), ("1e999999999", "too large"), ("ten", "not a number"),
     ("1_000", "not a number"), ("١٢", "not a number"), ("", "not a number"), (True, "number or"),
     (None, "number or"), ([1], "number or"), ("9" * 5000 + "x", "not a number")],
)  # fmt: skip
def test_refusals_name_the_field_and_say_why(value, says):
    with pytest.raises(InvalidRequest) as info:
        parse_usd(value, "budget_usd")
    assert info.value.param == "budget_usd" and "budget_usd" in info.value.message
    assert says in info.value.message and len(info.value.message) < 120


def test_floats_can_be_refused_where_the_amount_is_kept_as_written():
    with pytest.raises(InvalidRequest, match="decimal string such as '5.00'"):
        parse_decimal(1.5, "budget_usd", floats=False)
    assert parse_decimal("1.50", "budget_usd", floats=False) == Decimal("1.50")


def test_format_usd_spells_signs_and_small_amounts():
    assert [format_usd(v) for v in (0, 1, 1500, -2, -1_500_000, MAX_MICRO_USD)] == [
        "0", "0.000001", "0.0015", "-0.000002", "-1.5", "9223372036854.775807",
    ]  # fmt: skip
