"""The shared audit store: a PostgreSQL table, for several gateways side by side.

Each gateway's writer commits its batch as one transaction with ``synchronous_commit = on``
(set on the session, so a server default of ``off`` cannot weaken it): the commit returns once
the server has flushed its WAL. The unique request and application ids hold across gateways, so
two gateways racing on one application id record one decision; the other gets that decision
back (same inputs) or `ApplicationIdReused`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg

from cobrand.errors import CobrandError, ConfigError, Unavailable
from gateway.audit_record import AuditRecord
from gateway.audit_store import INSERT, SCHEMA, EncodedRecord, SqlAuditStore

__all__ = ["PostgresAuditStore"]

log = logging.getLogger(__name__)

# Serializes the table's creation: concurrent CREATE ... IF NOT EXISTS can still collide.
_SCHEMA_LOCK_KEY = 0x636F6272616E64  # "cobrand"


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresAuditStore(SqlAuditStore):
    """The audit table in the PostgreSQL database at `dsn` (created if missing).

    A connection lost (server restart, failover, network) is opened again: a batch whose
    connection broke is written once more on a new one, which is safe even if its commit had
    reached the server, since a record already stored comes back as itself.

    Raises
    ------
    ConfigError
        When the server cannot be reached or refuses the connection (the DSN is not echoed:
        it may hold a password).
    """

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn
        try:
            self._writer = self._connect_writer()
            self._reader = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise ConfigError(f"audit.dsn: cannot open the audit database: {exc}") from exc

    def _connect_writer(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = psycopg.connect(self._dsn)
        conn.execute("SET synchronous_commit = on")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
        for statement in SCHEMA:
            conn.execute(statement)
        conn.commit()
        return conn

    def write_batch(self, batch: Sequence[EncodedRecord]) -> list[AuditRecord | CobrandError]:
        """As `SqlAuditStore.write_batch`, on a new connection if the current one broke."""
        try:
            return super().write_batch(batch)
        except psycopg.OperationalError:
            if not self._writer.broken:
                raise
        log.warning("[AuditLog] PostgreSQL connection lost; writing the batch again")
        self._writer = self._connect_writer()
        return super().write_batch(batch)

    def _insert_rows(self, rows: Sequence[Sequence[Any]]) -> list[bool]:
        # One pipelined round trip for the batch instead of one per row; RETURNING tells
        # which rows went in. A lone row goes plainly: the pipeline's set-up costs it more.
        if len(rows) == 1:
            return super()._insert_rows(rows)
        with self._writer.cursor() as cur:
            cur.executemany(_pg(INSERT) + " RETURNING 1", rows, returning=True)
            inserted = []
            while True:
                inserted.append(cur.fetchone() is not None)
                if not cur.nextset():
                    return inserted

    def _begin(self) -> None:
        # psycopg opens the transaction with the first statement.
        pass

    def _commit(self) -> None:
        self._writer.commit()

    def _rollback(self) -> None:
        # A broken connection has no transaction left to end (and would raise).
        if not self._writer.broken:
            self._writer.rollback()

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        return self._writer.execute(_pg(sql), params).rowcount

    def _write_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._writer.execute(_pg(sql), params).fetchall()

    def _read_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            return self._reader.execute(_pg(sql), params).fetchall()
        except psycopg.OperationalError as exc:
            if not self._reader.broken:
                raise Unavailable(f"the audit database cannot answer: {exc}") from exc
        try:
            self._reader = psycopg.connect(self._dsn, autocommit=True)
            return self._reader.execute(_pg(sql), params).fetchall()
        except psycopg.OperationalError as exc:
            raise Unavailable(f"the audit database cannot be reached: {exc}") from exc

    def close(self) -> None:
        """Close both connections."""
        self._reader.close()
        self._writer.close()
