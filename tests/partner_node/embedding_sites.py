"""Test helper: a partner node over aligned training sites with model versions published at it,
and the expected embeddings computed apart from the service, straight from the partner's table."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from cobrand.alignment_store import (
    JOIN_KEY_DTYPE,
    AlignmentStore,
    intersection_digest,
    write_alignment,
)
from cobrand.federation import load_federation
from cobrand.model_manifest import ModelDigests
from cobrand.model_store import ModelStore
from cobrand.preprocess import Preprocessor
from cobrand.schema import PartySchema, load_party_schema
from cobrand.split_model import BottomModel, BottomSpec
from cobrand.tables import PartyTable, load_party_table
from cobrand.weights import weights_digest
from partner_node.model_registry import publish
from tests.training_sites import TrainingSites

BANK_MANIFEST = hashlib.sha256(b"bank manifest").digest()


@dataclass(frozen=True)
class PublishedVersion:
    """A freshly initialised partner bottom published as a version, with what it was made of."""

    version_id: str
    table: PartyTable
    preprocessor: Preprocessor
    bottom: BottomModel

    def expected(self, canonical_ids: list[str]) -> npt.NDArray[np.float32]:
        """The bottom's output on these customers' rows of the partner's table, encoded by the
        version's preprocessor."""
        encoded = self.preprocessor.transform(self.table)
        rows = [int(np.flatnonzero(self.table.ids == i)[0]) for i in canonical_ids]
        with torch.no_grad():
            output = self.bottom(
                torch.from_numpy(encoded.numeric[rows]), torch.from_numpy(encoded.categorical[rows])
            )
        values: npt.NDArray[np.float32] = output.numpy()
        return values


def partner_table(sites: TrainingSites) -> tuple[PartyTable, PartySchema]:
    """The partner's table and schema as its node loads them."""
    schema = load_party_schema(sites.files.partner_schema, load_federation(sites.files.federation))
    return load_party_table(schema, sites.files.partner_table), schema


def publish_version(sites: TrainingSites, seed: int, width: int) -> PublishedVersion:
    """Publish a bottom initialised from `seed` with embeddings of `width` at the partner."""
    table, schema = partner_table(sites)
    preprocessor = Preprocessor.fit(table, schema)
    spec = BottomSpec.from_preprocessor(preprocessor, embedding_width=width)
    torch.manual_seed(seed)
    bottom = BottomModel(spec).eval()
    digests = ModelDigests.of(
        bank_weights=hashlib.sha256(f"bank weights {seed}".encode()).digest(),
        partner_weights=weights_digest(bottom.state_dict()),
        partner_preprocessor=preprocessor.digest(),
    )
    publish(
        ModelStore(sites.partner_data / "models"),
        digests.version_id,
        digests,
        BANK_MANIFEST,
        weights=bottom.state_dict(),
        spec=spec,
        preprocessor=preprocessor,
    )
    return PublishedVersion(digests.version_id, table, preprocessor, bottom)


def aligned_customers(sites: TrainingSites, count: int) -> list[tuple[bytes, str]]:
    """(join key, canonical id) of the first `count` aligned customers in join-key order."""
    with AlignmentStore(sites.partner_data) as store:
        keys, ids = next(store.members(batch_size=count))
    return [(key.tobytes(), str(i)) for key, i in zip(keys, ids, strict=True)]


def realign(sites: TrainingSites, run_id: str, seed: int) -> dict[str, bytes]:
    """Store a new alignment at the partner: the same customers under new join keys.

    Returns each customer's new join key, by canonical id.
    """
    with AlignmentStore(sites.partner_data) as store:
        summary = store.summary
        ids = np.concatenate([batch for _, batch in store.members()])
    rng = np.random.default_rng(seed)
    keys = np.sort(np.frombuffer(rng.bytes(16 * len(ids)), dtype="S16")).view(JOIN_KEY_DTYPE)
    members = rng.permutation(ids)
    write_alignment(
        sites.partner_data,
        dataclasses.replace(
            summary,
            run_id=run_id,
            committed_at=dt.datetime.now(dt.UTC),
            intersection_digest=intersection_digest(keys),
        ),
        keys,
        members,
    )
    return {str(i): key.tobytes() for key, i in zip(keys, members, strict=True)}
