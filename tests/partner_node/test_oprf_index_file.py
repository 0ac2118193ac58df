"""The partner's saved OPRF index: read back whole, and refused, naming the file and why, when it
was computed from another key, federation or table, or is truncated or corrupt."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from cobrand import oprf
from cobrand.errors import ConfigError
from partner_node.oprf_index import OprfIndex, build_index
from partner_node.oprf_index_file import IndexBinding, load_saved_index, save_index

DOMAIN = b"\x00\x04test"
KIND = "mobile_cn"
KEY = oprf.new_scalar()
IDS = np.array([f"+86138{i:08d}" for i in range(200)], dtype=object)


@pytest.fixture(scope="module")
def built() -> OprfIndex:
    return build_index(KEY, KIND, IDS, DOMAIN, workers=1)


@pytest.fixture
def saved(tmp_path: Path, built: OprfIndex) -> Path:
    path = tmp_path / "oprf_index.bin"
    save_index(path, IndexBinding.of(KEY, DOMAIN, KIND, IDS), built.outputs, built.rows)
    return path


def _binding(
    key: bytes = KEY, domain: bytes = DOMAIN, kind: str = KIND, ids: npt.NDArray[np.object_] = IDS
) -> IndexBinding:
    return IndexBinding.of(key, domain, kind, ids)


def test_a_saved_index_reads_back_whole_and_owner_only(saved: Path, built: OprfIndex) -> None:
    loaded = load_saved_index(saved, _binding())

    assert loaded is not None
    outputs, rows = loaded
    np.testing.assert_array_equal(outputs, built.outputs)
    np.testing.assert_array_equal(rows, built.rows)
    user = oprf.evaluate_lookup(KEY, DOMAIN, KIND, str(IDS[42]))
    assert OprfIndex(outputs, rows).row(user) == 42
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    # No identifier and no key in the file.
    assert str(IDS[42]).encode() not in saved.read_bytes()
    assert KEY not in saved.read_bytes()


def test_an_index_saved_under_another_oprf_suite_is_refused_not_served(
    tmp_path: Path, built: OprfIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As an index saved before the consented lookup moved to RFC 9497's ristretto255 suite.
    path = tmp_path / "oprf_index.bin"
    with monkeypatch.context() as patch:
        patch.setattr(oprf, "CONTEXT_STRING", b"OPRFV1-\x00-P256-SHA256")
        save_index(path, _binding(), built.outputs, built.rows)
    with pytest.raises(ConfigError, match="computed for another federation or OPRF suite"):
        load_saved_index(path, _binding())


def test_no_saved_index_is_none(tmp_path: Path) -> None:
    assert load_saved_index(tmp_path / "oprf_index.bin", _binding()) is None


@pytest.mark.parametrize(
    ("binding", "why"),
    [
        (_binding(key=oprf.new_scalar()), "under another OPRF key"),
        (_binding(domain=DOMAIN + b"1"), "for another federation"),
        (_binding(ids=IDS[::-1]), "from another partner table"),
        (_binding(ids=IDS[:-1]), "from another partner table"),
        (_binding(kind="customer_number"), "from another partner table"),
    ],
    ids=["key rotated", "other federation", "rows reordered", "row removed", "other kind"],
)
def test_an_index_saved_from_other_inputs_is_refused_naming_the_file_and_what_changed(
    saved: Path, binding: IndexBinding, why: str
) -> None:
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(saved))}: the saved OPRF index was computed {why}"
    ):
        load_saved_index(saved, binding)


def test_a_truncated_index_is_refused_naming_the_file(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[:-8])

    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(saved))}: .* {len(data) - 8} bytes, {len(data)} "
    ):
        load_saved_index(saved, _binding())

    saved.write_bytes(data[:100])
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(saved))}: not a saved OPRF index \(100 bytes"
    ):
        load_saved_index(saved, _binding())


@pytest.mark.parametrize(
    "at", [-1, -8 * 200 - 1, 16, 130], ids=["a row", "an output", "its count", "its MAC"]
)
def test_a_flipped_bit_is_refused_naming_the_file(saved: Path, at: int) -> None:
    data = bytearray(saved.read_bytes())
    data[at] ^= 0x10
    saved.write_bytes(bytes(data))

    with pytest.raises(ConfigError, match=rf"^{re.escape(str(saved))}: the saved OPRF index is "):
        load_saved_index(saved, _binding())


def test_a_forged_index_with_a_recomputed_checksum_is_refused_without_the_key(
    saved: Path, built: OprfIndex
) -> None:
    # Someone who may write the file but does not hold the key points a user at another row.
    rows = built.rows.copy()
    rows[[0, 1]] = rows[[1, 0]]
    forger = _binding(key=oprf.new_scalar())
    honest = _binding()
    save_index(saved, forger, built.outputs, rows)
    data = bytearray(saved.read_bytes())
    data[24:56] = honest.key_id
    saved.write_bytes(bytes(data))

    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(saved))}: the saved OPRF index is corrupt"
    ):
        load_saved_index(saved, honest)


def test_something_else_in_its_place_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "oprf_index.bin"
    path.write_bytes(b"{}" * 200)

    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(path))}: not a saved OPRF index \(400 bytes"
    ):
        load_saved_index(path, _binding())
