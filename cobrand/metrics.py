"""Risk-team metrics: AUC, Gini, KS and PSI, sort-based and tie-aware.

Conventions follow the credit-risk literature (and optbinning's argument order): arguments are
keyword-only, ``y_true`` holds 1 for the event and the event means *bad* (default), and ``y_score``
is higher for riskier applicants. Every metric is O(n log n): one sort, then cumulative sums over
groups of tied scores, so a tie never counts as half right in one place and fully right in another.
"""

from __future__ import annotations

import enum
from typing import Final

import numpy as np
import numpy.typing as npt

from cobrand.errors import InvalidRequest

__all__ = [
    "PSI_SHARE_FLOOR",
    "PSI_SHIFT_AT",
    "PSI_WATCH_AT",
    "PsiVerdict",
    "auc",
    "gini",
    "ks",
    "psi",
    "psi_from_shares",
    "psi_verdict",
]

PSI_WATCH_AT: Final = 0.10
"""PSI at or above this: the population has moved enough to watch (the usual 0.10)."""
PSI_SHIFT_AT: Final = 0.25
"""PSI at or above this: a significant shift; the model needs review (the usual 0.25)."""

PSI_SHARE_FLOOR: Final = 1e-4
"""Shares below this count as this in PSI: an empty bucket would make ln(actual / expected)
infinite, and at 1e-4 a bucket that empties completely is still punished (0.31 of PSI for a
bucket holding 5% in the baseline)."""


class PsiVerdict(enum.StrEnum):
    """What a PSI value means for the risk team."""

    STABLE = "stable"
    WATCH = "watch"
    SHIFT = "shift"


def _binary_pair(
    y_true: npt.ArrayLike, y_score: npt.ArrayLike
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Validate labels and scores; return (is_event, score) as 1-D arrays of one length."""
    truth = np.asarray(y_true)
    score = np.asarray(y_score, dtype=np.float64)
    if truth.ndim != 1 or score.ndim != 1 or truth.shape != score.shape:
        raise InvalidRequest(
            f"y_true and y_score must be 1-D of one length, got shapes {truth.shape} "
            f"and {score.shape}"
        )
    if not np.all(np.isfinite(score)):
        first = int(np.flatnonzero(~np.isfinite(score))[0])
        raise InvalidRequest(f"y_score must be finite; index {first} is {score[first]}")
    is_event = truth == 1
    not_binary = ~(is_event | (truth == 0))
    if np.any(not_binary):
        first = int(np.flatnonzero(not_binary)[0])
        raise InvalidRequest(f"y_true must hold only 0 and 1; index {first} is {truth[first]}")
    n_events = int(is_event.sum())
    if n_events == 0 or n_events == is_event.size:
        raise InvalidRequest(
            f"y_true needs both events (1) and non-events (0); got {n_events} events "
            f"in {is_event.size} rows"
        )
    return is_event, score


def _tied_group_counts(
    is_event: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Count events and non-events per distinct score, in ascending score order.

    Returns
    -------
    events, non_events : ndarray of int64, shape (n_distinct_scores,)
    """
    _, group = np.unique(score, return_inverse=True)
    n_groups = int(group.max()) + 1
    events = np.bincount(group, weights=is_event, minlength=n_groups).astype(np.int64)
    totals = np.bincount(group, minlength=n_groups).astype(np.int64)
    return events, totals - events


def auc(*, y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Area under the ROC curve: the chance that a random bad outscores a random good.

    Computed as the Mann-Whitney statistic over distinct scores; a tie between a bad and a good
    counts one half, exactly as the pairwise definition does.

    Parameters
    ----------
    y_true : array_like of {0, 1}, shape (n,)
        1 for the event (bad), 0 for the non-event (good). Both must occur.
    y_score : array_like of float, shape (n,)
        Finite scores, higher meaning riskier.

    Returns
    -------
    float
        AUC in [0, 1]; 0.5 is no better than chance.

    Raises
    ------
    InvalidRequest
        Shapes differ or are not 1-D, a score is not finite, a label is not 0/1, or one class is
        absent.
    """
    is_event, score = _binary_pair(y_true, y_score)
    events, non_events = _tied_group_counts(is_event, score)
    goods_below = np.cumsum(non_events) - non_events
    wins = float(np.sum(events * goods_below)) + 0.5 * float(np.sum(events * non_events))
    return wins / (float(events.sum()) * float(non_events.sum()))


def gini(*, y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Gini coefficient (accuracy ratio), ``2 * auc - 1``.

    Parameters
    ----------
    y_true : array_like of {0, 1}, shape (n,)
        1 for the event (bad), 0 for the non-event (good).
    y_score : array_like of float, shape (n,)
        Finite scores, higher meaning riskier.

    Returns
    -------
    float
        Gini in [-1, 1]; 0 is chance, negative means the score ranks backwards.
    """
    return 2.0 * auc(y_true=y_true, y_score=y_score) - 1.0


def ks(*, y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Kolmogorov-Smirnov statistic: the widest gap between the bads' and goods' score CDFs.

    Cut points are taken only between distinct scores, so tied rows move together.

    Parameters
    ----------
    y_true : array_like of {0, 1}, shape (n,)
        1 for the event (bad), 0 for the non-event (good).
    y_score : array_like of float, shape (n,)
        Finite scores, higher meaning riskier.

    Returns
    -------
    float
        ``max |F_bad(s) - F_good(s)|`` in [0, 1].
    """
    is_event, score = _binary_pair(y_true, y_score)
    events, non_events = _tied_group_counts(is_event, score)
    cdf_bad = np.cumsum(events) / events.sum()
    cdf_good = np.cumsum(non_events) / non_events.sum()
    return float(np.max(np.abs(cdf_bad - cdf_good)))


def _finite_1d(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise InvalidRequest(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        first = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidRequest(f"{name} must be finite; index {first} is {array[first]}")
    return array


def psi(*, expected: npt.ArrayLike, actual: npt.ArrayLike, bins: int = 10) -> float:
    """Population stability index of ``actual`` against the ``expected`` (baseline) sample.

    Buckets are the quantiles of ``expected`` (equal-frequency; duplicate edges from heavy ties are
    merged, so there may be fewer than ``bins``), open at both ends so every value of ``actual``
    lands somewhere. Shares are compared by `psi_from_shares` (floored, so an empty bucket stays
    finite).

    Parameters
    ----------
    expected : array_like of float, shape (n,)
        Baseline values (scores or a feature), e.g. the development sample.
    actual : array_like of float, shape (m,)
        Values from the period being monitored.
    bins : int, default 10
        Number of equal-frequency buckets, at least 2.

    Returns
    -------
    float
        ``sum((a - e) * ln(a / e))`` over buckets; compare with `PSI_WATCH_AT` and
        `PSI_SHIFT_AT`, or call `psi_verdict`.
    """
    if bins < 2:
        raise InvalidRequest(f"bins must be at least 2, got {bins}")
    baseline = _finite_1d(expected, "expected")
    current = _finite_1d(actual, "actual")
    inner_edges = np.unique(np.quantile(baseline, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    # side="right": a value equal to an edge joins the bucket above it, the same for both samples.
    expected_counts = np.bincount(
        np.searchsorted(inner_edges, baseline, side="right"), minlength=inner_edges.size + 1
    )
    actual_counts = np.bincount(
        np.searchsorted(inner_edges, current, side="right"), minlength=inner_edges.size + 1
    )
    return psi_from_shares(
        expected=expected_counts / baseline.size, actual=actual_counts / current.size
    )


def psi_from_shares(*, expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """Population stability index of bucket shares, ``actual`` against ``expected`` (baseline).

    For a baseline kept as bins and shares (a model version's monitoring baseline), where the
    raw development sample is no longer at hand. Each share is floored at `PSI_SHARE_FLOOR`
    first, so an empty bucket on either side gives a large but finite contribution.

    Parameters
    ----------
    expected : array_like of float, shape (k,)
        Baseline share of each bucket, in [0, 1], summing to 1.
    actual : array_like of float, shape (k,)
        Share of each bucket in the period being monitored, same buckets, summing to 1.

    Returns
    -------
    float
        ``sum((a - e) * ln(a / e))`` over buckets; 0 for identical shares.

    Raises
    ------
    InvalidRequest
        Shapes differ or are not 1-D, a share is not finite or outside [0, 1], or either side
        does not sum to 1 (within 1e-6).
    """
    baseline = _shares(expected, "expected")
    current = _shares(actual, "actual")
    if baseline.shape != current.shape:
        raise InvalidRequest(
            f"expected and actual must have one share per bucket, got {baseline.size} and "
            f"{current.size} buckets"
        )
    baseline = np.maximum(baseline, PSI_SHARE_FLOOR)
    current = np.maximum(current, PSI_SHARE_FLOOR)
    return float(np.sum((current - baseline) * np.log(current / baseline)))


def _shares(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    shares = _finite_1d(values, name)
    outside = (shares < 0.0) | (shares > 1.0)
    if np.any(outside):
        first = int(np.flatnonzero(outside)[0])
        raise InvalidRequest(f"{name} shares must be in [0, 1]; index {first} is {shares[first]}")
    total = float(shares.sum())
    if abs(total - 1.0) > 1e-6:
        raise InvalidRequest(f"{name} shares must sum to 1, got {total:.9g}")
    return shares


def psi_verdict(value: float) -> PsiVerdict:
    """Read a PSI value the way risk teams do: stable below 0.10, shift at 0.25 and above.

    Parameters
    ----------
    value : float
        A PSI value, as `psi` returns.

    Returns
    -------
    PsiVerdict
    """
    if value >= PSI_SHIFT_AT:
        return PsiVerdict.SHIFT
    if value >= PSI_WATCH_AT:
        return PsiVerdict.WATCH
    return PsiVerdict.STABLE
