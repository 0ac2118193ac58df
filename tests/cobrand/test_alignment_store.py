"""The persisted alignment result: whole or absent, replaced atomically, checked when opened."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cobrand.alignment_store import (
    ALIGNMENT_FILE,
    JOIN_KEY_DTYPE,
    AlignmentStore,
    AlignmentSummary,
    intersection_digest,
    write_alignment,
)
from cobrand.errors import FailedPrecondition, InvalidRequest, NotFound
from cobrand.pki import Party

ROOT = Path(__file__).resolve().parents[2]


def _members(n: int, seed: int) -> tuple[npt.NDArray[np.void], list[str]]:
    rng = np.random.default_rng(seed)
    keys = np.sort(np.frombuffer(rng.bytes(16 * n), dtype="S16"))
    ids = [f"+8613{seed:02d}{i:07d}" for i in range(n)]
    return keys.view(JOIN_KEY_DTYPE), ids


def _summary(run_id: str, keys: npt.NDArray[np.void]) -> AlignmentSummary:
    return AlignmentSummary(
        run_id=run_id,
        party=Party.BANK,
        federation_id="test-federation",
        federation_digest=bytes(range(32)),
        protocol_version=1,
        committed_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        own_rows=len(keys) * 3,
        peer_rows=len(keys) * 2,
        intersection_size=len(keys),
        intersection_digest=intersection_digest(keys),
    )


def test_a_written_result_reads_back_whole_and_in_join_key_order(tmp_path: Path) -> None:
    keys, ids = _members(1_000, seed=1)
    summary = _summary("run-1", keys)

    write_alignment(tmp_path, summary, keys, ids)

    with AlignmentStore(tmp_path) as store:
        assert store.summary == summary
        batches = list(store.members(batch_size=300))
        assert [len(k) for k, _ in batches] == [300, 300, 300, 100]
        assert np.concatenate([k for k, _ in batches]).tobytes() == keys.tobytes()
        assert list(np.concatenate([i for _, i in batches])) == ids
        assert store.canonical_id(keys[17].tobytes()) == ids[17]
        assert store.canonical_id(bytes(16)) is None
        assert store.join_key(ids[17]) == keys[17].tobytes()
        assert store.join_key("+8600000000000") is None


def test_keys_ending_in_zero_bytes_keep_their_full_width(tmp_path: Path) -> None:
    keys = np.frombuffer(bytes(15) + b"\x01" + b"\x05" + bytes(15), dtype=JOIN_KEY_DTYPE)
    write_alignment(tmp_path, _summary("run-z", keys), keys, ["a", "b"])

    with AlignmentStore(tmp_path) as store:
        assert store.canonical_id(b"\x05" + bytes(15)) == "b"
        assert next(store.members())[0].tobytes() == keys.tobytes()


def test_an_empty_intersection_is_a_valid_result(tmp_path: Path) -> None:
    keys = np.empty(0, dtype=JOIN_KEY_DTYPE)
    write_alignment(tmp_path, _summary("run-0", keys), keys, [])

    with AlignmentStore(tmp_path) as store:
        assert store.summary.intersection_size == 0
        assert list(store.members()) == []


def test_a_rerun_replaces_the_result_while_an_open_reader_keeps_the_old_one(
    tmp_path: Path,
) -> None:
    old_keys, old_ids = _members(500, seed=2)
    new_keys, new_ids = _members(700, seed=3)
    write_alignment(tmp_path, _summary("run-old", old_keys), old_keys, old_ids)

    with AlignmentStore(tmp_path) as reader:
        write_alignment(tmp_path, _summary("run-new", new_keys), new_keys, new_ids)
        assert reader.canonical_id(old_keys[0].tobytes()) == old_ids[0]

    with AlignmentStore(tmp_path) as store:
        assert store.summary.run_id == "run-new"
        assert store.canonical_id(new_keys[0].tobytes()) == new_ids[0]
        assert store.canonical_id(old_keys[0].tobytes()) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [ALIGNMENT_FILE]


class _FailingIds(Sequence[str]):
    """Identifiers that break while the second insert batch is being read."""

    def __init__(self, ids: list[str]) -> None:
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice) and index.start:
            raise OSError("disk vanished")
        return self._ids[index]


def test_a_write_that_fails_midway_leaves_the_previous_result_and_no_partial_file(
    tmp_path: Path,
) -> None:
    old_keys, old_ids = _members(100, seed=4)
    write_alignment(tmp_path, _summary("run-old", old_keys), old_keys, old_ids)
    new_keys, new_ids = _members(120_000, seed=5)

    with pytest.raises(OSError, match="disk vanished"):
        write_alignment(tmp_path, _summary("run-new", new_keys), new_keys, _FailingIds(new_ids))

    with AlignmentStore(tmp_path) as store:
        assert store.summary.run_id == "run-old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [ALIGNMENT_FILE]


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from cobrand.alignment_store import write_alignment
    from tests.cobrand.test_alignment_store import _members, _summary

    class Stalling(list):
        def __getitem__(self, index):
            if isinstance(index, slice) and index.start:
                Path(sys.argv[2]).touch()  # the first batch is in the partial file
                time.sleep(60)
            return super().__getitem__(index)

    keys, ids = _members(120_000, seed=6)
    write_alignment(Path(sys.argv[1]), _summary("run-killed", keys), keys, Stalling(ids))
    """
)


def test_a_writer_killed_midway_never_leaves_a_result_that_looks_complete(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old_keys, old_ids = _members(100, seed=7)
    write_alignment(data, _summary("run-old", old_keys), old_keys, old_ids)
    marker = tmp_path / "stalled"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(data), str(marker)], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert writer.poll() is None, "the writer ended before it stalled"
            assert time.monotonic() < deadline, "the writer never reached its second batch"
            time.sleep(0.05)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert any(p.name.endswith(".partial") for p in data.iterdir())

    with AlignmentStore(data) as store:
        assert store.summary.run_id == "run-old"
    new_keys, new_ids = _members(50, seed=8)
    write_alignment(data, _summary("run-again", new_keys), new_keys, new_ids)
    assert sorted(p.name for p in data.iterdir()) == [ALIGNMENT_FILE]
    with AlignmentStore(data) as store:
        assert store.summary.run_id == "run-again"


def test_unsorted_keys_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    keys, ids = _members(10, seed=9)
    shuffled = keys[::-1].copy()

    with pytest.raises(InvalidRequest, match="not strictly ascending"):
        write_alignment(tmp_path, _summary("run-bad", shuffled), shuffled, ids)
    assert not (tmp_path / ALIGNMENT_FILE).exists()


def test_keys_that_disagree_with_the_summary_are_refused(tmp_path: Path) -> None:
    keys, ids = _members(10, seed=10)
    other, _ = _members(10, seed=11)

    with pytest.raises(InvalidRequest, match="digest"):
        write_alignment(tmp_path, _summary("run-bad", other), keys, ids)
    with pytest.raises(InvalidRequest, match="9 identifiers for an intersection of 10"):
        write_alignment(tmp_path, _summary("run-bad", keys), keys, ids[:9])


def test_opening_a_directory_without_a_result_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no alignment result"):
        AlignmentStore(tmp_path)


def test_a_result_missing_members_is_refused(tmp_path: Path) -> None:
    keys, ids = _members(10, seed=12)
    path = write_alignment(tmp_path, _summary("run-1", keys), keys, ids)
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM members WHERE canonical_id = ?", (ids[3],))

    with pytest.raises(FailedPrecondition, match="9 members for an intersection of 10"):
        AlignmentStore(tmp_path)


def test_a_file_that_is_not_a_result_is_refused(tmp_path: Path) -> None:
    (tmp_path / ALIGNMENT_FILE).write_bytes(b"not a database at all" * 100)

    with pytest.raises(FailedPrecondition, match="not a readable alignment result"):
        AlignmentStore(tmp_path)
