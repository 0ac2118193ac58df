"""The bank's ServerApp: one training run per ``flwr run``, driven by ``bank_node.rounds``.

Flower starts this at the bank's SuperLink for every run. It reads the site's settings from the
file ``$COBRAND_TRAINER_CONFIG`` names (``bank_node.trainer_config``), the run's hyperparameters
from Flower's run config (`RUN_CONFIG_FIELDS`, declared with their defaults in this app's
``pyproject.toml``), and runs `train_run` with the partner reached through Flower messages and
the bank's trainer streaming each round on the data plane. The run's journal goes to
``<runs_dir>/<run id>.jsonl`` and its round checkpoints to ``<runs_dir>/<run id>/``; progress
goes to the run's log (``flwr log RUN_ID``). A partner_node that dies or hangs mid-run is waited
for (``resume`` in the trainer settings) and the run resumes from its last committed round.

The risk team lists, follows and stops runs with the ``flwr`` CLI; a stopped run ends within
about a second (`RunWatch`), and the partner rolls back the round that was streaming.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from pydantic import ValidationError

from bank_node.config import BankNodeConfig
from bank_node.flower_app.partner import FlowerPartner, RunWatch
from bank_node.rounds import train_run
from bank_node.run_journal import RunJournal, journal_path
from bank_node.trainer_config import TRAINER_CONFIG_ENV, TrainerConfig
from bank_node.training_config import TrainingConfig
from bank_node.training_set import load_training_set
from cobrand.errors import ConfigError
from cobrand.pki import Party
from cobrand.rpc import create_channel
from cobrand.settings import load_settings

__all__ = ["RUN_CONFIG_FIELDS", "app", "training_config"]

RUN_CONFIG_FIELDS: Final = {
    "num-rounds": "max_rounds",
    "epochs-per-round": "epochs_per_round",
    "patience": "patience",
    "learning-rate": "learning_rate",
    "batch-size": "batch_size",
    "partner-dropout": "partner_dropout",
    "pipeline-depth": "pipeline_depth",
    "seed": "seed",
    "leakage-noise": "leakage_noise",
}
"""Run-config key -> `TrainingConfig` field: what ``flwr run --run-config`` may change."""

_LOG = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one training run of the bank's model with the partner."""
    _log_progress()
    run_id = str(context.run_id)
    config = training_config(context.run_config)
    settings = _trainer_config()
    node = load_settings(BankNodeConfig, settings.bank)
    journal = RunJournal(journal_path(settings.runs_dir, run_id))
    _LOG.info(
        "[ServerApp] run %s: up to %d rounds, journal %s", run_id, config.max_rounds, journal.path
    )
    partner = FlowerPartner(grid, timeout=settings.control_timeout_s)
    with (
        RunWatch(grid),
        create_channel(
            node.partner.address,
            settings.tls,
            insecure=settings.insecure,
            server_name=node.partner.server_name,
            server_party=Party.PARTNER,
        ) as channel,
    ):
        outcome = train_run(
            run_id,
            lambda: load_training_set(node),
            partner,
            channel,
            config,
            journal,
            runs_dir=settings.runs_dir,
            models_dir=node.data_dir / "models",
            reply_timeout=settings.reply_timeout_s,
            resume=settings.resume,
        )
    _LOG.info(
        "[ServerApp] run %s finished: best round %d of %d, model version %s at both sides",
        run_id,
        outcome.training.best_round,
        len(outcome.training.rounds),
        outcome.release.version_id,
    )


def training_config(run_config: Mapping[str, Any]) -> TrainingConfig:
    """The run's `TrainingConfig` from Flower's run config.

    Raises
    ------
    ConfigError
        Naming each run-config key whose value is missing or invalid.
    """
    missing = [key for key in RUN_CONFIG_FIELDS if key not in run_config]
    if missing:
        raise ConfigError(f"run config lacks {', '.join(missing)}")
    try:
        return TrainingConfig(
            **{field: run_config[key] for key, field in RUN_CONFIG_FIELDS.items()}
        )
    except ValidationError as exc:
        key_of = {field: key for key, field in RUN_CONFIG_FIELDS.items()}
        problems = [f"key {key_of[str(e['loc'][0])]!r}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"run config: {'; '.join(problems)}") from exc


def _trainer_config() -> TrainerConfig:
    path = os.environ.get(TRAINER_CONFIG_ENV)
    if not path:
        raise ConfigError(
            f"{TRAINER_CONFIG_ENV} is not set: the SuperLink's environment must name the "
            "trainer's settings file (trainer.yaml)"
        )
    return load_settings(TrainerConfig, Path(path))


def _log_progress() -> None:
    # Flower forwards this process's output to `flwr log`: the run's progress goes there.
    logger = logging.getLogger("bank_node")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
