"""The partner's training set: built once per alignment, refreshed when a new alignment commits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cobrand.alignment_store import AlignmentStore, write_alignment
from cobrand.errors import NotFound
from cobrand.federation import load_federation
from cobrand.schema import load_party_schema
from cobrand.tables import load_party_table
from partner_node.training_set import AlignedTrainingSets
from tests.training_sites import TrainingSites, write_training_sites


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=600, seed=3)


def _source(sites: TrainingSites, data_dir: Path) -> AlignedTrainingSets:
    federation = load_federation(sites.files.federation)
    schema = load_party_schema(sites.files.partner_schema, federation)
    return AlignedTrainingSets(
        load_party_table(schema, sites.files.partner_table), schema, data_dir
    )


def test_the_training_set_holds_the_aligned_rows_of_the_current_alignment(
    sites: TrainingSites,
) -> None:
    training_set = _source(sites, sites.partner_data)()

    with AlignmentStore(sites.partner_data) as store:
        assert training_set.alignment.run_id == store.summary.run_id
        assert training_set.alignment.intersection_sha256 == store.summary.intersection_digest
    assert len(training_set.features.numeric) == sites.intersection
    assert len(training_set.features.categorical) == sites.intersection
    assert training_set.spec.embedding_width > 0


def test_the_set_is_built_once_per_alignment_and_again_after_a_new_one(
    sites: TrainingSites, tmp_path: Path
) -> None:
    with AlignmentStore(sites.partner_data) as store:
        summary = store.summary
        keys, ids = zip(*store.members(), strict=True)
    source = _source(sites, tmp_path)
    write_alignment(tmp_path, summary, keys[0], ids[0])
    first, again = source(), source()
    write_alignment(
        tmp_path, dataclasses.replace(summary, run_id="alignment-next"), keys[0], ids[0]
    )

    renewed = source()

    assert again is first
    assert renewed.alignment.run_id == "alignment-next"
    assert renewed.preprocessor_sha256 == first.preprocessor_sha256


def test_a_node_that_never_aligned_has_no_training_set(
    sites: TrainingSites, tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="run an alignment first"):
        _source(sites, tmp_path)()
