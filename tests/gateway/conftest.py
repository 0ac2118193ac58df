"""Fixtures for the gateway's tests: audit log stores over SQLite and a real PostgreSQL.

The PostgreSQL store runs against the server named by ``COBRAND_TEST_POSTGRES_DSN`` (a role that
may create databases; each test gets its own database, dropped afterwards). Without it the
PostgreSQL cases skip, except under ``CI=true``, where they fail: CI must always run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from gateway.audit_log import AuditSettings

POSTGRES_DSN_VARIABLE = "COBRAND_TEST_POSTGRES_DSN"


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> str:
    """The DSN of the test PostgreSQL server; skips locally when unset, fails in CI."""
    dsn = os.environ.get(POSTGRES_DSN_VARIABLE, "")
    if not dsn:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"CI=true but {POSTGRES_DSN_VARIABLE} is unset: .ci/run must start PostgreSQL"
            )
        pytest.skip(f"{POSTGRES_DSN_VARIABLE} is unset: no PostgreSQL server to test against")
    return dsn


@pytest.fixture
def postgres_dsn(postgres_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database on the test server for one test; dropped afterwards."""
    name = f"cobrand_audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(postgres_admin_dsn, dbname=name)
    finally:
        with psycopg.connect(postgres_admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgres"])
def audit_settings(request: pytest.FixtureRequest, tmp_path: Path) -> AuditSettings:
    """Settings of an empty audit store, once per backend."""
    if request.param == "sqlite":
        return AuditSettings(backend="sqlite", path=tmp_path / "audit.db")
    dsn = request.getfixturevalue("postgres_dsn")
    return AuditSettings(backend="postgres", dsn=SecretStr(dsn))
