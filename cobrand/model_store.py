"""Each party's versioned model registry: one directory per model version, checked on every load.

A model version is named by its id, derived from both sides' weights digests (`model_version`),
so the bank and the partner save the same trained model under the same id without agreeing on
anything else. Each side keeps its own half under ``<root>/<version_id>/``::

    manifest.json        what the version holds: its id, party, creation time, the model's
                         digests, and each artefact's SHA-256 and size
    <artefact> ...       the party's files (state dicts, JSON documents), named by what they hold

A version is written whole or not at all: the files go to a hidden ``.partial-*`` directory
beside the versions, each fsynced, and the directory is renamed into place (then the root is
fsynced). A writer that dies before the rename leaves only a hidden directory, which no listing
or load ever reads and the next save of that version removes. `ModelStore.load` reads every
file once and refuses a version whose files differ from its manifest in any way: a changed
byte, a missing file or a file the manifest does not list.

Cross-party check. `manifest_digest` hashes a manifest's canonical JSON *without* its
``peer_manifest_sha256`` field, so recording the peer's digest once it is known (the bank
learns the partner's only after the partner has saved) does not change a side's own digest.
Each side records the other's digest (`ModelStore.record_peer`) and, before serving a version,
`verify_peer` checks the digest the peer reports now is the one recorded: the peer holds the
same files it held when the version was published.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import pydantic
from pydantic import ConfigDict, Field

from cobrand.errors import FailedPrecondition, InvalidRequest, UnknownModelVersion

__all__ = [
    "FORMAT",
    "MANIFEST_FILE",
    "ArtefactEntry",
    "Manifest",
    "ModelDigests",
    "ModelStore",
    "StoredVersion",
    "manifest_digest",
    "model_version",
    "verify_peer",
]

_LOG = logging.getLogger(__name__)

FORMAT: Final = "cobrand.model_version/1"
"""Format tag of every manifest; bumped on any change of meaning."""
MANIFEST_FILE: Final = "manifest.json"

_VERSION_ID = re.compile(r"[0-9a-f]{16}")
# Artefact names are plain file names, so a manifest can never point outside its directory.
_ARTEFACT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
_PARTIAL_PREFIX = ".partial-"

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def model_version(bank_sha256: str, partner_sha256: str) -> str:
    """The version id of the model both weights digests (hex) describe: 16 hex digits of their hash.

    Both sides know both digests once a checkpoint is committed (each reports its own on the
    control plane), so each can compute the id alone.
    """
    both = bytes.fromhex(bank_sha256) + bytes.fromhex(partner_sha256)
    return hashlib.sha256(both).hexdigest()[:16]


class _Frozen(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelDigests(_Frozen):
    """What identifies the trained model, the same in both sides' manifests.

    Attributes
    ----------
    bank_weights_sha256 : str
        `cobrand.weights.weights_digest` of the bank's bottom and head, as the run committed it.
    partner_weights_sha256 : str
        The same of the partner's bottom.
    partner_preprocessor_sha256 : str
        `cobrand.preprocess.Preprocessor.digest` of the partner's preprocessing the run used.
    """

    bank_weights_sha256: Sha256Hex
    partner_weights_sha256: Sha256Hex
    partner_preprocessor_sha256: Sha256Hex

    @classmethod
    def of(
        cls, *, bank_weights: bytes, partner_weights: bytes, partner_preprocessor: bytes
    ) -> ModelDigests:
        """Build from raw 32-byte digests, as the trainers and `Preprocessor.digest` give them."""
        return cls(
            bank_weights_sha256=bank_weights.hex(),
            partner_weights_sha256=partner_weights.hex(),
            partner_preprocessor_sha256=partner_preprocessor.hex(),
        )

    @property
    def version_id(self) -> str:
        """The model's version id (`model_version`)."""
        return model_version(self.bank_weights_sha256, self.partner_weights_sha256)


class ArtefactEntry(_Frozen):
    """One file of a version: its SHA-256 (hex) and size in bytes."""

    sha256: Sha256Hex
    size: Annotated[int, Field(ge=0)]


class Manifest(_Frozen):
    """One party's record of a model version (``manifest.json``).

    Attributes
    ----------
    format : str
        `FORMAT`.
    version_id : str
        ``model.version_id``.
    party : {"bank", "partner"}
    created_at : datetime
        When this party saved the version (UTC).
    model : ModelDigests
    artefacts : mapping of str to ArtefactEntry
        Every file of the version but the manifest, by name.
    peer_manifest_sha256 : str or None
        The other party's `manifest_digest` (hex), once known; not covered by this manifest's
        own digest.
    """

    format: Literal["cobrand.model_version/1"] = FORMAT
    version_id: str
    party: Literal["bank", "partner"]
    created_at: dt.datetime
    model: ModelDigests
    artefacts: dict[str, ArtefactEntry]
    peer_manifest_sha256: Sha256Hex | None = None

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.version_id != self.model.version_id:
            raise ValueError(
                f"version_id {self.version_id} is not the id of the model's digests "
                f"({self.model.version_id})"
            )
        bad = sorted(name for name in self.artefacts if not _ARTEFACT_NAME.fullmatch(name))
        if bad or MANIFEST_FILE in self.artefacts:
            raise ValueError(f"artefact names must be plain file names, got {bad or MANIFEST_FILE}")
        return self

    def to_json(self) -> str:
        """The canonical JSON form: sorted keys, no whitespace, ASCII."""
        return _canonical(self.model_dump(mode="json"))


def manifest_digest(manifest: Manifest) -> bytes:
    """SHA-256 of a manifest's canonical JSON without its ``peer_manifest_sha256`` field."""
    own = manifest.model_dump(mode="json", exclude={"peer_manifest_sha256"})
    return hashlib.sha256(_canonical(own).encode("ascii")).digest()


def verify_peer(own: Manifest, peer_version_id: str, peer_manifest_sha256: bytes) -> None:
    """Check the peer holds the version this side recorded for it, before using the version.

    Parameters
    ----------
    own : Manifest
        This side's manifest of the version.
    peer_version_id : str
        The version the peer says it holds.
    peer_manifest_sha256 : bytes
        The peer's `manifest_digest` of it, as the peer reports it now.

    Raises
    ------
    FailedPrecondition
        Another version, no peer digest recorded yet, or a digest other than the recorded one.
    """
    peer = "partner" if own.party == "bank" else "bank"
    if peer_version_id != own.version_id:
        raise FailedPrecondition(
            f"model version {own.version_id}: the {peer} answered for version {peer_version_id}"
        )
    if own.peer_manifest_sha256 is None:
        raise FailedPrecondition(
            f"model version {own.version_id}: the {own.party} has no {peer} manifest recorded; "
            f"publish the version at the {peer} first"
        )
    if peer_manifest_sha256.hex() != own.peer_manifest_sha256:
        raise FailedPrecondition(
            f"model version {own.version_id}: the {peer} holds manifest "
            f"{peer_manifest_sha256.hex()[:12]}, the {own.party} recorded "
            f"{own.peer_manifest_sha256[:12]}: the {peer}'s files differ from those published"
        )


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

    def versions(self) -> list[str]:
        """Ids of the versions saved whole, sorted; half-written ones are never listed."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if _VERSION_ID.fullmatch(entry.name) and (entry / MANIFEST_FILE).is_file()
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
            _fsync(partial)
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
        _fsync(self.root)
        _LOG.info("[ModelStore] saved %s model version %s", party, version_id)
        return manifest

    def record_peer(self, version_id: str, peer_manifest_sha256: bytes) -> Manifest:
        """Record the other party's manifest digest in a version's manifest (atomically).

        Recording the digest already recorded is a no-op.

        Raises
        ------
        UnknownModelVersion
            No such version.
        FailedPrecondition
            Another peer digest is recorded already: the version was published twice with
            different content at the peer.
        """
        manifest = self.manifest(version_id)
        digest = peer_manifest_sha256.hex()
        if manifest.peer_manifest_sha256 == digest:
            return manifest
        if manifest.peer_manifest_sha256 is not None:
            raise FailedPrecondition(
                f"model version {version_id}: peer manifest {manifest.peer_manifest_sha256[:12]} "
                f"is recorded already; the peer now reports {digest[:12]}"
            )
        updated = manifest.model_copy(update={"peer_manifest_sha256": digest})
        path = self._directory(version_id) / MANIFEST_FILE
        # Beside the versions, not inside one: a crash must not leave a file the manifest lacks.
        partial = self.root / f"{_PARTIAL_PREFIX}{version_id}.{MANIFEST_FILE}"
        _write_synced(partial, updated.to_json().encode("ascii"))
        os.replace(partial, path)
        _fsync(path.parent)
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
        if not _VERSION_ID.fullmatch(version_id):
            raise InvalidRequest(
                f"model version {version_id!r} is not 16 lower-case hexadecimal digits"
            )
        return self.root / version_id


def _canonical(document: Any) -> str:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
