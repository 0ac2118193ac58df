"""The bank's table: bureau, deposit and repayment facts, and the three card outcomes.

The bank sees financial stress through the bureau score, utilisation and delinquencies, and its
customers' wealth through income and deposits; it sees impulsive consumption, instalment appetite
and leisure tastes only faintly. The outcomes depend on all of them, which is what leaves room
for the partner's slice.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cobrand.synth.columns import (
    categorical_column,
    choose_by_logits,
    messy_categorical_column,
    numeric_column,
    sigmoid,
)
from cobrand.synth.population import Population

__all__ = [
    "BANK_CATEGORICAL",
    "BANK_IDENTIFIER",
    "BANK_NUMERIC",
    "CITY_TIERS",
    "INSTALMENT",
    "RIGHTS_PACKAGES",
    "RIGHTS_PACKAGE_COLUMN",
    "RISK",
    "BinaryOutcome",
    "bank_columns",
]


class BinaryOutcome(NamedTuple):
    """A binary label column and the strings the bank's systems write for it."""

    column: str
    positive: str
    negative: str

    def strings(self, outcome: npt.NDArray[np.bool_], missing: npt.NDArray[np.bool_]) -> pa.Array:
        """The label as strings, shape (n,): positive where `outcome`, null where `missing`."""
        return categorical_column((self.negative, self.positive), outcome.astype(np.int64), missing)


BANK_IDENTIFIER: Final = "mobile"
BANK_NUMERIC: Final = (
    "age",
    "monthly_income",
    "bureau_score",
    "credit_utilisation",
    "deposit_balance",
    "months_on_book",
    "delinquencies_12m",
)
BANK_CATEGORICAL: Final = ("city_tier", "occupation")
RISK: Final = BinaryOutcome(column="risk_flag", positive="bad", negative="good")
INSTALMENT: Final = BinaryOutcome(column="took_instalment", positive="yes", negative="no")
RIGHTS_PACKAGE_COLUMN: Final = "rights_package"

CITY_TIERS: Final = ("tier-1", "new-tier-1", "tier-2", "tier-3", "tier-4", "tier-5")
"""Names of `Population.city_tier` indices (shares in `population.CITY_TIER_SHARES`)."""
RIGHTS_PACKAGES: Final = (
    "shopping",
    "repayment",
    "payment",
    "finance",
    "entertainment",
    "travel",
    "offline",
)

_OCCUPATIONS: Final = (
    "Engineer",
    "Teacher",
    "Civil Servant",
    "Sales",
    "Self-employed",
    "Factory Worker",
    "Driver",
    "Doctor",
    "Nurse",
    "Freelancer",
    "Student",
    "Retired",
    "Finance Professional",
    "Delivery Rider",
)
# Per occupation: (log base share, income slope, age slope).
_OCCUPATION_PROFILE: Final = np.array(
    [
        [0.2, 0.8, -0.1],
        [0.0, 0.2, 0.2],
        [-0.3, 0.4, 0.4],
        [0.3, 0.0, -0.1],
        [0.2, 0.3, 0.3],
        [0.1, -0.8, 0.0],
        [-0.2, -0.5, 0.3],
        [-1.0, 1.0, 0.4],
        [-0.8, 0.1, 0.0],
        [-0.3, 0.0, -0.5],
        [-1.5, -1.0, -3.0],
        [-2.5, -0.3, 3.0],
        [-0.8, 1.1, 0.0],
        [-0.4, -0.6, -0.6],
    ]
)


def _risk_labels(
    rng: np.random.Generator,
    t: dict[str, npt.NDArray[np.float64]],
    income_z: npt.NDArray[np.float64],
) -> npt.NDArray[np.bool_]:
    logit = (
        -3.05
        + 0.75 * t["stress"]
        + 1.05 * t["impulsivity"]
        + 0.30 * t["instalment"]
        - 0.25 * income_z
    )
    return rng.random(income_z.size) < sigmoid(logit)


def _rights_packages(
    rng: np.random.Generator,
    t: dict[str, npt.NDArray[np.float64]],
    income_z: npt.NDArray[np.float64],
    age_z: npt.NDArray[np.float64],
) -> npt.NDArray[np.int64]:
    """Package taken per customer, index into RIGHTS_PACKAGES, or -1 for none taken."""
    logits = np.column_stack(
        [
            0.9 * t["spend"] + 0.3 * t["digital"] + 0.3 * t["impulsivity"],
            0.8 * t["stress"] + 0.7 * t["instalment"],
            1.0 * t["digital"],
            0.8 * income_z + 0.4 * age_z - 0.5 * t["stress"],
            1.1 * t["leisure"] + 0.2 * t["digital"],
            1.2 * t["travel"] + 0.3 * income_z,
            -0.9 * t["digital"] + 0.4 * age_z,
            np.full(income_z.size, 0.9),  # never took a package
        ]
    )
    chosen = choose_by_logits(rng, 1.3 * logits)
    return np.where(chosen == len(RIGHTS_PACKAGES), -1, chosen)


def bank_columns(rng: np.random.Generator, population: Population) -> dict[str, pa.Array]:
    """Features and labels of the bank's customers, in bank row order (no identifier column).

    Parameters
    ----------
    rng : numpy.random.Generator
    population : Population

    Returns
    -------
    dict of str to pyarrow.Array
        Numeric features (`BANK_NUMERIC`), categorical features (`BANK_CATEGORICAL`) and label
        columns (`BANK_LABELS`), each of length ``population.n_bank``.
    """
    people = population.bank_people
    n = people.size
    t = population.traits_of(people)
    age = population.age[people]
    age_z = (age - 38.0) / 11.0
    log_income = population.log_income[people]
    income_z = (log_income - 9.0) / 0.6
    noise = rng.standard_normal((n, 5))

    bureau = np.clip(
        np.round(
            610.0
            - 55.0 * t["stress"]
            - 5.0 * t["impulsivity"]
            + 12.0 * income_z
            + 45.0 * noise[:, 0]
        ),
        300,
        900,
    )
    utilisation = np.clip(
        1.15
        * sigmoid(
            -0.9 + 0.75 * t["stress"] + 0.3 * t["spend"] + 0.2 * t["instalment"] + 0.6 * noise[:, 1]
        ),
        0.0,
        1.5,
    )
    has_deposit = rng.random(n) >= sigmoid(-1.0 + 0.8 * t["stress"] - 0.6 * income_z - 0.3 * age_z)
    deposit = np.where(
        has_deposit,
        np.exp(7.8 + 0.9 * income_z + 0.35 * age_z - 0.35 * t["stress"] + 1.3 * noise[:, 2]),
        0.0,
    )
    months_on_book = np.clip(np.ceil(rng.exponential(12.0 + 1.2 * (age - 18.0))), 1, 240)
    delinquencies = rng.poisson(np.exp(-2.3 + 0.85 * t["stress"] + 0.1 * t["impulsivity"]))
    occupation_logits = (
        _OCCUPATION_PROFILE[:, 0]
        + np.outer(income_z, _OCCUPATION_PROFILE[:, 1])
        + np.outer(age_z, _OCCUPATION_PROFILE[:, 2])
    )
    occupation_logits[age > 30, _OCCUPATIONS.index("Student")] = -np.inf
    occupation_logits[age < 50, _OCCUPATIONS.index("Retired")] = -np.inf
    occupation = choose_by_logits(rng, occupation_logits)
    risk = _risk_labels(rng, t, income_z)
    instalment = rng.random(n) < sigmoid(
        -1.2 + 1.2 * t["instalment"] + 0.35 * t["spend"] + 0.25 * t["stress"]
    )
    package = _rights_packages(rng, t, income_z, age_z)
    no = np.zeros(n, dtype=bool)
    return {
        "age": numeric_column(age.astype(np.int64), no),
        "monthly_income": numeric_column(
            np.exp(log_income + 0.08 * noise[:, 3]), rng.random(n) < 0.06, decimals=-1
        ),
        # Thin-file applicants, mostly young, have no bureau score.
        "bureau_score": numeric_column(
            bureau.astype(np.int64), rng.random(n) < sigmoid(-3.3 - 1.0 * age_z)
        ),
        "credit_utilisation": numeric_column(utilisation, rng.random(n) < 0.03, decimals=3),
        "deposit_balance": numeric_column(deposit, rng.random(n) < 0.02, decimals=2),
        "months_on_book": numeric_column(months_on_book.astype(np.int64), no),
        "delinquencies_12m": numeric_column(delinquencies.astype(np.int64), no),
        "city_tier": categorical_column(CITY_TIERS, population.city_tier[people], no),
        "occupation": messy_categorical_column(
            rng, _OCCUPATIONS, occupation, rng.random(n) < 0.04, messy_share=0.3
        ),
        # A customer on book for under three months has no observed outcome yet.
        RISK.column: RISK.strings(risk, months_on_book < 3),
        INSTALMENT.column: INSTALMENT.strings(instalment, no),
        RIGHTS_PACKAGE_COLUMN: categorical_column(
            RIGHTS_PACKAGES, np.maximum(package, 0), package < 0
        ),
    }
