"""Test helper: a real bank model version over the synthetic co-brand set, built once per run.

The bank's table is generated, written to Parquet and loaded as training loads it; the
networks are freshly initialised (seeded) rather than trained, which is all the scoring core
needs: a version whose files, preprocessing, references and networks are the real thing.
Test modules take it through a fixture of their own: ``synth_version(tmp_path_factory)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bank_node.model_registry import BankVersion, load_bank_version, save_bank_version
from bank_node.training_data import TEST, TRAIN, BankTrainingData, task_classes, task_widths
from cobrand.model_manifest import Manifest
from cobrand.model_store import ModelStore
from cobrand.preprocess import Preprocessor
from cobrand.schema import PartySchema
from cobrand.split_model import BottomModel, BottomSpec, HeadModel
from cobrand.synth.dataset import SynthConfig, bank_schema, generate_tables
from cobrand.tables import PartyTable, load_party_table

__all__ = [
    "EXAMPLES",
    "PARTNER_WIDTH",
    "SynthVersion",
    "save_synth_bank_version",
    "synth_version",
]

EXAMPLES = Path(__file__).resolve().parents[2] / "gateway" / "examples"
"""The example decision configurations shipped with the gateway."""
PARTNER_WIDTH = 4

_BUILT: dict[Path, SynthVersion] = {}


@dataclass(frozen=True)
class SynthVersion:
    """A saved and reloaded bank version with the table and schema it was built from."""

    version: BankVersion
    table: PartyTable
    schema: PartySchema


def synth_version(tmp_path_factory: pytest.TempPathFactory) -> SynthVersion:
    """The version of this test run (built on first use under the run's temporary directory)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _BUILT:
        _BUILT[base] = _build(tmp_path_factory.mktemp("synth-version"))
    return _BUILT[base]


def _build(directory: Path) -> SynthVersion:
    config = SynthConfig(customers=1200, seed=11)
    schema = bank_schema(config)
    path = directory / "bank.parquet"
    pq.write_table(generate_tables(config).bank, path)
    table = load_party_table(schema, path)
    store = ModelStore(directory / "models")
    manifest = save_synth_bank_version(
        store,
        table,
        schema,
        partner_weights_sha256=hashlib.sha256(b"partner weights").digest(),
        partner_preprocessor_sha256=hashlib.sha256(b"partner preprocessor").digest(),
    )
    return SynthVersion(
        version=load_bank_version(store, manifest.version_id),
        table=table,
        schema=schema,
    )


def save_synth_bank_version(
    store: ModelStore,
    table: PartyTable,
    schema: PartySchema,
    *,
    partner_weights_sha256: bytes,
    partner_preprocessor_sha256: bytes,
) -> Manifest:
    """Save a seeded, untrained bank half over `table` (partner embeddings of `PARTNER_WIDTH`)
    for the partner half those digests describe."""
    preprocessor = Preprocessor.fit(table, schema)
    tasks = task_widths(schema)
    data = BankTrainingData(
        features=preprocessor.transform(table), labels=table.labels, split=table.split, tasks=tasks
    )
    torch.manual_seed(3)
    bottom = BottomModel(BottomSpec.from_preprocessor(preprocessor, embedding_width=8, hidden=16))
    head = HeadModel(8, PARTNER_WIDTH, tasks, hidden=16)
    with torch.no_grad():
        # Untrained outputs sit near 0.5 for everyone; spread them as a trained model's are.
        for task, layer in head.outputs.items():
            assert isinstance(layer, torch.nn.Linear)
            layer.weight.mul_(15.0)
            layer.bias.fill_(-2.5 if task == "risk" else 0.0)
    probability = np.random.default_rng(5).uniform(0.01, 0.4, len(table))
    binary = ("risk", "instalment")
    return save_bank_version(
        store,
        bottom=bottom.eval(),
        head=head.eval(),
        preprocessor=preprocessor,
        data=data,
        classes=task_classes(schema),
        raw_numeric=table.numeric,
        train_probabilities={task: probability[table.split == TRAIN] for task in binary},
        test_probabilities={task: probability[table.split == TEST] for task in binary},
        partner_weights_sha256=partner_weights_sha256,
        partner_preprocessor_sha256=partner_preprocessor_sha256,
    )
