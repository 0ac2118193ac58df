"""Specifications for identifier canonicalization: messy formats meet, bad values are flagged."""

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cobrand.identifiers import (
    IDENTIFIER_KINDS,
    canonicalize_customer_number,
    canonicalize_email,
    canonicalize_mobile_cn,
    canonicalize_national_id_cn,
    gb11643_check_character,
)

digits = st.text(alphabet="0123456789", min_size=1, max_size=1)
mobile_numbers = st.text(alphabet="0123456789", min_size=10, max_size=10).map(lambda s: "1" + s)
id_bodies = st.text(alphabet="0123456789", min_size=17, max_size=17)


@st.composite
def sprinkled(draw: st.DrawFn, text: str, separators: str) -> str:
    """Insert separator runs at random places in `text`, as people and forms do."""
    out = []
    for char in text:
        if draw(st.booleans()):
            out.append(draw(st.text(alphabet=separators, min_size=1, max_size=2)))
        out.append(char)
    return "".join(out)


@st.composite
def messy_mobiles(draw: st.DrawFn) -> tuple[str, str]:
    number = draw(mobile_numbers)
    prefix = draw(st.sampled_from(["", "+86", "0086", "86", "+86 ", "(+86) ", "0086-", "86 "]))
    body = draw(sprinkled(number, " -."))
    if draw(st.booleans()):  # "(138) 1234 5678"
        body = f"({number[:3]}) {number[3:7]} {number[7:]}"
    padding = draw(st.sampled_from(["", " ", "  ", "\t"]))
    return padding + prefix + body + padding, "+86" + number


@given(messy_mobiles())
def test_messy_formats_of_one_mobile_number_map_to_one_canonical_form(
    case: tuple[str, str],
) -> None:
    raw, canonical = case
    result = canonicalize_mobile_cn([raw])
    assert not result.invalid[0], raw
    assert result.values[0] == canonical


@given(st.text(alphabet="0123456789", min_size=1, max_size=20))
def test_mobile_number_without_eleven_digits_after_prefix_is_invalid(raw: str) -> None:
    readable = (
        (len(raw) == 11 and raw[0] == "1")
        or (len(raw) == 13 and raw.startswith("861"))
        or (len(raw) == 15 and raw.startswith("00861"))
    )
    assume(not readable)
    result = canonicalize_mobile_cn([raw])
    assert result.invalid[0]
    assert result.values[0] is None


@pytest.mark.parametrize(
    "raw",
    [
        "23812345678",  # mobile numbers start with 1
        "+8723812345678",  # another country
        "+86 138 1234 567a",
        "138\uff112345678",  # full-width digit one
        "+86+8613812345678",
        "",
        "   ",
    ],
)
def test_unreadable_mobile_number_is_flagged_not_mapped(raw: str) -> None:
    result = canonicalize_mobile_cn([raw])
    assert result.invalid.tolist() == [True]
    assert result.values.tolist() == [None]


def test_gb11643_check_character_matches_the_standard_example() -> None:
    # The worked example of GB 11643-1999 (Beijing, Chaoyang district, born 1949-12-31).
    assert gb11643_check_character("11010519491231002") == "X"


@st.composite
def messy_national_ids(draw: st.DrawFn) -> tuple[str, str]:
    body = draw(id_bodies)
    canonical = body + gb11643_check_character(body)
    check = canonical[-1]
    if check == "X" and draw(st.booleans()):
        check = "x"
    raw = draw(sprinkled(body + check, " -"))
    padding = draw(st.sampled_from(["", " ", "\t"]))
    return padding + raw + padding, canonical


@given(messy_national_ids())
def test_messy_formats_of_one_national_id_map_to_one_canonical_form(
    case: tuple[str, str],
) -> None:
    raw, canonical = case
    result = canonicalize_national_id_cn([raw])
    assert not result.invalid[0], raw
    assert result.values[0] == canonical


@given(id_bodies, st.integers(min_value=0, max_value=17), digits)
def test_national_id_with_one_character_changed_fails_its_check_digit(
    body: str, position: int, replacement: str
) -> None:
    valid = body + gb11643_check_character(body)
    assume(valid[position] != replacement)
    typo = valid[:position] + replacement + valid[position + 1 :]
    result = canonicalize_national_id_cn([typo])
    assert result.invalid[0]
    assert result.values[0] is None


@pytest.mark.parametrize(
    "raw",
    [
        "1101051949123100X2",  # X only as the check character
        "11010519491231002",  # 17 characters
        "110105194912310020X",  # 19 characters
        "11010519491231002Y",
        "11O10519491231002X",  # letter O for zero
    ],
)
def test_malformed_national_id_is_flagged_not_mapped(raw: str) -> None:
    result = canonicalize_national_id_cn([raw])
    assert result.invalid.tolist() == [True]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("123", "123"), (" 000123 ", "123"), ("000", "0"), ("0", "0"), ("25115\t", "25115")],
)
def test_customer_number_drops_surrounding_spaces_and_leading_zeros(
    raw: str, canonical: str
) -> None:
    result = canonicalize_customer_number([raw])
    assert result.values.tolist() == [canonical]
    assert result.invalid.tolist() == [False]


@pytest.mark.parametrize(
    "raw", ["12 3", "-12", "+12", "12.0", "1e5", "\u0661\u0662\u0663", "", "abc"]
)
def test_customer_number_that_is_not_plain_digits_is_invalid(raw: str) -> None:
    assert canonicalize_customer_number([raw]).invalid.tolist() == [True]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [(" Ann@Example.CN ", "ann@example.cn"), ("b.c@d", "b.c@d")],
)
def test_email_is_trimmed_and_lower_cased(raw: str, canonical: str) -> None:
    assert canonicalize_email([raw]).values.tolist() == [canonical]


@pytest.mark.parametrize("raw", ["ann", "@example.cn", "ann@", "a@b@c", "an n@example.cn"])
def test_email_without_one_at_between_non_empty_parts_is_invalid(raw: str) -> None:
    assert canonicalize_email([raw]).invalid.tolist() == [True]


@pytest.mark.parametrize("kind", sorted(IDENTIFIER_KINDS))
@pytest.mark.parametrize("missing", [None, math.nan])
def test_missing_value_is_invalid_for_every_kind(kind: str, missing: object) -> None:
    result = IDENTIFIER_KINDS[kind].canonicalize(np.array([missing], dtype=object))
    assert result.invalid.tolist() == [True]
    assert result.values.tolist() == [None]


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("mobile_cn", "0086 138-1234-5678"),
        ("national_id_cn", "110105 19491231 002x"),
        ("customer_number", " 0042"),
        ("email", " X@Y.Z"),
    ],
)
def test_canonical_form_is_a_fixed_point(kind: str, raw: str) -> None:
    canonicalize = IDENTIFIER_KINDS[kind].canonicalize
    once = canonicalize([raw]).values
    assert canonicalize(once).values.tolist() == once.tolist()


def test_registry_names_each_kind_with_its_canonical_form() -> None:
    forms = {name: kind.canonical_form for name, kind in IDENTIFIER_KINDS.items()}
    assert forms == {
        "mobile_cn": "e164-cn-mobile",
        "national_id_cn": "gb11643-upper",
        "customer_number": "decimal",
        "email": "lower-trimmed",
    }
    assert all(kind.name == name for name, kind in IDENTIFIER_KINDS.items())


def test_arrow_input_keeps_row_order_and_flags_each_row() -> None:
    chunked = pa.chunked_array([["+86 13812345678", "bad"], [None, "13912345678"]])
    result = canonicalize_mobile_cn(chunked)
    assert result.values.tolist() == ["+8613812345678", None, None, "+8613912345678"]
    assert result.invalid.tolist() == [False, True, True, False]
