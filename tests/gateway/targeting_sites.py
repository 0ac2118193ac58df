"""Test helper (no tests): what bulk targeting's tests and bench score, and the same model in
one process.

One model version at both sides (`tests.gateway.gateway_sites.publish_both_sides`), read back
from each side's registry; the partner bottom's embeddings computed here, apart from the
partner's service; a bank version the partner never got; and bank customers the partner does
not hold added to the bank's alignment, so they reach the partner as keys it does not know.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from bank_node.model_registry import BankVersion, load_bank_version
from cobrand.aligned_rows import aligned_table
from cobrand.alignment_store import (
    JOIN_KEY_DTYPE,
    AlignmentStore,
    intersection_digest,
    write_alignment,
)
from cobrand.model_store import ModelStore
from cobrand.party_files import load_own_table
from cobrand.pki import Party
from cobrand.schema import load_party_schema
from cobrand.tables import PartyTable
from partner_node.model_registry import PartnerVersion, load_partner_version
from tests.gateway.gateway_sites import applicants_of, publish_both_sides
from tests.gateway.synth_version import save_synth_bank_version
from tests.partner_node.embedding_sites import partner_table
from tests.training_sites import TrainingSites

__all__ = [
    "BothSides",
    "add_bank_only_customers",
    "bank_aligned",
    "bank_only_version",
    "both_sides",
]


@dataclass(frozen=True)
class BothSides:
    """One version as each side's registry holds it, and the partner's table."""

    version: BankVersion
    partner: PartnerVersion
    partner_table: PartyTable

    def partner_embeddings(self, canonical_ids: npt.NDArray[np.object_]) -> npt.NDArray[np.float32]:
        """The partner bottom's output on these customers' rows, computed in this process."""
        rows = {str(i): r for r, i in enumerate(self.partner_table.ids)}
        picked = np.array([rows[str(i)] for i in canonical_ids], dtype=np.int64)
        return self.embed(self.partner_table)[picked]

    def embed(self, table: PartyTable) -> npt.NDArray[np.float32]:
        """The partner bottom's output on every row of `table` (the partner's)."""
        encoded = self.partner.preprocessor.transform(table)
        with torch.inference_mode():
            output = self.partner.bottom(
                torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.categorical)
            )
        values: npt.NDArray[np.float32] = output.numpy()
        return values


def both_sides(sites: TrainingSites, seed: int = 7) -> BothSides:
    """Publish a version at both sides and read each half back from its registry."""
    version_id = publish_both_sides(sites, seed)
    return BothSides(
        version=load_bank_version(ModelStore(sites.bank_data / "models"), version_id),
        partner=load_partner_version(ModelStore(sites.partner_data / "models"), version_id),
        partner_table=partner_table(sites)[0],
    )


def bank_only_version(sites: TrainingSites) -> BankVersion:
    """A version saved at the bank whose partner half was never published."""
    federation, table = load_own_table(
        Party.BANK, sites.files.federation, sites.files.bank_schema, sites.files.bank_table
    )
    store = ModelStore(sites.bank_data / "models")
    manifest = save_synth_bank_version(
        store,
        table,
        load_party_schema(sites.files.bank_schema, federation),
        partner_weights_sha256=hashlib.sha256(b"never published weights").digest(),
        partner_preprocessor_sha256=hashlib.sha256(b"never published preprocessor").digest(),
    )
    return load_bank_version(store, manifest.version_id)


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
    outside = applicants_of(sites).bank_only[:count]
    assert len(outside) == count
    with AlignmentStore(sites.bank_data) as store:
        summary = store.summary
        keys, ids = (np.concatenate(part) for part in zip(*store.members(), strict=True))
    extra = np.frombuffer(np.random.default_rng(seed).bytes(16 * count), dtype=JOIN_KEY_DTYPE)
    keys = np.concatenate([keys, extra])
    ids = np.concatenate([ids, np.array(outside, dtype=object)])
    order = np.argsort(keys.view("S16"), kind="stable")
    write_alignment(
        sites.bank_data,
        dataclasses.replace(
            summary,
            run_id=f"{summary.run_id}-with-bank-only",
            committed_at=dt.datetime.now(dt.UTC),
            intersection_size=len(keys),
            intersection_digest=intersection_digest(keys[order]),
        ),
        keys[order],
        ids[order],
    )
    return outside
