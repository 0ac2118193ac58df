"""The figures behind the human training report, drawn from the test rows' scores.

Pure numpy, over `bank_node.holdout_scores.TaskScores`' arrays: ROC and KS curves
(`rank_curves`), the score decile table with lift and cumulative capture (`decile_table`),
reliability bins (`calibration_bins`), the score histogram by class and, for a K-class task,
top-1 accuracy, a per-class table and a confusion matrix. Tables and summary figures are plain
dicts of Python numbers, so ``report.json`` can carry them as they are.

AUC, Gini and KS come from `cobrand.metrics`, so the report agrees with the training figures.
Scores are higher for the event (1); deciles are numbered from the highest scores (decile 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bank_node.holdout_scores import FloatArray
from bank_node.serving_reference import calibration_check
from cobrand.errors import InvalidRequest
from cobrand.metrics import auc, gini, ks

__all__ = [
    "RankCurves",
    "binary_figures",
    "calibration_bins",
    "class_figures",
    "confusion_matrix",
    "decile_table",
    "rank_curves",
    "score_histogram",
]


_CALIBRATION_DECILES = 10


@dataclass(frozen=True)
class RankCurves:
    """ROC and KS curves of one binary score, cut between distinct scores from the highest down.

    Point 0 flags nobody; point i flags every row scoring at least ``thresholds[i - 1]``.

    Attributes
    ----------
    thresholds : ndarray, shape (m,)
        The distinct scores, descending.
    population, tpr, fpr : ndarray, shape (m + 1,)
        Share of all rows, of events (true-positive rate) and of non-events (false-positive
        rate) flagged at each cut.
    """

    thresholds: FloatArray
    population: FloatArray
    tpr: FloatArray
    fpr: FloatArray

    @property
    def ks_index(self) -> int:
        """The cut where the events' and non-events' flagged shares are furthest apart."""
        return int(np.argmax(np.abs(self.tpr - self.fpr)))


def rank_curves(labels: npt.NDArray[np.int64], scores: FloatArray) -> RankCurves:
    """ROC and KS curves of `scores` against 0/1 `labels`, tied rows moving together.

    Raises
    ------
    InvalidRequest
        One class is absent.
    """
    _require_both_classes(labels)
    distinct, group = np.unique(scores, return_inverse=True)
    events = np.bincount(group, weights=labels == 1, minlength=distinct.size)[::-1]
    totals = np.bincount(group, minlength=distinct.size)[::-1].astype(np.float64)
    zero = np.zeros(1)
    return RankCurves(
        thresholds=distinct[::-1].astype(np.float64),
        population=np.concatenate([zero, np.cumsum(totals) / totals.sum()]),
        tpr=np.concatenate([zero, np.cumsum(events) / events.sum()]),
        fpr=np.concatenate([zero, np.cumsum(totals - events) / (totals - events).sum()]),
    )


def _require_both_classes(labels: npt.NDArray[np.int64]) -> None:
    events = int(np.sum(labels == 1))
    if events in (0, labels.size):
        raise InvalidRequest(
            f"the curve needs both events (1) and non-events (0); got {events} events "
            f"in {labels.size} rows"
        )


def decile_table(
    labels: npt.NDArray[np.int64], scores: FloatArray, bins: int = 10
) -> list[dict[str, Any]]:
    """Rows ranked by score, highest first, cut in `bins` groups of equal size: their figures.

    Rows with equal scores stay in one group, the one their middle rank falls in, so a group
    may hold more or fewer rows than ``n / bins``; a group left empty is left out.

    Returns
    -------
    list of dict
        Per group, riskiest first: ``decile`` (1-based), ``rows``, ``events``, ``event_rate``,
        ``min_score``, ``max_score``, ``cumulative_capture`` (share of all events in this group
        and those above it: the gain), ``lift`` (event rate over the base rate) and
        ``cumulative_lift``.

    Raises
    ------
    InvalidRequest
        One class is absent (lift and capture are then undefined).
    """
    _require_both_classes(labels)
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    _, first, counts = np.unique(-ranked, return_index=True, return_counts=True)
    middle = first + (counts - 1) / 2.0
    group = np.repeat(np.floor(middle * bins / ranked.size).astype(np.int64), counts)
    rows = np.bincount(group, minlength=bins)
    events = np.bincount(group, weights=labels[order] == 1, minlength=bins)
    base_rate = events.sum() / ranked.size
    table = []
    for decile in np.flatnonzero(rows):
        members = ranked[group == decile]
        seen_rows, seen_events = rows[: decile + 1].sum(), events[: decile + 1].sum()
        table.append(
            {
                "decile": int(decile) + 1,
                "rows": int(rows[decile]),
                "events": int(events[decile]),
                "event_rate": float(events[decile] / rows[decile]),
                "min_score": float(members.min()),
                "max_score": float(members.max()),
                "cumulative_capture": float(seen_events / events.sum()),
                "lift": float(events[decile] / rows[decile] / base_rate),
                "cumulative_lift": float(seen_events / seen_rows / base_rate),
            }
        )
    return table


def calibration_bins(
    labels: npt.NDArray[np.int64], probabilities: FloatArray, bins: int = 10
) -> list[dict[str, Any]]:
    """Reliability figures: rows cut by predicted probability into `bins` equal-width bins.

    Returns
    -------
    list of dict
        Per non-empty bin, lowest first: ``lower``, ``upper``, ``rows``, ``mean_predicted``,
        ``observed_rate`` (share of events). A calibrated score has the two rates close.
    """
    index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    rows = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=probabilities, minlength=bins)
    events = np.bincount(index, weights=labels == 1, minlength=bins)
    return [
        {
            "lower": b / bins,
            "upper": (b + 1) / bins,
            "rows": int(rows[b]),
            "mean_predicted": float(predicted[b] / rows[b]),
            "observed_rate": float(events[b] / rows[b]),
        }
        for b in np.flatnonzero(rows)
    ]


def score_histogram(
    labels: npt.NDArray[np.int64], probabilities: FloatArray, bins: int = 20
) -> dict[str, list[float]]:
    """Share of each class's rows per equal-width probability bin (``edges`` has bins + 1)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    result: dict[str, list[float]] = {"edges": edges.tolist()}
    for name, members in (("events", labels == 1), ("non_events", labels == 0)):
        counts, _ = np.histogram(probabilities[members], bins=edges)
        result[name] = (counts / max(int(members.sum()), 1)).tolist()
    return result


def binary_figures(labels: npt.NDArray[np.int64], scores: FloatArray) -> dict[str, Any]:
    """Summary of one binary path: rows, events, AUC, Gini, KS, top-decile lift, calibration.

    AUC, Gini, KS and the top-decile lift are None when the rows hold one class only; the
    calibration error (over deciles of the score) when there are fewer than ten rows.
    """
    events = int(np.sum(labels == 1))
    both = 0 < events < labels.size
    return {
        "rows": int(labels.size),
        "events": events,
        "event_rate": events / labels.size,
        "auc": auc(y_true=labels, y_score=scores) if both else None,
        "gini": gini(y_true=labels, y_score=scores) if both else None,
        "ks": ks(y_true=labels, y_score=scores) if both else None,
        "top_decile_lift": decile_table(labels, scores)[0]["lift"] if both else None,
        # The version's calibration.json definition (equal-count deciles), so the report and
        # the published version give one ECE; the reliability plot keeps equal-width bins.
        "calibration_error": (
            calibration_check(y_true=labels, y_score=scores).ece
            if labels.size >= _CALIBRATION_DECILES
            else None
        ),
    }


def class_figures(
    labels: npt.NDArray[np.int64], probabilities: FloatArray, classes: tuple[str, ...]
) -> dict[str, Any]:
    """Summary of one K-class path: top-1 accuracy and, per class, recall and precision.

    Returns
    -------
    dict
        ``rows``, ``top1_accuracy``, ``classes``: per class ``name``, ``rows`` (true),
        ``predicted``, ``correct``, ``recall`` and ``precision`` (None without rows to divide by).
    """
    matrix = np.array(confusion_matrix(labels, probabilities))
    truth, predicted, correct = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    return {
        "rows": int(labels.size),
        "top1_accuracy": float(correct.sum() / labels.size),
        "classes": [
            {
                "name": name,
                "rows": int(truth[k]),
                "predicted": int(predicted[k]),
                "correct": int(correct[k]),
                "recall": float(correct[k] / truth[k]) if truth[k] else None,
                "precision": float(correct[k] / predicted[k]) if predicted[k] else None,
            }
            for k, name in enumerate(classes)
        ],
    }


def confusion_matrix(labels: npt.NDArray[np.int64], probabilities: FloatArray) -> list[list[int]]:
    """Rows counted by true class (outer index) and top-1 predicted class (inner index)."""
    width = probabilities.shape[1]
    pairs = labels * width + probabilities.argmax(axis=1)
    counts = np.bincount(pairs, minlength=width * width).reshape(width, width)
    return [[int(count) for count in row] for row in counts]
