"""`cobrand align --data DIR`: both parties on loopback, the partner as its own process."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bank_node.config import BankNodeConfig
from cobrand.alignment_store import AlignmentStore
from cobrand.cli import app
from cobrand.settings import load_settings
from cobrand.synth import SynthConfig, write_dataset
from partner_node.config import PartnerNodeConfig


def test_align_runs_both_parties_and_reports_sizes_and_agreement(tmp_path: Path) -> None:
    _, tables = write_dataset(SynthConfig(customers=400, seed=3), tmp_path / "set")
    work = tmp_path / "work"

    options = ["--work", str(work), "--workers", "0", "--chunk-points", "128"]

    result = CliRunner().invoke(app, ["align", "--data", str(tmp_path / "set"), *options])

    assert result.exit_code == 0, result.output
    with AlignmentStore(work / "bank-data") as bank:
        summary = bank.summary
    assert summary.own_rows == tables.bank.num_rows
    assert f"  bank rows      {tables.bank.num_rows:>12,}" in result.output
    assert f"  partner rows   {summary.peer_rows:>12,}" in result.output
    assert f"  intersection   {summary.intersection_size:>12,}" in result.output
    assert f"both parties hold run {summary.run_id}" in result.output
    # The settings each site would use, as written for this run.
    assert (
        load_settings(BankNodeConfig, work / "bank.yaml").data_dir == work.resolve() / "bank-data"
    )
    assert load_settings(PartnerNodeConfig, work / "partner.yaml").listen == "127.0.0.1:0"
    assert "[Alignment.Commit] run " + summary.run_id in (work / "partner.log").read_text()


def test_align_without_a_dataset_says_what_it_expected(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["align", "--data", str(tmp_path)])

    assert result.exit_code == 2
    assert result.output.startswith(f"error: {tmp_path} holds no co-brand set: expected")
