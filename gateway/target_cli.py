"""`cobrand target`: a campaign's ranked list of the aligned base (mounted by ``cobrand/cli.py``).

    cobrand target --config gateway.yaml --task instalment --top 50000 --output top.parquet

The gateway's settings file (``gateway.settings``) gives everything: the bank node's settings
(its federation, schema, table and data directory, where the alignment and the model registry
live), the model version (``--model-version`` scores another one), the decision configuration,
the partner node's address and the gateway's TLS files (the embedding service admits role
``gateway`` alone). The list holds the bank's own customer identifiers: it stays in the bank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bank_node.config import BankNodeConfig
from bank_node.model_registry import load_bank_version
from cobrand.aligned_rows import aligned_table
from cobrand.alignment_store import JOIN_KEY_DTYPE, AlignmentStore
from cobrand.commands.exits import cli_errors
from cobrand.commands.progress import ProgressBars
from cobrand.errors import ConfigError
from cobrand.model_store import ModelStore
from cobrand.party_files import load_own_table
from cobrand.pki import Party
from cobrand.rpc import create_channel
from cobrand.settings import load_settings
from gateway.bulk_scoring import TASKS, BulkScorer
from gateway.config import load_decision_config
from gateway.settings import GatewaySettings
from gateway.targeting import (
    DEFAULT_BATCH_KEYS,
    DEFAULT_IN_FLIGHT,
    check_output,
    target,
    write_ranked,
)

__all__ = ["run"]


def run(
    config: Annotated[Path, typer.Option(help="The gateway's settings file (gateway.yaml).")],
    task: Annotated[str, typer.Option(help=f"The campaign: {' or '.join(TASKS)}.")],
    top: Annotated[int, typer.Option(help="Customers to keep, best first.")],
    output: Annotated[Path, typer.Option(help="The ranked list, .csv or .parquet.")],
    model_version: Annotated[
        str | None, typer.Option(help="Score with this version (default: the gateway's).")
    ] = None,
    batch_keys: Annotated[int, typer.Option(help="Join keys per request.")] = DEFAULT_BATCH_KEYS,
    in_flight: Annotated[int, typer.Option(help="Requests sent ahead.")] = DEFAULT_IN_FLIGHT,
    timeout: Annotated[float, typer.Option(help="Seconds the whole stream may take.")] = 3600.0,
) -> None:
    """Rank the aligned customers for a campaign, scored through both sides."""
    with cli_errors():
        if task not in TASKS:
            raise ConfigError(f"--task: {task!r} is not a campaign task ({', '.join(TASKS)})")
        for option, value in (
            ("--top", top),
            ("--batch-keys", batch_keys),
            ("--in-flight", in_flight),
        ):
            if value < 1:
                raise ConfigError(f"{option}: must be at least 1, got {value}")
        if timeout <= 0:
            raise ConfigError(f"--timeout: must be positive, got {timeout:g}")
        check_output(output, "--output")
        settings = load_settings(GatewaySettings, config)
        version_id = model_version or settings.model_version
        bank = load_settings(BankNodeConfig, settings.bank)
        decisions = load_decision_config(settings.decision_config)
        _, table = load_own_table(Party.BANK, bank.federation, bank.schema_file, bank.table)
        version = load_bank_version(ModelStore(bank.data_dir / "models"), version_id)
        scorer = BulkScorer(version, decisions, task)
        with AlignmentStore(bank.data_dir) as store:
            aligned = aligned_table(table, store)
            batches = [keys for keys, _ in store.members()]
        join_keys = np.concatenate(batches) if batches else np.empty(0, JOIN_KEY_DTYPE)
        partner = settings.partner
        with (
            create_channel(
                partner.address,
                settings.tls,
                insecure=settings.insecure,
                server_name=partner.server_name,
                server_party=Party.PARTNER,
            ) as channel,
            ProgressBars() as bars,
        ):
            ranked = target(
                scorer,
                aligned,
                join_keys,
                channel,
                top=top,
                batch_keys=batch_keys,
                in_flight=in_flight,
                timeout_s=timeout,
                progress=bars,
            )
        write_ranked(ranked, output)
        bank_only = int(ranked.scores.partner_missing.sum())
        typer.echo(
            f"{len(ranked.customer_id)} of {len(aligned)} aligned customers ranked for {task} "
            f"with model version {version_id} ({bank_only} scored bank-only): {output}"
        )
