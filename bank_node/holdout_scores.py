"""The test rows' scores of a trained model, per task: what the human report is drawn from.

`TaskScores` holds one task's labelled test rows as the bank's ServerApp scores them (labels,
the full model's probabilities and its bank-only path's; `scores_from_logits`), saved with
`save_test_scores` and read back by the process that renders the report
(`bank_node.report_html`, with the curves of `bank_node.report_curves`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cobrand.durable import write_atomically
from cobrand.errors import ConfigError, InvalidRequest

__all__ = [
    "FloatArray",
    "TaskScores",
    "load_test_scores",
    "probabilities",
    "save_test_scores",
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
    """Both paths' logits per task as `TaskScores`, keeping the labelled rows only; a task
    without labelled rows is left out.

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
        if not labelled.any():
            # Nothing to draw: the report says the task has no labelled test rows.
            continue
        result[task] = TaskScores(
            labels=truth[labelled].astype(np.int64),
            full=probabilities(full[task][labelled]),
            bank_only=probabilities(bank_only[task][labelled]),
            classes=() if binary else classes[task],
        )
    return result


def probabilities(logits: npt.NDArray[np.floating[Any]]) -> FloatArray:
    """Logits as float64 probabilities: a sigmoid of ``(n,)`` logits, a softmax of ``(n, K)``."""
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
    buffer = io.BytesIO()
    # numpy's stub lets a ** mapping fill its `allow_pickle: bool` keyword, hence the ignore.
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    # Durable before the run journals `finished`: the scores cannot be made again without the
    # partner's embeddings.
    write_atomically(path, buffer.getvalue())


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
