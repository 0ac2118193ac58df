"""A party's table put in alignment order: rows follow the join keys, a changed table is refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from cobrand.aligned_rows import aligned_rows, aligned_table
from cobrand.alignment_store import (
    JOIN_KEY_DTYPE,
    AlignmentStore,
    AlignmentSummary,
    intersection_digest,
    write_alignment,
)
from cobrand.errors import FailedPrecondition
from cobrand.pki import Party
from cobrand.tables import PartyTable

IDS = np.array([f"+86138000000{i:02d}" for i in range(6)], dtype=object)


def _table(ids: npt.NDArray[np.object_]) -> PartyTable:
    n = len(ids)
    return PartyTable(
        ids=ids,
        numeric=np.arange(n, dtype=np.float64).reshape(n, 1),
        categorical=np.array([[f"c{i}"] for i in range(n)], dtype=object),
        labels={"risk": np.arange(n, dtype=np.float32)},
        split=np.arange(n, dtype=np.int8) % 3,
        dropped_identifiers=0,
        source=Path("bank.csv"),
    )


def _store(directory: Path, members: list[str]) -> AlignmentStore:
    # Ascending join keys, listed in the order `members` names the customers.
    keys = np.array([bytes([k + 1]) * 16 for k in range(len(members))], dtype="S16")
    keys = keys.view(JOIN_KEY_DTYPE)
    summary = AlignmentSummary(
        run_id="align-1",
        party=Party.BANK,
        federation_id="f",
        federation_digest=bytes(32),
        protocol_version=1,
        committed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        own_rows=len(IDS),
        peer_rows=10,
        intersection_size=len(members),
        intersection_digest=intersection_digest(keys),
    )
    write_alignment(directory, summary, keys, members)
    return AlignmentStore(directory)


def test_rows_follow_the_join_key_order_of_the_alignment(tmp_path: Path) -> None:
    # Join-key order is not table order: the store lists customers 4, 1 and 3.
    with _store(tmp_path, [IDS[4], IDS[1], IDS[3]]) as store:
        rows = aligned_rows(_table(IDS), store)
        cut = aligned_table(_table(IDS), store)

    assert rows.tolist() == [4, 1, 3]
    assert cut.ids.tolist() == [IDS[4], IDS[1], IDS[3]]
    assert cut.numeric[:, 0].tolist() == [4.0, 1.0, 3.0]
    assert cut.categorical[:, 0].tolist() == ["c4", "c1", "c3"]
    assert cut.labels["risk"].tolist() == [4.0, 1.0, 3.0]
    assert cut.split.tolist() == [1, 1, 0]


def test_an_alignment_naming_customers_the_table_lost_is_refused_without_naming_them(
    tmp_path: Path,
) -> None:
    with (
        _store(tmp_path, [IDS[0], IDS[2], IDS[5]]) as store,
        pytest.raises(FailedPrecondition) as refused,
    ):
        aligned_rows(_table(IDS[:3]), store)

    message = str(refused.value)
    assert "bank.csv: 1 of the 3 customers of alignment 'align-1' are not in the table" in message
    assert "aligned position 2" in message
    assert "run it again" in message
    assert str(IDS[5]) not in message
