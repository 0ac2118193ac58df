"""The job file of ``cobrand train --job JOB.yaml``: which data, where the results go, how to train.

Example::

    federation: set/federation.yaml
    bank:
      schema: set/bank.schema.yaml
      table: set/bank.csv
    partner:
      schema: set/partner.schema.yaml
      table: set/partner.csv
    out: out/train                 # report.json, and work/ with certificates, settings and logs
    training:                      # every key optional; defaults are TrainingConfig's
      rounds: 10
      epochs_per_round: 1
      patience: 3
      learning_rate: 0.001
      batch_size: 256
      partner_dropout: 0.3
      pipeline_depth: 2
      seed: 0
      leakage_noise: 2.0           # label-leakage defence; 0 turns it off

Relative paths are relative to the job file's directory. Unknown keys are errors, as everywhere;
every error names the job file and the key. The training keys take `TrainingConfig`'s limits
and defaults, and become the Flower run config of the run (``bank_node/flower_app``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo

from bank_node.training_config import TrainingConfig
from cobrand.errors import ConfigError
from cobrand.settings import Section
from cobrand.synth import DatasetFiles
from cobrand.yamlfile import format_validation_error, read_yaml_mapping

__all__ = ["TrainingJob", "TrainingSection", "load_job"]


def _relative_to_job(value: Path, info: ValidationInfo) -> Path:
    base: Path = (info.context or {}).get("base", Path.cwd())
    return (base / value).resolve()


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = _relative_to_job(value, info)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


InputFile = Annotated[Path, AfterValidator(_existing_file)]
OutputDir = Annotated[Path, AfterValidator(_relative_to_job)]


def _as_in(field: str) -> Any:
    """`TrainingConfig`'s field (its default and limits), for a job key of another name."""
    return TrainingConfig.model_fields[field]


_RUN_CONFIG_KEYS: Final = {
    "rounds": "num-rounds",
    "epochs_per_round": "epochs-per-round",
    "patience": "patience",
    "learning_rate": "learning-rate",
    "batch_size": "batch-size",
    "partner_dropout": "partner-dropout",
    "pipeline_depth": "pipeline-depth",
    "seed": "seed",
    "leakage_noise": "leakage-noise",
}


class SideFiles(Section):
    """One party's schema file and table."""

    schema_file: InputFile = Field(alias="schema")
    table: InputFile


class TrainingSection(Section):
    """The run's hyperparameters (see `TrainingConfig` for each)."""

    rounds: Annotated[int, _as_in("max_rounds")]
    epochs_per_round: Annotated[int, _as_in("epochs_per_round")]
    patience: Annotated[int, _as_in("patience")]
    learning_rate: Annotated[float, _as_in("learning_rate")]
    batch_size: Annotated[int, _as_in("batch_size")]
    partner_dropout: Annotated[float, _as_in("partner_dropout")]
    pipeline_depth: Annotated[int, _as_in("pipeline_depth")]
    seed: Annotated[int, _as_in("seed")]
    leakage_noise: Annotated[float, _as_in("leakage_noise")]

    @property
    def run_config(self) -> dict[str, Any]:
        """The Flower run config (``flwr run --run-config``) of these keys."""
        return {_RUN_CONFIG_KEYS[key]: value for key, value in self.model_dump().items()}


class TrainingJob(Section):
    """A validated job file; every path absolute."""

    federation: InputFile
    bank: SideFiles
    partner: SideFiles
    out: OutputDir
    training: TrainingSection = TrainingSection.model_validate({})

    @property
    def dataset_files(self) -> DatasetFiles:
        """The five input files, as alignment takes them."""
        return DatasetFiles(
            federation=self.federation,
            bank_schema=self.bank.schema_file,
            bank_table=self.bank.table,
            partner_schema=self.partner.schema_file,
            partner_table=self.partner.table,
        )


def load_job(path: Path) -> TrainingJob:
    """Read and check the job file `path`.

    Raises
    ------
    ConfigError
        Naming `path` and each bad key, e.g. ``job.yaml: key 'bank.table': no such
        file: /data/bank.csv; unknown key 'trainig'``.
    """
    data = read_yaml_mapping(path, ConfigError)
    try:
        return TrainingJob.model_validate(data, context={"base": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from exc
