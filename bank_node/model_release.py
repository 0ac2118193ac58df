"""The end of a training run at the bank: the model version both parties hold, and its figures.

`release_model` runs once the run's best round is restored at both sides:

1. it scores the training rows with the best round (the partner's embeddings of that round
   through the data plane), takes the test rows' logits of the run's final evaluation (the same
   round: the test rows are not streamed twice) and keeps the test rows' scores of both paths
   beside the run's journal (``bank_node.holdout_scores``), for the human report;
2. it saves the bank's half of the version in the bank's registry (``save_bank_version``: the
   networks, preprocessing, score scaling, reason-code references, monitoring baseline and
   calibration check), under the id both weights digests make;
3. it asks the partner, through the control plane, to publish its half under the same id, with
   the bank's manifest digest, and records the partner's manifest digest in the bank's: each
   side can later check the other still holds what it published (``verify_peer``);
4. it measures the label-leakage attacks on the gradients the run sent (``bank_node.leakage``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import torch

from bank_node.holdout_scores import probabilities, save_test_scores, scores_from_logits
from bank_node.leakage import GradientRecorder
from bank_node.model_registry import save_bank_version
from bank_node.trainer import BankTrainer, PathLogits
from bank_node.training_data import TEST, TRAIN, BankTrainingData
from bank_node.training_set import BankTrainingSet
from cobrand.model_manifest import manifest_digest
from cobrand.model_store import ModelStore
from cobrand.rounds_protocol import ModelPublication

if TYPE_CHECKING:
    from bank_node.rounds import PartnerControl

__all__ = ["Release", "release_model"]

_LOG = logging.getLogger(__name__)

# The task whose labels the leakage figures are about: the one approvals rest on, if present.
_LEAKAGE_TASK: Final = "risk"


@dataclass(frozen=True)
class Release:
    """A published model version.

    Attributes
    ----------
    version_id : str
    bank_manifest_sha256, partner_manifest_sha256 : bytes
        Each side's manifest digest of the version; the bank's registry records both.
    privacy : dict
        ``defence`` (what perturbed the gradients), ``task`` (whose labels were attacked),
        ``leak_auc_norm`` and ``leak_auc_direction`` (the attacks' AUCs on the run's own
        gradients; None when the recorded rows hold one class).
    """

    version_id: str
    bank_manifest_sha256: bytes
    partner_manifest_sha256: bytes
    privacy: dict[str, Any]


def release_model(
    run_id: str,
    trainer: BankTrainer,
    training_set: BankTrainingSet,
    best_round: int,
    test_logits: PathLogits,
    partner_weights_sha256: bytes,
    partner_preprocessor_sha256: bytes,
    partner: PartnerControl,
    store: ModelStore,
    scores_path: Path,
    leakage_noise: float,
) -> Release:
    """Publish the run's model at both sides; see the module docstring.

    Parameters
    ----------
    run_id : str
    trainer : BankTrainer
        With the best round's weights restored.
    training_set : BankTrainingSet
        The rows the run trained on.
    best_round : int
        The committed round whose weights both sides keep.
    test_logits : PathLogits
        The test rows' logits with that round (``TrainingResult.test_logits``).
    partner_weights_sha256 : bytes
        The partner's weights digest of that round, as the run committed it.
    partner_preprocessor_sha256 : bytes
        The partner's preprocessing digest the run checked.
    partner : PartnerControl
    store : ModelStore
        The bank's registry.
    scores_path : Path
        Where the test rows' scores go (``.npz``).
    leakage_noise : float
        The run's label-leakage defence (``TrainingConfig.leakage_noise``).

    Raises
    ------
    FailedPrecondition
        The partner holds other weights or preprocessing for the round, or refused.
    Unavailable
        The partner could not be reached.
    """
    data = training_set.data
    split_rows = {split: np.flatnonzero(data.split == split) for split in (TRAIN, TEST)}
    full_train, _ = trainer.logits(split_rows[TRAIN], best_round)
    full_test, bank_only_test = test_logits
    save_test_scores(
        scores_path,
        scores_from_logits(
            _numpy(full_test),
            _numpy(bank_only_test),
            {task: values[split_rows[TEST]] for task, values in data.labels.items()},
            training_set.classes,
        ),
    )
    binary = [task for task, width in data.tasks.items() if width == 1]
    manifest = save_bank_version(
        store,
        bottom=trainer.bottom,
        head=trainer.head,
        preprocessor=training_set.preprocessor,
        data=data,
        classes=training_set.classes,
        raw_numeric=training_set.raw_numeric,
        train_probabilities={task: probabilities(full_train[task].numpy()) for task in binary},
        test_probabilities={task: probabilities(full_test[task].numpy()) for task in binary},
        partner_weights_sha256=partner_weights_sha256,
        partner_preprocessor_sha256=partner_preprocessor_sha256,
    )
    bank_digest = manifest_digest(manifest)
    partner_digest = partner.publish(
        ModelPublication(run_id, best_round, manifest.version_id, manifest.model, bank_digest)
    )
    store.record_peer(manifest.version_id, partner_digest)
    _LOG.info("[Release] run %s: model version %s held by both sides", run_id, manifest.version_id)
    privacy = _privacy(trainer.sent, data, leakage_noise)
    return Release(manifest.version_id, bank_digest, partner_digest, privacy)


def _privacy(sent: GradientRecorder, data: BankTrainingData, noise: float) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "defence": f"label noise, scale {noise:g}" if noise > 0 else "none",
        "task": None,
        "leak_auc_norm": None,
        "leak_auc_direction": None,
    }
    binary = [task for task, width in data.tasks.items() if width == 1]
    if not binary:
        return figures
    task = _LEAKAGE_TASK if _LEAKAGE_TASK in binary else binary[0]
    norm, direction = sent.leak_aucs(data.labels[task])
    return figures | {
        "task": task,
        "leak_auc_norm": None if math.isnan(norm) else norm,
        "leak_auc_direction": None if math.isnan(direction) else direction,
    }


def _numpy(logits: dict[str, torch.Tensor]) -> dict[str, npt.NDArray[np.float32]]:
    return {task: values.numpy() for task, values in logits.items()}
