"""The gateway's durable audit log: every decision is recorded before its reply is sent.

`AuditLog.record` returns only once the record is committed and flushed to disk. Durability
does not cost one flush per decision: the records queued while one flush ran (up to
``max_batch``) are committed as one transaction with one flush (group commit), written by one
of their own callers, the leader, while the others wait (see `AuditLog`). Under load the batch
grows by itself, so no fixed wait is needed; ``linger_ms`` can add one, at the cost of latency
when idle.

Backends (`AuditSettings.backend`): embedded SQLite in WAL mode (`audit_sqlite`, one gateway)
or PostgreSQL (`audit_postgres`, required when several gateways run side by side).

Identifiers in records are keyed pseudonyms only (see `gateway.audit_record`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
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
        How long a flush waits for more records before writing a batch that is not full;
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
    """Open the store `settings` name as an audit log.

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
    """A queued record, its outcome, and the wake-up of the caller waiting on it.

    A lock held from creation stands for the wake-up: the caller waits by acquiring it, and
    whoever wakes it releases it, either with the outcome (`settle`) or to hand it the lead
    (`promote`), which it then takes back by acquiring the lock again. (A
    `concurrent.futures.Future` does the same through a condition variable, costing a lock per
    wait and a notify.) ``queued`` and ``lead`` change only under the log's lock.
    """

    __slots__ = ("_ready", "error", "item", "lead", "queued", "stored")

    def __init__(self, item: EncodedRecord) -> None:
        self.item = item
        self.stored: AuditRecord | None = None
        self.error: CobrandError | None = None
        self.queued = True
        self.lead = False
        self._ready = threading.Lock()
        self._ready.acquire()

    def settle(self, stored: AuditRecord | None, error: CobrandError | None) -> None:
        """Set the outcome (once) and wake the caller."""
        self.stored, self.error = stored, error
        self._ready.release()

    def promote(self) -> None:
        """Wake the caller to lead the next flush (called under the log's lock)."""
        self.lead = True
        self._ready.release()

    def wait(self, timeout_s: float | None) -> bool:
        """Whether the caller was woken (settled or promoted) before `timeout_s` passed."""
        return self._ready.acquire(timeout=-1 if timeout_s is None else max(0.0, timeout_s))

    def outcome(self) -> AuditRecord:
        """The record stored; raises the refusal."""
        if self.error is not None:
            raise self.error
        assert self.stored is not None  # settled without an error
        return self.stored


class AuditLog:
    """Durable, group-committed audit log over a store; use as a context manager or `close`.

    Group commit by leader and followers: a caller that finds no flush under way leads one: it
    takes what is queued (its own record first, up to ``max_batch``), writes it as one
    transaction on the store's writer connection, settles every caller in the batch and, if
    more records queued meanwhile, hands the lead to the oldest one's caller. Callers arriving
    during a flush queue and wait. A lone caller so writes its own record with no thread
    hand-off; under load the batch grows by itself, one transaction per flush.

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
        # Guards the queue, the lead and the counters; waited on by a lingering leader and close.
        self._lock = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        # True from a caller taking the lead until the last leader finds the queue empty: while
        # it is, every queued record has a leader to write it.
        self._leading = False
        self._closed = False
        self._records = 0
        self._batches = 0

    def record(self, record: AuditRecord, timeout_s: float | None = None) -> AuditRecord:
        """Record `record` durably; returns once it is committed and flushed.

        Parameters
        ----------
        record : AuditRecord
        timeout_s : float or None
            Longest wait for another caller's flush to write it (e.g. the call's remaining
            deadline); None waits on. A caller leading the flush of its own record waits for
            the store (whose own timeouts bound the wait).

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
            record was not acknowledged (after a timeout it may still be written if a flush
            had taken it: a retry with the same application id then gets it back).
        """
        pending = _Pending(EncodedRecord.of(record))
        with self._lock:
            if self._closed:
                raise Unavailable("the audit log is closed")
            self._queue.append(pending)
            if self._leading:
                if self._linger_s > 0 and len(self._queue) >= self._max_batch:
                    self._lock.notify_all()
            else:
                self._leading = pending.lead = True
        if not pending.lead and not pending.wait(timeout_s):
            self._give_up(pending, timeout_s)
        if pending.lead:
            self._lead()
        return pending.outcome()

    def _give_up(self, pending: _Pending, timeout_s: float | None) -> None:
        """Raise Unavailable for a caller whose wait passed, withdrawing its record if no flush
        has taken it yet (and passing the lead on if it was just handed it)."""
        with self._lock:
            if pending.queued:
                self._queue.remove(pending)
                pending.queued = False
                if pending.lead:
                    self._hand_over()
        raise Unavailable(f"the audit log did not confirm the decision within {timeout_s} s")

    def _lead(self) -> None:
        """Flush one batch, the leader's own record first, then hand the lead over."""
        try:
            with self._lock:
                if self._linger_s > 0:
                    self._lock.wait_for(
                        lambda: self._closed or len(self._queue) >= self._max_batch,
                        self._linger_s,
                    )
                batch = [
                    self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))
                ]
                for p in batch:
                    p.queued = False
            self._flush(batch)
        finally:
            with self._lock:
                self._hand_over()

    def _hand_over(self) -> None:
        """Wake the oldest queued caller to lead, or end the lead when none waits (under the
        lock)."""
        if self._queue:
            self._queue[0].promote()
        else:
            self._leading = False
            self._lock.notify_all()

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
        """Wait for what is queued to be written, then close the store; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
            self._lock.wait_for(lambda: not self._leading)
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
