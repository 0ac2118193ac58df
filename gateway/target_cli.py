"""`cobrand target`: a campaign's ranked list of the aligned base (mounted by ``cobrand/cli.py``).

    cobrand target --task instalment --top 50000 --output top.parquet \\
        --bank-config bank.yaml --model-version V --decision-config decision.yaml \\
        --tls-ca ca.pem --tls-cert gateway.pem --tls-key gateway.key [--partner host:port]

The bank's node settings file (``--bank-config``) names the bank's federation, schema, table and
data directory, where its alignment and model registry (``models/``) live; the partner node is
its ``partner.address`` unless ``--partner`` is given. The embedding service admits the
gateway's certificate alone (role ``gateway``), so the TLS files are the gateway's, not the
node's. The list holds the bank's own customer identifiers: it stays inside the bank.
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
from cobrand.rpc import TlsFiles, create_channel
from cobrand.schema import load_party_schema
from cobrand.settings import load_settings
from gateway.bulk_scoring import TASKS, BulkScorer
from gateway.config import load_decision_config
from gateway.targeting import (
    DEFAULT_BATCH_KEYS,
    DEFAULT_IN_FLIGHT,
    check_output,
    target,
    write_ranked,
)

__all__ = ["run"]


def run(
    task: Annotated[str, typer.Option(help=f"The campaign: {' or '.join(TASKS)}.")],
    top: Annotated[int, typer.Option(help="Customers to keep, best first.")],
    output: Annotated[Path, typer.Option(help="The ranked list, .csv or .parquet.")],
    bank_config: Annotated[Path, typer.Option(help="The bank node's settings file.")],
    model_version: Annotated[str, typer.Option(help="The model version to score with.")],
    decision_config: Annotated[Path, typer.Option(help="The gateway's decision configuration.")],
    tls_ca: Annotated[Path, typer.Option(help="Trust bundle for the partner's certificate.")],
    tls_cert: Annotated[Path, typer.Option(help="The gateway's certificate (role gateway).")],
    tls_key: Annotated[Path, typer.Option(help="The gateway certificate's key.")],
    partner: Annotated[
        str | None, typer.Option(help="host:port of the partner node (default: the bank's).")
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
        settings = load_settings(BankNodeConfig, bank_config)
        decisions = load_decision_config(decision_config)
        federation, table = load_own_table(
            Party.BANK, settings.federation, settings.schema_file, settings.table
        )
        packages = load_party_schema(settings.schema_file, federation).labels.rights_package
        classes = packages.classes if packages is not None else ()
        version = load_bank_version(ModelStore(settings.data_dir / "models"), model_version)
        scorer = BulkScorer(version, decisions, task, classes)
        with AlignmentStore(settings.data_dir) as store:
            aligned = aligned_table(table, store)
            batches = [keys for keys, _ in store.members()]
        join_keys = np.concatenate(batches) if batches else np.empty(0, JOIN_KEY_DTYPE)
        address = partner or settings.partner.address
        tls = TlsFiles(ca_bundle=tls_ca, cert=tls_cert, key=tls_key)
        server_name = None if partner else settings.partner.server_name
        with (
            create_channel(address, tls, server_name=server_name) as channel,
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
            f"with model version {model_version} ({bank_only} scored bank-only): {output}"
        )
