"""The model registry: versions round-trip, are written whole or not at all, and refuse any file
that differs from the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cobrand.errors import FailedPrecondition, InvalidRequest, UnknownModelVersion
from cobrand.model_manifest import MANIFEST_FILE, Manifest, ModelDigests, manifest_digest
from cobrand.model_store import ModelStore

MODEL = ModelDigests.of(
    bank_weights=hashlib.sha256(b"bank").digest(),
    partner_weights=hashlib.sha256(b"partner").digest(),
    partner_preprocessor=hashlib.sha256(b"preprocessor").digest(),
)
FILES = {"bottom.pt": b"\x00weights\xff" * 10, "scaling.json": b'{"pdo": 20}\n'}


def test_saved_version_loads_with_the_same_files_and_manifest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")

    saved = store.save("bank", MODEL, FILES)
    loaded = store.load(MODEL.version_id)

    assert store.versions() == [MODEL.version_id]
    assert loaded.files == FILES
    assert loaded.manifest == saved == store.manifest(MODEL.version_id)
    assert saved.artefacts["bottom.pt"].sha256 == hashlib.sha256(FILES["bottom.pt"]).hexdigest()
    assert saved.artefacts["bottom.pt"].size == len(FILES["bottom.pt"])
    assert saved.party == "bank"
    assert saved.peer_manifest_sha256 is None
    assert loaded.document("scaling.json") == {"pdo": 20}


def test_saving_a_saved_version_again_keeps_the_first(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = store.save("partner", MODEL, FILES)

    again = store.save("partner", MODEL, {"bottom.pt": b"other bytes, same weights digest"})

    assert again == first
    assert store.load(MODEL.version_id).files == FILES


def test_a_version_saved_by_the_other_party_in_the_same_registry_is_refused(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path)
    store.save("partner", MODEL, FILES)

    with pytest.raises(FailedPrecondition, match="saved by the partner"):
        store.save("bank", MODEL, FILES)


def test_unknown_version_is_not_found_and_names_the_versions_held(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("bank", MODEL, FILES)

    with pytest.raises(UnknownModelVersion, match=MODEL.version_id) as raised:
        store.load("0123456789abcdef")
    assert "0123456789abcdef" in str(raised.value)


@pytest.mark.parametrize("version_id", ["../../etc", "ABCDEF0123456789", "abc"])
def test_malformed_version_id_is_an_invalid_request(tmp_path: Path, version_id: str) -> None:
    with pytest.raises(InvalidRequest, match="16 lower-case hexadecimal"):
        ModelStore(tmp_path).load(version_id)


def test_artefact_name_that_is_not_a_plain_file_name_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)

    for name in ("../escape.pt", "manifest.json", "Bottom.pt"):
        with pytest.raises(InvalidRequest, match="plain file names"):
            store.save("bank", MODEL, {name: b"x"})
    assert store.versions() == []


def test_a_flipped_byte_in_an_artefact_is_refused_naming_the_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("bank", MODEL, FILES)
    path = tmp_path / MODEL.version_id / "bottom.pt"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(FailedPrecondition, match=r"bottom\.pt has .* SHA-256"):
        store.load(MODEL.version_id)


def test_a_missing_artefact_is_refused_naming_the_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("bank", MODEL, FILES)
    (tmp_path / MODEL.version_id / "scaling.json").unlink()

    with pytest.raises(FailedPrecondition, match=r"scaling\.json is missing"):
        store.load(MODEL.version_id)


def test_a_file_the_manifest_does_not_list_is_refused_naming_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("bank", MODEL, FILES)
    (tmp_path / MODEL.version_id / "head.pt").write_bytes(b"planted")

    with pytest.raises(FailedPrecondition, match=r"head\.pt is not in the manifest"):
        store.load(MODEL.version_id)


def test_a_manifest_naming_another_version_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("bank", MODEL, FILES)
    path = tmp_path / MODEL.version_id / MANIFEST_FILE
    document = json.loads(path.read_text())
    document["version_id"] = "0" * 16
    path.write_text(json.dumps(document))

    with pytest.raises(FailedPrecondition, match=r"manifest\.json: .*not the id"):
        store.load(MODEL.version_id)


def test_a_failure_before_the_rename_leaves_no_version_and_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)

    def crash(source: Path, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save("bank", MODEL, FILES)

    assert store.versions() == []
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnknownModelVersion):
        store.load(MODEL.version_id)


def test_a_writer_killed_mid_write_leaves_a_hidden_directory_never_listed_then_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    written = 0
    real_fsync = os.fsync

    def die_after_first_file(fd: int) -> None:
        nonlocal written
        real_fsync(fd)
        written += 1
        if written == 1:
            # A kill leaves the partial directory behind: nothing gets to clean it up.
            raise SystemExit

    monkeypatch.setattr(os, "fsync", die_after_first_file)
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)
    with pytest.raises(SystemExit):
        store.save("bank", MODEL, FILES)
    monkeypatch.undo()
    leftovers = [entry.name for entry in tmp_path.iterdir()]

    assert len(leftovers) == 1
    assert leftovers[0].startswith(".partial-")
    assert store.versions() == []
    store.save("bank", MODEL, FILES)
    assert [entry.name for entry in tmp_path.iterdir()] == [MODEL.version_id]


def test_recording_the_peer_digest_keeps_the_own_digest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    saved = store.save("bank", MODEL, FILES)
    peer = hashlib.sha256(b"partner manifest").digest()

    recorded = store.record_peer(MODEL.version_id, peer)

    assert recorded.peer_manifest_sha256 == peer.hex()
    assert store.manifest(MODEL.version_id) == recorded
    assert manifest_digest(recorded) == manifest_digest(saved)
    assert store.record_peer(MODEL.version_id, peer) == recorded
    with pytest.raises(FailedPrecondition, match="recorded already"):
        store.record_peer(MODEL.version_id, hashlib.sha256(b"another").digest())


def test_a_crash_while_recording_the_peer_leaves_the_version_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    saved = store.save("bank", MODEL, FILES)

    def crash(source: Path, target: Path) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        store.record_peer(MODEL.version_id, hashlib.sha256(b"partner manifest").digest())
    monkeypatch.undo()

    assert store.load(MODEL.version_id).manifest == saved


def test_a_failed_peer_record_leaves_no_partial_manifest_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    store.save("bank", MODEL, FILES)

    def crash(source: Path, target: Path) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        store.record_peer(MODEL.version_id, hashlib.sha256(b"partner manifest").digest())

    assert [entry.name for entry in tmp_path.iterdir()] == [MODEL.version_id]


def test_concurrent_records_of_the_same_peer_digest_all_return_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    saved = store.save("bank", MODEL, FILES)
    peer = hashlib.sha256(b"partner manifest").digest()
    callers = 8
    start = threading.Barrier(callers)

    def record(_: int) -> Manifest:
        start.wait()
        return store.record_peer(MODEL.version_id, peer)

    with ThreadPoolExecutor(callers) as pool:
        recorded = list(pool.map(record, range(callers)))

    assert {manifest.peer_manifest_sha256 for manifest in recorded} == {peer.hex()}
    assert store.load(MODEL.version_id).manifest == saved.model_copy(
        update={"peer_manifest_sha256": peer.hex()}
    )
    assert [entry.name for entry in tmp_path.iterdir()] == [MODEL.version_id]


def test_of_concurrent_records_of_different_peer_digests_exactly_one_is_kept(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path)
    store.save("bank", MODEL, FILES)
    callers = 8
    start = threading.Barrier(callers)

    def record(caller: int) -> str | FailedPrecondition:
        start.wait()
        try:
            return (
                store.record_peer(
                    MODEL.version_id, hashlib.sha256(bytes([caller])).digest()
                ).peer_manifest_sha256
                or ""
            )
        except FailedPrecondition as err:
            return err

    with ThreadPoolExecutor(callers) as pool:
        outcomes = list(pool.map(record, range(callers)))

    kept = [outcome for outcome in outcomes if isinstance(outcome, str)]
    refused = [str(outcome) for outcome in outcomes if isinstance(outcome, FailedPrecondition)]
    assert len(kept) == 1
    assert len(refused) == callers - 1
    assert all("is recorded already" in message for message in refused), refused
    assert store.manifest(MODEL.version_id).peer_manifest_sha256 == kept[0]
