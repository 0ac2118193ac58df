"""`cobrand partner ...`: the partner's node commands, run at the partner's site.

``cobrand partner serve --config partner.yaml`` loads the partner's table and answers the bank's
alignment runs and training rounds until stopped (SIGTERM or Ctrl-C), with a progress bar per
phase and one log line per run; identifiers are never printed.

``cobrand partner supernode --config partner.yaml --superlink HOST:PORT ...`` runs the partner's
Flower SuperNode: authenticated at the bank's SuperLink by its own key, trusting the bank's CA,
in process isolation so that it never runs code from a bundle the bank's SuperLink sends; this
command's own ClientApp runner (`partner_node.flower_client.runner`) executes its tasks with the
partner's installed ClientApp, which reaches this node with the node's certificate from
``partner.yaml``, so each training round is handed to the long-lived node.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from cobrand.commands.exits import cli_errors
from cobrand.commands.progress import ProgressBars
from cobrand.durable import write_atomically
from cobrand.errors import ConfigError
from cobrand.flower_sites import flower_environment, supernode_command, write_runner_secret
from cobrand.settings import load_settings
from partner_node.config import PartnerNodeConfig
from partner_node.server import PartnerNode
from partner_node.server import serve as serve_node

__all__ = ["app", "serve", "supernode"]

_LOOPBACK = "127.0.0.1"
# Listen addresses meaning every interface, which a local SuperNode dials on loopback.
_ANY_HOST = frozenset({"0.0.0.0", "::", "[::]", ""})  # noqa: S104 -- compared, never bound

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
                # Whoever waits for the file must never read half a port number.
                write_atomically(port_file, f"{node.port}\n".encode("ascii"))

        with ProgressBars() as progress:
            serve_node(settings, progress, on_started=started)
    typer.echo("partner node stopped")


@app.command()
def supernode(
    config: Annotated[
        Path, typer.Option("--config", help="The partner node's settings file (partner.yaml).")
    ],
    superlink: Annotated[
        str, typer.Option(help="The bank's SuperLink (host:port of its Fleet API).")
    ],
    root_certificates: Annotated[
        Path, typer.Option(help="The bank's CA certificate, which signed the SuperLink's.")
    ],
    auth_key: Annotated[
        Path,
        typer.Option(help="This SuperNode's private key; the bank registers its public key."),
    ],
    node: Annotated[
        str | None,
        typer.Option(help="host:port where the ClientApp reaches the node (default: its listen)."),
    ] = None,
    port: Annotated[
        int, typer.Option(help="The SuperNode's runtime API port, on 127.0.0.1 (its runner's).")
    ] = 9094,
) -> None:
    """Run the partner's Flower SuperNode, handing each training round to the partner node."""
    # Imported here: they import flwr, which no other partner command needs.
    from partner_node.flower_client.client_app import HandOffSettings
    from partner_node.flower_client.runner import run_supernode_with_runner

    with cli_errors():
        settings = load_settings(PartnerNodeConfig, config)
        if settings.tls is None:
            raise ConfigError(
                f"{config}: no 'tls' files; the ClientApp reaches the node with mutual TLS"
            )
        hand_off = HandOffSettings.model_validate(
            {
                "partner-node": node or _dialable(settings.listen),
                "ca-bundle": settings.tls.ca_bundle,
                "cert": settings.tls.cert,
                "key": settings.tls.key,
            }
        )
        flwr_home = Path(os.environ["FLWR_HOME"])
        flwr_home.mkdir(parents=True, exist_ok=True)
        secret_file = flwr_home / "clientapp-runner.secret"
        secret = write_runner_secret(secret_file)
        command = supernode_command(
            superlink,
            root_certificates,
            auth_key,
            port,
            hand_off.node_config(),
            runner_secret=secret_file,
        )
        run_supernode_with_runner(
            command, flower_environment(flwr_home), f"{_LOOPBACK}:{port}", secret
        )


def _dialable(listen: str) -> str:
    """The node's listen address as the SuperNode on the same host dials it."""
    host, _, port = listen.rpartition(":")
    return f"{_LOOPBACK if host in _ANY_HOST else host}:{port}"
