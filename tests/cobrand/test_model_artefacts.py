"""A version's model files: state dicts read back without running pickled code, bottoms rebuilt
from their sizes and preprocessor with the same outputs, and files that do not fit refused."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch

from cobrand.errors import FailedPrecondition
from cobrand.model_artefacts import (
    bottom_sizes,
    json_bytes,
    load_bottom,
    load_preprocessor,
    load_state_dict,
    state_dict_bytes,
)
from cobrand.model_manifest import ModelDigests
from cobrand.model_store import ModelStore, StoredVersion
from cobrand.split_model import BottomModel, BottomSpec
from tests.model_parts import fitted_table

MODEL = ModelDigests.of(
    bank_weights=hashlib.sha256(b"bank").digest(),
    partner_weights=hashlib.sha256(b"partner").digest(),
    partner_preprocessor=hashlib.sha256(b"preprocessor").digest(),
)


class _NotWeights:
    """Something a pickle could carry that is not a tensor."""


def _stored(tmp_path: Path, files: dict[str, bytes]) -> StoredVersion:
    store = ModelStore(tmp_path)
    store.save("partner", MODEL, files)
    return store.load(MODEL.version_id)


def test_bottom_is_rebuilt_from_its_files_with_the_same_embeddings(tmp_path: Path) -> None:
    table, preprocessor = fitted_table("partner")
    torch.manual_seed(0)
    spec = BottomSpec.from_preprocessor(preprocessor, embedding_width=6, hidden=12)
    bottom = BottomModel(spec).eval()
    version = _stored(
        tmp_path,
        {
            "bottom.pt": state_dict_bytes(bottom.state_dict()),
            "bottom.json": json_bytes(bottom_sizes(spec)),
            "preprocessor.json": preprocessor.to_json().encode(),
        },
    )
    encoded = preprocessor.transform(table)
    inputs = (torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.categorical))

    loaded_preprocessor = load_preprocessor(version, "preprocessor.json")
    rebuilt = load_bottom(
        version, "bottom.pt", version.document("bottom.json"), loaded_preprocessor
    )

    assert loaded_preprocessor.digest() == preprocessor.digest()
    assert rebuilt.spec == spec
    assert not rebuilt.training
    with torch.no_grad():
        assert torch.equal(rebuilt(*inputs), bottom(*inputs))


def test_a_pickle_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"weight": _NotWeights()}, buffer)
    version = _stored(tmp_path, {"bottom.pt": buffer.getvalue()})

    with pytest.raises(FailedPrecondition, match=r"bottom\.pt is not a readable state dict"):
        load_state_dict(version, "bottom.pt")


def test_weights_that_do_not_fit_the_bottom_are_refused(tmp_path: Path) -> None:
    _, preprocessor = fitted_table("partner")
    spec = BottomSpec.from_preprocessor(preprocessor, hidden=12)
    version = _stored(tmp_path, {"bottom.pt": state_dict_bytes(BottomModel(spec).state_dict())})

    with pytest.raises(FailedPrecondition, match=r"bottom\.pt does not fit the bottom network"):
        load_bottom(version, "bottom.pt", {"hidden": 13}, preprocessor)


def test_sizes_naming_what_the_preprocessor_determines_are_refused(tmp_path: Path) -> None:
    _, preprocessor = fitted_table("partner")
    version = _stored(tmp_path, {"bottom.pt": b""})

    with pytest.raises(FailedPrecondition, match="bottom sizes name"):
        load_bottom(version, "bottom.pt", {"cardinalities": [3]}, preprocessor)


def test_a_preprocessor_file_that_is_not_one_is_refused_naming_the_file(tmp_path: Path) -> None:
    version = _stored(tmp_path, {"preprocessor.json": b'{"format": "cobrand.preprocessor/1"}'})

    with pytest.raises(FailedPrecondition, match=r"preprocessor\.json: preprocessor JSON"):
        load_preprocessor(version, "preprocessor.json")


def test_an_artefact_the_version_does_not_hold_is_named(tmp_path: Path) -> None:
    version = _stored(tmp_path, {"bottom.pt": b""})

    with pytest.raises(FailedPrecondition, match=r"no artefact head\.pt; it holds bottom\.pt"):
        load_state_dict(version, "head.pt")
