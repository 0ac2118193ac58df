"""The partner's half of a model version: its bottom network and its preprocessing.

The bank saves its half first and then asks the partner, through the control plane, to publish
the round it chose. `publish` saves the partner's half under the same version id, named by the
digests the bank sends, once it has checked that the partner's own checkpoint and preprocessing
are the ones the bank names; it records the bank's manifest digest and returns its own for the
bank to record:

    partner_bottom.pt            the partner's bottom state dict
    partner_bottom.json          its sizes (the rest of its shape comes from the preprocessor)
    partner_preprocessor.json    the partner's fitted preprocessing (its file hash is its digest)

`load_partner_version` reads it back whole and rebuilds the bottom, for the embedding service.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import torch

from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.model_artefacts import (
    bottom_sizes,
    json_bytes,
    load_bottom,
    load_preprocessor,
    state_dict_bytes,
)
from cobrand.model_manifest import Manifest, ModelDigests, manifest_digest
from cobrand.model_store import ModelStore
from cobrand.preprocess import Preprocessor
from cobrand.split_model import BottomModel, BottomSpec
from cobrand.weights import weights_digest

__all__ = [
    "PARTNER_BOTTOM",
    "PARTNER_BOTTOM_SIZES",
    "PARTNER_PREPROCESSOR",
    "PartnerVersion",
    "load_partner_version",
    "publish",
]

_LOG = logging.getLogger(__name__)

PARTNER_BOTTOM: Final = "partner_bottom.pt"
PARTNER_BOTTOM_SIZES: Final = "partner_bottom.json"
PARTNER_PREPROCESSOR: Final = "partner_preprocessor.json"


@dataclass(frozen=True)
class PartnerVersion:
    """The partner's half of a model version, checked and ready to embed.

    Attributes
    ----------
    manifest : Manifest
    preprocessor : Preprocessor
    bottom : BottomModel
        In evaluation mode.
    """

    manifest: Manifest
    preprocessor: Preprocessor
    bottom: BottomModel


def publish(
    store: ModelStore,
    version_id: str,
    model: ModelDigests,
    bank_manifest_sha256: bytes,
    *,
    weights: Mapping[str, torch.Tensor],
    spec: BottomSpec,
    preprocessor: Preprocessor,
) -> bytes:
    """Save the partner's half of the version the bank published; return its manifest digest.

    Publishing a version again with the same bank manifest returns the same digest.

    Parameters
    ----------
    store : ModelStore
        The partner's registry.
    version_id : str
        The version id the bank saved under.
    model : ModelDigests
        The digests the bank's manifest names: its own weights, the partner's weights of the
        round it chose and the partner's preprocessing.
    bank_manifest_sha256 : bytes
        The bank's `manifest_digest` of the version.
    weights : mapping of str to Tensor
        The partner bottom's state dict of the round the bank chose.
    spec : BottomSpec
        The partner bottom's shape.
    preprocessor : Preprocessor
        The partner's preprocessing the run trained with.

    Returns
    -------
    bytes
        The partner's `manifest_digest`, for the bank to record.

    Raises
    ------
    InvalidRequest
        `version_id` is not the id of `model`'s digests, or the bank manifest digest is not
        32 bytes.
    FailedPrecondition
        The weights, preprocessing or bottom shape are not the ones the bank names, or the
        version was published before with another bank manifest.
    """
    if version_id != model.version_id:
        raise InvalidRequest(
            f"model version {version_id} is not the id of the digests it names ({model.version_id})"
        )
    if len(bank_manifest_sha256) != 32:
        raise InvalidRequest(
            f"model version {version_id}: the bank manifest digest has "
            f"{len(bank_manifest_sha256)} bytes, not 32"
        )
    held = weights_digest(weights).hex()
    if held != model.partner_weights_sha256:
        raise FailedPrecondition(
            f"model version {version_id}: partner_weights_sha256 names "
            f"{model.partner_weights_sha256[:12]}, the partner's checkpoint is {held[:12]}"
        )
    fitted = preprocessor.digest().hex()
    if fitted != model.partner_preprocessor_sha256:
        raise FailedPrecondition(
            f"model version {version_id}: partner_preprocessor_sha256 names "
            f"{model.partner_preprocessor_sha256[:12]}, the run trained with {fitted[:12]}"
        )
    sizes = bottom_sizes(spec)
    if BottomSpec.from_preprocessor(preprocessor, **sizes) != spec:
        raise FailedPrecondition(
            f"model version {version_id}: the partner bottom's shape is not its preprocessor's"
        )
    manifest = store.save(
        "partner",
        model,
        {
            PARTNER_BOTTOM: state_dict_bytes(weights),
            PARTNER_BOTTOM_SIZES: json_bytes(sizes),
            PARTNER_PREPROCESSOR: preprocessor.to_json().encode("ascii"),
        },
        peer_manifest_sha256=bank_manifest_sha256,
    )
    # A version saved before (a retried publish) keeps the bank digest it recorded first.
    manifest = store.record_peer(version_id, bank_manifest_sha256)
    _LOG.info("[ModelRegistry] partner model version %s published", version_id)
    return manifest_digest(manifest)


def load_partner_version(store: ModelStore, version_id: str) -> PartnerVersion:
    """Read the partner's half of a version and rebuild its bottom.

    Raises
    ------
    UnknownModelVersion
        The partner holds no such version.
    FailedPrecondition
        A file differs from the manifest or does not parse (named), or the weights or the
        preprocessing are not the ones the version names.
    """
    version = store.load(version_id)
    preprocessor = load_preprocessor(version, PARTNER_PREPROCESSOR)
    bottom = load_bottom(
        version, PARTNER_BOTTOM, version.document(PARTNER_BOTTOM_SIZES), preprocessor
    )
    model = version.manifest.model
    if preprocessor.digest().hex() != model.partner_preprocessor_sha256:
        raise FailedPrecondition(
            f"model version {version_id}: {PARTNER_PREPROCESSOR} is not the preprocessing "
            f"{model.partner_preprocessor_sha256[:12]} the version names"
        )
    held = weights_digest(bottom.state_dict()).hex()
    if held != model.partner_weights_sha256:
        raise FailedPrecondition(
            f"model version {version_id}: the partner's weights hash to {held[:12]}, the "
            f"version names {model.partner_weights_sha256[:12]}"
        )
    return PartnerVersion(version.manifest, preprocessor, bottom)
