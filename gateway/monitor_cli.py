"""`cobrand monitor`: the risk team's stability check of recent decisions (issue 11).

    cobrand monitor --config gateway.yaml --since 2026-11-16 [--until ...] [--model-version v]
                    [--json] [--plot stability.png]
    cobrand monitor --bank-config bank.yaml --db audit.db ...      (or --postgres)

Compares the risk probability and every bank feature of a window's decisions (from the audit
log) with the training baseline of the version that made them (from the bank's registry,
``<bank data_dir>/models``): PSI per variable with its band, and the approval, refer, decline
and partner-fallback rates (`gateway.monitoring`). The version is ``--model-version`` or, by
default, the one of the window's latest decision. The gateway's settings file names both the
audit store and the bank's settings; without it, name the bank's settings and the store.
Output: a table, ``--json`` for machines, and ``--plot FILE.png`` for baseline against recent
shares per variable.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.table import Table

from bank_node.config import BankNodeConfig
from bank_node.model_registry import load_bank_version
from cobrand.commands.exits import cli_errors
from cobrand.errors import ConfigError, UnknownModelVersion
from cobrand.metrics import PsiVerdict
from cobrand.model_store import ModelStore
from cobrand.settings import load_settings
from gateway.audit_cli import DbOption, PostgresOption, open_store, utc_time
from gateway.audit_log import AuditLog, open_audit_log
from gateway.audit_record import AuditRecord
from gateway.monitoring import StabilityReport, latest_version, stability_report
from gateway.settings import GatewaySettings

__all__ = ["run"]

_BAND_STYLE: Final = {
    PsiVerdict.STABLE: "green",
    PsiVerdict.WATCH: "yellow",
    PsiVerdict.SHIFT: "bold red",
}
_PLOT_COLUMNS: Final = 3


def run(
    config: Annotated[
        Path | None,
        typer.Option(help="The gateway's settings (gateway.yaml): audit store and bank settings."),
    ] = None,
    bank_config: Annotated[
        Path | None,
        typer.Option(help="The bank node's settings (bank.yaml), without --config."),
    ] = None,
    db: DbOption = None,
    postgres: PostgresOption = False,
    since: Annotated[
        str | None, typer.Option(help="Window start, ISO 8601 (default: 24 hours ago).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Window end, ISO 8601 (default: now).")] = None,
    model_version: Annotated[
        str | None,
        typer.Option(help="The version to check (default: the window's latest decision's)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many decisions.")] = 1_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw baseline against recent shares to this PNG.")
    ] = None,
) -> None:
    """Check the stability of recent decisions against their version's training baseline."""
    with cli_errors():
        if plot is not None and plot.suffix.lower() != ".png":
            raise ConfigError(f"--plot: {plot} must be a .png file")
        end = dt.datetime.now(dt.UTC) if until is None else utc_time(until, "--until")
        start = end - dt.timedelta(hours=24) if since is None else utc_time(since, "--since")
        if start >= end:
            raise ConfigError(
                f"--since/--until: the window {start.isoformat()} to {end.isoformat()} is empty"
            )
        log, bank_file = _sources(config, bank_config, db, postgres)
        with log:
            bank = load_settings(BankNodeConfig, bank_file)
            store = ModelStore(bank.data_dir / "models")
            if model_version is not None:
                _known(store, model_version, "--model-version")
            records = log.query(start, end, model_version, limit)
        version_id = model_version or _latest(records, start, end)
        chosen = [record for record in records if record.model_version == version_id]
        if not chosen:
            raise ConfigError(
                f"--since/--until: no decisions of model version {version_id} from "
                f"{start.isoformat()} to {end.isoformat()}"
            )
        if model_version is None:
            _known(store, version_id, "--model-version (default: the window's latest)")
        baseline = load_bank_version(store, version_id).baseline
        report = stability_report(
            chosen, baseline, model_version=version_id, since=start, until=end
        )
        if len(records) == limit:
            typer.echo(
                f"warning: the window holds at least {limit} decisions; only the first {limit} "
                "were checked (--limit)",
                err=True,
            )
        if plot is not None:
            _plot(report, plot)
        if as_json:
            typer.echo(json.dumps(report.to_json(), indent=2))
        else:
            _print(report)


def _sources(
    config: Path | None, bank_config: Path | None, db: Path | None, postgres: bool
) -> tuple[AuditLog, Path]:
    if (config is None) == (bank_config is None):
        raise ConfigError("name the sources: --config gateway.yaml, or --bank-config bank.yaml")
    if config is not None:
        if db is not None or postgres:
            raise ConfigError(f"--db/--postgres: {config} names the audit store already")
        settings = load_settings(GatewaySettings, config)
        audit = settings.audit
        # Opening would create an empty log: a wrong path must not look like "no decisions".
        if audit.path is not None and not audit.path.is_file():
            raise ConfigError(f"{config}: audit.path {audit.path}: no audit database here")
        return open_audit_log(audit), settings.bank
    assert bank_config is not None
    return open_store(db, postgres), bank_config


def _known(store: ModelStore, version_id: str, option: str) -> None:
    try:
        store.manifest(version_id)
    except UnknownModelVersion as err:
        raise ConfigError(f"{option}: {err}") from err


def _latest(records: list[AuditRecord], start: dt.datetime, end: dt.datetime) -> str:
    if not records:
        raise ConfigError(
            f"--since/--until: no decisions from {start.isoformat()} to {end.isoformat()}"
        )
    return latest_version(records)


def _print(report: StabilityReport) -> None:
    console = Console()
    rates = report.rates
    console.print(
        f"Model version {report.model_version}: {rates.decisions} decisions from "
        f"{report.since.isoformat()} to {report.until.isoformat()}, against "
        f"{report.baseline_rows} training rows"
    )
    outcomes = Table(title="Decisions")
    for column in ("approve", "refer", "decline", "partner fallback"):
        outcomes.add_column(column, justify="right")
    outcomes.add_row(
        *(f"{share:.1%}" for share in (rates.approve, rates.refer, rates.decline)),
        f"{rates.partner_fallback:.1%}",
    )
    console.print(outcomes)
    fallback = ", ".join(
        f"{status} {share:.1%}" for status, share in rates.fallback_by_status.items()
    )
    console.print(f"Partner fallback by status: {fallback}")
    stability = Table(
        title="Population stability (PSI < 0.10 stable, 0.10-0.25 monitor, >= 0.25 shift)"
    )
    stability.add_column("variable")
    stability.add_column("kind")
    stability.add_column("bins", justify="right")
    stability.add_column("PSI", justify="right")
    stability.add_column("band")
    for variable in report.variables:
        style = _BAND_STYLE[variable.band]
        stability.add_row(
            variable.name,
            variable.kind.value,
            str(len(variable.bins)),
            f"{variable.psi:.4f}",
            f"[{style}]{variable.band.value}[/{style}]",
        )
    console.print(stability)


def _plot(report: StabilityReport, path: Path) -> None:
    # The object API (no pyplot) renders with Agg and keeps no global figure state.
    from matplotlib.figure import Figure

    count = len(report.variables)
    rows = math.ceil(count / _PLOT_COLUMNS)
    figure = Figure(figsize=(4.0 * _PLOT_COLUMNS, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, _PLOT_COLUMNS, squeeze=False).ravel()
    for ax, variable in zip(axes, report.variables, strict=False):
        positions = range(len(variable.bins))
        ax.bar([p - 0.2 for p in positions], variable.expected, width=0.4, label="training")
        ax.bar([p + 0.2 for p in positions], variable.actual, width=0.4, label="recent")
        ax.set_xticks(list(positions), variable.bins, rotation=90, fontsize=6)
        ax.set_title(
            f"{variable.name}: PSI {variable.psi:.3f} ({variable.band.value})",
            fontsize=9,
            color="red" if variable.band is PsiVerdict.SHIFT else "black",
        )
        ax.set_ylabel("share", fontsize=7)
    axes[0].legend(fontsize=7)
    for ax in axes[count:]:
        ax.set_visible(False)
    figure.suptitle(
        f"Model version {report.model_version}: {report.rates.decisions} decisions "
        f"against {report.baseline_rows} training rows"
    )
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as err:
        raise ConfigError(f"--plot: cannot write {path}: {err.strerror or err}") from err
