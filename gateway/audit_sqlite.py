"""The embedded audit store: one SQLite file in WAL mode, for a single gateway.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``, so every commit fsyncs the WAL
before it returns; ``NORMAL`` would skip that sync and could lose the last commits on a power
cut, which an audit log that acknowledges each decision cannot afford. Group commit (`AuditLog`)
makes that one fsync per batch, not per decision. WAL lets the reader connection look records
up while the writer commits. The worker processes of one gateway (`gateway.workers`) write the
one file side by side, one transaction at a time, and WAL's shared memory needs them on one
host; gateways on several hosts need the PostgreSQL store. Writers queue for a lock file beside
the database (``<file>-writer.lock``, ``flock``) before they begin: the kernel wakes the next
one as soon as a commit ends, where SQLite's own busy wait sleeps 1, 2, 5... up to 100 ms
between tries, which with two writers committing back to back put 0.5 s in the tail of the
replies.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cobrand.errors import ConfigError
from gateway.audit_store import SCHEMA, SqlAuditStore

__all__ = ["SqliteAuditStore"]

_BUSY_TIMEOUT_MS = 5000


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode (isolation_level=None): transactions are begun explicitly, never implicitly
    # by the driver. Each connection is used by one thread at a time (the audit log's flush, the
    # read lock).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return conn


class SqliteAuditStore(SqlAuditStore):
    """The audit table in the SQLite file `path` (created with its table if missing).

    Raises
    ------
    ConfigError
        Naming `path` when it cannot be opened as a database or cannot use WAL.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        try:
            self._writer = _connect(path)
            mode = self._writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise ConfigError(f"{path}: SQLite cannot use WAL here (journal mode {mode!r})")
            self._writer.execute("PRAGMA synchronous = FULL")
            for statement in SCHEMA:
                self._writer.execute(statement)
            self._reader = _connect(path)
            self._reader.execute("PRAGMA query_only = ON")
            self._turn = (path.parent / f"{path.name}-writer.lock").open("ab")
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"{path}: cannot open the audit database: {exc}") from exc

    def _begin(self) -> None:
        fcntl.flock(self._turn, fcntl.LOCK_EX)
        try:
            # IMMEDIATE takes the write lock now, so another writer fails here, not mid-batch.
            self._writer.execute("BEGIN IMMEDIATE")
        except BaseException:
            fcntl.flock(self._turn, fcntl.LOCK_UN)
            raise

    def _commit(self) -> None:
        self._writer.execute("COMMIT")
        fcntl.flock(self._turn, fcntl.LOCK_UN)

    def _rollback(self) -> None:
        try:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        return self._writer.execute(sql, params).rowcount

    def _write_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._writer.execute(sql, params).fetchall()

    def _read_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._reader.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close both connections and the lock file."""
        self._reader.close()
        self._writer.close()
        self._turn.close()
