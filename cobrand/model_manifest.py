"""A model version's manifest: what one party holds of it, and how the parties check each other.

A model version is named by its id, derived from both sides' weights digests (`model_version`),
so the bank and the partner save the same trained model under the same id without agreeing on
anything else. Each side's `Manifest` lists its files with their SHA-256 and size, beside the
digests that identify the model (`ModelDigests`).

Cross-party check. `manifest_digest` hashes a manifest's canonical JSON *without* its
``peer_manifest_sha256`` field, so recording the peer's digest once it is known (the bank
learns the partner's only after the partner has saved) does not change a side's own digest.
Each side records the other's digest (``cobrand.model_store.ModelStore.record_peer``) and,
before serving a version, `verify_peer` checks the digest the peer reports now is the one
recorded: the peer holds the same files it held when the version was published.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Annotated, Any, Final, Literal

import pydantic
from pydantic import ConfigDict, Field

from cobrand.errors import FailedPrecondition, InvalidRequest

__all__ = [
    "FORMAT",
    "MANIFEST_FILE",
    "ArtefactEntry",
    "Manifest",
    "ModelDigests",
    "check_version_id",
    "is_version_id",
    "manifest_digest",
    "model_version",
    "verify_peer",
]

FORMAT: Final = "cobrand.model_version/1"
"""Format tag of every manifest; bumped on any change of meaning."""
MANIFEST_FILE: Final = "manifest.json"

_VERSION_ID = re.compile(r"[0-9a-f]{16}")
# Artefact names are plain file names, so a manifest can never point outside its directory.
_ARTEFACT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def model_version(bank_sha256: str, partner_sha256: str) -> str:
    """The version id of the model both weights digests (hex) describe: 16 hex digits of their hash.

    Both sides know both digests once a checkpoint is committed (each reports its own on the
    control plane), so each can compute the id alone.
    """
    both = bytes.fromhex(bank_sha256) + bytes.fromhex(partner_sha256)
    return hashlib.sha256(both).hexdigest()[:16]


def is_version_id(value: str) -> bool:
    """Whether `value` has the form of a version id (`model_version`): 16 lower-case hex digits."""
    return _VERSION_ID.fullmatch(value) is not None


def check_version_id(value: str, what: str) -> str:
    """`value`, checked to have the form of a version id.

    Parameters
    ----------
    value : str
    what : str
        What `value` is, for the error, e.g. ``"model version"``.

    Raises
    ------
    InvalidRequest
        `value` is not 16 lower-case hexadecimal digits.
    """
    if not is_version_id(value):
        raise InvalidRequest(f"{what} {value!r} is not 16 lower-case hexadecimal digits")
    return value


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


def _canonical(document: Any) -> str:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
