"""The partner's OPRF key file and its index of every user by lookup output, built once and
read back from its saved file at the next start."""

import os
import stat
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cobrand import oprf
from cobrand.errors import ConfigError, Unavailable
from partner_node import oprf_index
from partner_node.oprf_index import OprfIndex, OprfIndexBuild, build_index, load_or_create_key
from partner_node.oprf_index_file import IndexBinding, load_saved_index

DOMAIN = b"\x00\x04test"
KIND = "mobile_cn"


def _ids(count: int) -> npt.NDArray[np.object_]:
    return np.array([f"+86138{i:08d}" for i in range(count)], dtype=object)


def test_a_missing_key_file_is_made_readable_by_the_owner_alone_and_then_reused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "oprf.key"

    key = load_or_create_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    oprf.check_key(key)
    assert load_or_create_key(path) == key


def test_a_key_file_others_may_read_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "oprf.key"
    load_or_create_key(path)
    os.chmod(path, 0o644)

    with pytest.raises(ConfigError, match=rf"{path}: .*mode 0644.*chmod 600"):
        load_or_create_key(path)


def test_a_key_file_that_holds_no_key_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "oprf.key"
    path.write_bytes(b"\xff" * 32)
    os.chmod(path, 0o600)

    with pytest.raises(ConfigError, match=rf"{path}: .*below the group order"):
        load_or_create_key(path)


def test_every_user_is_found_by_their_output_and_nobody_else() -> None:
    key = oprf.new_scalar()
    ids = _ids(300)

    index = build_index(key, KIND, ids, DOMAIN, workers=2)

    for row in (0, 17, 299):
        output = oprf.evaluate_lookup(key, DOMAIN, KIND, str(ids[row]))
        assert index.row(output) == row
    stranger = oprf.evaluate_lookup(key, DOMAIN, KIND, "+8619999999999")
    assert index.row(stranger) is None
    # Under another key nobody's output is in the index.
    other = oprf.evaluate_lookup(oprf.new_scalar(), DOMAIN, KIND, ids[0])
    assert index.row(other) is None


def test_an_output_ending_in_a_zero_byte_is_found() -> None:
    # numpy's fixed-width bytes drop trailing zeros when read out one at a time.
    key = oprf.new_scalar()
    ids: list[str] = []
    output = b""
    while not output.endswith(b"\x00"):
        ids.append(f"+86138{len(ids):08d}")
        output = oprf.evaluate_lookup(key, DOMAIN, KIND, ids[-1])

    index = build_index(key, KIND, np.array(ids, dtype=object), DOMAIN, workers=1)

    assert index.row(output) == len(ids) - 1


def test_the_index_is_built_in_the_background_when_first_asked_for(tmp_path: Path) -> None:
    key = oprf.new_scalar()
    ids = _ids(50)

    build = OprfIndexBuild(key, KIND, ids, DOMAIN, tmp_path / "oprf_index.bin", workers=1)

    output = oprf.evaluate_lookup(key, DOMAIN, KIND, str(ids[7]))
    assert build.index(wait_s=30.0).row(output) == 7


def test_a_lookup_while_the_index_builds_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_build = oprf_index.build_index

    def held_build(*args: Any) -> OprfIndex:
        release.wait(30.0)
        return real_build(*args)

    monkeypatch.setattr(oprf_index, "build_index", held_build)
    build = OprfIndexBuild(
        oprf.new_scalar(), KIND, _ids(5), DOMAIN, tmp_path / "oprf_index.bin", workers=1
    )

    with pytest.raises(Unavailable, match="consented lookup index is still loading"):
        build.index(wait_s=0.0)
    release.set()
    assert len(build.index(wait_s=30.0).outputs) == 5


def _never_built(*args: Any) -> OprfIndex:
    raise AssertionError("the index was built, not read from its saved file")


def test_a_saved_index_is_read_at_the_next_start_instead_of_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key, ids, saved = oprf.new_scalar(), _ids(60), tmp_path / "oprf_index.bin"
    first = OprfIndexBuild(key, KIND, ids, DOMAIN, saved, workers=1).index(wait_s=30.0)
    written = saved.stat()
    monkeypatch.setattr(oprf_index, "build_index", _never_built)

    with caplog.at_level("INFO", logger=oprf_index.__name__):
        again = OprfIndexBuild(key, KIND, ids, DOMAIN, saved, workers=1).index(wait_s=30.0)

    np.testing.assert_array_equal(again.outputs, first.outputs)
    np.testing.assert_array_equal(again.rows, first.rows)
    assert f"60 partner users' index loaded from {saved}" in caplog.text
    assert (saved.stat().st_mtime_ns, saved.stat().st_ino) == (written.st_mtime_ns, written.st_ino)


def test_an_index_saved_under_another_key_is_named_rebuilt_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids, saved = _ids(40), tmp_path / "oprf_index.bin"
    OprfIndexBuild(oprf.new_scalar(), KIND, ids, DOMAIN, saved, workers=1).index(wait_s=30.0)
    rotated = oprf.new_scalar()

    with caplog.at_level("INFO", logger=oprf_index.__name__):
        index = OprfIndexBuild(rotated, KIND, ids, DOMAIN, saved, workers=1).index(wait_s=30.0)

    user = oprf.evaluate_lookup(rotated, DOMAIN, KIND, str(ids[9]))
    assert index.row(user) == 9
    assert f"{saved}: the saved OPRF index was computed under another OPRF key" in caplog.text
    assert f"index saved to {saved}" in caplog.text
    # What replaced it is read back under the new key.
    assert load_saved_index(saved, IndexBinding.of(rotated, DOMAIN, KIND, ids)) is not None


def test_an_index_that_cannot_be_saved_is_served_all_the_same(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A file where the data directory should be: nothing can be written under it.
    (tmp_path / "data").write_bytes(b"")
    saved = tmp_path / "data" / "oprf_index.bin"
    key, ids = oprf.new_scalar(), _ids(20)

    index = OprfIndexBuild(key, KIND, ids, DOMAIN, saved, workers=1).index(wait_s=30.0)

    user = oprf.evaluate_lookup(key, DOMAIN, KIND, str(ids[3]))
    assert index.row(user) == 3
    assert f"{saved}: cannot save the index" in caplog.text
