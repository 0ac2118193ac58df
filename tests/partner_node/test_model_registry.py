"""The partner's half of a model version: published under the bank's version id only for the
checkpoint and preprocessing the bank names, and read back into the same bottom network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from cobrand.errors import FailedPrecondition, InvalidRequest, UnknownModelVersion
from cobrand.model_manifest import ModelDigests, manifest_digest
from cobrand.model_store import ModelStore
from cobrand.preprocess import Preprocessor
from cobrand.split_model import BottomModel, BottomSpec
from cobrand.weights import weights_digest
from partner_node.model_registry import load_partner_version, publish
from tests.model_parts import fitted_table

BANK_WEIGHTS = hashlib.sha256(b"bank weights").digest()
BANK_MANIFEST = hashlib.sha256(b"bank manifest").digest()


class _Checkpoint:
    """The partner's bottom of the round the bank chose, and the digests the bank names."""

    def __init__(self) -> None:
        table, self.preprocessor = fitted_table("partner")
        self.encoded = self.preprocessor.transform(table)
        self.spec = BottomSpec.from_preprocessor(self.preprocessor, embedding_width=5)
        torch.manual_seed(3)
        self.bottom = BottomModel(self.spec).eval()
        self.weights = self.bottom.state_dict()
        self.model = ModelDigests.of(
            bank_weights=BANK_WEIGHTS,
            partner_weights=weights_digest(self.weights),
            partner_preprocessor=self.preprocessor.digest(),
        )

    def publish(
        self,
        store: ModelStore,
        *,
        version_id: str | None = None,
        bank_manifest: bytes = BANK_MANIFEST,
        weights: dict[str, torch.Tensor] | None = None,
        preprocessor: Preprocessor | None = None,
    ) -> bytes:
        return publish(
            store,
            version_id or self.model.version_id,
            self.model,
            bank_manifest,
            weights=weights or self.weights,
            spec=self.spec,
            preprocessor=preprocessor or self.preprocessor,
        )


@pytest.fixture(scope="module")
def checkpoint() -> _Checkpoint:
    return _Checkpoint()


def test_published_version_embeds_like_the_trained_bottom(
    checkpoint: _Checkpoint, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)

    digest = checkpoint.publish(store)
    version = load_partner_version(store, checkpoint.model.version_id)
    numeric = torch.from_numpy(checkpoint.encoded.numeric[:40])
    categorical = torch.from_numpy(checkpoint.encoded.categorical[:40])

    assert digest == manifest_digest(version.manifest)
    assert version.manifest.party == "partner"
    assert version.manifest.peer_manifest_sha256 == BANK_MANIFEST.hex()
    assert version.preprocessor == checkpoint.preprocessor
    with torch.no_grad():
        assert torch.equal(
            version.bottom(numeric, categorical), checkpoint.bottom(numeric, categorical)
        )


def test_publishing_again_returns_the_same_digest(checkpoint: _Checkpoint, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)

    assert checkpoint.publish(store) == checkpoint.publish(store)
    assert store.versions() == [checkpoint.model.version_id]


def test_publishing_again_with_another_bank_manifest_is_refused(
    checkpoint: _Checkpoint, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)
    checkpoint.publish(store)

    with pytest.raises(FailedPrecondition, match="recorded already"):
        checkpoint.publish(store, bank_manifest=hashlib.sha256(b"another").digest())


def test_weights_other_than_the_checkpoint_the_bank_names_are_refused(
    checkpoint: _Checkpoint, tmp_path: Path
) -> None:
    other = {name: tensor + 1.0 for name, tensor in checkpoint.weights.items()}
    store = ModelStore(tmp_path)

    with pytest.raises(FailedPrecondition) as raised:
        checkpoint.publish(store, weights=other)

    assert f"partner_weights_sha256 names {checkpoint.model.partner_weights_sha256[:12]}" in str(
        raised.value
    )
    assert weights_digest(other).hex()[:12] in str(raised.value)
    assert store.versions() == []


def test_preprocessing_other_than_the_bank_names_is_refused(
    checkpoint: _Checkpoint, tmp_path: Path
) -> None:
    _, refitted = fitted_table("partner", seed=9)

    named, fitted = checkpoint.model.partner_preprocessor_sha256, refitted.digest().hex()

    with pytest.raises(
        FailedPrecondition,
        match=f"partner_preprocessor_sha256 names {named[:12]}, the run trained with {fitted[:12]}",
    ):
        checkpoint.publish(ModelStore(tmp_path), preprocessor=refitted)


def test_a_version_id_that_is_not_the_digests_id_is_refused(
    checkpoint: _Checkpoint, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequest, match="is not the id of the digests it names"):
        checkpoint.publish(ModelStore(tmp_path), version_id="0123456789abcdef")


def test_a_bank_manifest_digest_of_the_wrong_size_is_refused(
    checkpoint: _Checkpoint, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequest, match="has 3 bytes, not 32"):
        checkpoint.publish(ModelStore(tmp_path), bank_manifest=b"abc")


def test_a_tampered_bottom_is_refused_naming_the_file(
    checkpoint: _Checkpoint, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)
    checkpoint.publish(store)
    path = tmp_path / checkpoint.model.version_id / "partner_bottom.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(FailedPrecondition, match=r"partner_bottom\.pt has"):
        load_partner_version(store, checkpoint.model.version_id)


def test_an_unknown_version_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelVersion):
        load_partner_version(ModelStore(tmp_path), "0123456789abcdef")
