"""The `cobrand` command: the composition root that mounts every party's command modules.

This is the one module of the shared package allowed to import the party packages; it holds no
logic of its own.
"""

import logging
from typing import Annotated

from cobrand.offline import configure_offline_flower

# Before any command module can import flwr: a bank's node does not phone out.
configure_offline_flower()

import typer  # noqa: E402

from bank_node import cli as bank_cli  # noqa: E402
from cobrand.commands import align, data, demo, pki, train  # noqa: E402
from gateway import audit_cli, monitor_cli, target_cli  # noqa: E402
from gateway import cli as gateway_cli  # noqa: E402
from partner_node import cli as partner_cli  # noqa: E402

app = typer.Typer(
    name="cobrand",
    help="Federated partner-data scoring gateway for co-branded credit cards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(pki.app, name="pki")
app.add_typer(data.app, name="data")
app.command(name="demo")(demo.run)
app.command(name="align")(align.run)
app.command(name="train")(train.run)
app.add_typer(bank_cli.app, name="bank")
app.add_typer(partner_cli.app, name="partner")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(gateway_cli.app, name="gateway")
app.command(name="target")(target_cli.run)
app.command(name="monitor")(monitor_cli.run)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress (INFO).")] = False,
) -> None:
    """Federated partner-data scoring gateway for co-branded credit cards."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
