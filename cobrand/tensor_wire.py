"""The training data plane's wire layer, shared by both parties: the stream's method path and
the packing of its tensors into message bytes, with the checks on unpacking them.

Aligned positions travel as little-endian uint32, matrices (embeddings and gradients) as
row-major little-endian float32: the layouts ``training.proto`` promises integrators in other
languages. Unpacking checks everything a peer could get wrong (length, shape, range,
finiteness) and raises `InvalidRequest` naming what was being read and the first offending row,
so neither side ever feeds a malformed tensor to torch.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from cobrand.errors import InvalidRequest
from cobrand.rpc import full_method_name
from cobrand.v1 import training_pb2

__all__ = ["EXCHANGE_METHOD", "pack_matrix", "pack_positions", "unpack_matrix", "unpack_positions"]

EXCHANGE_METHOD: Final = full_method_name(
    training_pb2.DESCRIPTOR.services_by_name["TrainingDataPlane"], "Exchange"
)
"""Full method path of the one data-plane stream, for handlers, stubs and allow-lists."""

_POSITION = np.dtype("<u4")
_VALUE = np.dtype("<f4")


def pack_positions(positions: npt.NDArray[np.integer]) -> bytes:
    """Aligned positions as little-endian uint32 bytes.

    Parameters
    ----------
    positions : ndarray of int, shape (n,)
        Each in ``[0, 2**32)``.

    Raises
    ------
    InvalidRequest
        A position does not fit in uint32.
    """
    values = np.asarray(positions)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(_POSITION).max):
        raise InvalidRequest("aligned positions must fit in uint32")
    return values.astype(_POSITION, copy=False).tobytes()


def unpack_positions(data: bytes, *, limit: int, what: str) -> npt.NDArray[np.int64]:
    """Read packed positions and check each is an aligned row.

    Parameters
    ----------
    data : bytes
        Little-endian uint32 values, at least one.
    limit : int
        Number of aligned rows; every position must be below it.
    what : str
        Names the batch in error messages, e.g. ``"batch of step 7"``.

    Returns
    -------
    ndarray of int64, shape (n,)
        Ready to index a tensor.

    Raises
    ------
    InvalidRequest
        Empty, not a whole number of uint32, or a position out of range (the first is named).
    """
    if not data:
        raise InvalidRequest(f"{what}: holds no positions")
    if len(data) % _POSITION.itemsize:
        raise InvalidRequest(f"{what}: {len(data)} bytes is not a whole number of uint32")
    positions = np.frombuffer(data, dtype=_POSITION).astype(np.int64)
    outside = positions >= limit
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise InvalidRequest(
            f"{what}: position {positions[first]} at index {first} is outside the "
            f"{limit} aligned rows"
        )
    return positions


def pack_matrix(matrix: npt.NDArray[np.floating]) -> bytes:
    """A 2-D matrix as row-major little-endian float32 bytes."""
    return np.ascontiguousarray(matrix, dtype=_VALUE).tobytes()


def unpack_matrix(
    data: bytes, *, width: int, what: str, rows: int | None = None
) -> npt.NDArray[np.float32]:
    """Read a packed float32 matrix and check every value is finite.

    Parameters
    ----------
    data : bytes
        Row-major little-endian float32 values.
    width : int
        Values per row, at least 1.
    what : str
        Names the matrix in error messages, e.g. ``"gradient of step 7"``.
    rows : int, optional
        The number of rows the reader expects; without it, any whole number of rows.

    Returns
    -------
    ndarray of float32, shape (rows, width)
        A writable copy (torch needs one).

    Raises
    ------
    InvalidRequest
        The width is not positive, the byte length does not make whole rows (or not `rows` of
        them), or a value is NaN or infinite (the first such row is named).
    """
    if width < 1:
        raise InvalidRequest(f"{what}: width must be at least 1, got {width}")
    row_bytes = width * _VALUE.itemsize
    if rows is None and len(data) % row_bytes:
        raise InvalidRequest(
            f"{what}: {len(data)} bytes is not a whole number of rows of {width} float32"
        )
    if rows is not None and len(data) != rows * row_bytes:
        raise InvalidRequest(
            f"{what}: {len(data)} bytes, expected {rows} rows x {width} float32 = "
            f"{rows * row_bytes}"
        )
    matrix = np.frombuffer(data, dtype=_VALUE).reshape(-1, width).astype(np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise InvalidRequest(f"{what}: row {first} holds a NaN or infinite value")
    return matrix
