"""Each party's persisted alignment result: one SQLite file, replaced whole by every run.

After a private alignment both parties hold the same intersection, in the same order (ascending
join key), each as join key -> its OWN canonical identifier. Training and serving join rows
through it, so it must never be half written: `write_alignment` builds the new result in a
hidden ``.partial`` file beside the current one, fsyncs it, and only then renames it over
``alignment.sqlite`` (and fsyncs the directory). A run that dies before the rename leaves the
previous result in place, complete; the stray partial file is never read and is removed by the
next write. `AlignmentStore` opens the current file read-only and checks it is whole.

The file holds two tables::

    alignment(key TEXT PRIMARY KEY, value)        one row per AlignmentSummary field
    members(join_key BLOB PRIMARY KEY, canonical_id TEXT) WITHOUT ROWID, indexed both ways

Join keys are 16-byte ``psi.join_keys`` values; in numpy they travel as ``V16`` arrays (never
``S16``, whose items lose trailing zero bytes as Python bytes) and are ordered as bytes, through an
``S16`` view where numpy needs one: the same order as SQLite's BLOB order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cobrand.durable import fsync_path
from cobrand.errors import FailedPrecondition, InvalidRequest, NotFound
from cobrand.pki import Party
from cobrand.psi import JOIN_KEY_BYTES

__all__ = [
    "ALIGNMENT_FILE",
    "JOIN_KEY_DTYPE",
    "AlignmentStore",
    "AlignmentSummary",
    "intersection_digest",
    "write_alignment",
]

_LOG = logging.getLogger(__name__)

ALIGNMENT_FILE = "alignment.sqlite"
JOIN_KEY_DTYPE = np.dtype(f"V{JOIN_KEY_BYTES}")
_FORMAT = 1
_PARTIAL_GLOB = f".{ALIGNMENT_FILE}.*.partial"
_INSERT_BATCH = 50_000


@dataclass(frozen=True)
class AlignmentSummary:
    """What one side knows about a committed alignment run.

    Attributes
    ----------
    run_id : str
        The run's id, chosen by the bank; the same on both sides.
    party : Party
        Whose result this is.
    federation_id : str
    federation_digest : bytes
        SHA-256 of the federation file both sides ran under.
    protocol_version : int
    committed_at : datetime.datetime
        When this side persisted the result (UTC).
    own_rows : int
        Identifiers this side brought to the run.
    peer_rows : int
        Identifiers the other side announced.
    intersection_size : int
    intersection_digest : bytes
        `intersection_digest` of the sorted join keys; equal on both sides of a run.
    """

    run_id: str
    party: Party
    federation_id: str
    federation_digest: bytes
    protocol_version: int
    committed_at: dt.datetime
    own_rows: int
    peer_rows: int
    intersection_size: int
    intersection_digest: bytes


def intersection_digest(join_keys: npt.NDArray[np.void]) -> bytes:
    """SHA-256 over the concatenated sorted join keys: both sides compare it, nothing else."""
    return hashlib.sha256(np.ascontiguousarray(join_keys).tobytes()).digest()


def write_alignment(
    directory: Path,
    summary: AlignmentSummary,
    join_keys: npt.NDArray[np.void],
    canonical_ids: Sequence[str] | npt.NDArray[np.object_],
) -> Path:
    """Persist one run's result, atomically replacing the previous one in `directory`.

    Parameters
    ----------
    directory : Path
        This side's data directory; created if missing.
    summary : AlignmentSummary
        Its `intersection_size` and `intersection_digest` must describe `join_keys`.
    join_keys : numpy.ndarray of V16, shape (n,)
        Strictly ascending.
    canonical_ids : sequence of str, length n
        This side's canonical identifier for each join key.

    Returns
    -------
    Path
        The result file.

    Raises
    ------
    InvalidRequest
        If the keys are not strictly ascending or disagree with the summary (a bug upstream:
        nothing is written).
    """
    _check_members(summary, join_keys, canonical_ids)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(_PARTIAL_GLOB):
        _LOG.info("[AlignmentStore.Write] removing %s left by an interrupted run", stale.name)
        stale.unlink()
    target = directory / ALIGNMENT_FILE
    partial = directory / f".{ALIGNMENT_FILE}.{summary.run_id}.partial"
    try:
        _build(partial, summary, join_keys, canonical_ids)
        fsync_path(partial)
        os.replace(partial, target)
        fsync_path(directory)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _LOG.info(
        "[AlignmentStore.Write] run %s: %d members committed to %s",
        summary.run_id,
        summary.intersection_size,
        target,
    )
    return target


def _check_members(
    summary: AlignmentSummary,
    join_keys: npt.NDArray[np.void],
    canonical_ids: Sequence[str] | npt.NDArray[np.object_],
) -> None:
    if join_keys.dtype != JOIN_KEY_DTYPE or join_keys.ndim != 1:
        raise InvalidRequest(
            f"join keys must be a 1-d {JOIN_KEY_DTYPE} array, not {join_keys.dtype}"
        )
    if not len(join_keys) == len(canonical_ids) == summary.intersection_size:
        raise InvalidRequest(
            f"run {summary.run_id}: {len(join_keys)} join keys and {len(canonical_ids)} "
            f"identifiers for an intersection of {summary.intersection_size}"
        )
    ordered = join_keys.view(f"S{JOIN_KEY_BYTES}")
    if len(join_keys) > 1 and not bool(np.all(ordered[1:] > ordered[:-1])):
        raise InvalidRequest(f"run {summary.run_id}: join keys are not strictly ascending")
    if intersection_digest(join_keys) != summary.intersection_digest:
        raise InvalidRequest(f"run {summary.run_id}: join keys do not match the summary's digest")


def _build(
    path: Path,
    summary: AlignmentSummary,
    join_keys: npt.NDArray[np.void],
    canonical_ids: Sequence[str] | npt.NDArray[np.object_],
) -> None:
    path.unlink(missing_ok=True)
    connection = sqlite3.connect(path)
    try:
        # No journal: the file is private until the rename, and a crash just discards it.
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("CREATE TABLE alignment (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
        connection.execute(
            "CREATE TABLE members (join_key BLOB PRIMARY KEY, canonical_id TEXT NOT NULL) "
            "WITHOUT ROWID"
        )
        for start in range(0, len(join_keys), _INSERT_BATCH):
            stop = start + _INSERT_BATCH
            raw = join_keys[start:stop].tobytes()
            connection.executemany(
                "INSERT INTO members VALUES (?, ?)",
                zip(
                    (raw[i : i + JOIN_KEY_BYTES] for i in range(0, len(raw), JOIN_KEY_BYTES)),
                    (str(i) for i in canonical_ids[start:stop]),
                    strict=True,
                ),
            )
        # Serving finds an applicant's join key by its canonical identifier.
        connection.execute("CREATE UNIQUE INDEX members_by_id ON members (canonical_id)")
        connection.executemany(
            "INSERT INTO alignment VALUES (?, ?)",
            [("format", _FORMAT), *_summary_rows(summary)],
        )
        connection.commit()
    finally:
        connection.close()


def _summary_rows(summary: AlignmentSummary) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for field in fields(summary):
        value = getattr(summary, field.name)
        if isinstance(value, dt.datetime):
            value = value.astimezone(dt.UTC).isoformat()
        elif isinstance(value, Party):
            value = value.value
        rows.append((field.name, value))
    return rows


class AlignmentStore:
    """The current alignment result of one side, opened read-only.

    Lookups are safe from several threads. Use as a context manager or call `close`.

    Raises
    ------
    NotFound
        If `directory` holds no result yet.
    FailedPrecondition
        If the file is not a whole result of a format this version reads.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / ALIGNMENT_FILE
        if not self.path.is_file():
            raise NotFound(f"no alignment result in {directory}: run an alignment first")
        self._lock = threading.Lock()
        self._connection = self._connect(check_same_thread=False)
        try:
            self.summary = self._read_summary()
        except BaseException:
            self._connection.close()
            raise

    def _connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        return sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=check_same_thread
        )

    def _read_summary(self) -> AlignmentSummary:
        try:
            values = dict(self._connection.execute("SELECT key, value FROM alignment"))
            members = self._connection.execute("SELECT count(*) FROM members").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise FailedPrecondition(
                f"{self.path} is not a readable alignment result: {exc}"
            ) from exc
        if values.get("format") != _FORMAT:
            raise FailedPrecondition(
                f"{self.path} has alignment format {values.get('format')!r}; this version "
                f"reads format {_FORMAT}"
            )
        try:
            summary = AlignmentSummary(
                run_id=values["run_id"],
                party=Party(values["party"]),
                federation_id=values["federation_id"],
                federation_digest=values["federation_digest"],
                protocol_version=values["protocol_version"],
                committed_at=dt.datetime.fromisoformat(values["committed_at"]),
                own_rows=values["own_rows"],
                peer_rows=values["peer_rows"],
                intersection_size=values["intersection_size"],
                intersection_digest=values["intersection_digest"],
            )
        except (KeyError, ValueError) as exc:
            raise FailedPrecondition(f"{self.path} has an incomplete summary: {exc}") from exc
        if members != summary.intersection_size:
            raise FailedPrecondition(
                f"{self.path} holds {members} members for an intersection of "
                f"{summary.intersection_size}"
            )
        return summary

    def canonical_id(self, join_key: bytes) -> str | None:
        """This side's canonical identifier for `join_key`, or None outside the intersection."""
        with self._lock:
            row = self._connection.execute(
                "SELECT canonical_id FROM members WHERE join_key = ?", (join_key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def join_key(self, canonical_id: str) -> bytes | None:
        """The join key of this side's `canonical_id`, or None outside the intersection."""
        with self._lock:
            row = self._connection.execute(
                "SELECT join_key FROM members WHERE canonical_id = ?", (canonical_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def members(
        self, batch_size: int = _INSERT_BATCH
    ) -> Iterator[tuple[npt.NDArray[np.void], npt.NDArray[np.object_]]]:
        """The intersection in join-key order, in batches of (join keys V16, canonical ids).

        Reads through its own connection, so lookups may run while it is consumed.
        """
        connection = self._connect()
        try:
            cursor = connection.execute(
                "SELECT join_key, canonical_id FROM members ORDER BY join_key"
            )
            while rows := cursor.fetchmany(batch_size):
                keys, ids = zip(*rows, strict=True)
                yield (
                    np.frombuffer(b"".join(keys), dtype=JOIN_KEY_DTYPE),
                    np.array(ids, dtype=object),
                )
        finally:
            connection.close()

    def close(self) -> None:
        """Close the file."""
        self._connection.close()

    def __enter__(self) -> AlignmentStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
