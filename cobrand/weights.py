"""Content hashes of model weights: how each party names a checkpoint the other can verify.

Both parties hash their modules' weights the same way, so a model version is the pair of its
sides' digests (the bank's bottom and head, the partner's bottom) and each side checks the other
reports the digest its own process computed, on the data plane and on the control plane alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

__all__ = ["weights_digest"]


def weights_digest(weights: Mapping[str, torch.Tensor]) -> bytes:
    """SHA-256 over every tensor's name, dtype, shape and little-endian bytes, by name."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        array = tensor.numpy()
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.digest()
