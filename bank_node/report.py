"""A finished training run's ``report.json``, built from the alignment and the run's journal.

The report holds what the risk team reads first: the model's version, the alignment's sizes,
each task's test figures through the full model and its bank-only path, the run's cost and the
label-leakage figures. Binary tasks get ``test_rows``, ``auc``, ``ks``, ``bank_only_auc`` (and
``bank_only_ks``); a K-class task (one whose figures are ``top1_accuracy``) gets ``test_rows``,
``top1_accuracy``, ``bank_only_top1_accuracy``. A figure the evaluation left out (a test set
holding one class only) is null.

Everything comes from the journal's ``finished`` event: the model version both sides published
(``bank_node.model_release``), and the privacy figures the ServerApp measured on the gradients
the run sent: ``privacy.defence`` names the label-leakage defence, ``leak_auc_norm`` and
``leak_auc_direction`` are the two attacks' AUCs (0.5 is chance; null when the rows attacked hold
one class) on the labels of ``privacy.task``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cobrand.alignment_store import AlignmentSummary
from cobrand.durable import write_atomically

__all__ = ["summary_lines", "training_report", "write_report"]

_BINARY_FIGURES: Final = ("auc", "ks", "bank_only_auc", "bank_only_ks")
_CLASS_FIGURES: Final = ("top1_accuracy", "bank_only_top1_accuracy")


def training_report(
    run_id: str, alignment: AlignmentSummary, finished: Mapping[str, Any]
) -> dict[str, Any]:
    """The report of a run.

    Parameters
    ----------
    run_id : str
        The Flower run id.
    alignment : AlignmentSummary
        The bank's alignment result the run trained on.
    finished : mapping
        The journal's ``finished`` event (``bank_node.rounds.train_run``).
    """
    return {
        "run_id": run_id,
        "model_version": finished["model_version"],
        "model": {
            "best_round": finished["best_round"],
            "bank_sha256": finished["bank_sha256"],
            "partner_sha256": finished["partner_sha256"],
            "bank_manifest_sha256": finished["bank_manifest_sha256"],
            "partner_manifest_sha256": finished["partner_manifest_sha256"],
        },
        "alignment": {
            "run_id": alignment.run_id,
            "bank_rows": alignment.own_rows,
            "partner_rows": alignment.peer_rows,
            "intersection": alignment.intersection_size,
        },
        "tasks": {task: _task(figures) for task, figures in finished["test"].items()},
        "training": {
            "seconds": finished["seconds"],
            "rounds": finished["rounds"],
            "bytes_exchanged": finished["bytes_sent"] + finished["bytes_received"],
        },
        "privacy": dict(finished["privacy"]),
    }


def _task(figures: Mapping[str, float | None]) -> dict[str, Any]:
    names = _CLASS_FIGURES if any(name in figures for name in _CLASS_FIGURES) else _BINARY_FIGURES
    return {"test_rows": int(figures["rows"] or 0)} | {name: figures.get(name) for name in names}


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    """Write `report` as indented JSON, replacing `path` atomically and durably."""
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    write_atomically(path, text.encode("utf-8"))


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The report as a person reads it: each task's figures joint vs bank-only, then the cost."""
    lines = [f"model {report['model_version']} (best round {report['model']['best_round']})"]
    for task, figures in report["tasks"].items():
        if "top1_accuracy" in figures:
            joint, alone, name = (
                figures["top1_accuracy"],
                figures["bank_only_top1_accuracy"],
                "top-1",
            )
        else:
            joint, alone, name = figures["auc"], figures["bank_only_auc"], "AUC"
        lines.append(
            f"  {task:<16}{name} {_figure(joint)} with the partner vs {_figure(alone)} bank-only"
            + (f", KS {_figure(figures['ks'])}" if "ks" in figures else "")
            + f"  ({figures['test_rows']:,} test rows)"
        )
    training = report["training"]
    lines.append(
        f"  training        {training['rounds']} rounds in {training['seconds']:.1f} s, "
        f"{training['bytes_exchanged'] / 1e6:.1f} MB exchanged on the data plane"
    )
    privacy = report["privacy"]
    attacks = (
        f"label-leakage attacks on the {privacy['task']} labels: norm AUC "
        f"{_figure(privacy['leak_auc_norm'])}, direction AUC "
        f"{_figure(privacy['leak_auc_direction'])} (0.5 is chance)"
        if privacy["task"] is not None
        else "label-leakage attacks not measured (no binary task)"
    )
    lines.append(f"  privacy         {privacy['defence']}; {attacks}")
    return lines


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
