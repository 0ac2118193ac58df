"""`cobrand audit`: read the gateway's audit log of decisions (mounted by ``cobrand/cli.py``).

- ``cobrand audit list --db audit.db [--since ...] [--until ...] [--model-version v] [--json]``:
  the decisions of a window, oldest first, one line each (or JSON lines of whole records);
- ``cobrand audit show REQUEST_ID --db audit.db``: one whole record as indented JSON;
- ``cobrand audit replay REQUEST_ID --db audit.db --config gateway.yaml``: recompute the decision
  from what was recorded with the recorded model version from the bank's registry and the
  decision configuration the gateway's settings name (`gateway.replay`); exit 0 when every
  output matches, 1 with a field-by-field difference when not.

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
from cobrand.settings import load_settings
from gateway.audit_json import record_to_json
from gateway.audit_log import AuditLog, AuditSettings, open_audit_log
from gateway.audit_record import AuditRecord
from gateway.replay import Replay, replay, scorer_for
from gateway.settings import GatewaySettings

__all__ = ["DbOption", "PostgresOption", "app", "open_store", "utc_time"]

DSN_VARIABLE = "COBRAND_AUDIT_DSN"

app = typer.Typer(help="Read the gateway's audit log of decisions.", no_args_is_help=True)

DbOption = Annotated[
    Path | None, typer.Option("--db", help="The gateway's SQLite audit file.", dir_okay=False)
]
PostgresOption = Annotated[
    bool, typer.Option("--postgres", help=f"Read the PostgreSQL log at ${DSN_VARIABLE}.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Whole records as JSON lines.")]


def open_store(db: Path | None, postgres: bool) -> AuditLog:
    """The audit log named by ``--db FILE`` or ``--postgres``, opened.

    Raises
    ------
    ConfigError
        Neither or both are given, the file does not exist, or the DSN variable is unset.
    """
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


def utc_time(text: str, option: str) -> dt.datetime:
    """`text`, an ISO 8601 time given as `option`, as an aware time (UTC when it has no offset).

    Raises
    ------
    ConfigError
        `text` is not an ISO 8601 time (the option is named).
    """
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
        end = dt.datetime.now(dt.UTC) if until is None else utc_time(until, "--until")
        start = end - dt.timedelta(hours=24) if since is None else utc_time(since, "--since")
        with open_store(db, postgres) as log:
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
        with open_store(db, postgres) as log:
            record = log.get(request_id)
        if record is None:
            raise NotFound(f"no decision with request id {request_id!r} in the audit log")
        typer.echo(json.dumps(json.loads(record_to_json(record)), indent=2, sort_keys=True))


@app.command("replay")
def replay_decision(
    request_id: Annotated[str, typer.Argument(help="The decision's request id.")],
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            help="The gateway's settings (gateway.yaml): the bank registry and decision file.",
            dir_okay=False,
        ),
    ],
    db: DbOption = None,
    postgres: PostgresOption = False,
) -> None:
    """Recompute a recorded decision and show it matches; exit 1 with the differences if not."""
    with cli_errors():
        settings = load_settings(GatewaySettings, config)
        with open_store(db, postgres) as log:
            record = log.get(request_id)
        if record is None:
            raise NotFound(f"no decision with request id {request_id!r} in the audit log")
        outcome = replay(record, scorer_for(settings, record.model_version))
    typer.echo(
        f"decision {record.request_id}, model version {record.model_version}, partner slice "
        f"{record.partner_status.value}; replayed with {settings.decision_config}"
    )
    typer.echo(_replay_summary(outcome))
    if not outcome.matches:
        raise typer.Exit(1)


def _replay_summary(outcome: Replay) -> str:
    if outcome.matches:
        result = outcome.replayed
        return (
            f"match: every output recomputed exactly ({result.decision.value}, score "
            f"{result.score}, pd {result.probability_of_default!r}, limit "
            f"{result.credit_limit_minor} {result.currency}, {len(result.reasons)} reasons, "
            f"{len(result.packages)} packages)"
        )
    lines = [f"MISMATCH in {len(outcome.differences)} field(s):"]
    for difference in outcome.differences:
        lines += [
            f"  {difference.field}:",
            f"    recorded: {difference.recorded}",
            f"    replayed: {difference.replayed}",
        ]
    return "\n".join(lines)
