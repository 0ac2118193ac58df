"""`cobrand gateway ...`: the bank's scoring gateway (mounted by ``cobrand/cli.py``).

``cobrand gateway serve --config gateway.yaml`` loads the served model version, checks the
partner holds the same version and answers ScoreApplication until stopped (SIGTERM or Ctrl-C),
letting the calls in progress finish. On SIGHUP it reads the file's ``model_version`` again
and swaps that version in without stopping, once the partner holds it (`gateway.server`); a
refused swap is logged and the version served stays. With ``--workers N`` (or ``workers`` in
the file) N gateway processes serve the one port (`gateway.workers`), each stopped and swapped
by the signals the command gets. Identifiers are never printed.
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
from gateway.workers import serve_workers

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
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="Gateway processes on the one port (default: the file's, 1)."
        ),
    ] = None,
) -> None:
    """Serve ScoreApplication until stopped; SIGHUP swaps in the file's model_version."""
    # A long-lived service reports its start and the partner's state whatever the log level,
    # as JSON lines carrying the request id each line was logged for.
    logging.getLogger("gateway").setLevel(logging.INFO)
    log_json_lines()
    with cli_errors():
        settings = load_settings(GatewaySettings, config)
        processes = settings.workers if workers is None else workers

        def serving(port: int, partner: str) -> None:
            typer.echo(
                f"gateway serving model version {settings.model_version} on port {port}"
                f"{f' with {processes} workers' if processes > 1 else ''}; partner {partner}"
            )
            if port_file is not None:
                # Whoever waits for the file must never read half a port number.
                write_atomically(port_file, f"{port}\n".encode("ascii"))

        if processes > 1:
            serve_workers(
                config, settings, processes, lambda port: serving(port, "checked by each worker")
            )
        else:
            serve(
                settings,
                on_started=lambda gateway: serving(gateway.port, _partner_state(gateway)),
                reread_version=lambda: load_settings(GatewaySettings, config).model_version,
            )
    typer.echo("gateway stopped")


def _partner_state(gateway: Gateway) -> str:
    return "verified" if gateway.partner.verified else "not verified (bank slice only)"
