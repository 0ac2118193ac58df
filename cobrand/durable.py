"""Making a file or a directory entry durable: what every atomic write here ends with.

A file written to a temporary name, flushed and renamed over its final name survives a crash
only once its bytes and the directory entry of the rename are on disk: `fsync_path` flushes
either (a directory is opened read-only, as POSIX allows for fsync), and `write_atomically` does
the whole sequence for a small file. A secret is written by `write_new` instead: created with its
permissions, never over an existing file. Append-only audit trails (refused callers, probes)
grow by `append_line`: one whole line, on disk before the refusal it records is answered.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cobrand.errors import AlreadyExists

__all__ = ["append_line", "fsync_path", "write_atomically", "write_new"]


def fsync_path(path: Path) -> None:
    """Flush `path` (a file or a directory) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Replace `path` with `data` so a reader, or a crash, sees the old file or the new one whole.

    The directory is created if missing; a partial file left by a failure is removed. The file is
    created with permissions `mode` (less the umask), so an owner-only file is never readable by
    others, not even as a partial.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique partial name: two writers of the same file never write into one partial.
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Create `path` holding `data`, with permissions `mode` from its creation.

    For keys: created with the mode rather than chmod-ed afterwards, a key is never readable by
    others, not even briefly (the umask can only remove bits); and an existing file (perhaps a
    key in use) is never overwritten.

    Raises
    ------
    AlreadyExists
        `path` exists.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise AlreadyExists(f"{path} already exists; refusing to overwrite it") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def append_line(path: Path, line: str, *, sync: bool = True) -> None:
    """Append `line` and a newline to `path`, on disk (with a new file's entry) when this returns.

    The file is created owner-only: audit trails name callers. Concurrent writers of one file
    must serialise their calls; one call writes its line with a single ``write`` in append mode.
    With `sync` false the line is only handed to the kernel: it survives the process, not a crash
    of the machine until the next synced line of the same file flushes it too.

    Raises
    ------
    OSError
        If the file cannot be opened, written or flushed.
    """
    created = not path.exists()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, (line + "\n").encode("utf-8"))
        if sync:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if created and sync:
        fsync_path(path.parent)
