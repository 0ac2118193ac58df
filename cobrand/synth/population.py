"""The people behind the synthetic tables: who is at which party, and their hidden traits.

One population holds everyone: bank customers (some of whom also use the partner) and partner-only
users. Each person gets latent traits drawn once and shared by both sides, so the bank's features,
its labels and the partner's features all derive from the same person and the partner slice
carries real information about the bank's outcomes. Identity is a unique Chinese mobile number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["CITY_TIER_SHARES", "TRAITS", "Population", "draw_population"]

TRAITS: Final = (
    "stress",  # financial stress: over-borrowing, thin buffers
    "impulsivity",  # impulsive consumption, mostly visible in shopping behaviour
    "spend",  # spending appetite
    "digital",  # digital engagement
    "travel",  # travel affinity
    "leisure",  # entertainment affinity
    "instalment",  # appetite for paying in instalments
)
"""Latent traits, in the column order of `Population.traits`."""

# Correlations a risk analyst would expect: stressed people lean on instalments and shop on
# impulse, big spenders are online and travel, the digitally engaged like entertainment.
_TRAIT_CORRELATION: Final = np.array(
    [
        [1.00, 0.30, 0.05, 0.00, -0.05, 0.05, 0.35],
        [0.30, 1.00, 0.25, 0.15, 0.00, 0.15, 0.30],
        [0.05, 0.25, 1.00, 0.30, 0.25, 0.15, 0.20],
        [0.00, 0.15, 0.30, 1.00, 0.10, 0.30, 0.10],
        [-0.05, 0.00, 0.25, 0.10, 1.00, 0.10, 0.00],
        [0.05, 0.15, 0.15, 0.30, 0.10, 1.00, 0.05],
        [0.35, 0.30, 0.20, 0.10, 0.00, 0.05, 1.00],
    ]
)

# Mobile number segments issued by the Chinese carriers (the first three digits).
_MOBILE_SEGMENTS: Final = np.array(
    [
        *range(130, 140),
        *(145, 147, 150, 151, 152, 153, 155, 156, 157, 158, 159, 166),
        *range(170, 179),
        *range(180, 190),
        *(191, 193, 195, 196, 197, 198, 199),
    ],
    dtype=np.int64,
)


CITY_TIER_SHARES: Final = np.array([0.12, 0.16, 0.24, 0.22, 0.16, 0.10])
"""Share of people per city tier, largest cities first."""


@dataclass(frozen=True)
class Population:
    """Everyone in the synthetic world, bank customers first.

    Attributes
    ----------
    mobiles : ndarray of int64, shape (n_people,)
        Unique 11-digit mobile numbers.
    age : ndarray of float64, shape (n_people,)
        Age in whole years, 18 to 75.
    log_income : ndarray of float64, shape (n_people,)
        Natural log of monthly income in CNY (both sides see its echo: the bank its income field,
        the partner the basket size).
    city_tier : ndarray of int64, shape (n_people,)
        Index into the city tier names, 0 the largest cities.
    traits : ndarray of float64, shape (n_people, len(TRAITS))
        Latent traits, standard normal and correlated, in `TRAITS` order.
    bank_people : ndarray of int64, shape (n_bank,)
        Row order of the bank table: indices into the population.
    partner_people : ndarray of int64, shape (n_partner,)
        Row order of the partner table: indices into the population.
    n_bank : int
        People ``0 .. n_bank - 1`` are the bank's customers.
    in_partner : ndarray of bool, shape (n_people,)
        True for everyone the partner knows.
    """

    mobiles: npt.NDArray[np.int64]
    age: npt.NDArray[np.float64]
    log_income: npt.NDArray[np.float64]
    city_tier: npt.NDArray[np.int64]
    traits: npt.NDArray[np.float64]
    bank_people: npt.NDArray[np.int64]
    partner_people: npt.NDArray[np.int64]
    n_bank: int
    in_partner: npt.NDArray[np.bool_]

    def traits_of(self, people: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.float64]]:
        """Each latent trait of the given people, by name; arrays of shape (len(people),)."""
        rows = self.traits[people]
        return {name: rows[:, i] for i, name in enumerate(TRAITS)}


def _unique_mobiles(rng: np.random.Generator, count: int) -> npt.NDArray[np.int64]:
    """Draw `count` distinct mobile numbers, in random order."""
    numbers = np.empty(0, dtype=np.int64)
    while numbers.size < count:
        # About 2.6e9 possible numbers, so a 1% margin covers the few collisions in one pass.
        extra = count - numbers.size + count // 100 + 16
        drawn = rng.choice(_MOBILE_SEGMENTS, size=extra) * 100_000_000 + rng.integers(
            0, 100_000_000, size=extra
        )
        merged = np.concatenate([numbers, drawn])
        _, first = np.unique(merged, return_index=True)
        numbers = merged[np.sort(first)]
    return numbers[:count]


def draw_population(
    rng: np.random.Generator, *, n_bank: int, n_partner: int, n_overlap: int
) -> Population:
    """Draw the people, their traits and who is a customer of which party.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; the same state gives the same population.
    n_bank : int
        Bank customers.
    n_partner : int
        Partner users, at least `n_overlap`.
    n_overlap : int
        Bank customers who are also partner users, at most `n_bank`.

    Returns
    -------
    Population
    """
    n_people = n_bank + n_partner - n_overlap
    age = np.clip(np.round(20.0 + 50.0 * rng.beta(2.0, 3.5, size=n_people)), 18, 75)
    age_z = (age - 38.0) / 11.0
    traits = rng.standard_normal((n_people, len(TRAITS))) @ np.linalg.cholesky(_TRAIT_CORRELATION).T
    # The young are more online, more stretched and less settled in their spending.
    traits[:, TRAITS.index("digital")] -= 0.45 * age_z
    traits[:, TRAITS.index("stress")] -= 0.20 * age_z
    traits[:, TRAITS.index("impulsivity")] -= 0.15 * age_z
    city_tier = rng.choice(CITY_TIER_SHARES.size, size=n_people, p=CITY_TIER_SHARES)
    # Earnings peak in the mid-forties; larger cities pay more; stress goes with lower pay.
    log_income = (
        9.05
        - 0.16 * city_tier
        + 0.22 * age_z
        - 0.12 * age_z**2
        + 0.12 * traits[:, TRAITS.index("spend")]
        - 0.12 * traits[:, TRAITS.index("stress")]
        + 0.5 * rng.standard_normal(n_people)
    )
    # Bank customers are people 0..n_bank-1; the first n_overlap of a random order also shop with
    # the partner, as do all people from n_bank on.
    in_partner = np.zeros(n_people, dtype=bool)
    in_partner[rng.permutation(n_bank)[:n_overlap]] = True
    in_partner[n_bank:] = True
    return Population(
        mobiles=_unique_mobiles(rng, n_people),
        age=age,
        log_income=log_income,
        city_tier=city_tier.astype(np.int64),
        traits=traits,
        bank_people=rng.permutation(n_bank).astype(np.int64),
        partner_people=rng.permutation(np.flatnonzero(in_partner)).astype(np.int64),
        n_bank=n_bank,
        in_partner=in_partner,
    )
