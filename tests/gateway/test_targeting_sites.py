"""Test helper (no tests): one model version published at both sides over aligned training sites,
for bulk targeting's tests and bench, and the same model scored in one process.

The networks are freshly initialised (seeded), not trained: bulk targeting needs a real version
at each side under one id (the bank's manifest names the partner's weights and preprocessing,
the partner publishes under the bank's id), not a good model. Output weights are spread as a
trained model's are, so propensities and decisions vary across customers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from bank_node.model_registry import BankVersion, load_bank_version, save_bank_version
from bank_node.training_data import TEST, TRAIN, BankTrainingData, task_widths
from cobrand.aligned_rows import aligned_table
from cobrand.alignment_store import (
    JOIN_KEY_DTYPE,
    AlignmentStore,
    intersection_digest,
    write_alignment,
)
from cobrand.model_manifest import manifest_digest
from cobrand.model_store import ModelStore
from cobrand.party_files import load_own_table
from cobrand.pki import Party
from cobrand.preprocess import Preprocessor
from cobrand.schema import load_party_schema
from cobrand.split_model import BottomModel, BottomSpec, HeadModel
from cobrand.tables import PartyTable
from cobrand.weights import weights_digest
from partner_node.model_registry import publish
from tests.partner_node.embedding_sites import partner_table
from tests.training_sites import TrainingSites

__all__ = ["PublishedPair", "add_bank_only_customers", "bank_aligned", "publish_pair"]


@dataclass(frozen=True)
class PublishedPair:
    """A version saved at the bank and (unless told not to) published at the partner."""

    version: BankVersion
    classes: tuple[str, ...]
    partner_table: PartyTable
    partner_preprocessor: Preprocessor
    partner_bottom: BottomModel

    def partner_embeddings(self, canonical_ids: npt.NDArray[np.object_]) -> npt.NDArray[np.float32]:
        """The partner bottom's output on these customers, computed in this process: the
        embeddings the partner's service should send (every id must be the partner's)."""
        rows = {str(i): r for r, i in enumerate(self.partner_table.ids)}
        encoded = self.partner_preprocessor.transform(self.partner_table)
        picked = np.array([rows[str(i)] for i in canonical_ids], dtype=np.int64)
        with torch.inference_mode():
            output = self.partner_bottom(
                torch.from_numpy(encoded.numeric[picked]),
                torch.from_numpy(encoded.categorical[picked]),
            )
        values: npt.NDArray[np.float32] = output.numpy()
        return values


def publish_pair(sites: TrainingSites, seed: int, *, at_partner: bool = True) -> PublishedPair:
    """Save a version built from `seed` at the bank and publish its partner half under its id."""
    federation, table = load_own_table(
        Party.BANK, sites.files.federation, sites.files.bank_schema, sites.files.bank_table
    )
    schema = load_party_schema(sites.files.bank_schema, federation)
    preprocessor = Preprocessor.fit(table, schema)
    tasks = task_widths(schema)
    partners, partner_schema = partner_table(sites)
    partner_preprocessor = Preprocessor.fit(partners, partner_schema)
    torch.manual_seed(seed)
    # The networks' default sizes, as training builds them: the bench times them.
    partner_spec = BottomSpec.from_preprocessor(partner_preprocessor)
    partner_bottom = BottomModel(partner_spec).eval()
    bank_spec = BottomSpec.from_preprocessor(preprocessor)
    bottom = BottomModel(bank_spec)
    head = HeadModel(bank_spec.embedding_width, partner_spec.embedding_width, tasks)
    with torch.no_grad():
        for task, layer in head.outputs.items():
            assert isinstance(layer, torch.nn.Linear)
            layer.weight.mul_(15.0)
            layer.bias.fill_(-2.5 if task == "risk" else 0.0)
    probability = np.random.default_rng(seed).uniform(0.01, 0.4, len(table))
    binary = [task for task, width in tasks.items() if width == 1]
    store = ModelStore(sites.bank_data / "models")
    manifest = save_bank_version(
        store,
        bottom=bottom.eval(),
        head=head.eval(),
        preprocessor=preprocessor,
        data=BankTrainingData(
            features=preprocessor.transform(table),
            labels=table.labels,
            split=table.split,
            tasks=tasks,
        ),
        train_probabilities={task: probability[table.split == TRAIN] for task in binary},
        test_probabilities={task: probability[table.split == TEST] for task in binary},
        partner_weights_sha256=weights_digest(partner_bottom.state_dict()),
        partner_preprocessor_sha256=partner_preprocessor.digest(),
    )
    if at_partner:
        publish(
            ModelStore(sites.partner_data / "models"),
            manifest.version_id,
            manifest.model,
            manifest_digest(manifest),
            weights=partner_bottom.state_dict(),
            spec=partner_spec,
            preprocessor=partner_preprocessor,
        )
    assert schema.labels.rights_package is not None
    return PublishedPair(
        version=load_bank_version(store, manifest.version_id),
        classes=schema.labels.rights_package.classes,
        partner_table=partners,
        partner_preprocessor=partner_preprocessor,
        partner_bottom=partner_bottom,
    )


def bank_aligned(sites: TrainingSites) -> tuple[PartyTable, npt.NDArray[np.void]]:
    """The bank's table in the order of its alignment, and the alignment's join keys."""
    _, table = load_own_table(
        Party.BANK, sites.files.federation, sites.files.bank_schema, sites.files.bank_table
    )
    with AlignmentStore(sites.bank_data) as store:
        aligned = aligned_table(table, store)
        keys = np.concatenate([keys for keys, _ in store.members()])
    return aligned, keys


def add_bank_only_customers(sites: TrainingSites, count: int, seed: int) -> list[str]:
    """Give `count` bank customers the partner does not hold join keys in the bank's alignment
    (keys the partner has never seen); return their identifiers."""
    _, whole = load_own_table(
        Party.BANK, sites.files.federation, sites.files.bank_schema, sites.files.bank_table
    )
    partners, _ = partner_table(sites)
    outside = np.setdiff1d(whole.ids.astype(str), partners.ids.astype(str))[:count]
    assert len(outside) == count
    with AlignmentStore(sites.bank_data) as store:
        summary = store.summary
        keys, ids = (np.concatenate(part) for part in zip(*store.members(), strict=True))
    rng = np.random.default_rng(seed)
    extra = np.frombuffer(rng.bytes(16 * count), dtype=JOIN_KEY_DTYPE)
    keys = np.concatenate([keys, extra])
    ids = np.concatenate([ids, outside.astype(object)])
    order = np.argsort(keys.view("S16"), kind="stable")
    keys, ids = keys[order], ids[order]
    write_alignment(
        sites.bank_data,
        dataclasses.replace(
            summary,
            run_id=f"{summary.run_id}-with-bank-only",
            committed_at=dt.datetime.now(dt.UTC),
            intersection_size=len(keys),
            intersection_digest=intersection_digest(keys),
        ),
        keys,
        ids,
    )
    return [str(i) for i in outside]
