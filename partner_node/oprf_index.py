"""The partner's OPRF key and its index of every partner user by lookup output.

A consented lookup ends with the gateway asking for the user whose lookup output is y, the
first 16 bytes of F_k(x) (``cobrand.oprf``). The partner computes F_k(u) of each of its users u
once (one hash to the group and one scalar multiplication per user, on every core: libsodium
runs without the GIL, which ctypes releases around each call) and keeps the outputs sorted
beside each user's table row, so a lookup is a binary search. As model versions load, the
index is made in the background on the first consented lookup (or as the node starts, when it
has one saved), so a node that serves none (an alignment or training run, a benchmark) never
spends the CPU, while a lookup waits for it within its deadline, then is ``UNAVAILABLE``; the
node's other services answer meanwhile. Building takes about 60 us of CPU
per user (3 million users: 2 to 6 minutes on two shared cores), so a built index is saved
(``partner_node.oprf_index_file``, bound to the key, the federation and the table) and the next
start reads it back instead, in well under a second; a saved index that does not match, or does
not read whole, is named in a warning, rebuilt and replaced.

The key (`load_or_create_key`) is a file of 32 bytes, a canonical non-zero scalar, made with
mode 0600 on first start when absent, and refused when others may read it, as ssh refuses a
private key. Rotating it is replacing the file and restarting the node: every output changes,
and the index is rebuilt.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from cobrand import oprf
from cobrand.durable import fsync_path, write_new
from cobrand.errors import AlreadyExists, ConfigError
from partner_node.oprf_index_file import IndexBinding, load_saved_index, save_index
from partner_node.serving_models import BackgroundBuild

__all__ = ["OPRF_KEY_FILE", "OprfIndex", "OprfIndexBuild", "build_index", "load_or_create_key"]

_LOG = logging.getLogger(__name__)

OPRF_KEY_FILE: Final = "oprf.key"
"""The key file's name under the node's ``data_dir`` when the settings name none."""

_OUTPUT_DTYPE: Final = np.dtype(f"S{oprf.OUTPUT_BYTES}")
# Users per task of the build: large enough that the pool's overhead is nothing.
_CHUNK = 4096


def load_or_create_key(path: Path) -> bytes:
    """The OPRF key in `path`, made there (mode 0600) if the file does not exist.

    Raises
    ------
    ConfigError
        Naming the file: unreadable, readable by group or others, or not a key.
    """
    key = oprf.new_scalar()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_new(path, key, mode=0o600)
        # A key lost to a crash would change every user's output: on disk before it is used.
        fsync_path(path)
        fsync_path(path.parent)
    except AlreadyExists:
        return _read_key(path)
    except OSError as err:
        raise ConfigError(f"{path}: cannot create the OPRF key: {err.strerror}") from err
    _LOG.info("[OprfIndex] made a new OPRF key in %s", path)
    return key


def _read_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the OPRF key: {err.strerror}") from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: the OPRF key may be read by others (mode {stat.S_IMODE(mode):04o}); "
            "chmod 600 it"
        )
    try:
        oprf.check_key(key)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return key


@dataclass(frozen=True)
class OprfIndex:
    """Every partner user's lookup output, ascending, beside the user's row in the table.

    Attributes
    ----------
    outputs : ndarray of S16, shape (n,)
        The lookup output of each user, ascending.
    rows : ndarray of intp, shape (n,)
        ``rows[i]`` is the table row of the user whose output is ``outputs[i]``.
    """

    outputs: npt.NDArray[np.bytes_]
    rows: npt.NDArray[np.intp]

    def row(self, output: bytes) -> int | None:
        """The table row of the user whose output is `output`, or None when no user has it."""
        # Compared as numpy bytes on both sides: they drop trailing zero bytes alike.
        probe = np.frombuffer(output, dtype=_OUTPUT_DTYPE)[0]
        position = int(np.searchsorted(self.outputs, probe))
        if position < len(self.outputs) and self.outputs[position] == probe:
            return int(self.rows[position])
        return None


def build_index(
    key: bytes, kind: str, ids: npt.NDArray[np.object_], domain: bytes, workers: int
) -> OprfIndex:
    """The lookup output of every canonical identifier of `kind` in `ids` in the federation of
    lookup domain `domain`, sorted, on `workers` threads."""

    def outputs(start: int) -> bytes:
        return b"".join(
            oprf.evaluate_lookup(key, domain, kind, str(u)) for u in ids[start : start + _CHUNK]
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="oprf-index") as pool:
        values = np.frombuffer(
            b"".join(pool.map(outputs, range(0, len(ids), _CHUNK))), dtype=_OUTPUT_DTYPE
        )
    order = np.argsort(values, kind="stable")
    elapsed = time.perf_counter() - started
    _LOG.info(
        "[OprfIndex] %d partner users indexed in %.1f s (%.0f users/s, %d threads)",
        len(ids),
        elapsed,
        len(ids) / elapsed if elapsed else 0.0,
        workers,
    )
    return OprfIndex(values[order], order.astype(np.intp))


class OprfIndexBuild:
    """The index of a node's users, read from its saved file or built and saved, by a background
    thread once first asked for.

    Parameters
    ----------
    key : bytes
    kind : str
        The identifier kind of the partner's table (its schema's).
    ids : ndarray of object (str)
        The table's canonical identifiers; row i is table row i.
    domain : bytes
        ``cobrand.oprf.lookup_domain`` of the federation.
    saved : Path
        The saved index (``<data_dir>/oprf_index.bin``), read if it matches, else (re)written.
    workers : int, optional
        Threads building it; every core by default.
    """

    def __init__(
        self,
        key: bytes,
        kind: str,
        ids: npt.NDArray[np.object_],
        domain: bytes,
        saved: Path,
        workers: int | None = None,
    ) -> None:
        self.key = key
        self.saved = saved
        self._build: BackgroundBuild[OprfIndex] = BackgroundBuild("the consented lookup index")
        self._builder = threading.Thread(
            target=self._build.run,
            args=(lambda: self._load_or_build(kind, ids, domain, workers or os.cpu_count() or 1),),
            name="oprf-index",
            daemon=True,
        )
        self._lock = threading.Lock()

    def _load_or_build(
        self, kind: str, ids: npt.NDArray[np.object_], domain: bytes, workers: int
    ) -> OprfIndex:
        started = time.perf_counter()
        binding = IndexBinding.of(self.key, domain, kind, ids)
        try:
            saved = load_saved_index(self.saved, binding)
        except ConfigError as err:
            _LOG.warning("[OprfIndex] %s; rebuilding it", err)
        else:
            if saved is not None:
                _LOG.info(
                    "[OprfIndex] %d partner users' index loaded from %s in %.2f s",
                    len(ids),
                    self.saved,
                    time.perf_counter() - started,
                )
                return OprfIndex(*saved)
            _LOG.info("[OprfIndex] no saved index at %s: building it", self.saved)
        index = build_index(self.key, kind, ids, domain, workers)
        try:
            save_index(self.saved, binding, index.outputs, index.rows)
        except OSError as err:
            # The index built serves all the same: only the next start pays the build again.
            _LOG.warning(
                "[OprfIndex] %s: cannot save the index (%s); the next start rebuilds it",
                self.saved,
                err.strerror,
            )
        else:
            _LOG.info("[OprfIndex] index saved to %s", self.saved)
        return index

    def start(self) -> None:
        """Start reading or building it, unless started already."""
        with self._lock:
            if self._builder.ident is None:
                self._builder.start()

    def index(self, wait_s: float) -> OprfIndex:
        """The index, starting its build if needed and waiting at most `wait_s` seconds for it.

        Raises
        ------
        Unavailable
            Still building after `wait_s` seconds.
        """
        self.start()
        return self._build.result(wait_s)
