"""Model version manifests: the version id of both weights digests, and cross-party digests that
catch a peer holding other files than it published."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.model_manifest import (
    ModelDigests,
    check_version_id,
    is_version_id,
    manifest_digest,
    model_version,
    verify_peer,
)
from cobrand.model_store import ModelStore

MODEL = ModelDigests.of(
    bank_weights=hashlib.sha256(b"bank").digest(),
    partner_weights=hashlib.sha256(b"partner").digest(),
    partner_preprocessor=hashlib.sha256(b"preprocessor").digest(),
)
FILES = {"bottom.pt": b"\x00weights\xff" * 10, "scaling.json": b'{"pdo": 20}\n'}


def test_version_id_is_the_hash_of_both_weights_digests() -> None:
    expected = hashlib.sha256(
        hashlib.sha256(b"bank").digest() + hashlib.sha256(b"partner").digest()
    ).hexdigest()[:16]

    assert MODEL.version_id == expected
    assert model_version(MODEL.bank_weights_sha256, MODEL.partner_weights_sha256) == expected


def test_manifest_digest_changes_with_any_artefact(tmp_path: Path) -> None:
    one = ModelStore(tmp_path / "one").save("bank", MODEL, FILES)
    other = ModelStore(tmp_path / "two").save("bank", MODEL, {**FILES, "bottom.pt": b"changed"})

    assert manifest_digest(one) != manifest_digest(other)


def test_peer_holding_the_recorded_manifest_is_verified(tmp_path: Path) -> None:
    partner = ModelStore(tmp_path / "partner").save("partner", MODEL, FILES)
    bank_store = ModelStore(tmp_path / "bank")
    bank_store.save("bank", MODEL, FILES, peer_manifest_sha256=manifest_digest(partner))

    verify_peer(bank_store.manifest(MODEL.version_id), MODEL.version_id, manifest_digest(partner))


def test_peer_holding_other_files_is_refused_with_both_digests(tmp_path: Path) -> None:
    published = ModelStore(tmp_path / "partner").save("partner", MODEL, FILES)
    changed = ModelStore(tmp_path / "changed").save("partner", MODEL, {"bottom.pt": b"retrained"})
    bank = ModelStore(tmp_path / "bank").save(
        "bank", MODEL, FILES, peer_manifest_sha256=manifest_digest(published)
    )

    with pytest.raises(FailedPrecondition) as raised:
        verify_peer(bank, MODEL.version_id, manifest_digest(changed))

    message = str(raised.value)
    assert f"the partner holds manifest {manifest_digest(changed).hex()[:12]}" in message
    assert f"the bank recorded {manifest_digest(published).hex()[:12]}" in message


def test_peer_answering_for_another_version_is_refused(tmp_path: Path) -> None:
    bank = ModelStore(tmp_path).save("bank", MODEL, FILES, peer_manifest_sha256=b"\x01" * 32)

    with pytest.raises(FailedPrecondition, match="answered for version 0000000000000000"):
        verify_peer(bank, "0" * 16, b"\x01" * 32)


def test_version_without_a_recorded_peer_is_not_used(tmp_path: Path) -> None:
    partner = ModelStore(tmp_path).save("partner", MODEL, FILES)

    with pytest.raises(FailedPrecondition, match="no bank manifest recorded"):
        verify_peer(partner, MODEL.version_id, b"\x01" * 32)


@pytest.mark.parametrize("value", ["", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0"])
def test_a_malformed_version_id_is_refused_naming_what_it_is(value: str) -> None:
    with pytest.raises(InvalidRequest, match=f"model version {value!r} is not 16 lower-case hex"):
        check_version_id(value, "model version")


def test_a_version_id_of_model_digests_is_accepted() -> None:
    version_id = model_version("00" * 32, "11" * 32)

    assert is_version_id(version_id)
    assert check_version_id(version_id, "model version") == version_id
