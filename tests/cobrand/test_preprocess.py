"""Per-party preprocessing: fitted on training rows only, JSON round trips, always-finite output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobrand.errors import ConfigError, TableError
from cobrand.federation import load_federation
from cobrand.preprocess import PreprocessConfig, Preprocessor
from cobrand.schema import Feature, IdentifierColumn, PartySchema, load_party_schema
from cobrand.synth import SynthConfig, write_dataset
from cobrand.tables import PartyTable, load_party_table

NAN = float("nan")
SCHEMA = PartySchema(
    party="bank",
    identifier=IdentifierColumn(column="id", kind="customer_number"),
    features=(
        Feature(name="income", type="numeric"),
        Feature(name="score", type="numeric"),
        Feature(name="occupation", type="categorical"),
    ),
)


def _table(
    numeric: npt.ArrayLike, categorical: list[list[str | None]], split: list[int]
) -> PartyTable:
    values = np.asarray(numeric, dtype=np.float64)
    return PartyTable(
        ids=np.array([str(i) for i in range(len(split))], dtype=object),
        numeric=values.reshape(len(split), -1),
        categorical=np.array(categorical, dtype=object).reshape(len(split), -1),
        labels={},
        split=np.array(split, dtype=np.int8),
        dropped_identifiers=0,
        source=Path("bank.csv"),
    )


def _random_table(rng: np.random.Generator, n: int) -> PartyTable:
    income = rng.lognormal(9.0, 0.7, n)
    income[rng.random(n) < 0.1] = NAN
    score = rng.normal(600, 50, n).round()
    jobs = np.array(["Engineer", " engineer", "TEACHER", "teacher ", "Nurse", "Pilot", None])
    occupation = jobs[rng.choice(jobs.size, n, p=[0.3, 0.1, 0.2, 0.1, 0.2, 0.001, 0.099])]
    return _table(
        np.column_stack([income, score]),
        occupation.reshape(n, 1).tolist(),
        rng.choice(3, n, p=[0.7, 0.15, 0.15]).tolist(),
    )


@pytest.fixture(scope="module")
def table() -> PartyTable:
    return _random_table(np.random.default_rng(5), 2000)


@pytest.fixture(scope="module")
def fitted(table: PartyTable) -> Preprocessor:
    return Preprocessor.fit(table, SCHEMA)


def _replace_rows(table: PartyTable, rows: npt.NDArray[np.bool_], seed: int) -> PartyTable:
    other = _random_table(np.random.default_rng(seed), len(table))
    numeric, categorical = table.numeric.copy(), table.categorical.copy()
    numeric[rows] = other.numeric[rows] * 7.0
    categorical[rows] = "brand new value"
    return _table(numeric, categorical.tolist(), table.split.tolist())


def test_fit_reads_only_training_rows(table: PartyTable, fitted: Preprocessor) -> None:
    changed = _replace_rows(table, table.split != 0, seed=99)
    refitted = Preprocessor.fit(changed, SCHEMA)
    assert refitted.to_json() == fitted.to_json()
    assert refitted.digest() == fitted.digest()


def test_changing_a_training_row_changes_the_fitted_state(
    table: PartyTable, fitted: Preprocessor
) -> None:
    changed = _replace_rows(table, table.split == 0, seed=99)
    assert Preprocessor.fit(changed, SCHEMA).digest() != fitted.digest()


def test_json_round_trip_gives_identical_transforms(
    table: PartyTable, fitted: Preprocessor
) -> None:
    text = fitted.to_json()
    json.loads(text)  # plain JSON, nothing pickled
    restored = Preprocessor.from_json(text)
    assert restored == fitted
    assert restored.digest() == fitted.digest()
    original, again = fitted.transform(table), restored.transform(table)
    assert original.numeric.tobytes() == again.numeric.tobytes()
    np.testing.assert_array_equal(original.categorical, again.categorical)


def test_digest_is_sha256_of_the_canonical_json(fitted: Preprocessor) -> None:
    import hashlib

    assert fitted.digest() == hashlib.sha256(fitted.to_json().encode()).digest()
    assert " " not in fitted.to_json()


def test_categories_are_trimmed_and_case_folded_rare_and_unseen_map_to_1_missing_to_0(
    fitted: Preprocessor,
) -> None:
    assert fitted.categorical[0].vocabulary == ("engineer", "nurse", "teacher")
    assert fitted.cardinalities == (5,)
    rows: list[list[str | None]] = [
        ["Engineer"],
        ["  ENGINEER "],
        ["teacher"],
        ["Pilot"],
        ["astronaut"],
        [None],
        ["  "],
    ]
    encoded = fitted.transform(_table(np.zeros((7, 2)), rows, [1] * 7))
    assert encoded.categorical[:, 0].tolist() == [2, 2, 4, 1, 1, 0, 0]


def test_missing_numeric_is_imputed_with_the_training_median_and_flagged(
    fitted: Preprocessor,
) -> None:
    # income had missing values in training, score did not.
    assert fitted.numeric_outputs == ("income", "score", "income__missing")
    income, score = fitted.numeric
    encoded = fitted.transform(
        _table([[NAN, NAN], [income.median, score.median]], [["x"], ["x"]], [2, 2])
    )
    np.testing.assert_array_equal(encoded.numeric, [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert encoded.numeric.dtype == np.float32


def test_outliers_are_clipped_at_training_quantiles(
    table: PartyTable, fitted: Preprocessor
) -> None:
    income = fitted.numeric[0]
    train_income = table.numeric[table.split == 0, 0]
    assert income.high == pytest.approx(np.nanquantile(train_income, 0.995))
    assert income.scale == pytest.approx(
        np.nanquantile(train_income, 0.75) - np.nanquantile(train_income, 0.25)
    )
    encoded = fitted.transform(_table([[1e12, 600.0], [-1e12, 600.0]], [["x"], ["x"]], [1, 1]))
    top, bottom = encoded.numeric[:, 0]
    assert top == pytest.approx((income.high - income.median) / income.scale, rel=1e-6)
    assert bottom == pytest.approx((income.low - income.median) / income.scale, rel=1e-6)


def test_bin_edges_are_increasing_quantiles_in_scaled_units(fitted: Preprocessor) -> None:
    income = fitted.numeric[0]
    assert len(income.bin_edges) == 17
    assert list(income.bin_edges) == sorted(set(income.bin_edges))
    assert income.bin_edges[0] == pytest.approx((income.low - income.median) / income.scale)
    assert income.bin_edges[-1] == pytest.approx((income.high - income.median) / income.scale)


def test_few_distinct_values_give_fewer_edges_and_a_constant_column_encodes_to_zero() -> None:
    split = [0] * 40
    numeric = np.column_stack([np.repeat([0.0, 1.0, 2.0, 5.0], 10), np.full(40, 3.0)])
    fitted = Preprocessor.fit(_table(numeric, [["a"]] * 40, split), SCHEMA)
    counts, constant = fitted.numeric
    assert len(counts.bin_edges) == 4
    assert constant.bin_edges == (0.0,)
    encoded = fitted.transform(_table([[1.0, 99.0]], [["a"]], [0]))
    assert encoded.numeric[0, 1] == 0.0


finite_or_missing = st.one_of(
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), st.just(NAN)
)


@settings(max_examples=60, deadline=None)
@given(
    train=st.lists(st.tuples(finite_or_missing, finite_or_missing), min_size=1, max_size=40),
    probe=st.lists(
        st.tuples(
            st.one_of(finite_or_missing, st.sampled_from([np.inf, -np.inf])), finite_or_missing
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_output_is_always_finite(
    train: list[tuple[float, float]], probe: list[tuple[float, float]]
) -> None:
    fitted = Preprocessor.fit(
        _table(train, [["a"]] * len(train), [0] * len(train)),
        SCHEMA,
        PreprocessConfig(min_count=1),
    )
    encoded = fitted.transform(_table(probe, [[None]] * len(probe), [1] * len(probe)))
    assert np.all(np.isfinite(encoded.numeric))
    assert encoded.numeric.shape == (len(probe), len(fitted.numeric_outputs))


def test_a_table_without_training_rows_is_refused(table: PartyTable) -> None:
    no_train = _table(table.numeric, table.categorical.tolist(), [1] * len(table))
    with pytest.raises(TableError, match=r"bank\.csv: no training rows"):
        Preprocessor.fit(no_train, SCHEMA)


def test_a_table_with_other_feature_columns_is_refused(fitted: Preprocessor) -> None:
    narrow = _table([[1.0]], [["a"]], [0])
    with pytest.raises(TableError, match=r"bank\.csv: table has 1 numeric .* expected 2"):
        fitted.transform(narrow)


def test_check_schema_refuses_renamed_features(fitted: Preprocessor) -> None:
    fitted.check_schema(SCHEMA)
    renamed = SCHEMA.model_copy(
        update={"features": (SCHEMA.features[1], SCHEMA.features[0], SCHEMA.features[2])}
    )
    with pytest.raises(ConfigError, match="numeric features"):
        fitted.check_schema(renamed)


def test_from_json_refuses_a_tampered_document_naming_the_field(fitted: Preprocessor) -> None:
    document = json.loads(fitted.to_json())
    document["numeric"][0]["scale"] = -1.0
    with pytest.raises(ConfigError, match=r"numeric\.0\.scale"):
        Preprocessor.from_json(json.dumps(document))
    document = json.loads(fitted.to_json())
    document["format"] = "cobrand.preprocessor/0"
    with pytest.raises(ConfigError, match="format"):
        Preprocessor.from_json(json.dumps(document))
    with pytest.raises(ConfigError, match="preprocessor JSON"):
        Preprocessor.from_json("{not json")


def test_fits_a_synthetic_party_table_end_to_end(tmp_path: Path) -> None:
    files, _ = write_dataset(SynthConfig(customers=2000, seed=3), tmp_path)
    federation = load_federation(files.federation)
    schema = load_party_schema(files.partner_schema, federation)
    partner = load_party_table(schema, files.partner_table)
    fitted = Preprocessor.fit(partner, schema)
    encoded = fitted.transform(partner)
    assert encoded.numeric.shape == (len(partner), len(fitted.numeric_outputs))
    assert encoded.categorical.shape == (len(partner), 3)
    assert np.all(np.isfinite(encoded.numeric))
    assert np.all(encoded.categorical < np.array(fitted.cardinalities))
    # Category preference is missing for users without orders, so index 0 occurs.
    assert (encoded.categorical[:, 1] == 0).any()
