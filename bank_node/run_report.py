"""A finished run's ``report.json`` and ``report.html``, from what the bank's ServerApp left.

The ServerApp journals the run (``bank_node.run_journal``) and keeps its test rows' scores
(``bank_node.rounds.holdout_scores_path``); with the bank's alignment summary that is all the
reports need, so the risk team writes them after ``flwr run`` at the bank's site
(``cobrand bank report``), and ``cobrand train`` does the same on loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bank_node.holdout_scores import load_test_scores
from bank_node.report import training_report, write_report
from bank_node.report_html import write_report_html
from bank_node.rounds import holdout_scores_path
from bank_node.run_journal import journal_path, read_journal
from cobrand.alignment_store import AlignmentSummary
from cobrand.checkpoint_files import check_run_id
from cobrand.errors import FailedPrecondition

__all__ = ["finished_event", "write_run_reports"]


def finished_event(runs_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The run's ``finished`` event, or None while the run has not finished."""
    events = read_journal(journal_path(runs_dir, run_id))
    return events[-1] if events and events[-1]["event"] == "finished" else None


def write_run_reports(
    runs_dir: Path, run_id: str, alignment: AlignmentSummary, out: Path
) -> dict[str, Any]:
    """Write ``out/report.json`` and ``out/report.html`` of a finished run; return the report.

    Raises
    ------
    FailedPrecondition
        The run has no journal in `runs_dir` or has not finished.
    InvalidRequest
        The run id is not one (it names a path outside `runs_dir`).
    ConfigError
        Its test scores file is missing or damaged (named).
    InvalidRequest
        The scores do not match the report's tasks and rows.
    """
    check_run_id(run_id)
    finished = finished_event(runs_dir, run_id)
    if finished is None:
        raise FailedPrecondition(
            f"run {run_id} has not finished: {journal_path(runs_dir, run_id)} holds no "
            "'finished' event"
        )
    report = training_report(run_id, alignment, finished)
    scores = load_test_scores(holdout_scores_path(runs_dir, run_id))
    # The HTML first: it is the one that can be refused (scores of other rows), and then
    # neither file is replaced, rather than a new report.json beside an old report.html.
    write_report_html(out / "report.html", report, scores)
    write_report(out / "report.json", report)
    return report
