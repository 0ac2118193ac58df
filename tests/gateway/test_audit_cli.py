"""`cobrand audit list` and `show` over a real SQLite log and, with --postgres, a real server."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from gateway.audit_cli import DSN_VARIABLE, app
from gateway.audit_log import AuditSettings, open_audit_log
from tests.gateway.audit_records import T0, make_record

runner = CliRunner()
HOUR = dt.timedelta(hours=1)


def _logged(settings: AuditSettings) -> list[str]:
    records = [
        make_record(f"APP-{i}", decided_at=T0 + i * HOUR, model_version=f"v{1 + i % 2}")
        for i in range(4)
    ]
    with open_audit_log(settings) as log:
        for record in records:
            log.record(record)
    return [r.request_id for r in records]


def test_list_prints_the_window_oldest_first_one_line_each(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    ids = _logged(AuditSettings(path=db))
    window = ["--since", T0.isoformat(), "--until", "2026-11-23T12:00:00"]  # naive: UTC
    listed = runner.invoke(app, ["list", "--db", str(db), *window])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert [line.split()[1] for line in lines] == ids[:3]
    assert lines[0] == (
        f"2026-11-23T09:00:00.000000Z  {ids[0]}  APP-0  v1  approve  "
        "score 652  pd 0.0800  partner used"
    )

    v2 = runner.invoke(app, ["list", "--db", str(db), *window, "--model-version", "v2", "--json"])
    assert [json.loads(line)["request_id"] for line in v2.output.splitlines()] == [ids[1]]


def test_show_prints_the_whole_record(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    ids = _logged(AuditSettings(path=db))
    shown = runner.invoke(app, ["show", ids[2], "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.output)
    assert body["request_id"] == ids[2]
    assert body["inputs"]["application_id"] == "APP-2"
    assert body["result"]["decision"] == "approve"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "0b6e1d6a-0000-4000-8000-000000000000", "--db", "{db}"], "no decision"),
        (["list", "--db", "{dir}/missing.db"], "no audit database here"),
        (["list"], "name one audit store"),
        (["list", "--db", "{db}", "--since", "yesterday"], "--since: 'yesterday'"),
        (["list", "--postgres"], f"${DSN_VARIABLE}, which is unset"),
    ],
)
def test_bad_requests_end_with_one_line_and_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.delenv(DSN_VARIABLE, raising=False)
    db = tmp_path / "audit.db"
    _logged(AuditSettings(path=db))
    filled = [a.format(db=db, dir=tmp_path) for a in args]
    failed = runner.invoke(app, filled)
    assert failed.exit_code == 2
    assert message in failed.output
    assert "Traceback" not in failed.output


def test_list_reads_the_postgres_log_named_by_the_environment(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _logged(AuditSettings(backend="postgres", dsn=SecretStr(postgres_dsn)))
    monkeypatch.setenv(DSN_VARIABLE, postgres_dsn)
    window = ["--since", T0.isoformat(), "--until", (T0 + 4 * HOUR).isoformat()]
    listed = runner.invoke(app, ["list", "--postgres", *window])
    assert listed.exit_code == 0, listed.output
    assert [line.split()[1] for line in listed.output.splitlines()] == ids
