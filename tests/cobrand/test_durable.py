"""Atomic, durable file replacement: old or new, whole, and no partial left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from cobrand.durable import write_atomically


def test_a_file_is_replaced_whole_and_its_directory_made(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.json"

    write_atomically(path, b"first")
    write_atomically(path, b"second")

    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_a_failed_replacement_keeps_the_old_file_and_leaves_no_partial(tmp_path: Path) -> None:
    # A directory where the file should go: the rename fails after the data was written.
    blocked = tmp_path / "report.json"
    (blocked / "occupied").mkdir(parents=True)

    with pytest.raises(IsADirectoryError):
        write_atomically(blocked, b"new")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert [p.name for p in blocked.iterdir()] == ["occupied"]
