"""How both parties turn their model's parts into a version's files and back.

Weights are torch state dicts written by ``torch.save`` and read with ``weights_only=True`` (no
pickled code is ever run from disk); everything else is JSON. A bottom network is saved as its
weights plus its sizes (``BottomSpec`` without what the preprocessor determines), so it is
rebuilt from the version's own preprocessor and checked against the weights digest the model
version names.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from typing import Any

import torch

from cobrand.errors import CobrandError, FailedPrecondition
from cobrand.model_store import StoredVersion
from cobrand.preprocess import Preprocessor
from cobrand.split_model import BottomModel, BottomSpec

__all__ = [
    "bottom_sizes",
    "json_bytes",
    "load_bottom",
    "load_preprocessor",
    "load_state_dict",
    "state_dict_bytes",
]

# What a preprocessor determines; the rest of a BottomSpec is the bottom's sizes.
_FROM_PREPROCESSOR = frozenset({"bin_edges", "n_indicators", "cardinalities"})


def state_dict_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """A state dict as ``torch.save`` writes it (tensors detached and copied to the CPU)."""
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().cpu() for name, tensor in state.items()}, buffer)
    return buffer.getvalue()


def json_bytes(document: Any) -> bytes:
    """A JSON document as a version file: sorted keys, indented, finite numbers only."""
    return (json.dumps(document, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


def load_state_dict(version: StoredVersion, name: str) -> dict[str, torch.Tensor]:
    """A state dict artefact, read with ``weights_only=True``.

    Raises
    ------
    FailedPrecondition
        No such artefact, or it is not a state dict of tensors.
    """
    try:
        state = torch.load(io.BytesIO(version.file(name)), map_location="cpu", weights_only=True)
    except CobrandError:
        raise
    except Exception as err:  # torch.load raises many unrelated types (pickle, zip, ...)
        raise FailedPrecondition(
            f"model version {version.manifest.version_id}: {name} is not a readable state dict: "
            f"{err}"
        ) from err
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise FailedPrecondition(
            f"model version {version.manifest.version_id}: {name} is not a state dict of tensors"
        )
    return state


def load_preprocessor(version: StoredVersion, name: str) -> Preprocessor:
    """A preprocessor artefact written by `Preprocessor.to_json`.

    Raises
    ------
    FailedPrecondition
        No such artefact, or not a valid preprocessor (the field is named).
    """
    try:
        return Preprocessor.from_json(version.file(name))
    except FailedPrecondition:
        raise
    except CobrandError as err:
        raise FailedPrecondition(
            f"model version {version.manifest.version_id}: {name}: {err}"
        ) from err


def bottom_sizes(spec: BottomSpec) -> dict[str, int | float]:
    """A bottom's sizes: its spec without what its preprocessor determines."""
    return {
        field.name: getattr(spec, field.name)
        for field in dataclasses.fields(spec)
        if field.name not in _FROM_PREPROCESSOR
    }


def load_bottom(
    version: StoredVersion, weights: str, sizes: Mapping[str, Any], preprocessor: Preprocessor
) -> BottomModel:
    """Rebuild a bottom network from its weights artefact, its sizes and its preprocessor.

    Returns the model in evaluation mode.

    Raises
    ------
    FailedPrecondition
        The sizes are not a bottom's, or the weights do not fit the rebuilt network.
    """
    where = f"model version {version.manifest.version_id}: {weights}"
    unknown = sorted(set(sizes) - {f.name for f in dataclasses.fields(BottomSpec)})
    if unknown or _FROM_PREPROCESSOR & set(sizes):
        raise FailedPrecondition(f"{where}: bottom sizes name {sorted(sizes)}")
    bottom = BottomModel(BottomSpec.from_preprocessor(preprocessor, **sizes))
    try:
        bottom.load_state_dict(load_state_dict(version, weights))
    except RuntimeError as err:
        raise FailedPrecondition(f"{where} does not fit the bottom network: {err}") from err
    return bottom.eval()
