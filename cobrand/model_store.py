"""Each party's versioned model registry: one directory per model version, checked on every load.

Each side keeps its own half of a model version under ``<root>/<version_id>/``::

    manifest.json        what the version holds (``cobrand.model_manifest.Manifest``): its id,
                         party, creation time, the model's digests, and each artefact's SHA-256
                         and size
    <artefact> ...       the party's files (state dicts, JSON documents), named by what they hold

A version is written whole or not at all: the files go to a hidden ``.partial-*`` directory
beside the versions, each fsynced, and the directory is renamed into place (then the root is
fsynced). A writer that dies before the rename leaves only a hidden directory, which no listing
or load ever reads and the next save of that version removes. `ModelStore.load` reads every
file once and refuses a version whose files differ from its manifest in any way: a changed
byte, a missing file or a file the manifest does not list.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic

from cobrand.durable import fsync_path
from cobrand.errors import FailedPrecondition, InvalidRequest, UnknownModelVersion
from cobrand.model_manifest import (
    MANIFEST_FILE,
    ArtefactEntry,
    Manifest,
    ModelDigests,
    check_version_id,
    is_version_id,
)

__all__ = ["ModelStore", "StoredVersion"]

_LOG = logging.getLogger(__name__)

_PARTIAL_PREFIX = ".partial-"


@dataclass(frozen=True)
class StoredVersion:
    """A version read whole from disk, every file checked against its manifest.

    Attributes
    ----------
    manifest : Manifest
    files : mapping of str to bytes
        Every artefact's content, by name.
    """

    manifest: Manifest
    files: Mapping[str, bytes]

    def document(self, name: str) -> Any:
        """An artefact parsed as JSON.

        Raises
        ------
        FailedPrecondition
            No such artefact, or not JSON.
        """
        try:
            return json.loads(self.file(name))
        except ValueError as err:
            raise FailedPrecondition(
                f"model version {self.manifest.version_id}: {name} is not JSON: {err}"
            ) from err

    def file(self, name: str) -> bytes:
        """An artefact's bytes.

        Raises
        ------
        FailedPrecondition
            No such artefact.
        """
        if name not in self.files:
            raise FailedPrecondition(
                f"model version {self.manifest.version_id} ({self.manifest.party}) has no "
                f"artefact {name}; it holds {', '.join(sorted(self.files))}"
            )
        return self.files[name]


class ModelStore:
    """One party's model versions under `root` (created on the first save).

    Parameters
    ----------
    root : Path
        The registry directory, e.g. ``<data_dir>/models``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # record_peer reads, checks and rewrites a manifest: concurrent calls (a retried
        # publish) must not both pass the check, nor replace each other's rewrite.
        self._peer_lock = threading.Lock()

    def versions(self) -> list[str]:
        """Ids of the versions saved whole, sorted; half-written ones are never listed."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if is_version_id(entry.name) and (entry / MANIFEST_FILE).is_file()
        )

    def manifest(self, version_id: str) -> Manifest:
        """A version's manifest, without reading its artefacts.

        Raises
        ------
        InvalidRequest
            `version_id` is not 16 lower-case hex digits.
        UnknownModelVersion
            No such version.
        FailedPrecondition
            The manifest is not a valid manifest of this version (named).
        """
        path = self._directory(version_id) / MANIFEST_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise UnknownModelVersion(
                f"model version {version_id} is not in {self.root} (it holds "
                f"{', '.join(self.versions()) or 'no version'})"
            ) from None
        try:
            manifest = Manifest.model_validate_json(text)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "document"
            raise FailedPrecondition(f"{path}: {where}: {first['msg']}") from err
        if manifest.version_id != version_id:
            raise FailedPrecondition(f"{path}: names version {manifest.version_id}")
        return manifest

    def load(self, version_id: str) -> StoredVersion:
        """Read a version whole and check every file against its manifest.

        Raises
        ------
        InvalidRequest
            `version_id` is malformed.
        UnknownModelVersion
            No such version.
        FailedPrecondition
            A file is missing, not listed in the manifest, or differs from it in size or
            SHA-256 (the file is named), or the manifest is invalid.
        """
        manifest = self.manifest(version_id)
        directory = self._directory(version_id)
        present = {entry.name for entry in directory.iterdir()} - {MANIFEST_FILE}
        extra = sorted(present - set(manifest.artefacts))
        if extra:
            raise FailedPrecondition(
                f"model version {version_id}: {directory / extra[0]} is not in the manifest"
            )
        files: dict[str, bytes] = {}
        for name, entry in sorted(manifest.artefacts.items()):
            path = directory / name
            try:
                content = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                raise FailedPrecondition(
                    f"model version {version_id}: {path} is missing or not a file"
                ) from None
            digest = hashlib.sha256(content).hexdigest()
            if len(content) != entry.size or digest != entry.sha256:
                raise FailedPrecondition(
                    f"model version {version_id}: {path} has {len(content)} bytes with SHA-256 "
                    f"{digest[:12]}; the manifest says {entry.size} bytes with {entry.sha256[:12]}"
                )
            files[name] = content
        return StoredVersion(manifest, files)

    def save(
        self,
        party: Literal["bank", "partner"],
        model: ModelDigests,
        artefacts: Mapping[str, bytes],
        *,
        peer_manifest_sha256: bytes | None = None,
    ) -> Manifest:
        """Save a version atomically under ``model.version_id``.

        A version already saved by this party for the same model digests is kept as it is and
        its manifest returned, so a retried save (or publish) is harmless.

        Parameters
        ----------
        party : {"bank", "partner"}
        model : ModelDigests
        artefacts : mapping of str to bytes
            File name to content; names are lower-case plain file names.
        peer_manifest_sha256 : bytes, optional
            The other party's `manifest_digest`, if already known.

        Returns
        -------
        Manifest

        Raises
        ------
        InvalidRequest
            A bad artefact name.
        FailedPrecondition
            The version exists for other model digests or another party (only if the registry
            was tampered with, since the id derives from the digests).
        """
        version_id = model.version_id
        if version_id in self.versions():
            return self._existing(party, model, version_id)
        try:
            manifest = Manifest(
                version_id=version_id,
                party=party,
                created_at=dt.datetime.now(dt.UTC),
                model=model,
                artefacts={
                    name: ArtefactEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
                    for name, data in artefacts.items()
                },
                peer_manifest_sha256=None
                if peer_manifest_sha256 is None
                else peer_manifest_sha256.hex(),
            )
        except pydantic.ValidationError as err:
            raise InvalidRequest(f"model version {version_id}: {err.errors()[0]['msg']}") from err
        self.root.mkdir(parents=True, exist_ok=True)
        # A writer of this version that died before its rename left its files behind.
        for stale in self.root.glob(f"{_PARTIAL_PREFIX}{version_id}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = self.root / f"{_PARTIAL_PREFIX}{version_id}-{secrets.token_hex(4)}"
        partial.mkdir()
        try:
            for name, data in artefacts.items():
                _write_synced(partial / name, data)
            _write_synced(partial / MANIFEST_FILE, manifest.to_json().encode("ascii"))
            fsync_path(partial)
            os.rename(partial, self._directory(version_id))
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            if version_id in self.versions():
                # Another writer saved the same version first.
                return self._existing(party, model, version_id)
            raise
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        fsync_path(self.root)
        _LOG.info("[ModelStore] saved %s model version %s", party, version_id)
        return manifest

    def record_peer(self, version_id: str, peer_manifest_sha256: bytes) -> Manifest:
        """Record the other party's manifest digest in a version's manifest (atomically).

        Recording the digest already recorded is a no-op. Concurrent calls on this store are
        serialized: one records its digest, the others find it recorded.

        Raises
        ------
        UnknownModelVersion
            No such version.
        FailedPrecondition
            Another peer digest is recorded already: the version was published twice with
            different content at the peer.
        """
        with self._peer_lock:
            manifest = self.manifest(version_id)
            digest = peer_manifest_sha256.hex()
            if manifest.peer_manifest_sha256 == digest:
                return manifest
            if manifest.peer_manifest_sha256 is not None:
                raise FailedPrecondition(
                    f"model version {version_id}: peer manifest "
                    f"{manifest.peer_manifest_sha256[:12]} is recorded already; the peer now "
                    f"reports {digest[:12]}"
                )
            updated = manifest.model_copy(update={"peer_manifest_sha256": digest})
            path = self._directory(version_id) / MANIFEST_FILE
            # Beside the versions, not inside one: a crash must not leave a file the manifest
            # lacks. A unique name: another process's writer never truncates this one's partial.
            partial = (
                self.root / f"{_PARTIAL_PREFIX}{version_id}.{secrets.token_hex(4)}.{MANIFEST_FILE}"
            )
            try:
                _write_synced(partial, updated.to_json().encode("ascii"))
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
            fsync_path(path.parent)
            return updated

    def _existing(
        self, party: Literal["bank", "partner"], model: ModelDigests, version_id: str
    ) -> Manifest:
        manifest = self.manifest(version_id)
        if manifest.party != party or manifest.model != model:
            raise FailedPrecondition(
                f"model version {version_id} in {self.root} was saved by the {manifest.party} "
                "for other model digests; the registry does not match its ids"
            )
        _LOG.info("[ModelStore] %s model version %s is saved already", party, version_id)
        return manifest

    def _directory(self, version_id: str) -> Path:
        return self.root / check_version_id(version_id, "model version")


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
