"""The shared audit store: a PostgreSQL table, for several gateways side by side.

Each gateway's writer commits its batch as one transaction with ``synchronous_commit = on``
(set on the session, so a server default of ``off`` cannot weaken it): the commit returns once
the server has flushed its WAL. The unique request and application ids hold across gateways, so
two gateways racing on one application id record one decision; the other gets that decision
back (same inputs) or `ApplicationIdReused`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from cobrand.errors import ConfigError
from gateway.audit_store import SCHEMA, SqlAuditStore

__all__ = ["PostgresAuditStore"]

# Serializes the table's creation: concurrent CREATE ... IF NOT EXISTS can still collide.
_SCHEMA_LOCK_KEY = 0x636F6272616E64  # "cobrand"


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresAuditStore(SqlAuditStore):
    """The audit table in the PostgreSQL database at `dsn` (created if missing).

    Raises
    ------
    ConfigError
        When the server cannot be reached or refuses the connection (the DSN is not echoed:
        it may hold a password).
    """

    def __init__(self, dsn: str) -> None:
        super().__init__()
        try:
            self._writer = psycopg.connect(dsn)
            self._writer.execute("SET synchronous_commit = on")
            self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            for statement in SCHEMA:
                self._writer.execute(statement)
            self._writer.commit()
            self._reader = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise ConfigError(f"audit.dsn: cannot open the audit database: {exc}") from exc

    def _begin(self) -> None:
        # psycopg opens the transaction with the first statement.
        pass

    def _commit(self) -> None:
        self._writer.commit()

    def _rollback(self) -> None:
        self._writer.rollback()

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        return self._writer.execute(_pg(sql), params).rowcount

    def _write_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._writer.execute(_pg(sql), params).fetchall()

    def _read_query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._reader.execute(_pg(sql), params).fetchall()

    def close(self) -> None:
        """Close both connections."""
        self._reader.close()
        self._writer.close()
