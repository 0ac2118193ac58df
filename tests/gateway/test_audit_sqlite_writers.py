"""Several writers of one SQLite audit file (as a gateway's worker processes are): every record
of each is committed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.audit_log import AuditLog
from gateway.audit_sqlite import SqliteAuditStore
from tests.gateway.audit_records import make_record

RECORDS = 120


def test_two_writers_of_one_file_commit_every_record_of_both(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    records = [make_record(f"APP-{i:04d}") for i in range(RECORDS)]
    with (
        AuditLog(SqliteAuditStore(path)) as first,
        AuditLog(SqliteAuditStore(path)) as second,
        ThreadPoolExecutor(8) as pool,
    ):
        stored = list(
            pool.map(lambda i: (first, second)[i % 2].record(records[i], 30.0), range(RECORDS))
        )
    reader = SqliteAuditStore(path)
    try:
        found = [reader.get(record.request_id) for record in records]
    finally:
        reader.close()
    assert [s.request_id for s in stored] == [r.request_id for r in records]
    assert found == records
