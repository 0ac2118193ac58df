"""The figures behind the human training report: test scores per task and curves drawn from them.

`TaskScores` holds one task's test rows as the bank's ServerApp scores them (labels, the full
model's probabilities and its bank-only path's), saved with `save_test_scores` and read back by
the process that renders the report (`bank_node.report_html`). Everything else here is pure
numpy: ROC and KS curves (`rank_curves`), the score decile table with lift and cumulative
capture (`decile_table`), reliability bins (`calibration_bins`), the score histogram by class
and, for a K-class task, top-1 accuracy, a per-class table and a confusion matrix. Tables and
summary figures are plain dicts of Python numbers, so ``report.json`` can carry them as they are.

AUC, Gini and KS come from `cobrand.metrics`, so the report agrees with the training figures.
Scores are higher for the event (1); deciles are numbered from the highest scores (decile 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cobrand.errors import ConfigError, InvalidRequest
from cobrand.metrics import auc, gini, ks

__all__ = [
    "RankCurves",
    "TaskScores",
    "binary_figures",
    "calibration_bins",
    "calibration_error",
    "class_figures",
    "confusion_matrix",
    "decile_table",
    "load_test_scores",
    "rank_curves",
    "save_test_scores",
    "score_histogram",
    "scores_from_logits",
]

FloatArray = npt.NDArray[np.float64]

# Softmax rows in float32 sum to 1 within about 1e-6; anything further off is not probabilities.
_ROW_SUM_TOLERANCE: Final = 1e-3
_PATHS: Final = (("full", "full-model"), ("bank_only", "bank-only"))


@dataclass(frozen=True)
class TaskScores:
    """One task's labelled test rows, scored by both paths of the split model.

    Attributes
    ----------
    labels : ndarray of int, shape (n,)
        0/1 for a binary task (1 is the event), the class index for a K-class task.
    full, bank_only : ndarray of float, shape (n,) or (n, K)
        Probabilities of the full model and of its bank-only path: of the event for a binary
        task, of each class (rows summing to 1) for a K-class task.
    classes : tuple of str
        The K class names in index order (a K-class task); empty for a binary task.
    """

    labels: npt.NDArray[np.int64]
    full: FloatArray
    bank_only: FloatArray
    classes: tuple[str, ...] = ()

    @property
    def binary(self) -> bool:
        """Whether the task is binary (scores of shape ``(n,)``)."""
        return self.full.ndim == 1

    def check(self, task: str) -> None:
        """Refuse scores that cannot be reported, naming `task`, the path and the first bad row.

        Raises
        ------
        InvalidRequest
            Shapes disagree, no rows, a score is not a finite probability, a K-class row does
            not sum to 1, a label is not 0/1 (binary) or a class index, or the class names do
            not match the scores' width.
        """
        if self.full.ndim not in (1, 2) or self.labels.ndim != 1:
            raise InvalidRequest(
                f"task {task!r}: labels must be (n,) and scores (n,) or (n, K); got "
                f"{self.labels.shape} and {self.full.shape}"
            )
        rows = self.labels.shape[0]
        if rows < 1 or self.full.shape != self.bank_only.shape or self.full.shape[0] != rows:
            raise InvalidRequest(
                f"task {task!r}: labels {self.labels.shape}, full {self.full.shape} and "
                f"bank_only {self.bank_only.shape} must describe the same non-empty rows"
            )
        for name, title in _PATHS:
            values = getattr(self, name)
            _first_bad(task, f"{title} score", ~np.isfinite(values), values, "not a number")
            _first_bad(task, f"{title} score", (values < 0) | (values > 1), values, "not in [0, 1]")
            if not self.binary:
                sums = values.sum(axis=1)
                off = np.abs(sums - 1.0) > _ROW_SUM_TOLERANCE
                _first_bad(task, f"{title} probabilities' sum", off, sums, "not 1")
        width = 2 if self.binary else self.full.shape[1]
        outside = (self.labels < 0) | (self.labels >= width)
        _first_bad(task, "label", outside, self.labels, f"not in 0..{width - 1}")
        if len(self.classes) != (0 if self.binary else width):
            raise InvalidRequest(
                f"task {task!r}: {len(self.classes)} class names for scores of shape "
                f"{self.full.shape} (a binary task has none, a K-class task one per column)"
            )


def _first_bad(
    task: str, what: str, bad: npt.NDArray[np.bool_], values: npt.NDArray[Any], expected: str
) -> None:
    rows = np.flatnonzero(bad.any(axis=1) if bad.ndim == 2 else bad)
    if rows.size:
        row = int(rows[0])
        raise InvalidRequest(
            f"task {task!r}: {what} at test row {row} is {values[row]}, {expected} "
            f"({rows.size} such rows)"
        )


def scores_from_logits(
    full: Mapping[str, npt.NDArray[np.floating[Any]]],
    bank_only: Mapping[str, npt.NDArray[np.floating[Any]]],
    labels: Mapping[str, npt.NDArray[Any]],
    classes: Mapping[str, tuple[str, ...]],
) -> dict[str, TaskScores]:
    """Both paths' logits per task as `TaskScores`, keeping the labelled rows only.

    Labels follow `bank_node.evaluation.task_metrics`: NaN marks an unlabelled row of a binary
    task, -1 of a K-class task. Probabilities are computed in float64, where logits up to about
    36 stay below 1 (float32 rounds them to 1 from about 17, tying the riskiest rows).

    Parameters
    ----------
    full, bank_only : mapping of task to ndarray
        Logits, ``(n,)`` for a binary task, ``(n, K)`` for a K-class one.
    labels : mapping of task to ndarray, each shape (n,)
    classes : mapping of task to tuple of str
        The class names of each K-class task (``CategoricalLabel.classes``).
    """
    result = {}
    for task, values in labels.items():
        binary = full[task].ndim == 1
        truth = np.asarray(values, dtype=np.float64)
        labelled = ~np.isnan(truth) if binary else truth >= 0
        result[task] = TaskScores(
            labels=truth[labelled].astype(np.int64),
            full=_probabilities(full[task][labelled]),
            bank_only=_probabilities(bank_only[task][labelled]),
            classes=() if binary else classes[task],
        )
    return result


def _probabilities(logits: npt.NDArray[np.floating[Any]]) -> FloatArray:
    wide = logits.astype(np.float64)
    if wide.ndim == 1:
        # The tanh form of the sigmoid does not overflow for large negative logits.
        sigmoid: FloatArray = 0.5 * (1.0 + np.tanh(wide / 2.0))
        return sigmoid
    exp = np.exp(wide - wide.max(axis=1, keepdims=True))
    softmax: FloatArray = exp / exp.sum(axis=1, keepdims=True)
    return softmax


def save_test_scores(path: Path, scores: Mapping[str, TaskScores]) -> None:
    """Write every task's `TaskScores` to one ``.npz`` file, replacing `path` atomically.

    Raises
    ------
    InvalidRequest
        A task's scores fail `TaskScores.check`.
    """
    arrays: dict[str, npt.NDArray[Any]] = {"tasks": np.array(list(scores), dtype=str)}
    for i, (task, entry) in enumerate(scores.items()):
        entry.check(task)
        arrays |= {
            f"{i}.labels": entry.labels,
            f"{i}.full": entry.full,
            f"{i}.bank_only": entry.bank_only,
            f"{i}.classes": np.array(entry.classes, dtype=str),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as file:
        # numpy's stub lets a ** mapping fill its `allow_pickle: bool` keyword, hence the ignore.
        np.savez_compressed(file, **arrays)  # type: ignore[arg-type]
    os.replace(partial, path)


def load_test_scores(path: Path) -> dict[str, TaskScores]:
    """Read what `save_test_scores` wrote, in the same task order.

    Raises
    ------
    ConfigError
        The file is missing, not such a file, or holds scores `TaskScores.check` refuses.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            result = {
                str(task): TaskScores(
                    labels=npz[f"{i}.labels"].astype(np.int64),
                    full=npz[f"{i}.full"].astype(np.float64),
                    bank_only=npz[f"{i}.bank_only"].astype(np.float64),
                    classes=tuple(str(name) for name in npz[f"{i}.classes"]),
                )
                for i, task in enumerate(npz["tasks"])
            }
        for task, entry in result.items():
            entry.check(task)
    except (OSError, KeyError, ValueError) as error:
        raise ConfigError(f"{path}: not a test-scores file ({error})") from error
    except InvalidRequest as error:
        raise ConfigError(f"{path}: {error}") from error
    return result


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


def calibration_error(table: list[dict[str, Any]]) -> float:
    """Expected calibration error of `calibration_bins`' table: the rows-weighted mean gap."""
    rows = sum(entry["rows"] for entry in table)
    gaps = (
        entry["rows"] * abs(entry["mean_predicted"] - entry["observed_rate"]) for entry in table
    )
    return float(sum(gaps) / rows)


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

    AUC, Gini, KS and the top-decile lift are None when the rows hold one class only.
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
        "calibration_error": calibration_error(calibration_bins(labels, scores)),
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
