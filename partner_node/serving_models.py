"""The partner's serving state: each model version's embeddings of the aligned customers, found
by join key.

A lookup must cost microseconds (the gateway waits tens of milliseconds for the whole call), so
nothing is computed per call. For a model version and the current alignment, `ServingModels`
encodes the partner's aligned rows once with the version's own preprocessor (as training did),
runs the version's bottom over them in a few batched forward passes and keeps the result: a
lookup is a binary search in the sorted join keys and a row of that matrix. At 1M aligned
customers and the default width of 16 that is 64 MB per version, and building it takes seconds.

Versions load lazily, on their first request, in a background thread: callers wait for it
only as long as their own deadline allows (then ``UNAVAILABLE``), so a slow load never holds
the node's handler threads, and requests for the versions already loaded keep being answered
meanwhile. At most `MAX_CACHED_VERSIONS` stay loaded (least recently used out): the version in
service and the one replacing it, so a swap drops no request. Each entry is keyed by the model
version and the alignment run it was built for; a new alignment (the alignment file replaced,
noticed by one ``stat`` per call) makes the next request of each version build a new entry
over the new keys.

A loaded version also embeds one row of the partner's table on demand (`ServingVersion.embed_row`:
the version's preprocessor in its one-row form, the same bottom): a user outside the alignment
found by a consented lookup (``partner_node.consented_lookup_service``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from cobrand.aligned_rows import aligned_table
from cobrand.alignment_store import ALIGNMENT_FILE, JOIN_KEY_DTYPE, AlignmentStore
from cobrand.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidRequest,
    Unavailable,
    UnknownModelVersion,
)
from cobrand.model_manifest import Manifest
from cobrand.model_store import ModelStore
from cobrand.preprocess import Encoded, RowEncoder
from cobrand.psi import JOIN_KEY_BYTES
from cobrand.rounds_protocol import AlignmentVersion
from cobrand.tables import PartyTable
from partner_node.model_registry import PartnerVersion, load_partner_version

__all__ = ["MAX_CACHED_VERSIONS", "BackgroundBuild", "KeyIndex", "ServingModels", "ServingVersion"]

_LOG = logging.getLogger(__name__)

MAX_CACHED_VERSIONS: Final = 2
"""Versions kept loaded: the one in service and the one being swapped in."""

# Rows per forward pass when a version loads: bounds the activations' memory.
_FORWARD_ROWS = 65_536
# numpy orders and compares fixed-width bytes ("S16") as memcmp does, which searchsorted needs;
# the keys are read in as "V16" (the alignment store's dtype) and viewed this way.
_KEY_DTYPE: Final = np.dtype(f"S{JOIN_KEY_BYTES}")


@dataclass(frozen=True)
class KeyIndex:
    """The join keys of one alignment, ascending: key i is the customer at aligned position i.

    Attributes
    ----------
    alignment : AlignmentVersion
    keys : ndarray of S16, shape (n,)
        Strictly ascending (as the alignment store holds them).
    """

    alignment: AlignmentVersion
    keys: npt.NDArray[np.bytes_]

    def positions(
        self, join_keys: npt.NDArray[np.bytes_]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Each key's aligned position, and whether it is aligned at all (position 0 if not)."""
        if not len(self.keys):
            return np.zeros(len(join_keys), dtype=np.intp), np.zeros(len(join_keys), dtype=bool)
        index = np.minimum(np.searchsorted(self.keys, join_keys), len(self.keys) - 1)
        return index, self.keys[index] == join_keys


@dataclass(frozen=True)
class _AlignedRows:
    """An alignment's key index and the partner's rows in its order, to build versions from."""

    index: KeyIndex
    table: PartyTable

    @classmethod
    def read(cls, table: PartyTable, data_dir: Path) -> _AlignedRows:
        """The current alignment in `data_dir` over the partner's `table`.

        Raises
        ------
        FailedPrecondition
            The alignment is damaged or names customers the table no longer holds.
        """
        with AlignmentStore(data_dir) as store:
            batches = [keys for keys, _ in store.members()]
            keys = np.concatenate(batches) if batches else np.array([], dtype=JOIN_KEY_DTYPE)
            index = KeyIndex(AlignmentVersion.of(store.summary), keys.view(_KEY_DTYPE))
            return cls(index, aligned_table(table, store))


@dataclass(frozen=True)
class ServingVersion:
    """One model version's embedding of every customer of one alignment, ready to look up.

    Attributes
    ----------
    version_id : str
    index : KeyIndex
    embeddings : ndarray of float32, shape (n, width)
        Row i is the embedding of ``index.keys[i]``; read-only.
    model : PartnerVersion
        The version's preprocessor and bottom, for rows outside the alignment (`embed_row`).
    encoder : RowEncoder
        The preprocessor's one-row form.
    """

    version_id: str
    index: KeyIndex
    embeddings: npt.NDArray[np.float32]
    model: PartnerVersion
    encoder: RowEncoder

    @property
    def width(self) -> int:
        """Values per embedding."""
        return int(self.embeddings.shape[1])

    def embedding(self, join_key: bytes) -> npt.NDArray[np.float32] | None:
        """One customer's embedding, or None when `join_key` is not aligned."""
        positions, found = self.index.positions(np.frombuffer(join_key, dtype=_KEY_DTYPE))
        return self.embeddings[positions[0]] if found[0] else None

    def lookup(
        self, join_keys: npt.NDArray[np.bytes_]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Embeddings of many keys, in their order (zero rows for keys not aligned), and flags."""
        positions, found = self.index.positions(join_keys)
        matrix = self.embeddings[positions]
        matrix[~found] = 0.0
        return matrix, found

    def embed_row(
        self, numeric: Sequence[float], categorical: Sequence[str | None]
    ) -> npt.NDArray[np.float32]:
        """The embedding of one row of the partner's table, computed now (a row outside the
        alignment, for a consented lookup), as a version load computes the aligned ones.

        Raises
        ------
        FailedPrecondition
            The row does not fit the version, or the bottom gives a non-finite value.
        """
        try:
            encoded = self.encoder.encode(numeric, categorical)
        except ConfigError as err:
            raise FailedPrecondition(
                f"model version {self.version_id} does not fit the partner's table: {err}"
            ) from err
        embedding: npt.NDArray[np.float32] = _forward(self.model, encoded)[0]
        if not np.isfinite(embedding).all():
            raise FailedPrecondition(
                f"model version {self.version_id}: the partner bottom gives a non-finite "
                "embedding for a consented lookup"
            )
        return embedding


def _forward(model: PartnerVersion, encoded: Encoded) -> npt.NDArray[np.float32]:
    """The bottom's output over encoded rows, in batches of `_FORWARD_ROWS`."""
    numeric = torch.from_numpy(encoded.numeric)
    categorical = torch.from_numpy(encoded.categorical)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(numeric), _FORWARD_ROWS):
            stop = start + _FORWARD_ROWS
            parts.append(model.bottom(numeric[start:stop], categorical[start:stop]).numpy())
    width = model.bottom.spec.embedding_width
    return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float32)


def _embed(version_id: str, store: ModelStore, aligned: _AlignedRows) -> ServingVersion:
    """Encode the aligned rows with the version's preprocessor and run its bottom over them."""
    version = load_partner_version(store, version_id)
    try:
        encoded = version.preprocessor.transform(aligned.table)
    except ConfigError as err:
        # The partner's table, not the caller's request, is at fault.
        raise FailedPrecondition(
            f"model version {version_id} does not fit the partner's table: {err}"
        ) from err
    embeddings = _forward(version, encoded)
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        raise FailedPrecondition(
            f"model version {version_id}: the partner bottom gives a non-finite embedding at "
            f"aligned position {int(np.flatnonzero(~finite)[0])}"
        )
    embeddings.setflags(write=False)
    return ServingVersion(
        version_id, aligned.index, embeddings, version, version.preprocessor.row_encoder()
    )


_T = TypeVar("_T")


class BackgroundBuild(Generic[_T]):
    """Something built once by a background thread (`run`), awaited with a timeout (`result`).

    Parameters
    ----------
    what : str
        Names it in the refusal of a caller who waits too long (``model version 3``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._done = threading.Event()
        self._value: _T | None = None
        self._error: BaseException | None = None

    def run(self, build: Callable[[], _T]) -> None:
        """Build, keeping the value or the error for every waiter."""
        try:
            self._value = build()
        except BaseException as err:  # noqa: BLE001 - handed to every waiter, see result
            self._error = err
        self._done.set()

    @property
    def failed(self) -> bool:
        """Whether the build ended in an error."""
        return self._done.is_set() and self._error is not None

    def result(self, timeout: float) -> _T:
        """The value, waiting at most `timeout` seconds for it.

        Raises
        ------
        Unavailable
            Still building after `timeout` seconds.
        Exception
            Whatever the build raised.
        """
        if not self._done.wait(timeout):
            raise Unavailable(f"{self.what} is still loading at the partner; retry shortly")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class ServingModels:
    """The loaded model versions of a partner node, over its current alignment. Thread-safe.

    Parameters
    ----------
    table : PartyTable
        The partner's own table, as the node loaded it.
    models_dir : Path
        The partner's model registry, ``<data_dir>/models``.
    data_dir : Path
        Where the node keeps its alignment result.
    max_versions : int
        Entries kept loaded (`MAX_CACHED_VERSIONS`).
    """

    def __init__(
        self,
        table: PartyTable,
        models_dir: Path,
        data_dir: Path,
        max_versions: int = MAX_CACHED_VERSIONS,
    ) -> None:
        self._table = table
        self._store = ModelStore(models_dir)
        self._data_dir = data_dir
        self._max_versions = max_versions
        self._lock = threading.Lock()
        self._entries: OrderedDict[
            tuple[str, AlignmentVersion], BackgroundBuild[ServingVersion]
        ] = OrderedDict()
        # (alignment file identity, its alignment); re-read when the file is replaced.
        self._alignment: tuple[tuple[int, int, int], AlignmentVersion] | None = None
        # The keys of the last alignment read, shared by every version built over it.
        self._aligned: _AlignedRows | None = None
        self._aligned_lock = threading.Lock()

    def version(self, version_id: str, wait_s: float) -> ServingVersion:
        """The loaded `version_id` over the current alignment, loading it if needed.

        Parameters
        ----------
        version_id : str
        wait_s : float
            Seconds to wait for a version still loading.

        Raises
        ------
        InvalidRequest
            `version_id` is not a version id.
        UnknownModelVersion
            The partner holds no such version.
        Unavailable
            The version is still loading after `wait_s` seconds.
        FailedPrecondition
            No alignment yet, the alignment names customers the table no longer holds, or the
            version's files are damaged or do not fit the table (named).
        """
        key = (version_id, self._current_alignment())
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None:
            entry = self._start_loading(key)
        try:
            return entry.result(wait_s)
        except BaseException:
            # A failed load is not kept: the version may be repaired or the alignment settle.
            with self._lock:
                if self._entries.get(key) is entry and entry.failed:
                    del self._entries[key]
            raise

    def manifest(self, version_id: str) -> Manifest:
        """The partner's manifest of a published version, without loading it.

        Raises
        ------
        InvalidRequest
            `version_id` is not a version id (named ``model_version``).
        UnknownModelVersion
            The partner holds no such version.
        FailedPrecondition
            The manifest is damaged.
        """
        try:
            return self._store.manifest(version_id)
        except InvalidRequest as err:
            raise InvalidRequest(f"model_version: {err}") from err
        except UnknownModelVersion:
            held = ", ".join(self._store.versions()) or "none"
            raise UnknownModelVersion(
                f"model_version {version_id} is not published at the partner (it holds {held})"
            ) from None

    def _start_loading(self, key: tuple[str, AlignmentVersion]) -> BackgroundBuild[ServingVersion]:
        version_id, alignment = key
        # Before an entry is made, so requests for versions that do not exist evict nothing.
        self.manifest(version_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                return entry
            entry = self._entries[key] = BackgroundBuild[ServingVersion](
                f"model version {version_id}"
            )
            while len(self._entries) > self._max_versions:
                (evicted, _), _ = self._entries.popitem(last=False)
                _LOG.info("[ServingModels] model version %s unloaded", evicted)
        threading.Thread(
            target=entry.run,
            args=(lambda: self._build(version_id, alignment),),
            name=f"load-version-{version_id}",
            daemon=True,
        ).start()
        return entry

    def _build(self, version_id: str, alignment: AlignmentVersion) -> ServingVersion:
        with self._aligned_lock:
            if self._aligned is None or self._aligned.index.alignment != alignment:
                self._aligned = _AlignedRows.read(self._table, self._data_dir)
            aligned = self._aligned
        if aligned.index.alignment != alignment:
            raise Unavailable("the partner's alignment changed while a model version loaded")
        served = _embed(version_id, self._store, aligned)
        _LOG.info(
            "[ServingModels] model version %s loaded over alignment %s: %d customers, width %d",
            version_id,
            alignment.run_id,
            len(served.embeddings),
            served.width,
        )
        return served

    def _current_alignment(self) -> AlignmentVersion:
        path = self._data_dir / ALIGNMENT_FILE
        try:
            status = os.stat(path)
        except FileNotFoundError:
            raise FailedPrecondition(
                "the partner has no alignment yet: run an alignment first"
            ) from None
        identity = (status.st_ino, status.st_mtime_ns, status.st_size)
        known = self._alignment
        if known is not None and known[0] == identity:
            return known[1]
        with AlignmentStore(self._data_dir) as store:
            alignment = AlignmentVersion.of(store.summary)
        self._alignment = (identity, alignment)
        return alignment
