"""`cobrand audit`: read the gateway's audit log of decisions (mounted by ``cobrand/cli.py``).

- ``cobrand audit list --db audit.db [--since ...] [--until ...] [--model-version v] [--json]``:
  the decisions of a window, oldest first, one line each (or JSON lines of whole records);
- ``cobrand audit show REQUEST_ID --db audit.db``: one whole record as indented JSON.

The store is a SQLite file (``--db``) or, with ``--postgres``, the PostgreSQL database named by
the ``COBRAND_AUDIT_DSN`` environment variable (never on the command line, where a password
would show in the process list). Times without an offset are UTC.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr

from cobrand.commands.exits import cli_errors
from cobrand.errors import ConfigError, NotFound
from gateway.audit_json import record_to_json
from gateway.audit_log import AuditLog, AuditSettings, open_audit_log
from gateway.audit_record import AuditRecord

__all__ = ["app"]

DSN_VARIABLE = "COBRAND_AUDIT_DSN"

app = typer.Typer(help="Read the gateway's audit log of decisions.", no_args_is_help=True)

DbOption = Annotated[
    Path | None, typer.Option("--db", help="The gateway's SQLite audit file.", dir_okay=False)
]
PostgresOption = Annotated[
    bool, typer.Option("--postgres", help=f"Read the PostgreSQL log at ${DSN_VARIABLE}.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Whole records as JSON lines.")]


def _open(db: Path | None, postgres: bool) -> AuditLog:
    if postgres == (db is not None):
        raise ConfigError("name one audit store: --db FILE or --postgres")
    if db is not None:
        # Opening would create an empty log: a mistyped path must not look like "no decisions".
        if not db.is_file():
            raise ConfigError(f"{db}: no audit database here")
        return open_audit_log(AuditSettings(backend="sqlite", path=db))
    dsn = os.environ.get(DSN_VARIABLE, "")
    if not dsn:
        raise ConfigError(f"--postgres reads the database from ${DSN_VARIABLE}, which is unset")
    return open_audit_log(AuditSettings(backend="postgres", dsn=SecretStr(dsn)))


def _utc(text: str, option: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: {text!r} is not an ISO 8601 time") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _line(record: AuditRecord) -> str:
    result = record.result
    return (
        f"{record.decided_at:%Y-%m-%dT%H:%M:%S.%fZ}  {record.request_id}  "
        f"{record.application_id}  {result.model_version}  {result.decision.value:<7}  "
        f"score {result.score}  pd {result.probability_of_default:.4f}  "
        f"partner {record.partner_status.value}"
    )


@app.command("list")
def list_decisions(
    db: DbOption = None,
    postgres: PostgresOption = False,
    since: Annotated[
        str | None, typer.Option(help="Window start, ISO 8601 (default: 24 hours ago).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Window end, ISO 8601 (default: now).")] = None,
    model_version: Annotated[
        str | None, typer.Option(help="Only this model version's decisions.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many decisions.")] = 1000,
    as_json: JsonOption = False,
) -> None:
    """List the decisions made in a window, oldest first."""
    with cli_errors():
        end = dt.datetime.now(dt.UTC) if until is None else _utc(until, "--until")
        start = end - dt.timedelta(hours=24) if since is None else _utc(since, "--since")
        with _open(db, postgres) as log:
            records = log.query(start, end, model_version, limit)
        for record in records:
            typer.echo(record_to_json(record) if as_json else _line(record))


@app.command()
def show(
    request_id: Annotated[str, typer.Argument(help="The decision's request id.")],
    db: DbOption = None,
    postgres: PostgresOption = False,
) -> None:
    """Print one decision's whole record as JSON."""
    with cli_errors():
        with _open(db, postgres) as log:
            record = log.get(request_id)
        if record is None:
            raise NotFound(f"no decision with request id {request_id!r} in the audit log")
        typer.echo(json.dumps(json.loads(record_to_json(record)), indent=2, sort_keys=True))
