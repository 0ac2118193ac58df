"""`cobrand train --job JOB.yaml`: end to end (PSI, the partner node, SuperLink and SuperNode on
loopback, a few rounds submitted with ``flwr run``, ``OUT/report.json``), a bad job file, and a
run that ends without finishing.
"""

import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bank_node.run_journal import RunJournal
from cobrand.cli import app
from cobrand.commands.train import _follow
from cobrand.errors import FailedPrecondition
from cobrand.flower_local import LocalFederation
from cobrand.flower_sites import SuperLinkTls
from cobrand.model_store import ModelStore
from cobrand.synth import SynthConfig, write_dataset

runner = CliRunner()


class _EndedRun(LocalFederation):
    """A federation whose run has failed, as ``flwr ls`` and ``flwr log`` tell it."""

    def run_status(self, run_id: int) -> str:
        return "finished:failed"

    def log(self, run_id: int) -> str:
        return "INFO starting\nERROR the partner holds alignment 'b' and the bank 'a'\n"


def test_a_run_that_ends_without_finishing_is_an_error_quoting_its_log(tmp_path: Path) -> None:
    journal = RunJournal(tmp_path / "runs" / "7.jsonl")
    journal.write("checked", run_id="7")
    ended = _EndedRun(tmp_path, SuperLinkTls(tmp_path, tmp_path, tmp_path))

    with pytest.raises(FailedPrecondition) as failed:
        _follow(ended, 7, tmp_path / "runs", rounds=3, progress=None)

    assert "run 7 ended finished:failed without finishing" in str(failed.value)
    assert "the partner holds alignment 'b' and the bank 'a'" in str(failed.value)


def test_a_mistaken_job_file_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("federation: missing.yaml\n")

    result = runner.invoke(app, ["train", "--job", str(job)])

    assert result.exit_code == 2
    assert "key 'federation': no such file" in result.output
    assert "missing key 'bank'" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_aligns_trains_the_rounds_and_writes_the_report(tmp_path: Path) -> None:
    files, _ = write_dataset(SynthConfig(customers=2000, seed=5), tmp_path / "set")

    def relative(path: Path) -> str:
        return str(path.relative_to(tmp_path))

    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "federation": relative(files.federation),
                "bank": {
                    "schema": relative(files.bank_schema),
                    "table": relative(files.bank_table),
                },
                "partner": {
                    "schema": relative(files.partner_schema),
                    "table": relative(files.partner_table),
                },
                "out": "out",
                "training": {"rounds": 2, "patience": 2, "batch_size": 128, "seed": 1},
            }
        )
    )

    started = time.perf_counter()
    result = runner.invoke(app, ["train", "--job", str(job)])
    seconds = time.perf_counter() - started

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["alignment"] == {
        "run_id": report["alignment"]["run_id"],
        "bank_rows": 2000,
        "partner_rows": report["alignment"]["partner_rows"],
        "intersection": 800,
    }
    assert report["training"]["rounds"] == 2
    assert report["training"]["bytes_exchanged"] > 0
    assert set(report["tasks"]) == {"risk", "instalment", "rights_package"}
    for task in ("risk", "instalment"):
        figures = report["tasks"][task]
        assert 0 < figures["test_rows"] < 800
        assert 0.0 <= figures["auc"] <= 1.0
        assert 0.0 <= figures["bank_only_auc"] <= 1.0
    rights = report["tasks"]["rights_package"]
    assert 0.0 <= rights["top1_accuracy"] <= 1.0
    privacy = report["privacy"]
    assert (privacy["defence"], privacy["task"]) == ("label noise, scale 2", "risk")
    assert 0.0 <= privacy["leak_auc_norm"] <= 1.0
    assert 0.0 <= privacy["leak_auc_direction"] <= 1.0
    assert f"model {report['model_version']}" in result.output
    # Both sides hold the version, each having recorded the other's manifest digest.
    version = report["model_version"]
    for side, peer in (("bank", "partner"), ("partner", "bank")):
        store = ModelStore(tmp_path / "out" / "work" / f"{side}-data" / "models")
        recorded = store.manifest(version).peer_manifest_sha256
        assert recorded == report["model"][f"{peer}_manifest_sha256"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert version in html
    assert html.count('src="data:image/png;base64,') >= 5
    assert "risk            AUC" in result.output
    journal = tmp_path / "out" / "work" / "runs" / f"{report['run_id']}.jsonl"
    assert [json.loads(line)["event"] for line in journal.read_text().splitlines()] == [
        "checked", "planned", "committed", "planned", "committed", "finished",
    ]  # fmt: skip
    print(f"\ncobrand train, 2,000 customers, 2 rounds: {seconds:.1f} s")
