"""Making a file or a directory entry durable: what every atomic write here ends with.

A file written to a temporary name, flushed and renamed over its final name survives a crash
only once its bytes and the directory entry of the rename are on disk: `fsync_path` flushes
either (a directory is opened read-only, as POSIX allows for fsync), and `write_atomically` does
the whole sequence for a small file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["fsync_path", "write_atomically"]


def fsync_path(path: Path) -> None:
    """Flush `path` (a file or a directory) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a reader, or a crash, sees the old file or the new one whole.

    The directory is created if missing; a partial file left by a failure is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique partial name: two writers of the same file never write into one partial.
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with partial.open("xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    fsync_path(path.parent)
