"""Per-task quality of the split model on labelled bank rows, with and without the partner slice.

Every figure comes twice: through the full model (both embeddings) and through its bank-only
path (the partner-missing flag set for every row), the "what the partner adds" comparison the
risk team asks for. Names follow the training report: for a binary task ``auc``, ``ks`` and
``bank_only_auc``, ``bank_only_ks``; for a K-class task ``top1_accuracy`` and
``bank_only_top1_accuracy``; for every task ``rows`` (labelled rows) and the mean loss of each path.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch

from cobrand.metrics import auc, ks
from cobrand.split_model import task_losses

__all__ = ["TaskMetrics", "task_metrics", "total_loss"]

TaskMetrics = dict[str, dict[str, float]]
"""Per task, figure name to value, e.g. ``{"risk": {"rows": 900, "auc": 0.78, ...}}``."""


def total_loss(
    logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The training objective: the sum over tasks of each task's mean loss on its labelled rows."""
    return torch.stack(list(task_losses(logits, labels).values())).sum()


def task_metrics(
    full: Mapping[str, torch.Tensor],
    bank_only: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
) -> TaskMetrics:
    """Quality per task of both paths over the same rows.

    Parameters
    ----------
    full, bank_only : mapping of task to tensor
        Logits of the full model and of its bank-only path: ``(n,)`` for a binary task,
        ``(n, K)`` for a K-class one.
    labels : mapping of task to tensor
        As ``cobrand.split_model.task_losses`` takes them (NaN or -1 where unlabelled).

    Returns
    -------
    TaskMetrics
        AUC and KS are left out for a binary task whose labelled rows hold only one class,
        accuracy for a K-class task without labelled rows.
    """
    losses = {"": task_losses(full, labels), "bank_only_": task_losses(bank_only, labels)}
    result: TaskMetrics = {}
    for task, label in labels.items():
        values = label.numpy()
        binary = full[task].dim() == 1
        labelled = ~np.isnan(values) if binary else values >= 0
        entry = {"rows": float(labelled.sum())}
        for prefix, logits in (("", full), ("bank_only_", bank_only)):
            entry[f"{prefix}loss"] = float(losses[prefix][task])
            scores = logits[task].detach().numpy()[labelled]
            entry.update(_figures(prefix, binary, values[labelled], scores))
        result[task] = entry
    return result


def _figures(
    prefix: str, binary: bool, truth: npt.NDArray[np.generic], scores: npt.NDArray[np.float32]
) -> dict[str, float]:
    if binary:
        events = int(truth.sum())
        if events in (0, truth.size):
            return {}
        return {
            f"{prefix}auc": auc(y_true=truth, y_score=scores),
            f"{prefix}ks": ks(y_true=truth, y_score=scores),
        }
    if truth.size == 0:
        return {}
    return {f"{prefix}top1_accuracy": float(np.mean(scores.argmax(axis=1) == truth))}
