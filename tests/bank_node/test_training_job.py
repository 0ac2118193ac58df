"""The job file of ``cobrand train``: paths relative to it, the app's defaults, errors by key."""

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from bank_node.training_job import load_job
from cobrand.errors import ConfigError

APP_PYPROJECT = Path(__file__).resolve().parents[2] / "bank_node" / "flower_app" / "pyproject.toml"


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    for name in ("federation.yaml", "bank.schema.yaml", "bank.csv", "partner.schema.yaml"):
        (tmp_path / "set" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "set" / name).write_text("x\n")
    (tmp_path / "set" / "partner.csv").write_text("x\n")
    return tmp_path


def _job(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "federation": "set/federation.yaml",
        "bank": {"schema": "set/bank.schema.yaml", "table": "set/bank.csv"},
        "partner": {"schema": "set/partner.schema.yaml", "table": "set/partner.csv"},
        "out": "out",
    }
    job.update(changes)
    return {key: value for key, value in job.items() if value is not None}


def _write(directory: Path, job: dict[str, Any]) -> Path:
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job), encoding="utf-8")
    return path


def test_paths_are_relative_to_the_job_file_not_the_working_directory(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))

    job = load_job(_write(job_dir, _job()))

    assert job.dataset_files.bank_table == (job_dir / "set" / "bank.csv").resolve()
    assert job.dataset_files.partner_schema == (job_dir / "set" / "partner.schema.yaml").resolve()
    assert job.out == (job_dir / "out").resolve()


def test_a_job_without_training_keys_runs_with_the_flower_apps_defaults(job_dir: Path) -> None:
    defaults = tomllib.loads(APP_PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]

    assert load_job(_write(job_dir, _job())).training.run_config == defaults


def test_training_keys_become_the_run_config(job_dir: Path) -> None:
    training = {
        "rounds": 4,
        "epochs_per_round": 2,
        "batch_size": 64,
        "learning_rate": 0.01,
        "seed": 9,
    }

    run_config = load_job(_write(job_dir, _job(training=training))).training.run_config

    assert run_config["num-rounds"] == 4
    assert run_config["epochs-per-round"] == 2
    assert run_config["batch-size"] == 64
    assert run_config["learning-rate"] == 0.01
    assert run_config["seed"] == 9


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trainig": {}}, "unknown key 'trainig'"),
        ({"partner": None}, "missing key 'partner'"),
        (
            {"bank": {"schema": "set/bank.schema.yaml", "table": "set/bank.parquet"}},
            "key 'bank.table': no such file: ",
        ),
        (
            {"partner": {"schema": "set/partner.schema.yaml", "tabel": "set/partner.csv"}},
            "unknown key 'partner.tabel' (did you mean 'table'?)",
        ),
        ({"training": {"rounds": 0}}, "key 'training.rounds': Input should be greater than"),
        ({"training": {"partner_dropout": 1.0}}, "key 'training.partner_dropout': "),
        ({"training": {"epochs": 3}}, "unknown key 'training.epochs'"),
    ],
)
def test_a_mistaken_job_file_is_refused_naming_the_file_and_the_key(
    job_dir: Path, changes: dict[str, Any], message: str
) -> None:
    path = _write(job_dir, _job(**changes))

    with pytest.raises(ConfigError) as refused:
        load_job(path)

    assert str(refused.value).startswith(f"{path}: ")
    assert message in str(refused.value)


def test_a_job_file_that_is_not_a_mapping_is_refused(job_dir: Path) -> None:
    path = job_dir / "job.yaml"
    path.write_text("- federation.yaml\n")

    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_job(path)
