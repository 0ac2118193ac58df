"""Application fields to the bank's feature row: training and serving encode alike, an existing
customer's stored row fills the gaps, and every bad field is refused by name."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cobrand.errors import InvalidRequest
from gateway.application import ApplicationEncoder, FieldValue, stored_features_of
from gateway.config import ApplicationRules, load_decision_config
from tests.gateway.synth_version import EXAMPLES, SynthVersion, synth_version


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthVersion:
    return synth_version(tmp_path_factory)


@pytest.fixture(scope="module")
def encoder(synth: SynthVersion) -> ApplicationEncoder:
    config = load_decision_config(EXAMPLES / "cobrand_synth.yaml")
    return ApplicationEncoder(synth.version.preprocessor, config.application)


def _fields(synth: SynthVersion, row: int) -> dict[str, FieldValue]:
    """Row `row` of the training table as an application sends it: missing values left out."""
    fields: dict[str, FieldValue] = {}
    for j, name in enumerate(synth.schema.numeric_features):
        value = float(synth.table.numeric[row, j])
        if not math.isnan(value):
            fields[name] = value
    for j, name in enumerate(synth.schema.categorical_features):
        if synth.table.categorical[row, j] is not None:
            fields[name] = synth.table.categorical[row, j]
    return fields


def test_rows_encoded_one_by_one_equal_the_training_transform_bit_for_bit(
    synth: SynthVersion,
) -> None:
    # No required fields here: training rows may miss any field, and must encode all the same.
    encoder = ApplicationEncoder(synth.version.preprocessor, ApplicationRules())
    expected = synth.version.preprocessor.transform(synth.table)

    rows = [encoder.encode(_fields(synth, i)) for i in range(len(synth.table))]

    numeric = np.stack([row.numeric for row in rows])
    categorical = np.stack([row.categorical for row in rows])
    assert numeric.dtype == expected.numeric.dtype
    assert numeric.tobytes() == expected.numeric.tobytes()
    assert np.array_equal(categorical, expected.categorical)
    # The rows hold missing numbers and categories, and hand-typed spellings of categories.
    assert np.isnan(synth.table.numeric).any()
    assert (expected.categorical == 0).any()


def test_an_existing_customers_stored_row_fills_what_the_application_leaves_out(
    synth: SynthVersion, encoder: ApplicationEncoder
) -> None:
    stored = stored_features_of(synth.table, synth.version.preprocessor)
    customer = str(synth.table.ids[3])
    expected = synth.version.preprocessor.transform(synth.table)

    completed = encoder.encode({}, stored(customer))
    overridden = encoder.encode({"age": 44.0, "city_tier": None}, stored(customer))

    assert completed.numeric.tobytes() == expected.numeric[3].tobytes()
    assert np.array_equal(completed.categorical, expected.categorical[3])
    assert overridden.values["age"] == 44.0
    assert overridden.values["city_tier"] is None
    assert stored("not a customer") is None


def test_values_hold_categories_as_the_preprocessor_reads_them(
    encoder: ApplicationEncoder,
) -> None:
    row = encoder.encode({"age": 30.0, "city_tier": "  Tier-2 ", "occupation": "   "})

    assert row.values["city_tier"] == "tier-2"
    assert row.values["occupation"] is None
    assert row.values["monthly_income"] is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"age": 30.0, "agee": 30.0}, "field 'agee': not a bank field of the model"),
        ({"age": math.nan}, "field 'age': nan is not a finite number"),
        ({"age": 30.0, "monthly_income": math.inf}, "field 'monthly_income': inf is not a finite"),
        ({"age": 30.0, "deposit_balance": -5.0}, "field 'deposit_balance': must not be negative"),
        ({"age": "thirty"}, "field 'age': a numeric field needs a number"),
        ({"age": True}, "field 'age': a numeric field needs a number"),
        ({"age": 30.0, "occupation": 7.0}, "field 'occupation': a categorical field needs a"),
        ({"age": 30.0, "city_tier": "tier-9"}, "field 'city_tier': unknown category"),
        ({"monthly_income": 5000.0}, "field 'age': required, and missing"),
        ({"age": None}, "field 'age': required, and missing"),
    ],
)
def test_a_bad_field_is_refused_by_name(
    encoder: ApplicationEncoder, fields: dict[str, FieldValue], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
        encoder.encode(fields)


def test_a_bad_stored_value_is_named_as_stored(encoder: ApplicationEncoder) -> None:
    with pytest.raises(InvalidRequest, match=r"field 'deposit_balance' \(stored\): must not be"):
        encoder.encode({"age": 30.0}, {"deposit_balance": -1.0})


def test_an_unknown_category_of_a_free_text_field_encodes_as_unseen_as_in_training(
    encoder: ApplicationEncoder, synth: SynthVersion
) -> None:
    row = encoder.encode({"age": 30.0, "occupation": "Astronaut"})

    occupation = synth.schema.categorical_features.index("occupation")
    assert row.categorical[occupation] == 1
