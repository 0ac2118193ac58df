"""One row at a time: `RowEncoder` gives what `Preprocessor.transform` gives that row in a table,
bit for bit, for any row: missing, out of range, infinite, unseen or oddly spelt values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cobrand.errors import TableError
from cobrand.preprocess import Preprocessor, RowEncoder
from cobrand.schema import Feature, IdentifierColumn, PartySchema
from cobrand.tables import PartyTable

SCHEMA = PartySchema(
    party="bank",
    identifier=IdentifierColumn(column="id", kind="customer_number"),
    features=(
        Feature(name="income", type="numeric"),
        Feature(name="age", type="numeric"),
        Feature(name="zeroes", type="numeric"),
        Feature(name="occupation", type="categorical"),
        Feature(name="city", type="categorical"),
    ),
)
OCCUPATIONS = ("Engineer", "teacher", "NURSE", "Straße", "pilot")
CITIES = ("tier-1", "Tier-2", "İstanbul", "ǅ-town")


def _table(numeric: list[list[float]], categorical: list[list[str | None]]) -> PartyTable:
    n = len(numeric)
    return PartyTable(
        ids=np.array([str(i) for i in range(n)], dtype=object),
        numeric=np.array(numeric, dtype=np.float64).reshape(n, 3),
        categorical=np.array(categorical, dtype=object).reshape(n, 2),
        labels={},
        split=np.zeros(n, dtype=np.int8),
        dropped_identifiers=0,
        source=Path("rows.csv"),
    )


def _fitted() -> Preprocessor:
    rng = np.random.default_rng(7)
    n = 400
    income = rng.lognormal(9.0, 0.7, n)
    income[rng.random(n) < 0.1] = np.nan
    age = rng.integers(18, 80, n).astype(np.float64)
    # A spike at zero with a tail: the scale falls back, and -0.0 meets a median of 0.0.
    zeroes = np.where(rng.random(n) < 0.9, 0.0, rng.exponential(100.0, n))
    occupation = rng.choice(np.array([*OCCUPATIONS, None], dtype=object), n)
    city = rng.choice(np.array(CITIES, dtype=object), n)
    table = _table(
        np.column_stack([income, age, zeroes]).tolist(),
        np.column_stack([occupation, city]).tolist(),
    )
    return Preprocessor.fit(table, SCHEMA)


PREPROCESSOR = _fitted()
ENCODER = PREPROCESSOR.row_encoder()

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, np.nan, 1e308, -1e308, 5e-324]),
    st.floats(-10.0, 200_000.0),
)


@st.composite
def categories(draw: st.DrawFn, known: tuple[str, ...]) -> str | None:
    """A known value respelt (case, surrounding whitespace), an unseen one, blank, or None."""
    space = st.sampled_from([" ", "\t", "\n", "\x0b", "\x1c", "\x1f", "\u00a0", "\u3000", ""])
    word = draw(st.sampled_from(known)) if draw(st.booleans()) else draw(st.text(max_size=8))
    word = draw(st.sampled_from([word, word.upper(), word.lower(), word.swapcase()]))
    respelt: str | None = draw(space) + word + draw(space)
    return draw(st.sampled_from([respelt, respelt, respelt, None, "", "   "]))


@settings(max_examples=300)
@given(
    st.lists(numbers, min_size=3, max_size=3),
    categories(OCCUPATIONS),
    categories(CITIES),
)
# Where Python's str.lower and str.strip part from Arrow's kernels: İ, and Unicode spaces.
@example([np.nan, -0.0, 1e300], "\u00a0Engineer\u3000", "İstanbul")
@example([-1.0, np.inf, -np.inf], "\x1cSTRASSE\x1f", "\tİSTANBUL\n")
def test_one_row_encodes_as_the_table_transform_bit_for_bit(
    numeric: list[float], occupation: str | None, city: str | None
) -> None:
    expected = PREPROCESSOR.transform(_table([numeric], [[occupation, city]]))

    encoded = ENCODER.encode(numeric, [occupation, city])

    assert encoded.numeric.dtype == expected.numeric.dtype
    assert encoded.numeric.shape == expected.numeric.shape
    assert encoded.numeric.tobytes() == expected.numeric.tobytes()
    assert encoded.categorical.dtype == expected.categorical.dtype
    assert encoded.categorical.tobytes() == expected.categorical.tobytes()


def test_each_kind_of_category_gets_its_index() -> None:
    encoded = ENCODER.encode([1.0, 30.0, 0.0], [" ENGINEER ", "atlantis"])
    missing = ENCODER.encode([1.0, 30.0, 0.0], ["   ", None])

    vocabulary = PREPROCESSOR.categorical[0].vocabulary
    assert encoded.categorical.tolist() == [[2 + vocabulary.index("engineer"), 1]]
    assert missing.categorical.tolist() == [[0, 0]]


@pytest.mark.parametrize(
    ("numeric", "categorical"), [([1.0, 2.0], ["a", "b"]), ([1.0, 2.0, 3.0], ["a"])]
)
def test_a_row_of_the_wrong_width_is_refused(
    numeric: list[float], categorical: list[str | None]
) -> None:
    with pytest.raises(TableError, match="expected 3 and 2"):
        RowEncoder(PREPROCESSOR).encode(numeric, categorical)
