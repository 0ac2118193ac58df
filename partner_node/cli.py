"""`cobrand partner ...`: the partner's node commands, run at the partner's site.

``cobrand partner serve --config partner.yaml`` loads the partner's table and answers the bank's
alignment runs until stopped (SIGTERM or Ctrl-C), with a progress bar per phase and one log line
per run; identifiers are never printed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from cobrand.commands.exits import cli_errors
from cobrand.commands.progress import ProgressBars
from cobrand.settings import load_settings
from partner_node.config import PartnerNodeConfig
from partner_node.server import PartnerNode
from partner_node.server import serve as serve_node

__all__ = ["app", "serve"]

app = typer.Typer(
    name="partner",
    help="The partner's node: answers the bank's private alignment runs and its training rounds.",
    no_args_is_help=True,
)


@app.callback()
def main() -> None:
    """The partner's node: answers the bank's private alignment runs and its training rounds."""


@app.command()
def serve(
    config: Annotated[
        Path, typer.Option("--config", help="The partner node's settings file (partner.yaml).")
    ],
    port_file: Annotated[
        Path | None,
        typer.Option(help="Write the port served on to this file once serving (for port 0)."),
    ] = None,
) -> None:
    """Serve the partner's side of private alignment until stopped."""
    # A long-lived node reports each run it answers, whatever the command-line log level.
    logging.getLogger("partner_node").setLevel(logging.INFO)
    with cli_errors():
        settings = load_settings(PartnerNodeConfig, config)

        def started(node: PartnerNode) -> None:
            typer.echo(f"partner node serving {node.rows:,} identifiers on port {node.port}")
            if port_file is not None:
                _write_atomically(port_file, f"{node.port}\n")

        with ProgressBars() as progress:
            serve_node(settings, progress, on_started=started)
    typer.echo("partner node stopped")


def _write_atomically(path: Path, text: str) -> None:
    # Whoever waits for the file must never read half a port number.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
