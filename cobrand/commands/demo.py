"""`cobrand demo`: the whole flow that exists so far, end to end, on embedded synthetic data.

Each party does its own part with its own files, as it would at its own site: the bank and the
partner each create a certificate authority and import only the other's CA certificate; each
loads and checks its own table and fits its own preprocessing on its own training rows; the two
find their common customers by private set intersection, the partner's node running as its own
process; they train one model on those customers with Flower as the control plane and a gRPC
data plane, and the report compares it with its bank-only path; and a certificate from an
unknown CA is refused where the bank's gets through. A later issue adds scoring.
"""

from __future__ import annotations

import importlib.resources
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bank_node.cli import outcome_lines
from bank_node.report import summary_lines
from bank_node.training_job import TrainingSection
from cobrand import pki
from cobrand.alignment_protocol import PsiSettings
from cobrand.commands.align import align_sites, local_sites
from cobrand.commands.exits import cli_errors
from cobrand.commands.progress import ProgressBars
from cobrand.commands.train import train_aligned
from cobrand.federation import Federation, load_federation
from cobrand.preprocess import Preprocessor
from cobrand.rpc import TlsFiles, create_channel, create_server
from cobrand.schema import SPLIT_NAMES, load_party_schema
from cobrand.synth import DatasetFiles, SynthConfig, write_dataset
from cobrand.tables import PartyTable, load_party_table

__all__ = ["run"]

_CALL_TIMEOUT_S = 5.0


def run(
    out: Annotated[Path, typer.Option(help="Working directory; replaced on every run.")] = Path(
        "out/demo"
    ),
    customers: Annotated[int, typer.Option(min=100, help="Synthetic bank customers.")] = 100_000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the synthetic data.")] = 7,
    rounds: Annotated[int, typer.Option(min=1, help="Training rounds at most.")] = 3,
    real_data: Annotated[
        Path, typer.Option(help="Directory holding the UCI default-credit files, if present.")
    ] = Path("../shared/data"),
) -> None:
    """Run the demo of every step built so far and print a readable summary."""
    with cli_errors():
        shutil.rmtree(out, ignore_errors=True)
        _section("1. synthetic co-brand data")
        files = _synthesize(out / "data", customers, seed)
        federation = load_federation(files.federation)
        _section("2. each party loads its own table and fits its own preprocessing")
        for party, schema_path, table_path in (
            ("bank", files.bank_schema, files.bank_table),
            ("partner", files.partner_schema, files.partner_table),
        ):
            _load_and_fit(party, federation, schema_path, table_path)
        _section("3. private alignment: ECDH-PSI, partner node as its own process, mutual TLS")
        with local_sites(files, out / "align", PsiSettings()) as sites:
            with ProgressBars() as progress:
                outcome = align_sites(sites, progress)
            for line in outcome_lines(outcome):
                typer.echo(line)
            _section("4. federated training: Flower control plane, gRPC data plane, mutual TLS")
            with ProgressBars() as progress:
                report = train_aligned(
                    sites,
                    outcome.summary,
                    TrainingSection.model_validate({"rounds": rounds}),
                    out,
                    progress,
                )
        for line in summary_lines(report):
            typer.echo(line)
        _section("5. a stranger's certificate is refused")
        _mutual_tls(out / "pki")
        _section("6. real data: UCI default of credit card clients, as FATE splits it")
        _real_data(real_data)
    typer.echo(
        f"\ndemo finished: reports in {out / 'report.json'} and {out / 'report.html'}; scoring "
        "arrives with a later issue"
    )


def _section(title: str) -> None:
    typer.echo(f"\n== {title}")


def _synthesize(directory: Path, customers: int, seed: int) -> DatasetFiles:
    started = time.perf_counter()
    files, tables = write_dataset(SynthConfig(customers=customers, seed=seed), directory)
    typer.echo(
        f"bank {tables.bank.num_rows:,} customers, partner {tables.partner.num_rows:,} users, "
        f"{tables.overlap:,} in both ({tables.overlap / tables.bank.num_rows:.0%} of the bank's), "
        f"written in {time.perf_counter() - started:.2f} s to {directory}"
    )
    return files


def _load_and_fit(party: str, federation: Federation, schema_path: Path, table_path: Path) -> None:
    started = time.perf_counter()
    schema = load_party_schema(schema_path, federation)
    table = load_party_table(schema, table_path)
    preprocessor = Preprocessor.fit(table, schema)
    encoded = preprocessor.transform(table)
    typer.echo(
        f"{party:<8} {len(table):,} rows ({table.dropped_identifiers:,} unreadable ids dropped), "
        f"splits {_split_counts(table)}; labels: {', '.join(table.labels) or 'none'}"
    )
    typer.echo(
        f"         preprocessing fitted on its train rows: {encoded.numeric.shape[1]} numeric "
        f"inputs, {encoded.categorical.shape[1]} categorical, digest "
        f"{preprocessor.digest().hex()[:16]} ({time.perf_counter() - started:.2f} s)"
    )


def _split_counts(table: PartyTable) -> str:
    return " / ".join(
        f"{name} {int((table.split == code).sum()):,}" for code, name in enumerate(SPLIT_NAMES)
    )


def _mutual_tls(directory: Path) -> None:
    bank_dir, partner_dir, stranger_dir = (directory / d for d in ("bank", "partner", "stranger"))
    bank_ca = pki.init_ca(bank_dir, pki.Party.BANK)
    partner_ca = pki.init_ca(partner_dir, pki.Party.PARTNER)
    # Each party imports only the other's CA certificate; no private key crosses.
    pki.import_peer_ca(bank_dir, partner_ca)
    pki.import_peer_ca(partner_dir, bank_ca)
    pki.init_ca(stranger_dir, pki.Party.BANK)
    partner_tls = _tls(partner_dir, pki.Role.PARTNER, "partner-node", hosts=("127.0.0.1",))
    gateway_tls = _tls(bank_dir, pki.Role.GATEWAY, "gateway")
    stranger_tls = _tls(stranger_dir, pki.Role.APP, "stranger-app")
    # The stranger trusts the partner so that only the partner's check can refuse it.
    pki.import_peer_ca(stranger_dir, partner_ca)
    typer.echo(f"bank CA and partner CA created in {directory}; each imported the other's")
    with _health_server(partner_tls) as port:
        typer.echo(f"partner serves on 127.0.0.1:{port} (mutual TLS, client certificate required)")
        typer.echo(f"  bank gateway certificate:        {_probe(port, gateway_tls)}")
        typer.echo(f"  certificate from an unknown CA:  {_probe(port, stranger_tls)}")


def _tls(ca_dir: Path, role: pki.Role, name: str, hosts: tuple[str, ...] = ()) -> TlsFiles:
    issued = pki.issue(ca_dir, role, name, hosts)
    return TlsFiles(ca_bundle=ca_dir / pki.TRUST_BUNDLE, cert=issued.cert, key=issued.key)


@contextmanager
def _health_server(tls: TlsFiles) -> Iterator[int]:
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server, port = create_server(
        lambda s: health_pb2_grpc.add_HealthServicer_to_server(servicer, s), "127.0.0.1:0", tls
    )
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def _probe(port: int, tls: TlsFiles) -> str:
    with create_channel(f"127.0.0.1:{port}", tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=_CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return f"refused ({exc.code().name})"
    return f"accepted ({health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)})"


def _real_data(directory: Path) -> None:
    bank_file = directory / "default_credit_hetero_guest.csv"
    partner_file = directory / "default_credit_hetero_host.csv"
    if not (bank_file.is_file() and partner_file.is_file()):
        typer.echo(f"skipped: {directory} does not hold the default-credit files")
        return
    federation = load_federation(_shipped("cobrand", "federations"))
    tables = []
    for package, path in (("bank_node", bank_file), ("partner_node", partner_file)):
        schema = load_party_schema(_shipped(package, "schemas"), federation)
        tables.append(load_party_table(schema, path))
    bank, partner = tables
    typer.echo(
        f"bank {len(bank):,} rows x {bank.numeric.shape[1]} features + label "
        f"(default rate {float(bank.labels['risk'].mean()):.1%}); partner {len(partner):,} rows x "
        f"{partner.numeric.shape[1]} features; both loaded with the shipped schemas"
    )


def _shipped(package: str, folder: str) -> Path:
    return Path(str(importlib.resources.files(package) / folder / "default_credit.yaml"))
