"""The human training report: one self-contained HTML file, its plots embedded as PNG data URIs.

A risk committee gets one file to mail and open anywhere: no JavaScript, no external style sheet,
font or image, every string from the report or the scores HTML-escaped. The header holds
``report.json``'s model version, alignment sizes, training cost and privacy fields; then, per
task, the full model beside its bank-only path. A binary task gets AUC, Gini, KS, top-decile
lift and calibration error, the ROC, KS, score-distribution, lift/gain and calibration plots and
both paths' decile tables; a K-class task gets top-1 accuracy, a per-class table, confusion
matrices and a top-1 calibration plot. Plots are drawn with matplotlib's Agg canvas directly
(never pyplot), so nothing needs a display and no global state changes. The figures come from
`bank_node.report_curves`.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bank_node.holdout_scores import TaskScores
from bank_node.report_curves import (
    RankCurves,
    binary_figures,
    calibration_bins,
    class_figures,
    confusion_matrix,
    decile_table,
    rank_curves,
    score_histogram,
)
from cobrand.durable import write_atomically
from cobrand.errors import InvalidRequest

__all__ = ["render_report_html", "write_report_html"]

_PATHS: Final = (("full", "full model", "#1f4e79"), ("bank_only", "bank-only path", "#c55a11"))
_DPI: Final = 100
_STYLE: Final = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eef2f7; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.9em; max-width: 32em; }
section { border-top: 2px solid #1f4e79; margin-top: 2em; }
.note { background: #fff6e0; padding: 0.5em; }
"""


def write_report_html(
    path: Path, report: Mapping[str, Any], scores: Mapping[str, TaskScores]
) -> None:
    """Render the report (`render_report_html`) to `path`, replacing it atomically and durably."""
    write_atomically(path, render_report_html(report, scores).encode("utf-8"))


def render_report_html(report: Mapping[str, Any], scores: Mapping[str, TaskScores]) -> str:
    """The report as one HTML document.

    Parameters
    ----------
    report : mapping
        ``report.json`` as `bank_node.report.training_report` builds it.
    scores : mapping of task to TaskScores
        The same run's test rows per task: the tasks of ``report["tasks"]`` with labelled test
        rows, in its order, and their row counts.

    Raises
    ------
    InvalidRequest
        The scores fail `TaskScores.check` (e.g. a NaN score, named with its task and row), or
        their tasks or row counts differ from the report's.
    """
    tasks: Mapping[str, Mapping[str, Any]] = report["tasks"]
    scored = [task for task, figures in tasks.items() if figures["test_rows"] > 0]
    if scored != list(scores):
        raise InvalidRequest(
            f"the report's tasks with test rows ({', '.join(scored)}) differ from the test "
            f"scores' ({', '.join(scores)})"
        )
    for task, entry in scores.items():
        entry.check(task)
        if tasks[task]["test_rows"] != entry.labels.size:
            raise InvalidRequest(
                f"task {task!r}: the report counts {tasks[task]['test_rows']} test rows, "
                f"the test scores {entry.labels.size}"
            )
    title = f"Training report: model {report['model_version']}"
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>',
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>",
        _header(report),
        "<ul>",
        *(f'<li><a href="#task-{i}">{_e(task)}</a></li>' for i, task in enumerate(scores, 1)),
        "</ul>",
    ]
    unlabelled = [task for task in tasks if task not in scores]
    if unlabelled:
        parts.append(f"<p>No labelled test rows for {_e(', '.join(unlabelled))}: no figures.</p>")
    for i, (task, entry) in enumerate(scores.items(), 1):
        body = _binary_task(entry) if entry.binary else _class_task(entry)
        kind = "binary" if entry.binary else f"{len(entry.classes)} classes"
        parts.append(
            f'<section id="task-{i}"><h2>Task {_e(task)} ({_e(kind)})</h2>{body}</section>'
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _header(report: Mapping[str, Any]) -> str:
    model = report["model"]
    rows: list[Sequence[object]] = [
        ("model version", report["model_version"]),
        ("run", report["run_id"]),
        ("best round", model["best_round"]),
        ("bank checkpoint SHA-256", model["bank_sha256"]),
        ("partner checkpoint SHA-256", model["partner_sha256"]),
    ]
    for section in ("alignment", "training", "privacy"):
        rows += [(f"{section}: {key.replace('_', ' ')}", v) for key, v in report[section].items()]
    return _table(("", "value"), rows)


def _binary_task(scores: TaskScores) -> str:
    labels = scores.labels
    figures = {name: binary_figures(labels, getattr(scores, name)) for name, _, _ in _PATHS}
    events = figures["full"]["events"]
    parts = [
        f"<p>{labels.size:,} test rows, {events:,} events (1): "
        f"an event rate of {events / labels.size:.1%}.</p>",
        _comparison(
            figures,
            (
                ("AUC", "auc"),
                ("Gini (2 AUC - 1)", "gini"),
                ("KS", "ks"),
                ("top-decile lift", "top_decile_lift"),
                ("calibration error (ECE)", "calibration_error"),
            ),
        ),
    ]
    if 0 < events < labels.size:
        curves = {name: rank_curves(labels, getattr(scores, name)) for name, _, _ in _PATHS}
        deciles = {name: decile_table(labels, getattr(scores, name)) for name, _, _ in _PATHS}
        parts += [
            _roc_plot(curves, figures),
            _ks_plot(curves["full"]),
            _distribution_plot(scores),
            _lift_gain_plot(deciles),
            _calibration_plot(scores),
        ]
        parts += [
            f"<h3>Score deciles, {_e(title)}</h3>{_decile_html(deciles[name])}"
            for name, title, _ in _PATHS
        ]
    else:
        only = "events (1)" if events else "non-events (0)"
        parts += [
            f'<p class="note">The test rows hold only {only}: ROC, KS, lift, gain and the '
            "decile table compare the two classes, so they are left out.</p>",
            _distribution_plot(scores),
            _calibration_plot(scores),
        ]
    return "\n".join(parts)


def _class_task(scores: TaskScores) -> str:
    labels, classes = scores.labels, scores.classes
    figures = {name: class_figures(labels, getattr(scores, name), classes) for name, _, _ in _PATHS}
    majority = np.bincount(labels, minlength=len(classes)).max() / labels.size
    per_class = _table(
        (
            "class",
            "rows",
            "predicted",
            "recall",
            "precision",
            "bank-only predicted",
            "bank-only recall",
            "bank-only precision",
        ),
        [
            (
                c["name"],
                c["rows"],
                c["predicted"],
                c["recall"],
                c["precision"],
                b["predicted"],
                b["recall"],
                b["precision"],
            )
            for c, b in zip(
                figures["full"]["classes"], figures["bank_only"]["classes"], strict=True
            )
        ],
    )
    return "\n".join(
        [
            f"<p>{labels.size:,} test rows; always answering the most frequent class would be "
            f"right for {majority:.1%} of them.</p>",
            _comparison(figures, (("top-1 accuracy", "top1_accuracy"),)),
            "<h3>Per class (top-1 predictions)</h3>",
            per_class,
            _confusion_plot(scores),
            _calibration_plot(scores),
        ]
    )


def _comparison(figures: Mapping[str, Mapping[str, Any]], names: Iterable[tuple[str, str]]) -> str:
    rows = []
    for title, key in names:
        full, alone = figures["full"][key], figures["bank_only"][key]
        gain = None if full is None or alone is None else full - alone
        rows.append((title, full, alone, gain))
    return _table(("", "full model", "bank-only path", "full - bank-only"), rows)


def _decile_html(table: list[dict[str, Any]]) -> str:
    columns = (
        ("decile", "decile"),
        ("rows", "rows"),
        ("events", "events"),
        ("event rate", "event_rate"),
        ("scores from", "min_score"),
        ("to", "max_score"),
        ("cumulative capture", "cumulative_capture"),
        ("lift", "lift"),
        ("cumulative lift", "cumulative_lift"),
    )
    return _table(
        [title for title, _ in columns], [[entry[key] for _, key in columns] for entry in table]
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(title)}</th>" for title in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_format(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _format(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        number = float(value)
        return f"{number:,.1f}" if abs(number) >= 1000 else f"{number:.3f}"
    return str(value)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _figure(caption: str, figure: Figure) -> str:
    buffer = io.BytesIO()
    # No "Software" stamp: the same figures make the same bytes whatever matplotlib made them.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _axes(columns: int = 1, bottom: float = 0.14) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(4.8 * columns, 3.6), dpi=_DPI)
    FigureCanvasAgg(figure)  # draws with Agg: no display, no pyplot state
    # Fixed margins rather than a layout engine, which draws every figure twice: half the time.
    figure.subplots_adjust(left=0.16 / columns, right=0.97, bottom=bottom, top=0.9, wspace=0.3)
    return figure, [figure.add_subplot(1, columns, i + 1) for i in range(columns)]


def _roc_plot(curves: Mapping[str, RankCurves], figures: Mapping[str, Mapping[str, Any]]) -> str:
    figure, (ax,) = _axes()
    for name, title, colour in _PATHS:
        label = f"{title} (AUC {figures[name]['auc']:.3f})"
        ax.plot(curves[name].fpr, curves[name].tpr, color=colour, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    ax.legend(loc="lower right")
    return _figure("ROC curve of both paths; the diagonal is chance.", figure)


def _ks_plot(curves: RankCurves) -> str:
    figure, (ax,) = _axes()
    ax.plot(curves.population, curves.tpr, color="#b00020", label="events flagged")
    ax.plot(curves.population, curves.fpr, color="#2e7d32", label="non-events flagged")
    at = curves.ks_index
    ks = abs(curves.tpr[at] - curves.fpr[at])
    ax.vlines(curves.population[at], curves.fpr[at], curves.tpr[at], color="black")
    middle = (curves.population[at], (curves.tpr[at] + curves.fpr[at]) / 2)
    ax.annotate(f"KS {ks:.3f}", middle, xytext=(4, 0), textcoords="offset points")
    ax.set(xlabel="share of rows flagged, riskiest first", ylabel="share of class", title="KS")
    ax.legend(loc="lower right")
    return _figure("KS curve of the full model: the widest gap between the classes.", figure)


def _distribution_plot(scores: TaskScores) -> str:
    figure, axes = _axes(2)
    for ax, (name, title, _) in zip(axes, _PATHS, strict=True):
        histogram = score_histogram(scores.labels, getattr(scores, name))
        edges = histogram["edges"]
        for key, label, colour in (
            ("non_events", "non-events (0)", "#2e7d32"),
            ("events", "events (1)", "#b00020"),
        ):
            ax.stairs(histogram[key], edges, color=colour, label=label)
        ax.set(xlabel="predicted probability", ylabel="share of class", title=title)
        ax.legend()
    return _figure("Score distribution by class, each class's rows summing to 1.", figure)


def _lift_gain_plot(deciles: Mapping[str, list[dict[str, Any]]]) -> str:
    figure, (gain, lift) = _axes(2)
    for offset, (name, title, colour) in zip((-0.2, 0.2), _PATHS, strict=True):
        table = deciles[name]
        population = np.cumsum([0] + [entry["rows"] for entry in table])
        capture = [0.0] + [entry["cumulative_capture"] for entry in table]
        gain.plot(population / population[-1], capture, marker="o", color=colour, label=title)
        lift.bar(
            [entry["decile"] + offset for entry in table],
            [entry["lift"] for entry in table],
            width=0.4,
            color=colour,
            label=title,
        )
    gain.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    gain.set(xlabel="share of rows, riskiest first", ylabel="share of events", title="Gain")
    lift.axhline(1.0, color="grey", linestyle=":")
    lift.set_xticks(sorted({entry["decile"] for table in deciles.values() for entry in table}))
    lift.set(xlabel="score decile (1 = highest scores)", ylabel="lift", title="Lift")
    gain.legend(loc="lower right")
    lift.legend()
    return _figure("Cumulative gain and lift per score decile, both paths.", figure)


def _calibration_plot(scores: TaskScores) -> str:
    figure, (ax,) = _axes()
    for name, title, colour in _PATHS:
        values = getattr(scores, name)
        if scores.binary:
            bins = calibration_bins(scores.labels, values)
        else:
            correct = (values.argmax(axis=1) == scores.labels).astype(np.int64)
            bins = calibration_bins(correct, values.max(axis=1))
        predicted = [entry["mean_predicted"] for entry in bins]
        ax.plot(
            predicted,
            [entry["observed_rate"] for entry in bins],
            marker="o",
            color=colour,
            label=title,
        )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    what = "event rate" if scores.binary else "top-1 accuracy"
    ax.set(xlabel="mean predicted probability", ylabel=f"observed {what}", title="Calibration")
    ax.legend(loc="upper left")
    caption = "Reliability per tenth of predicted probability" + (
        "." if scores.binary else " of the top class (confidence against accuracy)."
    )
    return _figure(caption, figure)


def _confusion_plot(scores: TaskScores) -> str:
    figure, axes = _axes(2, bottom=0.24)
    ticks = range(len(scores.classes))
    for ax, (name, title, _) in zip(axes, _PATHS, strict=True):
        matrix = np.array(confusion_matrix(scores.labels, getattr(scores, name)))
        ax.imshow(matrix, cmap="Blues")
        # The colour map spans min..max: white text only on the darker half of it.
        dark = (int(matrix.min()) + int(matrix.max())) / 2
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if count > dark else "black"
            ax.text(column, row, f"{count:,}", ha="center", va="center", color=colour)
        # Class names are data: parse_math=False keeps a "$" from being read as TeX.
        ax.set_xticks(ticks, scores.classes, rotation=30, parse_math=False)
        ax.set_yticks(ticks, scores.classes, parse_math=False)
        ax.set(xlabel="predicted (top-1)", ylabel="true class", title=title)
    return _figure("Confusion matrices: rows counted by true and predicted class.", figure)
