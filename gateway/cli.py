"""`cobrand gateway ...`: the bank's scoring gateway (mounted by ``cobrand/cli.py``).

``cobrand gateway serve --config gateway.yaml`` loads the served model version, checks the
partner holds the same version and answers ScoreApplication until stopped (SIGTERM or Ctrl-C),
letting the calls in progress finish. On SIGHUP it reads the file's ``model_version`` again
and swaps that version in without stopping, once the partner holds it (`gateway.server`); a
refused swap is logged and the version served stays. Identifiers are never printed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from cobrand.commands.exits import cli_errors
from cobrand.durable import write_atomically
from cobrand.settings import load_settings
from gateway.request_log import log_json_lines
from gateway.server import Gateway, serve
from gateway.settings import GatewaySettings

__all__ = ["app"]

app = typer.Typer(
    name="gateway",
    help="The bank's scoring gateway: card applications scored with the partner's slice.",
    no_args_is_help=True,
)


@app.callback()
def main() -> None:
    """The bank's scoring gateway: card applications scored with the partner's slice."""


@app.command("serve")
def serve_command(
    config: Annotated[
        Path, typer.Option("--config", help="The gateway's settings file (gateway.yaml).")
    ],
    port_file: Annotated[
        Path | None,
        typer.Option(help="Write the port served on to this file once serving (for port 0)."),
    ] = None,
) -> None:
    """Serve ScoreApplication until stopped; SIGHUP swaps in the file's model_version."""
    # A long-lived service reports its start and the partner's state whatever the log level,
    # as JSON lines carrying the request id each line was logged for.
    logging.getLogger("gateway").setLevel(logging.INFO)
    log_json_lines()
    with cli_errors():
        settings = load_settings(GatewaySettings, config)

        def started(gateway: Gateway) -> None:
            partner = "verified" if gateway.partner.verified else "not verified (bank slice only)"
            typer.echo(
                f"gateway serving model version {settings.model_version} on port "
                f"{gateway.port}; partner {partner}"
            )
            if port_file is not None:
                # Whoever waits for the file must never read half a port number.
                write_atomically(port_file, f"{gateway.port}\n".encode("ascii"))

        serve(
            settings,
            on_started=started,
            reread_version=lambda: load_settings(GatewaySettings, config).model_version,
        )
    typer.echo("gateway stopped")
