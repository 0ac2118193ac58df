"""The gateway's durable audit log: every decision is recorded before its reply is sent.

`AuditLog.record` returns only once the record is committed and flushed to disk. Durability
does not cost one flush per decision: a writer thread takes every record queued while the
previous flush ran (up to ``max_batch``) and commits them as one transaction with one flush
(group commit); each caller waits on its own future. Under load the batch grows by itself, so
no fixed wait is needed; ``linger_ms`` can add one, at the cost of latency when idle.

Backends (`AuditSettings.backend`): embedded SQLite in WAL mode (`audit_sqlite`, one gateway)
or PostgreSQL (`audit_postgres`, required when several gateways run side by side).

Identifiers in records are keyed pseudonyms only (see `gateway.audit_record`).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from cobrand.errors import CobrandError, Unavailable
from cobrand.settings import Section
from gateway.audit_record import ApplicationInputs, AuditRecord
from gateway.audit_sqlite import SqliteAuditStore
from gateway.audit_store import EncodedRecord, SqlAuditStore

__all__ = ["AuditLog", "AuditSettings", "GroupCommitStats", "open_audit_log"]

log = logging.getLogger(__name__)


class AuditSettings(Section):
    """Where and how the gateway records its decisions (``audit:`` in the gateway's settings).

    Attributes
    ----------
    backend : "sqlite" or "postgres"
        SQLite for a single gateway; PostgreSQL when several gateways share one log.
    path : Path or None
        The SQLite file (``backend: sqlite``).
    dsn : str or None
        The PostgreSQL connection string (``backend: postgres``), e.g.
        ``postgresql://gateway@db.bank.internal/cobrand``; kept secret in logs and reprs.
    max_batch : int
        Most records committed in one transaction.
    linger_ms : float
        How long the writer waits for more records before flushing a batch that is not full;
        0 flushes as soon as the previous flush is done (batches still form under load).
    """

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path | None = None
    dsn: SecretStr | None = None
    max_batch: int = Field(default=256, ge=1, le=10_000)
    linger_ms: float = Field(default=0.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _store_named(self) -> Self:
        needed = "path" if self.backend == "sqlite" else "dsn"
        other = "dsn" if self.backend == "sqlite" else "path"
        if getattr(self, needed) is None:
            raise ValueError(f"backend {self.backend!r} needs '{needed}'")
        if getattr(self, other) is not None:
            raise ValueError(f"backend {self.backend!r} does not use '{other}'")
        return self


def open_audit_log(settings: AuditSettings) -> AuditLog:
    """Open the store `settings` name and start its writer.

    Raises
    ------
    ConfigError
        When the store cannot be opened.
    """
    store: SqlAuditStore
    if settings.backend == "sqlite":
        assert settings.path is not None  # checked by AuditSettings
        store = SqliteAuditStore(settings.path)
    else:
        # Imported here so a SQLite gateway does not load the PostgreSQL driver.
        from gateway.audit_postgres import PostgresAuditStore

        assert settings.dsn is not None  # checked by AuditSettings
        store = PostgresAuditStore(settings.dsn.get_secret_value())
    return AuditLog(store, max_batch=settings.max_batch, linger_s=settings.linger_ms / 1000)


@dataclass(frozen=True, slots=True)
class GroupCommitStats:
    """Records handled (stored or refused) and the transactions, one flush each, they took."""

    records: int
    batches: int


class _Pending:
    """A queued record and its outcome, handed from the writer thread to the waiting caller.

    A lock held from creation until the outcome is set stands for the hand-over: the caller
    waits by acquiring it, the writer releases it. (A `concurrent.futures.Future` does the same
    through a condition variable, costing a lock per wait and a notify; at hundreds of
    decisions a second it was half of the writer thread's interpreter time.)
    """

    __slots__ = ("_ready", "error", "item", "stored")

    def __init__(self, item: EncodedRecord) -> None:
        self.item = item
        self.stored: AuditRecord | None = None
        self.error: CobrandError | None = None
        self._ready = threading.Lock()
        self._ready.acquire()

    def settle(self, stored: AuditRecord | None, error: CobrandError | None) -> None:
        """Set the outcome (once) and wake the caller."""
        self.stored, self.error = stored, error
        self._ready.release()

    def outcome(self, timeout_s: float | None) -> AuditRecord | None:
        """The record stored, or None if `timeout_s` passed first; raises the refusal."""
        if not self._ready.acquire(timeout=-1 if timeout_s is None else max(0.0, timeout_s)):
            return None
        if self.error is not None:
            raise self.error
        return self.stored


_STOP = object()


class AuditLog:
    """Durable, group-committed audit log over a store; use as a context manager or `close`.

    Parameters
    ----------
    store : SqlAuditStore
        The backend; the log owns it and closes it.
    max_batch : int
        Most records per transaction (1 means one commit per record).
    linger_s : float
        Extra wait for more records before a batch that is not full is flushed.
    """

    def __init__(self, store: SqlAuditStore, *, max_batch: int = 256, linger_s: float = 0.0):
        self._store = store
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._records = 0
        self._batches = 0
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    def record(self, record: AuditRecord, timeout_s: float | None = None) -> AuditRecord:
        """Record `record` durably; returns once it is committed and flushed.

        Parameters
        ----------
        record : AuditRecord
        timeout_s : float or None
            Longest wait for the store (e.g. the call's remaining deadline); None waits on.

        Returns
        -------
        AuditRecord
            The record stored for its application: `record` itself, or, when the application
            was already decided with the same inputs (a concurrent retry), that earlier record,
            which the caller replies with instead (its ``request_id`` differs).

        Raises
        ------
        ApplicationIdReused
            If the application was already decided with different inputs.
        AlreadyExists
            If the request id is already recorded.
        Unavailable
            If the log is closed, the store failed to write, or `timeout_s` passed first; the
            record was not acknowledged (after a timeout it may still be written: a retry
            with the same application id then gets it back).
        """
        pending = _Pending(EncodedRecord.of(record))
        with self._lock:
            if self._closed:
                raise Unavailable("the audit log is closed")
            self._queue.put(pending)
        stored = pending.outcome(timeout_s)
        if stored is None:
            raise Unavailable(f"the audit log did not confirm the decision within {timeout_s} s")
        return stored

    def find_application(self, inputs: ApplicationInputs) -> AuditRecord | None:
        """The decision recorded for ``inputs.application_id``, or None if never decided.

        Raises
        ------
        ApplicationIdReused
            If that application was decided with other inputs (another input digest).
        """
        return self._store.find_application(inputs)

    def get(self, request_id: str) -> AuditRecord | None:
        """The record of decision `request_id`, or None."""
        return self._store.get(request_id)

    def query(
        self,
        since: dt.datetime,
        until: dt.datetime,
        model_version: str | None = None,
        limit: int = 10_000,
    ) -> list[AuditRecord]:
        """Decisions made in ``[since, until)`` (aware datetimes), oldest first.

        Parameters
        ----------
        model_version : str or None
            Only this version's decisions; None for all.
        limit : int
            At most this many records.
        """
        return self._store.query(since, until, model_version, limit)

    def stats(self) -> GroupCommitStats:
        """Records written and transactions used so far."""
        with self._lock:
            return GroupCommitStats(self._records, self._batches)

    def close(self) -> None:
        """Write what is queued, stop the writer and close the store; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()
        self._store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            assert isinstance(first, _Pending)
            batch = [first]
            deadline = time.monotonic() + self._linger_s
            while len(batch) < self._max_batch:
                wait = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Pending)
                batch.append(item)
            self._flush(batch)

    def _flush(self, batch: list[_Pending]) -> None:
        try:
            outcomes = self._store.write_batch([p.item for p in batch])
        except Exception:  # any store failure must fail the waiting callers, not the writer
            # The transaction was rolled back: nobody is acknowledged, each caller gets an error
            # (and the gateway no reply), and the writer carries on with the next batch.
            log.exception("[AuditLog] writing a batch of %d records failed", len(batch))
            for p in batch:
                p.settle(None, Unavailable("the audit log could not write the decision"))
            return
        with self._lock:
            self._records += len(batch)
            self._batches += 1
        for p, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, CobrandError):
                p.settle(None, outcome)
            else:
                p.settle(outcome, None)
