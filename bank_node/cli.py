"""`cobrand bank ...`: the bank's node commands, run at the bank's site.

``cobrand bank align --config bank.yaml`` aligns the bank's table with the partner node named in
the settings, with progress bars, and prints what it found; identifiers are never printed.

``cobrand bank superlink --trainer-config trainer.yaml --ca-cert ... --cert ... --key ...`` runs
the bank's Flower SuperLink with TLS and SuperNode authentication, its ServerApps reading the
trainer's settings, on 127.0.0.1:``--control-port`` only, and on ``--host``:``--port`` the
Fleet-only front the partner's SuperNode dials (`cobrand.fleet_front`: Flower serves its Control
API on the Fleet API's port, without authentication); the risk team then starts, follows and
stops training runs on the bank's host with ``flwr run bank_node/flower_app``, ``flwr log`` and
``flwr stop`` against 127.0.0.1:``--control-port``, and
``cobrand bank report --trainer-config trainer.yaml --run RUN_ID --out DIR`` writes a finished
run's ``report.json`` and ``report.html`` and prints its summary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from bank_node.alignment_client import align_with_partner
from bank_node.config import BankNodeConfig
from bank_node.psi_initiator import AlignmentOutcome
from bank_node.report import summary_lines
from bank_node.run_report import write_run_reports
from bank_node.trainer_config import TRAINER_CONFIG_ENV, TrainerConfig
from cobrand.alignment_store import AlignmentStore
from cobrand.commands.exits import cli_errors
from cobrand.commands.progress import ProgressBars
from cobrand.flower_sites import SuperLinkTls, flower_environment
from cobrand.settings import load_settings

__all__ = ["align", "app", "outcome_lines", "report", "superlink"]

app = typer.Typer(
    name="bank",
    help="The bank's node: private alignment and federated training with the partner.",
    no_args_is_help=True,
)


@app.callback()
def main() -> None:
    """The bank's node: private alignment and federated training with the partner."""


@app.command()
def superlink(
    trainer_config: Annotated[
        Path,
        typer.Option(help="The ServerApp's settings (trainer.yaml): bank.yaml, runs, its cert."),
    ],
    ca_cert: Annotated[Path, typer.Option(help="The bank's CA certificate.")],
    cert: Annotated[
        Path,
        typer.Option(help="The SuperLink's certificate (role bank; SANs: --host and 127.0.0.1)."),
    ],
    key: Annotated[Path, typer.Option(help="The SuperLink's private key.")],
    host: Annotated[str, typer.Option(help="Interface of the Fleet-only front.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the Fleet-only front.")] = 9092,
    control_port: Annotated[
        int, typer.Option(help="The SuperLink's own port on 127.0.0.1 (flwr CLI, ServerApps).")
    ] = 9093,
) -> None:
    """Run the bank's Flower SuperLink for federated training with the partner."""
    # Imported here: it imports Flower's SuperLink, which no other bank command needs.
    from cobrand.fleet_front import run_superlink_behind_front

    with cli_errors():
        # Checked here, not when the first run's ServerApp fails on it.
        load_settings(TrainerConfig, trainer_config)
        env = flower_environment(
            Path(os.environ["FLWR_HOME"]),
            {TRAINER_CONFIG_ENV: str(trainer_config.resolve())},
        )
        run_superlink_behind_front(SuperLinkTls(ca_cert, cert, key), host, port, control_port, env)


@app.command()
def report(
    trainer_config: Annotated[
        Path, typer.Option(help="The ServerApp's settings (trainer.yaml) the run ran with.")
    ],
    run: Annotated[str, typer.Option(help="The Flower run id (as `flwr ls` lists it).")],
    out: Annotated[Path, typer.Option(help="Where report.json and report.html go.")],
) -> None:
    """Write a finished training run's report.json and report.html, and print its summary."""
    with cli_errors():
        trainer = load_settings(TrainerConfig, trainer_config)
        node = load_settings(BankNodeConfig, trainer.bank)
        with AlignmentStore(node.data_dir) as store:
            alignment = store.summary
        written = write_run_reports(trainer.runs_dir, run, alignment, out)
    for line in summary_lines(written):
        typer.echo(line)
    typer.echo(f"  report          {out / 'report.json'}, {out / 'report.html'}")


@app.command()
def align(
    config: Annotated[
        Path, typer.Option("--config", help="The bank node's settings file (bank.yaml).")
    ],
) -> None:
    """Find the customers the bank shares with the partner, privately, and persist them."""
    with cli_errors():
        settings = load_settings(BankNodeConfig, config)
        with ProgressBars() as progress:
            outcome = align_with_partner(settings, progress)
    for line in outcome_lines(outcome):
        typer.echo(line)


def outcome_lines(outcome: AlignmentOutcome) -> list[str]:
    """A finished run, as the summary a person reads: sizes, time, where the result is."""
    summary = outcome.summary
    share = summary.intersection_size / summary.own_rows
    return [
        f"alignment run {summary.run_id} committed in {outcome.seconds:.1f} s",
        f"  bank rows      {summary.own_rows:>12,}",
        f"  partner rows   {summary.peer_rows:>12,}",
        f"  intersection   {summary.intersection_size:>12,}  ({share:.1%} of the bank's rows)",
        f"  result         {outcome.path}",
    ]
