"""The partner node started from its settings: loads its own table, serves the bank alone."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bank_node.alignment_client import AlignmentClient
from bank_node.psi_initiator import run_alignment
from cobrand.alignment_protocol import PsiSettings
from cobrand.alignment_store import AlignmentStore
from cobrand.errors import ConfigError, SchemaError
from cobrand.rpc import create_channel
from partner_node.config import PartnerNodeConfig
from partner_node.server import start_partner_node
from tests.alignment_data import FEDERATION, canonical_phones, messy, write_federation, write_party
from tests.conftest import ThrowAwayPki

SETTINGS = PsiSettings(workers=0, chunk_points=32)


def _config(
    tmp_path: Path, pki: ThrowAwayPki, raw_ids: list[str], **changes: object
) -> PartnerNodeConfig:
    files = write_party(tmp_path / "files", "partner", raw_ids)
    settings: dict[str, object] = {
        "federation": write_federation(tmp_path / "files"),
        "schema": files.schema,
        "table": files.table,
        "listen": "127.0.0.1:0",
        "data_dir": tmp_path / "partner-data",
        "tls": pki.tls("partner"),
        "psi": SETTINGS,
        **changes,
    }
    return PartnerNodeConfig(**settings)  # type: ignore[arg-type]


def test_a_node_started_from_its_settings_aligns_with_the_bank(
    tmp_path: Path, throwaway_pki: ThrowAwayPki
) -> None:
    rng = random.Random(3)
    people = canonical_phones(rng, 90)
    config = _config(tmp_path, throwaway_pki, [messy(p, rng) for p in people[:60]])
    node = start_partner_node(config)
    try:
        with create_channel(f"127.0.0.1:{node.port}", throwaway_pki.tls("bank")) as channel:
            client = AlignmentClient(channel, 10.0, 10.0)
            bank_ids = np.array(people[30:], dtype=object)
            run_alignment(FEDERATION, bank_ids, client, tmp_path / "bank-data", SETTINGS)
    finally:
        node.stop(grace=None)

    assert node.rows == 60
    with AlignmentStore(config.data_dir) as store:
        assert store.summary.intersection_size == 30
        assert store.summary.own_rows == 60


def test_a_node_given_the_bank_schema_refuses_to_start(
    tmp_path: Path, throwaway_pki: ThrowAwayPki
) -> None:
    bank_files = write_party(tmp_path / "bank", "bank", canonical_phones(random.Random(1), 5))
    config = _config(
        tmp_path, throwaway_pki, ["13800000000"], schema=bank_files.schema, table=bank_files.table
    )

    with pytest.raises(SchemaError, match="key 'party' is 'bank', but this is the partner's node"):
        start_partner_node(config)


def test_a_node_without_tls_files_refuses_to_start_unless_insecure(
    tmp_path: Path, throwaway_pki: ThrowAwayPki
) -> None:
    config = _config(tmp_path, throwaway_pki, ["13800000000"], tls=None)

    with pytest.raises(ConfigError, match="has no TLS files"):
        start_partner_node(config)
