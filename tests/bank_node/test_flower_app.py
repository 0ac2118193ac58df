"""The bank's Flower app as a bundle: what it ships, what it runs, and its run config."""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.serverapp import ServerApp

from bank_node.flower_app.server_app import RUN_CONFIG_FIELDS, app, training_config
from bank_node.training_config import TrainingConfig
from cobrand.errors import ConfigError

APP = Path(__file__).resolve().parents[2] / "bank_node" / "flower_app"
PROJECT = tomllib.loads((APP / "pyproject.toml").read_text())
RUN_CONFIG = PROJECT["tool"]["flwr"]["app"]["config"]


def test_the_bundle_shipped_to_the_partner_carries_no_code() -> None:
    bundle = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(APP)))

    assert sorted(bundle.namelist()) == [".info/CONTENT", "README.md", "pyproject.toml"]


def test_each_component_is_loaded_from_its_partys_own_package() -> None:
    components = PROJECT["tool"]["flwr"]["app"]["components"]

    assert components == {
        "serverapp": "bank_node.flower_app.server_app:app",
        "clientapp": "partner_node.flower_client.client_app:app",
    }
    assert isinstance(app, ServerApp)


def test_every_run_config_key_is_declared_with_the_trainers_default() -> None:
    defaults = TrainingConfig()

    assert set(RUN_CONFIG) == set(RUN_CONFIG_FIELDS)
    for key, field in RUN_CONFIG_FIELDS.items():
        assert RUN_CONFIG[key] == getattr(defaults, field), key
    assert training_config(RUN_CONFIG) == defaults


def test_run_config_overrides_reach_the_trainer() -> None:
    config = training_config(
        {**RUN_CONFIG, "num-rounds": 4, "epochs-per-round": 3, "learning-rate": 0.01}
    )

    assert (config.max_rounds, config.epochs_per_round, config.learning_rate) == (4, 3, 0.01)


def test_a_bad_run_config_value_is_refused_naming_its_key() -> None:
    with pytest.raises(ConfigError, match="key 'num-rounds': Input should be greater than or"):
        training_config({**RUN_CONFIG, "num-rounds": 0})
    with pytest.raises(ConfigError, match="run config lacks seed"):
        training_config({key: v for key, v in RUN_CONFIG.items() if key != "seed"})
