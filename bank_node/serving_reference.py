"""What a model version carries for serving, computed as pure functions over numpy arrays.

- **Score scaling** (`ScoreScaling`): points = offset + factor · ln(odds), where odds are the
  odds of *good to bad*, (1 - p) / p for a probability p of the event (bad). A higher score is a
  lower risk; doubling the odds adds ``pdo`` points; odds of ``base_odds`` score ``base_points``.
- **Reason codes**: each bank feature's reference value (median of a numeric column, most common
  category of a categorical one, over the training rows), and the attribution that uses them:
  `attribution_batch` stacks the applicant's row with one copy per feature set to its reference,
  so one forward pass of a few rows scores them all; `adverse_reasons` ranks the features whose
  actual value lowered the score most against their reference.
- **Calibration check** (`calibration_check`): predicted against observed event rate per decile
  of predictions, Hosmer-Lemeshow statistic with its p-value, expected calibration error and
  Brier score.
- **Probabilities** (`checked_probabilities`): the one check that values are probabilities, for
  the scaling, the calibration check and the probabilities a saved version is built from.

The monitoring baseline's bins are in ``bank_node.monitoring_baseline``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Final, Literal

import numpy as np
import numpy.typing as npt
import pydantic
from pydantic import ConfigDict, Field

from cobrand.errors import InvalidRequest

__all__ = [
    "CalibrationBin",
    "CalibrationCheck",
    "FeatureReference",
    "ScoreScaling",
    "adverse_reasons",
    "attribution_batch",
    "calibration_check",
    "category_reference",
    "checked_probabilities",
    "numeric_reference",
]

# Probabilities are clipped this far from 0 and 1 so a saturated model still scores finitely.
_PROBABILITY_EPSILON: Final = 1e-9


class _Frozen(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ScoreScaling(_Frozen):
    """Points from a probability of the event (bad), scaled by points to double the odds.

    Attributes
    ----------
    base_points : float, default 600
        Points at `base_odds`.
    base_odds : float, default 50
        Odds of good to bad (50 means 50:1) that score `base_points`.
    pdo : float, default 20
        Points to double the odds of good to bad.
    """

    base_points: float = 600.0
    base_odds: Annotated[float, Field(gt=0.0)] = 50.0
    pdo: Annotated[float, Field(gt=0.0)] = 20.0

    @property
    def factor(self) -> float:
        """Points per unit of ln(odds): ``pdo / ln 2``."""
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        """Points at odds 1:1: ``base_points - factor * ln(base_odds)``."""
        return self.base_points - self.factor * math.log(self.base_odds)

    def points(self, probability_bad: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Points for probabilities of the event; higher is lower risk.

        Raises
        ------
        InvalidRequest
            A probability outside [0, 1] or not finite (its index is named).
        """
        p = checked_probabilities(probability_bad, "probability_bad index")
        p = np.clip(p, _PROBABILITY_EPSILON, 1.0 - _PROBABILITY_EPSILON)
        result: npt.NDArray[np.float64] = self.offset + self.factor * np.log((1.0 - p) / p)
        return result


# --- Reason codes ---------------------------------------------------------------------------


class FeatureReference(_Frozen):
    """One bank feature's reason code and the model inputs its reference value sets.

    Attributes
    ----------
    code : str
        Stable code, ``B01``, ``B02``... in the preprocessor's feature order.
    feature : str
    kind : {"numeric", "categorical"}
    text : str
        The reason as shown, with ``{value}`` where the applicant's value goes.
    reference : str
        The reference value as a person reads it (raw units, or the category).
    numeric : tuple of (int, float)
        ``(column, value)`` pairs set in the encoded numeric input: the scaled column's median
        and, if the feature has one, its missing indicator at 0.
    categorical : tuple of (int, int)
        ``(column, index)`` pairs set in the encoded categorical input: the most common index.
    """

    code: Annotated[str, Field(pattern=r"^B[0-9]{2,}$")]
    feature: str
    kind: Literal["numeric", "categorical"]
    text: str
    reference: str
    numeric: tuple[tuple[Annotated[int, Field(ge=0)], float], ...] = ()
    categorical: tuple[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]], ...] = ()


def numeric_reference(scaled: npt.ArrayLike) -> float:
    """The reference of an encoded numeric column: its median over the training rows."""
    array = np.asarray(scaled, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise InvalidRequest("a numeric reference needs a non-empty 1-D finite column")
    return float(np.median(array))


def category_reference(indices: npt.ArrayLike) -> int:
    """The reference of an encoded categorical column: its most common index (lowest on ties)."""
    array = np.asarray(indices)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise InvalidRequest("a category reference needs a non-empty 1-D integer column")
    if array.min() < 0:
        raise InvalidRequest(f"category indices are never negative, got {array.min()}")
    return int(np.argmax(np.bincount(array)))


def attribution_batch(
    numeric: npt.NDArray[np.float32],
    categorical: npt.NDArray[np.int64],
    references: Sequence[FeatureReference],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The applicant's encoded row, then one copy per feature with that feature at its reference.

    Parameters
    ----------
    numeric : ndarray of float32, shape (d,)
    categorical : ndarray of int64, shape (c,)
        One row as `cobrand.preprocess.Preprocessor.transform` encodes it.
    references : sequence of FeatureReference
        The version's bank features.

    Returns
    -------
    numeric : ndarray of float32, shape (1 + k, d)
    categorical : ndarray of int64, shape (1 + k, c)
        Row 0 is the applicant; row ``1 + j`` has ``references[j]``'s inputs replaced.
    """
    rows = 1 + len(references)
    numeric_rows = np.repeat(numeric.reshape(1, -1), rows, axis=0)
    categorical_rows = np.repeat(categorical.reshape(1, -1), rows, axis=0)
    for row, reference in enumerate(references, start=1):
        for column, value in reference.numeric:
            numeric_rows[row, column] = value
        for column, index in reference.categorical:
            categorical_rows[row, column] = index
    return numeric_rows, categorical_rows


def adverse_reasons(
    points: float, reference_points: npt.ArrayLike, codes: Sequence[str], limit: int = 4
) -> list[str]:
    """The codes whose actual value lowered the score most, at most `limit`, most first.

    Parameters
    ----------
    points : float
        The applicant's score.
    reference_points : array_like of float, shape (k,)
        The score with each reason's input at its reference (for the partner's reason, the
        score without the partner slice).
    codes : sequence of str, length k
    limit : int, default 4

    Returns
    -------
    list of str
        Codes with ``reference_points - points > 0``, by that gain, ties in `codes` order.
    """
    gains = np.asarray(reference_points, dtype=np.float64) - points
    if gains.shape != (len(codes),):
        raise InvalidRequest(f"{len(codes)} codes need as many reference points, got {gains.shape}")
    order = np.argsort(-gains, kind="stable")
    return [codes[i] for i in order[:limit] if gains[i] > 0]


# --- Calibration ----------------------------------------------------------------------------


class CalibrationBin(_Frozen):
    """One group of rows by predicted probability."""

    rows: Annotated[int, Field(ge=1)]
    mean_predicted: float
    observed_rate: float


class CalibrationCheck(_Frozen):
    """How well predicted probabilities match observed event rates on labelled test rows.

    Attributes
    ----------
    rows, events : int
    brier : float
        Mean squared difference between prediction and outcome.
    ece : float
        Expected calibration error: row-weighted mean of ``|observed - predicted|`` over bins.
    hosmer_lemeshow : float
        ``sum (O - E)^2 / (E (1 - E / n))`` over bins (O events, E expected events, n rows).
    degrees_of_freedom : int
        Bins minus 2.
    p_value : float
        Chi-squared tail probability of `hosmer_lemeshow`; small means miscalibrated.
    bins : tuple of CalibrationBin
        Equal-count groups in increasing order of prediction (deciles by default).
    """

    rows: int
    events: int
    brier: float
    ece: float
    hosmer_lemeshow: float
    degrees_of_freedom: int
    p_value: float
    bins: tuple[CalibrationBin, ...]


def calibration_check(
    *, y_true: npt.ArrayLike, y_score: npt.ArrayLike, n_bins: int = 10
) -> CalibrationCheck:
    """Calibration of predicted event probabilities against outcomes.

    Parameters
    ----------
    y_true : array_like, shape (n,)
        1 for the event (bad), 0 otherwise; NaN for unlabelled rows, which are left out.
    y_score : array_like of float, shape (n,)
        Predicted probability of the event.
    n_bins : int, default 10
        Equal-count groups of rows by prediction, at least 3.

    Raises
    ------
    InvalidRequest
        Shapes differ, a label is not 0/1/NaN, a probability is outside [0, 1], or fewer
        labelled rows than bins.
    """
    truth = np.asarray(y_true, dtype=np.float64)
    score = checked_probabilities(y_score, "y_score index")
    if truth.shape != score.shape:
        raise InvalidRequest(f"y_true has shape {truth.shape}, y_score {score.shape}")
    labelled = ~np.isnan(truth)
    bad = np.flatnonzero(labelled & (truth != 0) & (truth != 1))
    if bad.size:
        raise InvalidRequest(f"y_true must be 0, 1 or NaN; row {bad[0]} is {truth[bad[0]]}")
    truth, score = truth[labelled], score[labelled]
    if n_bins < 3 or truth.size < n_bins:
        raise InvalidRequest(
            f"a calibration check needs at least 3 bins and a row per bin: {n_bins} bins, "
            f"{truth.size} labelled rows"
        )
    order = np.argsort(score, kind="stable")
    bins, statistic, ece = [], 0.0, 0.0
    for group in np.array_split(order, n_bins):
        rows, events, expected = group.size, truth[group].sum(), score[group].sum()
        variance = expected * (1.0 - expected / rows)
        # A group predicted all 0 or all 1 has no variance; it adds nothing when right.
        statistic += (events - expected) ** 2 / variance if variance > 0 else 0.0
        ece += abs(events - expected) / truth.size
        bins.append(
            CalibrationBin(rows=rows, mean_predicted=expected / rows, observed_rate=events / rows)
        )
    return CalibrationCheck(
        rows=int(truth.size),
        events=int(truth.sum()),
        brier=float(np.mean((score - truth) ** 2)),
        ece=float(ece),
        hosmer_lemeshow=float(statistic),
        degrees_of_freedom=n_bins - 2,
        p_value=_chi2_tail(float(statistic), n_bins - 2),
        bins=tuple(bins),
    )


def _chi2_tail(statistic: float, degrees: int) -> float:
    """P(X > statistic) for X chi-squared with `degrees` degrees of freedom.

    The regularized upper gamma Q(k/2, x/2), climbed from Q(1/2) or Q(1) by
    Q(a + 1, y) = Q(a, y) + y^a e^-y / Gamma(a + 1).
    """
    y = statistic / 2.0
    a, q = (1.0, math.exp(-y)) if degrees % 2 == 0 else (0.5, math.erfc(math.sqrt(y)))
    while a < degrees / 2.0:
        q += math.exp(a * math.log(y) - y - math.lgamma(a + 1.0)) if y > 0 else 0.0
        a += 1.0
    return min(q, 1.0)


def checked_probabilities(values: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
    """`values` as float64, each checked to be a probability: in [0, 1] (so not NaN).

    Parameters
    ----------
    values : array_like
    what : str
        What a value is, before its index, for the error: ``"<what> <index> is <value>"``,
        e.g. ``"y_score index"``.

    Raises
    ------
    InvalidRequest
        Naming the first value outside [0, 1] by its (flat) index.
    """
    array = np.asarray(values, dtype=np.float64)
    outside = ~((array >= 0.0) & (array <= 1.0))
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise InvalidRequest(f"{what} {first} is {array.ravel()[first]}, not in [0, 1]")
    return array
