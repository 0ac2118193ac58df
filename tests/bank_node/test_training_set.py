"""The bank's training set: its aligned rows, labels and split, in the alignment's order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bank_node.config import BankNodeConfig, PartnerEndpoint
from bank_node.training_set import load_training_set
from cobrand.alignment_store import AlignmentStore
from cobrand.errors import NotFound
from cobrand.federation import load_federation
from cobrand.schema import load_party_schema
from cobrand.tables import load_party_table
from tests.training_sites import TrainingSites, write_training_sites


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=600, seed=4)


def _config(sites: TrainingSites, data_dir: Path) -> BankNodeConfig:
    return BankNodeConfig(
        federation=sites.files.federation,
        schema=sites.files.bank_schema,
        table=sites.files.bank_table,
        data_dir=data_dir,
        partner=PartnerEndpoint(address="127.0.0.1:1"),
        insecure=True,
    )


def test_the_bank_trains_on_its_aligned_rows_with_their_labels_and_split(
    sites: TrainingSites,
) -> None:
    training_set = load_training_set(_config(sites, sites.bank_data))

    federation = load_federation(sites.files.federation)
    table = load_party_table(
        load_party_schema(sites.files.bank_schema, federation), sites.files.bank_table
    )
    row_of = {identifier: row for row, identifier in enumerate(table.ids)}
    with AlignmentStore(sites.bank_data) as store:
        rows = [row_of[i] for _, ids in store.members() for i in ids]
    data = training_set.data
    assert training_set.alignment.intersection_size == sites.intersection == len(rows)
    assert len(data.features.numeric) == sites.intersection
    np.testing.assert_array_equal(data.split, table.split[rows])
    assert set(data.tasks) == set(data.labels) == set(table.labels)
    for task, values in data.labels.items():
        np.testing.assert_array_equal(values, table.labels[task][rows])


def test_a_bank_that_never_aligned_cannot_load_a_training_set(
    sites: TrainingSites, tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="run an alignment first"):
        load_training_set(_config(sites, tmp_path))
