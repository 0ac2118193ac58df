"""Test helper (no tests): the whole co-brand flow on a small planted set, every process capturing
its wire traffic.

As ``cobrand demo`` runs it: both parties set up on loopback with their own CAs, the partner
node as its own process (`local_sites`); alignment by ECDH-PSI (`align_sites`); one federated
training run through Flower and the data plane, ending with the model published at both sides
(`train_aligned`); the bank's gateway serving that version in this process and deciding an
aligned customer's and a bank-only customer's applications (both consenting to a partner
lookup), and the lookups of concurrent applications as the gateway sends them together; and
``cobrand target`` ranking the aligned base through the partner's bulk embeddings.
``COBRAND_WIRE_CAPTURE_DIR`` is set for all of it, so this process and every child (the partner
node, the SuperLink, SuperNode, ServerApp and ClientApp processes) capture (`cobrand.wire_capture`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy.typing as npt
import pytest
from typer.testing import CliRunner

from bank_node.training_job import TrainingSection
from cobrand import pki
from cobrand.aligned_rows import aligned_table
from cobrand.alignment_protocol import PsiSettings
from cobrand.alignment_store import AlignmentStore
from cobrand.cli import app
from cobrand.commands.align import LocalSites, align_sites, local_sites, tls_files
from cobrand.commands.demo import write_gateway_settings
from cobrand.commands.train import train_aligned
from cobrand.party_files import load_own_table
from cobrand.pki import Party
from cobrand.rpc import create_channel
from cobrand.settings import load_settings
from cobrand.synth import SynthConfig, write_dataset
from cobrand.tables import PartyTable
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc, scoring_pb2, scoring_pb2_grpc
from cobrand.wire_capture import CAPTURE_DIR_ENV
from gateway.settings import GatewaySettings
from tests.gateway.gateway_sites import running_gateway
from tests.gateway.scoring_calls import application
from tests.privacy_canaries import Needles, plant_canaries

__all__ = ["Flow", "run_flow"]

_CUSTOMERS: Final = 400
_SEED: Final = 5
_LOOPBACK: Final = "127.0.0.1"
# Small batches: several data-plane steps, each with its gradient, in the one round.
_TRAINING: Final = {"rounds": 1, "batch_size": 32}
# Generous: the machine is shared, and the aligned application must get its partner slice.
_PARTNER_DEADLINE_MS: Final = 2000.0
_CALL_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class Flow:
    """What the flow left behind.

    Attributes
    ----------
    capture : Path
        The capture directory of every process.
    needles : Needles
        The planted canaries, label strings and identifiers to look for.
    sites : LocalSites
        Both parties' settings (their data directories hold the alignment).
    aligned_labels : dict of str to numpy.ndarray
        The bank's labels per task over the aligned customers, in alignment order (aligned
        position i is row i).
    partner_slices : tuple of str
        The partner slice status of each application decided (aligned first).
    """

    capture: Path
    needles: Needles
    sites: LocalSites
    aligned_labels: dict[str, npt.NDArray[Any]]
    partner_slices: tuple[str, ...]


def run_flow(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Flow:
    """Run the whole flow under `directory`, capturing into ``directory/capture``."""
    capture = directory / "capture"
    monkeypatch.setenv(CAPTURE_DIR_ENV, str(capture))
    config = SynthConfig(customers=_CUSTOMERS, seed=_SEED, table_format="parquet")
    files, tables = write_dataset(config, directory / "data")
    needles = plant_canaries(files, tables)
    with local_sites(files, directory / "work", PsiSettings(workers=0)) as sites:
        outcome = align_sites(sites)
        report = train_aligned(
            sites, outcome.summary, TrainingSection.model_validate(_TRAINING), directory / "out"
        )
        settings = write_gateway_settings(sites, report["model_version"], _PARTNER_DEADLINE_MS)
        slices = _score_applications(sites, settings)
        _batched_lookups(sites, settings)
        _target(settings, directory / "campaign.csv")
    with AlignmentStore(sites.bank.data_dir) as alignment:
        labels = aligned_table(_bank_table(sites), alignment).labels
    return Flow(capture, needles, sites, labels, slices)


def _score_applications(sites: LocalSites, settings: Path) -> tuple[str, ...]:
    """Decide an aligned and a bank-only customer's applications through the gateway; their
    partner slice statuses."""
    bank_tls = sites.bank.tls
    assert bank_tls is not None
    bank_ca = bank_tls.ca_bundle.parent
    app_tls = tls_files(bank_ca, pki.issue(bank_ca, pki.Role.APP, "privacy-review-app"))
    with (
        running_gateway(load_settings(GatewaySettings, settings)) as gateway,
        create_channel(f"{_LOOPBACK}:{gateway.port}", app_tls) as channel,
    ):
        stub: Any = scoring_pb2_grpc.ScoringGatewayStub(channel)  # type: ignore[no-untyped-call]
        replies = [
            stub.ScoreApplication(
                application(f"PRIVACY-{number}", identifier, consent=True),
                timeout=_CALL_TIMEOUT_S,
            )
            for number, identifier in enumerate(_aligned_and_bank_only(sites), start=1)
        ]
    return tuple(scoring_pb2.PartnerSliceStatus.Name(r.slices.partner_status) for r in replies)


def _batched_lookups(sites: LocalSites, settings: Path) -> None:
    """Three aligned customers' lookups in one GetEmbeddings call, with the gateway's
    certificate, as the gateway sends the lookups of concurrent applications
    (`gateway.lookup_batcher`); the two applications above, one at a time, went alone."""
    gateway = load_settings(GatewaySettings, settings)
    with AlignmentStore(sites.bank.data_dir) as alignment:
        keys, _ = next(alignment.members())
    lookups = [
        embedding_pb2.GetEmbeddingRequest(
            request_id=f"privacy-batched-{n}",
            model_version=gateway.model_version,
            join_key=keys[n].tobytes(),
        )
        for n in range(3)
    ]
    with create_channel(gateway.partner.address, gateway.tls, server_party=Party.PARTNER) as ch:
        stub: Any = embedding_pb2_grpc.PartnerEmbeddingServiceStub(ch)  # type: ignore[no-untyped-call]
        reply = stub.GetEmbeddings(
            embedding_pb2.GetEmbeddingsRequest(lookups=lookups), timeout=_CALL_TIMEOUT_S
        )
    assert [a.status for a in reply.lookups] == [embedding_pb2.LOOKUP_STATUS_FOUND] * 3


def _aligned_and_bank_only(sites: LocalSites) -> tuple[str, str]:
    """The bank's first customer in the alignment and its first outside it (canonical ids)."""
    table = _bank_table(sites)
    found: dict[bool, str] = {}
    with AlignmentStore(sites.bank.data_dir) as alignment:
        for canonical in map(str, table.ids):
            found.setdefault(alignment.join_key(canonical) is not None, canonical)
    return found[True], found[False]


def _bank_table(sites: LocalSites) -> PartyTable:
    _, table = load_own_table(
        Party.BANK, sites.bank.federation, sites.bank.schema_file, sites.bank.table
    )
    return table


def _target(settings: Path, output: Path) -> None:
    """Run ``cobrand target`` over the aligned base."""
    result = CliRunner().invoke(
        app,
        [
            *("target", "--config", str(settings), "--task", "rights_package", "--top", "50"),
            *("--output", str(output), "--batch-keys", "64"),
        ],
    )
    assert result.exit_code == 0, result.output
