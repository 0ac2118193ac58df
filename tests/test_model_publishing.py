"""Publishing a model version to both sides: the bank saves its half, the partner publishes its
half under the same id, each records the other's manifest digest, and each then verifies the
other holds the files it recorded (a partner whose files changed since is refused)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bank_node.model_registry import load_bank_version, save_bank_version
from bank_node.training_data import TEST, TRAIN, BankTrainingData
from cobrand.errors import FailedPrecondition
from cobrand.model_manifest import manifest_digest, verify_peer
from cobrand.model_store import ModelStore
from cobrand.split_model import BottomModel, BottomSpec, HeadModel
from cobrand.weights import weights_digest
from partner_node.model_registry import load_partner_version, publish
from tests.model_parts import fitted_table


def _publish_both(bank_store: ModelStore, partner_store: ModelStore) -> tuple[str, BottomModel]:
    """Train nothing, but save and publish as the end of a run does; return the id and the
    partner's bottom."""
    bank_table, bank_preprocessor = fitted_table("bank", seed=1)
    _, partner_preprocessor = fitted_table("partner", seed=2)
    torch.manual_seed(0)
    partner_spec = BottomSpec.from_preprocessor(partner_preprocessor, embedding_width=3)
    partner_bottom = BottomModel(partner_spec)
    bank_bottom = BottomModel(BottomSpec.from_preprocessor(bank_preprocessor, embedding_width=4))
    head = HeadModel(4, 3, {"risk": 1})
    rng = np.random.default_rng(0)
    data = BankTrainingData(
        features=bank_preprocessor.transform(bank_table),
        labels={"risk": rng.integers(0, 2, len(bank_table)).astype(np.float32)},
        split=bank_table.split,
        tasks={"risk": 1},
    )

    bank_manifest = save_bank_version(
        bank_store,
        bottom=bank_bottom,
        head=head,
        preprocessor=bank_preprocessor,
        data=data,
        classes={},
        raw_numeric=bank_table.numeric,
        train_probabilities={"risk": rng.uniform(0.0, 1.0, int(np.sum(data.split == TRAIN)))},
        test_probabilities={"risk": rng.uniform(0.0, 1.0, int(np.sum(data.split == TEST)))},
        partner_weights_sha256=weights_digest(partner_bottom.state_dict()),
        partner_preprocessor_sha256=partner_preprocessor.digest(),
    )
    # Through the control plane: the version id, the digests and the bank's manifest digest.
    partner_digest = publish(
        partner_store,
        bank_manifest.version_id,
        bank_manifest.model,
        manifest_digest(bank_manifest),
        weights=partner_bottom.state_dict(),
        spec=partner_spec,
        preprocessor=partner_preprocessor,
    )
    bank_store.record_peer(bank_manifest.version_id, partner_digest)
    return bank_manifest.version_id, partner_bottom


def test_both_sides_hold_the_version_and_verify_each_other(tmp_path: Path) -> None:
    bank_store, partner_store = ModelStore(tmp_path / "bank"), ModelStore(tmp_path / "partner")

    version_id, _ = _publish_both(bank_store, partner_store)
    bank = load_bank_version(bank_store, version_id)
    partner = load_partner_version(partner_store, version_id)

    verify_peer(bank.manifest, version_id, manifest_digest(partner.manifest))
    verify_peer(partner.manifest, version_id, manifest_digest(bank.manifest))
    assert bank.manifest.model == partner.manifest.model


def test_a_partner_that_republished_since_is_refused_by_the_bank(tmp_path: Path) -> None:
    bank_store, partner_store = ModelStore(tmp_path / "bank"), ModelStore(tmp_path / "partner")
    version_id, partner_bottom = _publish_both(bank_store, partner_store)
    published = partner_store.manifest(version_id)
    # The partner's registry is lost and the version published again: same weights, new files.
    shutil.rmtree(tmp_path / "partner" / version_id)
    _, partner_preprocessor = fitted_table("partner", seed=2)
    again = publish(
        partner_store,
        version_id,
        published.model,
        bytes.fromhex(published.peer_manifest_sha256 or ""),
        weights=partner_bottom.state_dict(),
        spec=BottomSpec.from_preprocessor(partner_preprocessor, embedding_width=3),
        preprocessor=partner_preprocessor,
    )

    with pytest.raises(FailedPrecondition, match="the partner's files differ from those published"):
        verify_peer(bank_store.manifest(version_id), version_id, again)
