"""What only the PostgreSQL audit store does: survive the server dropping its connections."""

from __future__ import annotations

import psycopg
import pytest
from pydantic import SecretStr

from gateway.audit_log import AuditSettings, open_audit_log
from tests.gateway.audit_records import make_record


def _drop_other_connections(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_the_log_reconnects_after_the_server_drops_its_connections(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = make_record("APP-1"), make_record("APP-2")
    with open_audit_log(AuditSettings(backend="postgres", dsn=SecretStr(postgres_dsn))) as log:
        log.record(first)
        assert _drop_other_connections(postgres_dsn) == 2  # the log's writer and reader
        assert log.record(second) == second
        assert log.find_application(first.inputs) == first
        assert log.get(second.request_id) == second
    assert "connection lost; writing the batch again" in caplog.text
