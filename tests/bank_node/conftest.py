"""Fixtures for the bank trainer's tests: a small aligned synthetic set and a loopback partner.

The alignment is built here by joining the two synthetic tables on canonical identifiers, the
intersection in ascending identifier order standing in for the join-key order of a real PSI run.
Only tests join rows; the product aligns through PSI and never pools them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from bank_node.dataplane_client import DataPlaneClient
from bank_node.training_data import BankTrainingData, task_widths
from cobrand.federation import load_federation
from cobrand.preprocess import Encoded, Preprocessor
from cobrand.rpc import create_channel, create_server
from cobrand.schema import load_party_schema
from cobrand.split_model import BottomSpec
from cobrand.synth import SynthConfig, write_dataset
from cobrand.tables import load_party_table
from partner_node.dataplane_service import ALLOWED_ROLES, DataPlaneService
from partner_node.trainer import PartnerTrainer
from tests.conftest import ThrowAwayPki


@dataclass(frozen=True)
class AlignedSet:
    """Both parties' aligned rows: bank row i and partner row i are the same customer."""

    bank: BankTrainingData
    bank_spec: BottomSpec
    partner_features: Encoded
    partner_spec: BottomSpec


def aligned_synthetic_set(directory: Path, customers: int, seed: int) -> AlignedSet:
    """Generate a synthetic set, preprocess each side on its own train rows, align by id."""
    files, _ = write_dataset(SynthConfig(customers=customers, seed=seed), directory)
    federation = load_federation(files.federation)
    bank_schema = load_party_schema(files.bank_schema, federation)
    partner_schema = load_party_schema(files.partner_schema, federation)
    bank = load_party_table(bank_schema, files.bank_table)
    partner = load_party_table(partner_schema, files.partner_table)
    _, bank_rows, partner_rows = np.intersect1d(
        bank.ids.astype(str), partner.ids.astype(str), return_indices=True
    )
    bank_pre = Preprocessor.fit(bank, bank_schema)
    partner_pre = Preprocessor.fit(partner, partner_schema)
    bank_encoded = bank_pre.transform(bank)
    partner_encoded = partner_pre.transform(partner)
    return AlignedSet(
        bank=BankTrainingData(
            features=Encoded(bank_encoded.numeric[bank_rows], bank_encoded.categorical[bank_rows]),
            labels={task: values[bank_rows] for task, values in bank.labels.items()},
            split=bank.split[bank_rows],
            tasks=task_widths(bank_schema),
        ),
        bank_spec=BottomSpec.from_preprocessor(bank_pre),
        partner_features=Encoded(
            partner_encoded.numeric[partner_rows], partner_encoded.categorical[partner_rows]
        ),
        partner_spec=BottomSpec.from_preprocessor(partner_pre),
    )


@pytest.fixture(scope="session")
def aligned_set(tmp_path_factory: pytest.TempPathFactory) -> AlignedSet:
    """20,000 bank customers, 8,000 of them aligned with the partner."""
    return aligned_synthetic_set(tmp_path_factory.mktemp("synth"), customers=20_000, seed=5)


@pytest.fixture(scope="session")
def partner_service() -> DataPlaneService:
    return DataPlaneService()


@pytest.fixture(scope="session")
def partner_port(throwaway_pki: ThrowAwayPki, partner_service: DataPlaneService) -> Iterator[int]:
    """A partner data-plane server on loopback, mutual TLS, open to the bank trainer only."""
    server, port = create_server(
        partner_service.adder(),
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
        allowed_roles=ALLOWED_ROLES,
    )
    server.start()
    yield port
    server.stop(None)


@pytest.fixture
def bank_channel(throwaway_pki: ThrowAwayPki, partner_port: int) -> Iterator[grpc.Channel]:
    with create_channel(f"127.0.0.1:{partner_port}", throwaway_pki.tls("bank-trainer")) as made:
        yield made


def start_partner_run(
    service: DataPlaneService, run_id: str, features: Encoded, spec: BottomSpec, seed: int = 1
) -> PartnerTrainer:
    """What the control plane does at the partner when a run starts."""
    trainer = PartnerTrainer(run_id, features, spec, seed=seed)
    service.attach(trainer)
    return trainer


def bank_client(channel: grpc.Channel, run_id: str, spec: BottomSpec) -> DataPlaneClient:
    return DataPlaneClient(channel, run_id=run_id, embedding_width=spec.embedding_width)
