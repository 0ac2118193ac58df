"""The SQL both audit stores share: one table, batch writes in one transaction, and the reads.

A store writes on one connection, used by one flush of the audit log at a time, and reads on
another behind a lock, so lookups never wait for a flush. The backends (`audit_sqlite`,
`audit_postgres`) supply the connections and the transaction calls; the SQL is the same for
both (``?`` placeholders, which the PostgreSQL store translates).

Each record is one row: indexed columns for lookups and windows, and the whole record as its
canonical JSON text (`record_to_json`), so what was decided is read back exactly as written.
"""

from __future__ import annotations

import datetime as dt
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cobrand.errors import AlreadyExists, CobrandError, InvalidRequest
from gateway.audit_json import record_from_json, record_to_json
from gateway.audit_record import ApplicationInputs, AuditRecord

__all__ = ["INSERT", "SCHEMA", "ApplicationIdReused", "EncodedRecord", "SqlAuditStore", "epoch_us"]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_decisions (
        request_id TEXT PRIMARY KEY,
        application_id TEXT NOT NULL UNIQUE,
        decided_at_us BIGINT NOT NULL,
        model_version TEXT NOT NULL,
        input_digest TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_decisions_time ON audit_decisions (decided_at_us)",
    """CREATE INDEX IF NOT EXISTS audit_decisions_version_time
        ON audit_decisions (model_version, decided_at_us)""",
)

# DO NOTHING instead of an error, so one duplicate does not abort the others of its batch.
INSERT = """INSERT INTO audit_decisions
    (request_id, application_id, decided_at_us, model_version, input_digest, record)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"""
_BY_APPLICATION = "SELECT input_digest, record FROM audit_decisions WHERE application_id = ?"
_BY_REQUEST = "SELECT record FROM audit_decisions WHERE request_id = ?"
_WINDOW = """SELECT record FROM audit_decisions
    WHERE decided_at_us >= ? AND decided_at_us < ? {version}
    ORDER BY decided_at_us, request_id LIMIT ?"""


class ApplicationIdReused(InvalidRequest):
    """An application id already decided is sent again with different inputs."""


def epoch_us(when: dt.datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (the stored time column)."""
    if when.tzinfo is None:
        raise InvalidRequest("audit log times must be timezone-aware")
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record with its JSON text, encoded by the calling thread before it queues."""

    record: AuditRecord
    text: str

    @classmethod
    def of(cls, record: AuditRecord) -> EncodedRecord:
        """Encode `record`."""
        return cls(record, record_to_json(record))


def _row(item: EncodedRecord) -> tuple[Any, ...]:
    rec = item.record
    return (
        rec.request_id,
        rec.application_id,
        epoch_us(rec.decided_at),
        rec.model_version,
        rec.inputs.digest,
        item.text,
    )


def _reused(application_id: str) -> ApplicationIdReused:
    return ApplicationIdReused(
        f"field 'application_id': application {application_id!r} was already decided "
        "with different inputs; send a new application id"
    )


class SqlAuditStore(ABC):
    """The audit table over a writer connection and a locked reader connection."""

    def __init__(self) -> None:
        self._read_lock = threading.Lock()

    @abstractmethod
    def _begin(self) -> None:
        """Start a write transaction on the writer connection."""

    @abstractmethod
    def _commit(self) -> None:
        """Commit the write transaction; durable when it returns."""

    @abstractmethod
    def _rollback(self) -> None:
        """Abandon the write transaction."""

    @abstractmethod
    def _write(self, sql: str, params: Sequence[Any]) -> int:
        """Run `sql` on the writer connection; the number of rows it changed."""

    @abstractmethod
    def _write_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of `sql` on the writer connection (sees the open transaction)."""

    @abstractmethod
    def _read_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of `sql` on the reader connection; called under the read lock."""

    @abstractmethod
    def close(self) -> None:
        """Close both connections."""

    def write_batch(self, batch: Sequence[EncodedRecord]) -> list[AuditRecord | CobrandError]:
        """Insert `batch` in one transaction, committed (durable) when this returns.

        Returns
        -------
        list
            Per record, in order: the record now stored for its application (the record itself,
            or the one recorded earlier with the same inputs) or the error refusing it
            (`ApplicationIdReused`, or `AlreadyExists` for a request id already used).
        """
        self._begin()
        try:
            inserted = self._insert_rows([_row(item) for item in batch])
            outcomes = [
                item.record if stored else self._clash(item)
                for item, stored in zip(batch, inserted, strict=True)
            ]
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return outcomes

    def _insert_rows(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """Insert each row unless its request or application id is taken; which were inserted.

        One statement per row here; a store whose statements each cost a network round trip
        overrides it.
        """
        return [self._write(INSERT, row) == 1 for row in rows]

    def _clash(self, item: EncodedRecord) -> AuditRecord | CobrandError:
        rec = item.record
        rows = self._write_query(_BY_APPLICATION, (rec.application_id,))
        if not rows:
            return AlreadyExists(f"request id {rec.request_id} is already recorded")
        digest, text = rows[0]
        if digest != rec.inputs.digest:
            return _reused(rec.application_id)
        return record_from_json(text)

    def find_application(self, inputs: ApplicationInputs) -> AuditRecord | None:
        """The decision recorded for ``inputs.application_id``, if any.

        Raises
        ------
        ApplicationIdReused
            If that application was decided with inputs other than `inputs`.
        """
        with self._read_lock:
            rows = self._read_query(_BY_APPLICATION, (inputs.application_id,))
        if not rows:
            return None
        digest, text = rows[0]
        if digest != inputs.digest:
            raise _reused(inputs.application_id)
        return record_from_json(text)

    def get(self, request_id: str) -> AuditRecord | None:
        """The record with `request_id`, if any."""
        with self._read_lock:
            rows = self._read_query(_BY_REQUEST, (request_id,))
        return record_from_json(rows[0][0]) if rows else None

    def query(
        self,
        since: dt.datetime,
        until: dt.datetime,
        model_version: str | None,
        limit: int,
    ) -> list[AuditRecord]:
        """Records decided in ``[since, until)``, oldest first, at most `limit`."""
        version = "" if model_version is None else "AND model_version = ?"
        params: list[Any] = [epoch_us(since), epoch_us(until)]
        if model_version is not None:
            params.append(model_version)
        params.append(limit)
        with self._read_lock:
            rows = self._read_query(_WINDOW.format(version=version), params)
        return [record_from_json(text) for (text,) in rows]
