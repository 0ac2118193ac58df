"""The partner's table: shopping, BNPL, app and payment behaviour of its users.

The partner sees what the bank cannot: impulsive consumption (night-time orders, returns, BNPL
arrears), instalment appetite (BNPL share and payment choice) and tastes (category preference),
each an echo of the same latent traits that drive the bank's outcomes.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pyarrow as pa

from cobrand.synth.columns import (
    categorical_column,
    choose_by_logits,
    numeric_column,
    sigmoid,
)
from cobrand.synth.population import Population

__all__ = [
    "CATEGORY_PREFERENCES",
    "MEMBERSHIP_TIERS",
    "PARTNER_CATEGORICAL",
    "PARTNER_IDENTIFIER",
    "PARTNER_NUMERIC",
    "PAYMENT_METHODS",
    "partner_columns",
]

PARTNER_IDENTIFIER: Final = "phone"
PARTNER_NUMERIC: Final = (
    "monthly_gmv",
    "orders_90d",
    "bnpl_share",
    "bnpl_overdue_count",
    "app_sessions_30d",
    "night_order_share",
    "return_rate",
)
PARTNER_CATEGORICAL: Final = ("payment_method", "category_preference", "membership_tier")

PAYMENT_METHODS: Final = (
    "Alipay",
    "WeChat Pay",
    "debit card",
    "credit card",
    "BNPL",
    "cash on delivery",
)
CATEGORY_PREFERENCES: Final = (
    "Electronics",
    "Fashion",
    "Beauty",
    "Groceries",
    "Home & Living",
    "Mother & Baby",
    "Travel & Tickets",
    "Games & Entertainment",
    "Books",
    "Sports & Outdoors",
)
MEMBERSHIP_TIERS: Final = ("none", "silver", "gold", "platinum")
_MEMBERSHIP_CUTS: Final = np.array([0.2, 1.0, 1.9])


def partner_columns(rng: np.random.Generator, population: Population) -> dict[str, pa.Array]:
    """Features of the partner's users, in partner row order (no identifier column).

    Parameters
    ----------
    rng : numpy.random.Generator
    population : Population

    Returns
    -------
    dict of str to pyarrow.Array
        `PARTNER_NUMERIC` then `PARTNER_CATEGORICAL` columns, each of length
        ``population.partner_people.size``.
    """
    people = population.partner_people
    n = people.size
    t = population.traits_of(people)
    age_z = (population.age[people] - 38.0) / 11.0
    income_z = (population.log_income[people] - 9.0) / 0.6
    noise = rng.standard_normal((n, 5))

    orders = rng.poisson(np.exp(1.6 + 0.55 * t["spend"] + 0.45 * t["digital"]))
    # Shares of orders are undefined for someone who placed none.
    no_orders = orders == 0
    gmv = np.where(
        no_orders,
        0.0,
        np.exp(
            5.6 + 0.75 * t["spend"] + 0.45 * income_z + 0.2 * t["impulsivity"] + 0.9 * noise[:, 0]
        ),
    )
    uses_bnpl = rng.random(n) < sigmoid(
        -0.4 + 1.2 * t["instalment"] + 0.4 * t["stress"] + 0.3 * t["impulsivity"]
    )
    bnpl_share = np.where(
        uses_bnpl,
        sigmoid(-1.2 + 0.9 * t["instalment"] + 0.4 * t["stress"] + 0.5 * noise[:, 1]),
        0.0,
    )
    overdue = np.where(
        uses_bnpl, rng.poisson(np.exp(-1.9 + 0.75 * t["stress"] + 0.85 * t["impulsivity"])), 0
    )
    sessions = rng.poisson(np.exp(2.3 + 0.85 * t["digital"]))
    no_app = rng.random(n) < sigmoid(-2.5 - 0.8 * t["digital"])
    night = sigmoid(
        -1.9 + 0.7 * t["impulsivity"] + 0.25 * t["leisure"] + 0.15 * t["stress"] + 0.5 * noise[:, 2]
    )
    returns = sigmoid(-2.4 + 0.6 * t["impulsivity"] + 0.3 * t["spend"] + 0.5 * noise[:, 3])
    payment = choose_by_logits(
        rng,
        np.column_stack(
            [
                0.6 + 0.2 * t["digital"],
                0.5 + 0.3 * t["digital"] + 0.2 * t["leisure"],
                -0.3 - 0.2 * t["spend"],
                -0.6 + 0.5 * t["spend"] + 0.4 * income_z,
                -1.5 + 1.2 * t["instalment"] + 0.3 * t["stress"],
                -1.8 - 0.8 * t["digital"] + 0.3 * age_z,
            ]
        ),
    )
    category = choose_by_logits(
        rng,
        np.column_stack(
            [
                0.4 * t["spend"] + 0.3 * t["digital"],
                0.5 * t["spend"] + 0.3 * t["impulsivity"],
                0.3 * t["spend"] + 0.2 * t["impulsivity"] - 0.2,
                0.3 - 0.3 * t["spend"] + 0.2 * age_z,
                0.2 * age_z + 0.2 * income_z,
                -0.5 - 1.5 * (age_z + 0.5) ** 2,
                -0.5 + 1.3 * t["travel"],
                -0.5 + 1.3 * t["leisure"] + 0.2 * t["digital"],
                -0.7 + 0.3 * age_z,
                -0.5 + 0.4 * t["travel"],
            ]
        ),
    )
    membership = np.digitize(
        0.8 * t["spend"] + 0.4 * t["digital"] + 0.3 * income_z + 0.6 * noise[:, 4], _MEMBERSHIP_CUTS
    )
    return {
        "monthly_gmv": numeric_column(gmv, rng.random(n) < 0.02, decimals=2),
        "orders_90d": numeric_column(orders, np.zeros(n, dtype=bool)),
        "bnpl_share": numeric_column(bnpl_share, no_orders, decimals=3),
        "bnpl_overdue_count": numeric_column(overdue, np.zeros(n, dtype=bool)),
        "app_sessions_30d": numeric_column(sessions, no_app),
        "night_order_share": numeric_column(night, no_orders, decimals=3),
        "return_rate": numeric_column(returns, no_orders | (rng.random(n) < 0.03), decimals=3),
        "payment_method": categorical_column(PAYMENT_METHODS, payment, no_orders),
        "category_preference": categorical_column(
            CATEGORY_PREFERENCES, category, no_orders | (rng.random(n) < 0.04)
        ),
        "membership_tier": categorical_column(
            MEMBERSHIP_TIERS, membership.astype(np.int64), np.zeros(n, dtype=bool)
        ),
    }
