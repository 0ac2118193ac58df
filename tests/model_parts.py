"""Test helper: a party's small fitted table and preprocessor, for the model registry's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from cobrand.preprocess import Preprocessor
from cobrand.schema import Feature, IdentifierColumn, PartySchema
from cobrand.tables import PartyTable


def fitted_table(
    party: Literal["bank", "partner"], rows: int = 600, seed: int = 0
) -> tuple[PartyTable, Preprocessor]:
    """A table with two numeric features (one 10% missing) and one categorical, fitted.

    Splits are 70% train, 15% valid, 15% test; the preprocessor is fitted on the train rows.
    """
    rng = np.random.default_rng(seed)
    income = rng.lognormal(9.0, 0.7, rows)
    income[rng.random(rows) < 0.1] = np.nan
    tenure = rng.integers(0, 30, rows).astype(np.float64)
    segment = rng.choice(
        np.array(["retail", "gold", "student", None]), rows, p=[0.5, 0.3, 0.15, 0.05]
    )
    schema = PartySchema(
        party=party,
        identifier=IdentifierColumn(column="id", kind="customer_number"),
        features=(
            Feature(name="income", type="numeric"),
            Feature(name="tenure", type="numeric"),
            Feature(name="segment", type="categorical"),
        ),
    )
    table = PartyTable(
        ids=np.array([str(i) for i in range(rows)], dtype=object),
        numeric=np.column_stack([income, tenure]),
        categorical=segment.astype(object).reshape(rows, 1),
        labels={},
        split=rng.choice(3, rows, p=[0.7, 0.15, 0.15]).astype(np.int8),
        dropped_identifiers=0,
        source=Path(f"{party}.csv"),
    )
    return table, Preprocessor.fit(table, schema)
