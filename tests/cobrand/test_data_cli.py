"""`cobrand data`: generating a synthetic set and checking a party's table, as an operator would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cobrand.commands.data import app as data_app
from cobrand.commands.exits import EXIT_ERROR

# Mounted as the composition root `cobrand.cli` does, so the commands read `data synth ...`.
root = typer.Typer()
root.add_typer(data_app, name="data")
runner = CliRunner()


def _run(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(root, ["data", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    code, stdout, _ = _run("synth", "--out", out, "--customers", "1000", "--seed", "4")
    assert code == 0, stdout
    return out


def _check(directory: Path, party: str, table: Path | None = None) -> tuple[int, str, str]:
    return _run(
        "check",
        "--schema",
        directory / f"{party}.schema.yaml",
        "--table",
        table or directory / f"{party}.csv",
        "--federation",
        directory / "federation.yaml",
    )


def test_synth_writes_the_five_files_and_reports_the_overlap(synth_dir: Path) -> None:
    assert sorted(p.name for p in synth_dir.iterdir()) == [
        "bank.csv",
        "bank.schema.yaml",
        "federation.yaml",
        "partner.csv",
        "partner.schema.yaml",
    ]
    code, stdout, _ = _run("synth", "--out", synth_dir, "--customers", "1000", "--seed", "4")
    assert code == 0
    assert "bank.csv (1,000 customers)" in stdout
    assert "partner.csv (3,000 users, 3 unreadable phone numbers)" in stdout
    assert "400 bank customers are partner users (40.0%)" in stdout


def test_synth_writes_parquet_when_asked(tmp_path: Path) -> None:
    args = ("synth", "--out", tmp_path, "--customers", "50", "--seed", "1", "--format", "parquet")
    code, stdout, _ = _run(*args)
    assert code == 0, stdout
    assert (tmp_path / "bank.parquet").exists()
    assert (tmp_path / "partner.parquet").exists()
    code, stdout, _ = _check(tmp_path, "bank", tmp_path / "bank.parquet")
    assert code == 0
    assert "50 loaded" in stdout


def test_synth_refuses_too_few_customers(tmp_path: Path) -> None:
    code, _, stderr = _run("synth", "--out", tmp_path, "--customers", "5", "--seed", "1")
    assert code == 2
    assert "--customers" in stderr
    assert not any(tmp_path.iterdir())


def test_synth_refuses_a_partner_smaller_than_the_overlap(tmp_path: Path) -> None:
    code, _, stderr = _run(
        "synth", "--out", tmp_path, "--customers", "100", "--seed", "1", "--partner-ratio", "0.1"
    )
    assert code == EXIT_ERROR
    assert stderr.strip() == (
        "error: partner_ratio (0.1) must be at least overlap (0.4): the shared customers are "
        "partner users too"
    )


def test_check_summarizes_the_bank_table_rows_labels_and_splits(synth_dir: Path) -> None:
    code, stdout, _ = _check(synth_dir, "bank")
    assert code == 0
    assert "bank table, valid" in stdout
    assert "1,000 loaded, 0 dropped for unreadable identifiers" in stdout
    assert "7 numeric, 2 categorical" in stdout
    split = re.search(r"train ([\d,]+) · valid ([\d,]+) · test ([\d,]+)", stdout)
    assert split is not None
    assert sum(int(n.replace(",", "")) for n in split.groups()) == 1000
    for task, names in (
        ("risk", ["bad", "good", "missing"]),
        ("instalment", ["yes", "no", "missing"]),
        ("rights_package", ["shopping", "travel", "offline", "missing"]),
    ):
        line = next(line for line in stdout.splitlines() if f"label {task} " in line)
        assert all(f"{name} " in line for name in names), line
    assert "monthly_income" in next(line for line in stdout.splitlines() if "missing  " in line)


def test_check_counts_dropped_partner_identifiers_and_shows_no_labels(synth_dir: Path) -> None:
    code, stdout, _ = _check(synth_dir, "partner")
    assert code == 0
    assert "2,997 loaded, 3 dropped for unreadable identifiers" in stdout
    assert "label" not in stdout


def test_check_never_prints_identifiers(synth_dir: Path) -> None:
    code, stdout, _ = _check(synth_dir, "partner")
    assert code == 0
    assert not re.search(r"\d{7}", stdout.replace(",", ""))


def test_check_of_a_misspelt_column_exits_2_naming_file_and_column(
    synth_dir: Path, tmp_path: Path
) -> None:
    schema = (synth_dir / "bank.schema.yaml").read_text(encoding="utf-8")
    (tmp_path / "bank.schema.yaml").write_text(
        schema.replace("name: bureau_score", "name: bureau_scor"), encoding="utf-8"
    )
    (tmp_path / "federation.yaml").write_bytes((synth_dir / "federation.yaml").read_bytes())
    code, stdout, stderr = _check(tmp_path, "bank", synth_dir / "bank.csv")
    assert code == EXIT_ERROR
    assert stdout == ""
    assert stderr.startswith("error: ")
    assert stderr.count("\n") == 1
    assert "bank.csv" in stderr
    assert "bureau_scor" in stderr
    assert "bureau_score" in stderr  # the suggestion


def test_check_with_a_missing_federation_file_exits_2_naming_it(
    synth_dir: Path, tmp_path: Path
) -> None:
    code, _, stderr = _run(
        "check",
        "--schema",
        synth_dir / "bank.schema.yaml",
        "--table",
        synth_dir / "bank.csv",
        "--federation",
        tmp_path / "nowhere.yaml",
    )
    assert code == EXIT_ERROR
    assert "nowhere.yaml" in stderr
