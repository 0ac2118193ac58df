"""report.json from a small fabricated evaluation, through the run journal as a run writes it."""

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bank_node.evaluation import TaskMetrics, task_metrics
from bank_node.report import summary_lines, training_report, write_report
from bank_node.run_journal import RunJournal, read_journal
from cobrand.alignment_store import AlignmentSummary
from cobrand.pki import Party

BANK_SHA, PARTNER_SHA = bytes(range(32)), bytes(range(32, 64))
PRIVACY = {
    "defence": "label noise, scale 1.5",
    "task": "risk",
    "leak_auc_norm": 0.512,
    "leak_auc_direction": float("nan"),
}


def _evaluation() -> TaskMetrics:
    risk = torch.tensor([0.0, 1.0, 2.0, -1.0, 3.0, 0.5])
    instalment = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    rights = torch.tensor(
        [[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0], [0, 3.0, 0], [0, 0, 3]]
    )
    full = {"risk": risk, "instalment": instalment, "rights_package": rights}
    bank_only = {"risk": -risk, "instalment": instalment, "rights_package": rights.flip(1)}
    labels = {
        "risk": torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, float("nan")]),
        # One class among labelled rows: AUC and KS are undefined.
        "instalment": torch.tensor([1.0, 1.0, float("nan"), 1.0, 1.0, 1.0]),
        "rights_package": torch.tensor([0, 1, 2, -1, 1, 0]),
    }
    return task_metrics(full, bank_only, labels)


def _alignment() -> AlignmentSummary:
    return AlignmentSummary(
        run_id="alignment-1",
        party=Party.BANK,
        federation_id="fed",
        federation_digest=bytes(32),
        protocol_version=1,
        committed_at=dt.datetime.now(dt.UTC),
        own_rows=2000,
        peer_rows=6000,
        intersection_size=800,
        intersection_digest=bytes(32),
    )


def _finished(tmp_path: Path) -> dict[str, Any]:
    journal = RunJournal(tmp_path / "run.jsonl")
    journal.write(
        "finished",
        best_round=2,
        bank_sha256=BANK_SHA,
        partner_sha256=PARTNER_SHA,
        model_version="0123456789abcdef",
        bank_manifest_sha256=bytes(32),
        partner_manifest_sha256=bytes([1] * 32),
        privacy=PRIVACY,
        test=_evaluation(),
        rounds=3,
        seconds=12.5,
        bytes_sent=1000,
        bytes_received=3000,
    )
    return read_journal(journal.path)[-1]


@pytest.fixture
def report(tmp_path: Path) -> dict[str, Any]:
    return training_report("42", _alignment(), _finished(tmp_path))


def test_binary_tasks_report_test_rows_auc_ks_and_the_bank_only_auc(
    report: dict[str, Any],
) -> None:
    risk = report["tasks"]["risk"]

    assert risk["test_rows"] == 5
    # Scores rank every event above every non-event; the bank-only path ranks them reversed.
    assert risk["auc"] == 1.0
    assert risk["ks"] == 1.0
    assert risk["bank_only_auc"] == 0.0
    assert set(risk) == {"test_rows", "auc", "ks", "bank_only_auc", "bank_only_ks"}


def test_a_binary_task_whose_test_rows_hold_one_class_reports_null_figures(
    report: dict[str, Any],
) -> None:
    assert report["tasks"]["instalment"] == {
        "test_rows": 5,
        "auc": None,
        "ks": None,
        "bank_only_auc": None,
        "bank_only_ks": None,
    }


def test_the_rights_package_reports_top1_accuracy_of_both_paths(report: dict[str, Any]) -> None:
    assert report["tasks"]["rights_package"] == {
        "test_rows": 5,
        "top1_accuracy": pytest.approx(4 / 5),
        "bank_only_top1_accuracy": pytest.approx(3 / 5),
    }


def test_alignment_training_and_privacy_sections(report: dict[str, Any]) -> None:
    assert report["alignment"] == {
        "run_id": "alignment-1",
        "bank_rows": 2000,
        "partner_rows": 6000,
        "intersection": 800,
    }
    assert report["training"] == {"seconds": 12.5, "rounds": 3, "bytes_exchanged": 4000}
    # The journal holds a figure it could not measure as null, and the report keeps it null.
    assert report["privacy"] == PRIVACY | {"leak_auc_direction": None}


def test_the_model_section_names_the_published_version_and_both_sides_digests(
    report: dict[str, Any],
) -> None:
    assert report["model_version"] == "0123456789abcdef"
    assert report["model"] == {
        "best_round": 2,
        "bank_sha256": BANK_SHA.hex(),
        "partner_sha256": PARTNER_SHA.hex(),
        "bank_manifest_sha256": "00" * 32,
        "partner_manifest_sha256": "01" * 32,
    }


def test_the_written_report_is_strict_json_and_the_summary_compares_both_paths(
    tmp_path: Path, report: dict[str, Any]
) -> None:
    path = tmp_path / "out" / "report.json"

    write_report(path, report)

    assert json.loads(path.read_text()) == report
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
    lines = summary_lines(report)
    assert "risk            AUC 1.000 with the partner vs 0.000 bank-only, KS 1.000" in lines[1]
    assert "instalment      AUC n/a with the partner vs n/a bank-only" in lines[2]
    assert "rights_package  top-1 0.800 with the partner vs 0.600 bank-only" in lines[3]
    assert "3 rounds in 12.5 s" in lines[4]
    assert lines[5] == (
        "  privacy         label noise, scale 1.5; label-leakage attacks on the risk labels: "
        "norm AUC 0.512, direction AUC n/a (0.5 is chance)"
    )


def test_the_summary_says_when_no_binary_task_could_be_attacked(report: dict[str, Any]) -> None:
    report["privacy"] = PRIVACY | {"task": None, "leak_auc_norm": None}

    assert summary_lines(report)[-1] == (
        "  privacy         label noise, scale 1.5; label-leakage attacks not measured "
        "(no binary task)"
    )
