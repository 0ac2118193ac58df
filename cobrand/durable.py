"""Making a file or a directory entry durable: what every atomic write here ends with.

A file written to a temporary name, flushed and renamed over its final name survives a crash
only once its bytes and the directory entry of the rename are on disk: `fsync_path` flushes
either (a directory is opened read-only, as POSIX allows for fsync).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_path"]


def fsync_path(path: Path) -> None:
    """Flush `path` (a file or a directory) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
