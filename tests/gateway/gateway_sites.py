"""Test helper: both parties holding one model version, a partner node serving it, and gateways.

`publish_both_sides` does what the end of a training run does (``bank_node.model_release``):
the bank saves its half (``save_bank_version``) for the partner half's digests, the partner
publishes its half under the same version id with the bank's manifest digest, and the bank
records the partner's. The networks are seeded, not trained: the gateway only needs a version
whose files, preprocessing and networks are the real thing.

`gateway_settings` writes the bank node's settings file the gateway reads its table and data
directory from, and a fresh pseudonym key, and points the gateway at a partner node.

`publish_world` is all of that for one synthetic set: its sites, one version published at both
sides and who is who. `running_gateway` starts a gateway for the length of a ``with`` block, as
`tests.training_sites.running_partner` does a partner node.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from cobrand.alignment_store import AlignmentStore
from cobrand.federation import load_federation
from cobrand.model_manifest import manifest_digest
from cobrand.model_store import ModelStore
from cobrand.preprocess import Preprocessor
from cobrand.schema import PartySchema, load_party_schema
from cobrand.split_model import BottomModel, BottomSpec
from cobrand.tables import PartyTable, load_party_table
from cobrand.weights import weights_digest
from gateway.audit_log import AuditSettings
from gateway.server import Gateway, start_gateway
from gateway.settings import BreakerSettings, GatewaySettings, PartnerSettings
from partner_node.model_registry import publish
from tests.conftest import ThrowAwayPki
from tests.gateway.synth_version import EXAMPLES, PARTNER_WIDTH, save_synth_bank_version
from tests.partner_node.embedding_sites import partner_table
from tests.training_sites import TrainingSites, write_training_sites

__all__ = [
    "Applicants",
    "World",
    "applicants_of",
    "gateway_settings",
    "publish_both_sides",
    "publish_world",
    "running_gateway",
]


def publish_both_sides(
    sites: TrainingSites, seed: int = 7, recorded_peer: bytes | None = None
) -> str:
    """Publish one version at both sides of `sites`, each recording the other's digest.

    Parameters
    ----------
    sites : TrainingSites
    seed : int
        Seeds the partner bottom (another seed, another version).
    recorded_peer : bytes, optional
        A partner manifest digest for the bank to record instead of the one the partner
        reports (a registry that does not match the partner's).

    Returns
    -------
    str
        The version id, the same at both sides.
    """
    table, schema = partner_table(sites)
    preprocessor = Preprocessor.fit(table, schema)
    spec = BottomSpec.from_preprocessor(preprocessor, embedding_width=PARTNER_WIDTH)
    torch.manual_seed(seed)
    bottom = BottomModel(spec).eval()
    bank_table, bank_schema = _bank_table(sites)
    bank_store = ModelStore(sites.bank_data / "models")
    manifest = save_synth_bank_version(
        bank_store,
        bank_table,
        bank_schema,
        partner_weights_sha256=weights_digest(bottom.state_dict()),
        partner_preprocessor_sha256=preprocessor.digest(),
    )
    partner_digest = publish(
        ModelStore(sites.partner_data / "models"),
        manifest.version_id,
        manifest.model,
        manifest_digest(manifest),
        weights=bottom.state_dict(),
        spec=spec,
        preprocessor=preprocessor,
    )
    bank_store.record_peer(manifest.version_id, recorded_peer or partner_digest)
    return manifest.version_id


def _bank_table(sites: TrainingSites) -> tuple[PartyTable, PartySchema]:
    schema = load_party_schema(sites.files.bank_schema, load_federation(sites.files.federation))
    return load_party_table(schema, sites.files.bank_table), schema


@dataclass(frozen=True)
class Applicants:
    """Canonical identifiers of the set's people, by what the gateway knows of them.

    Attributes
    ----------
    aligned : list of str
        Bank customers the partner knows (in the alignment).
    bank_only : list of str
        Bank customers outside the alignment.
    """

    aligned: list[str]
    bank_only: list[str]


def applicants_of(sites: TrainingSites) -> Applicants:
    """The set's aligned customers and the bank's customers outside the alignment."""
    with AlignmentStore(sites.bank_data) as store:
        aligned = sorted(str(i) for _, ids in store.members() for i in ids)
    table, _ = _bank_table(sites)
    bank_only = sorted(set(np.asarray(table.ids, dtype=str)) - set(aligned))
    return Applicants(aligned, bank_only)


def gateway_settings(
    directory: Path,
    sites: TrainingSites,
    pki: ThrowAwayPki,
    version_id: str,
    partner_port: int,
    *,
    deadline_ms: float = 50.0,
    breaker: BreakerSettings | None = None,
    verify_retry_s: float = 10.0,
) -> GatewaySettings:
    """A gateway's settings on a free loopback port for `sites`, its files under `directory`
    (its partner call's `breaker` the settings' default unless given)."""
    directory.mkdir(parents=True, exist_ok=True)
    bank_tls = pki.tls("bank")
    bank_file = directory / "bank.yaml"
    bank_file.write_text(
        yaml.safe_dump(
            {
                "federation": str(sites.files.federation),
                "schema": str(sites.files.bank_schema),
                "table": str(sites.files.bank_table),
                "data_dir": str(sites.bank_data),
                "partner": {"address": f"127.0.0.1:{partner_port}"},
                "tls": {name: str(path) for name, path in bank_tls.model_dump().items()},
            }
        )
    )
    key_file = directory / "pseudonym.key"
    key_file.write_bytes(secrets.token_bytes(32))
    return GatewaySettings(
        listen="127.0.0.1:0",
        tls=pki.tls("gateway"),
        bank=bank_file,
        model_version=version_id,
        decision_config=EXAMPLES / "cobrand_synth.yaml",
        pseudonym_key=key_file,
        partner=PartnerSettings(
            address=f"127.0.0.1:{partner_port}",
            deadline_ms=deadline_ms,
            breaker=breaker or BreakerSettings(),
            verify_retry_s=verify_retry_s,
        ),
        audit=AuditSettings(backend="sqlite", path=directory / "audit.db"),
    )


@dataclass(frozen=True)
class World:
    """A synthetic set with one model version published at both parties.

    Attributes
    ----------
    sites : TrainingSites
        Both parties' files and data directories.
    version_id : str
        The version published at both sides (`publish_both_sides` with its default seed).
    people : Applicants
        Who the gateway knows and how.
    """

    sites: TrainingSites
    version_id: str
    people: Applicants


def publish_world(directory: Path, customers: int, seed: int) -> World:
    """Write a set of `customers` under `directory` and publish one version at both sides."""
    sites = write_training_sites(directory, customers=customers, seed=seed)
    version_id = publish_both_sides(sites)
    people = applicants_of(sites)
    assert people.aligned, "the set has no aligned customer"
    assert people.bank_only, "the set has no bank customer outside the alignment"
    return World(sites, version_id, people)


@contextmanager
def running_gateway(settings: GatewaySettings) -> Iterator[Gateway]:
    """A gateway started with `settings` in this process, stopped at the end of the block."""
    gateway = start_gateway(settings)
    try:
        yield gateway
    finally:
        gateway.stop()
