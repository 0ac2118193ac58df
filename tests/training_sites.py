"""Both parties' files for a training run: a synthetic co-brand set and each side's alignment,
and the partner node serving them (`running_partner`).

The alignment results are written here directly, by joining the two tables on canonical
identifiers and giving each common customer a random join key, instead of running PSI: what a
training run reads is each side's stored result, and PSI has tests of its own. Only tests join
rows; the product aligns through PSI and never pools them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cobrand.alignment_store import (
    JOIN_KEY_DTYPE,
    AlignmentSummary,
    intersection_digest,
    write_alignment,
)
from cobrand.federation import load_federation
from cobrand.pki import Party
from cobrand.rpc import TlsFiles
from cobrand.schema import load_party_schema
from cobrand.synth import DatasetFiles, SynthConfig, write_dataset
from cobrand.tables import load_party_table
from partner_node.config import PartnerNodeConfig
from partner_node.server import PartnerNode, start_partner_node

if TYPE_CHECKING:
    from tests.conftest import ThrowAwayPki


@dataclass(frozen=True)
class TrainingSites:
    """A synthetic set and the data directory (holding its alignment result) of each party."""

    files: DatasetFiles
    bank_data: Path
    partner_data: Path
    intersection: int

    def partner_node_config(self, tls: TlsFiles) -> PartnerNodeConfig:
        """The partner node's settings for this set, serving on a free loopback port."""
        return PartnerNodeConfig(
            federation=self.files.federation,
            schema=self.files.partner_schema,
            table=self.files.partner_table,
            listen="127.0.0.1:0",
            data_dir=self.partner_data,
            tls=tls,
        )


def write_training_sites(directory: Path, customers: int, seed: int) -> TrainingSites:
    """Generate a set under `directory` and store the same alignment at both parties."""
    files, _ = write_dataset(SynthConfig(customers=customers, seed=seed), directory / "set")
    federation = load_federation(files.federation)
    ids = {
        party: load_party_table(load_party_schema(schema, federation), table).ids
        for party, schema, table in (
            (Party.BANK, files.bank_schema, files.bank_table),
            (Party.PARTNER, files.partner_schema, files.partner_table),
        )
    }
    common = np.intersect1d(ids[Party.BANK].astype(str), ids[Party.PARTNER].astype(str))
    rng = np.random.default_rng(seed)
    keys = np.sort(np.frombuffer(rng.bytes(16 * len(common)), dtype="S16"))
    # Join-key order is not identifier order: shuffle which customer gets which key.
    members = rng.permutation(common).astype(object)
    sites = TrainingSites(files, directory / "bank-data", directory / "partner-data", len(common))
    for party, data_dir in ((Party.BANK, sites.bank_data), (Party.PARTNER, sites.partner_data)):
        summary = AlignmentSummary(
            run_id=f"alignment-{seed}",
            party=party,
            federation_id=federation.federation_id,
            federation_digest=federation.digest(),
            protocol_version=1,
            committed_at=dt.datetime.now(dt.UTC),
            own_rows=len(ids[party]),
            peer_rows=len(ids[Party.PARTNER if party is Party.BANK else Party.BANK]),
            intersection_size=len(common),
            intersection_digest=intersection_digest(keys.view(JOIN_KEY_DTYPE)),
        )
        write_alignment(data_dir, summary, keys.view(JOIN_KEY_DTYPE), members)
    return sites


@contextmanager
def running_partner(
    pki: ThrowAwayPki, sites: TrainingSites, **update: object
) -> Iterator[PartnerNode]:
    """The partner node of `sites` serving in this process; `update` changes its settings
    (``listen`` to come back on a port, ``consented_lookup`` for another limit)."""
    config = sites.partner_node_config(pki.tls("partner")).model_copy(update=update)
    node = start_partner_node(config)
    try:
        yield node
    finally:
        node.stop(grace=None)
