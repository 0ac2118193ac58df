"""Atomic, durable file replacement: old or new, whole, and no partial left behind; new files
created with their permissions (keys); and lines appended durably to audit trails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cobrand.durable import append_line, write_atomically, write_new
from cobrand.errors import AlreadyExists


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


@pytest.mark.usefixtures("umask_022")
def test_a_new_file_has_its_mode_from_creation_without_a_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("a chmod after creation leaves the file readable meanwhile")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)

    write_new(tmp_path / "key.pem", b"secret", mode=0o600)

    assert (tmp_path / "key.pem").read_bytes() == b"secret"
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600


def test_a_new_file_never_overwrites_an_existing_one(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"key in use")

    with pytest.raises(AlreadyExists, match=r"key\.pem already exists"):
        write_new(path, b"other", mode=0o600)

    assert path.read_bytes() == b"key in use"


@pytest.mark.usefixtures("umask_022")
def test_appended_lines_follow_each_other_in_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "probes.jsonl"
    append_line(path, '{"n": 1}')
    append_line(path, '{"n": 2}')
    assert path.read_text(encoding="utf-8") == '{"n": 1}\n{"n": 2}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.usefixtures("umask_022")
def test_a_replaced_file_has_its_mode_from_creation_and_the_usual_one_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = tmp_path / "index.bin", tmp_path / "report.json"
    seen: list[int] = []
    real_replace = os.replace

    def replace_noting_the_partial_mode(source: str, target: str) -> None:
        seen.append(stat.S_IMODE(os.stat(source).st_mode))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_noting_the_partial_mode)

    write_atomically(private, b"rows", mode=0o600)
    write_atomically(public, b"{}")

    # The partial was already owner-only: never readable by others, not even before the rename.
    assert seen == [0o600, 0o644]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_an_unsynced_line_is_appended_without_a_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "calls.jsonl"
    append_line(path, '{"n": 1}')
    flushed: list[int] = []
    monkeypatch.setattr(os, "fsync", flushed.append)

    append_line(path, '{"n": 2}', sync=False)
    append_line(path, '{"n": 3}')

    assert path.read_text(encoding="utf-8") == '{"n": 1}\n{"n": 2}\n{"n": 3}\n'
    assert len(flushed) == 1
