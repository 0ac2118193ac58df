"""`cobrand bank ...`: the bank's node commands, run at the bank's site.

``cobrand bank align --config bank.yaml`` aligns the bank's table with the partner node named in
the settings, with progress bars, and prints what it found; identifiers are never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bank_node.alignment_client import align_with_partner
from bank_node.config import BankNodeConfig
from bank_node.psi_initiator import AlignmentOutcome
from cobrand.commands.exits import cli_errors
from cobrand.commands.progress import ProgressBars
from cobrand.settings import load_settings

__all__ = ["align", "app", "outcome_lines"]

app = typer.Typer(
    name="bank",
    help="The bank's node: private alignment with the partner.",
    no_args_is_help=True,
)


@app.callback()
def main() -> None:
    """The bank's node: private alignment with the partner."""


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
