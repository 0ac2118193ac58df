"""The partner's saved OPRF index: one file under ``data_dir``, bound to what it was computed from.

Building the index costs one scalar multiplication per partner user (minutes for millions), so
the node keeps it in ``<data_dir>/oprf_index.bin`` and reads it back at the next start in well
under a second. The file holds every user's lookup output, ascending, then each one's table row;
its header binds it to exactly what the outputs depend on, so a stale index is never served:

- the OPRF key, by fingerprint (SHA-256 of a domain-separated string of the key; never the key);
- the OPRF: RFC 9497's suite (``cobrand.oprf.CONTEXT_STRING``) and the federation's lookup
  domain (``cobrand.oprf.lookup_domain``), by SHA-256 (an index of another suite or another
  co-brand deal is rebuilt, never served);
- the partner table: its identifier kind and every identifier in row order, by SHA-256 (rows
  reordered, added or removed change it; so does a kind read differently);
- and everything in the file by an HMAC-SHA-256 under a key derived from the OPRF key, which
  catches a flipped bit or a truncation, and a file forged by anyone without the key.

The file is written atomically (``cobrand.durable.write_atomically``) with mode 0600: it maps
OPRF outputs to users, which is the partner's own knowledge. The layout (little-endian)::

    magic (16) | users (u64) | key id (32) | context id (32) | table id (32) | mac (32)
    outputs (users x 16 bytes, ascending) | rows (users x i64)
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from cobrand import oprf
from cobrand.durable import write_atomically
from cobrand.errors import ConfigError

__all__ = ["OPRF_INDEX_FILE", "IndexBinding", "load_saved_index", "save_index"]

OPRF_INDEX_FILE: Final = "oprf_index.bin"
"""The saved index's name under the node's ``data_dir``."""

_MAGIC: Final = b"cobrand-oprfidx1"
# The header before its MAC, which covers it and the payload.
_PREFIX = struct.Struct("<16sQ32s32s32s")
_MAC_BYTES: Final = 32
_HEADER_BYTES: Final = _PREFIX.size + _MAC_BYTES
_OUTPUT_DTYPE: Final = np.dtype(f"S{oprf.OUTPUT_BYTES}")
_ROW_DTYPE: Final = np.dtype("<i8")
_USER_BYTES: Final = _OUTPUT_DTYPE.itemsize + _ROW_DTYPE.itemsize


def _tagged(tag: bytes, *parts: bytes) -> bytes:
    digest = hashlib.sha256(b"cobrand-oprf-index-v1:" + tag + b"\x00")
    for part in parts:
        digest.update(part)
    return digest.digest()


@dataclass(frozen=True)
class IndexBinding:
    """What a saved index must have been computed from to be served.

    Attributes
    ----------
    key_id, context_id, table_id : bytes
        SHA-256 fingerprints of the OPRF key, the OPRF suite and lookup domain, and the partner
        table.
    """

    key_id: bytes
    context_id: bytes
    table_id: bytes
    _mac_key: bytes = field(repr=False)

    @classmethod
    def of(cls, key: bytes, domain: bytes, kind: str, ids: npt.NDArray[np.object_]) -> IndexBinding:
        """The binding of the index of `ids` (identifiers of `kind`, in row order) under `key`
        in the federation of lookup domain `domain`."""
        encoded = [str(i).encode() for i in ids]
        # Lengths first: identifiers may hold any character, so no separator is unambiguous.
        lengths = np.fromiter(map(len, encoded), dtype="<u4", count=len(encoded))
        return cls(
            key_id=_tagged(b"key", key),
            context_id=_tagged(
                b"context",
                len(oprf.CONTEXT_STRING).to_bytes(2, "big"),
                oprf.CONTEXT_STRING,
                domain,
            ),
            table_id=_tagged(
                b"table",
                kind.encode(),
                b"\x00",
                struct.pack("<Q", len(encoded)),
                lengths.tobytes(),
                b"".join(encoded),
            ),
            _mac_key=_tagged(b"mac", key),
        )

    def mac(self, *parts: bytes | memoryview) -> bytes:
        """The HMAC of a file's header before its MAC, then its payload."""
        digest = hmac.new(self._mac_key, digestmod=hashlib.sha256)
        for part in parts:
            digest.update(part)
        return digest.digest()


def save_index(
    path: Path,
    binding: IndexBinding,
    outputs: npt.NDArray[np.bytes_],
    rows: npt.NDArray[np.intp],
) -> None:
    """Write the index of `binding`'s table to `path`, atomically, owner-only.

    Raises
    ------
    OSError
        The file cannot be written.
    """
    payload = (
        np.ascontiguousarray(outputs, dtype=_OUTPUT_DTYPE).data,
        np.ascontiguousarray(rows, dtype=_ROW_DTYPE).data,
    )
    prefix = _PREFIX.pack(
        _MAGIC, len(outputs), binding.key_id, binding.context_id, binding.table_id
    )
    mac = binding.mac(prefix, *payload)
    write_atomically(path, b"".join((prefix, mac, *payload)), mode=0o600)


def load_saved_index(
    path: Path, binding: IndexBinding
) -> tuple[npt.NDArray[np.bytes_], npt.NDArray[np.intp]] | None:
    """The outputs and rows saved in `path`, or None when there is no such file.

    Raises
    ------
    ConfigError
        Naming the file and why it cannot be served: unreadable, not an index file, computed
        under another key, for another federation or from another table, truncated, or corrupt.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the saved OPRF index: {err.strerror}") from err
    if len(data) < _HEADER_BYTES or data[: len(_MAGIC)] != _MAGIC:
        raise ConfigError(f"{path}: not a saved OPRF index ({len(data)} bytes, no header)")
    _, users, key_id, context_id, table_id = _PREFIX.unpack_from(data)
    for found, expected, what in (
        (key_id, binding.key_id, "under another OPRF key (was the key rotated?)"),
        (context_id, binding.context_id, "for another federation or OPRF suite"),
        (table_id, binding.table_id, "from another partner table (identifiers or rows changed)"),
    ):
        if found != expected:
            raise ConfigError(f"{path}: the saved OPRF index was computed {what}")
    expected_size = _HEADER_BYTES + users * _USER_BYTES
    if len(data) != expected_size:
        raise ConfigError(
            f"{path}: the saved OPRF index is {len(data)} bytes, {expected_size} expected for "
            f"{users} users (truncated or appended to)"
        )
    view = memoryview(data)
    if not hmac.compare_digest(
        bytes(view[_PREFIX.size : _HEADER_BYTES]),
        binding.mac(view[: _PREFIX.size], view[_HEADER_BYTES:]),
    ):
        raise ConfigError(f"{path}: the saved OPRF index is corrupt (its MAC does not match)")
    rows_at = _HEADER_BYTES + users * _OUTPUT_DTYPE.itemsize
    outputs = np.frombuffer(data, dtype=_OUTPUT_DTYPE, count=users, offset=_HEADER_BYTES)
    rows = np.frombuffer(data, dtype=_ROW_DTYPE, count=users, offset=rows_at)
    # Checked although the MAC matched: a lookup's binary search relies on both.
    if users and not (
        bool(np.all(outputs[1:] >= outputs[:-1])) and rows.min() >= 0 and rows.max() < users
    ):
        raise ConfigError(f"{path}: the saved OPRF index is not sorted or points outside the table")
    return outputs, rows.astype(np.intp, copy=False)
