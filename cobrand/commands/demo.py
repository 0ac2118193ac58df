"""`cobrand demo`: the whole flow that exists so far, end to end, on embedded synthetic data.

Each party does its own part with its own files, as it would at its own site: the bank and the
partner each create a certificate authority and import only the other's CA certificate; each
loads and checks its own table and fits its own preprocessing on its own training rows; the two
find their common customers by private set intersection, the partner's node running as its own
process; they train one model on those customers with Flower as the control plane and a gRPC
data plane, and the report compares it with its bank-only path; the bank's scoring gateway
serves the trained version and decides three applications (a customer the partner knows, one it
does not, and the first again once the partner node has stopped: the gateway answers from the
bank's slice and says why); and a certificate from an unknown CA is refused where the bank's gets
through.
"""

from __future__ import annotations

import importlib.resources
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bank_node.cli import outcome_lines
from bank_node.report import summary_lines
from bank_node.training_job import TrainingSection
from cobrand import pki
from cobrand.alignment_protocol import PsiSettings
from cobrand.alignment_store import AlignmentStore
from cobrand.commands.align import LocalSites, align_sites, local_sites, tls_files, write_settings
from cobrand.commands.exits import cli_errors
from cobrand.commands.progress import ProgressBars
from cobrand.commands.train import train_aligned
from cobrand.durable import write_new
from cobrand.errors import FailedPrecondition
from cobrand.federation import Federation, load_federation
from cobrand.preprocess import Preprocessor
from cobrand.rpc import TlsFiles, create_channel, create_server
from cobrand.schema import SPLIT_NAMES, PartySchema, load_party_schema
from cobrand.settings import load_settings
from cobrand.synth import DatasetFiles, SynthConfig, write_dataset
from cobrand.tables import PartyTable, load_party_table
from cobrand.v1 import scoring_pb2, scoring_pb2_grpc
from gateway.audit_log import AuditSettings
from gateway.pseudonyms import MIN_KEY_BYTES
from gateway.server import start_gateway
from gateway.settings import GatewaySettings, PartnerSettings

__all__ = ["run", "write_gateway_settings"]

_CALL_TIMEOUT_S = 5.0
_LOOPBACK = "127.0.0.1"
# Tens of milliseconds at a bank; the demo shares its machine with the Flower processes it ran.
_PARTNER_DEADLINE_MS = 250.0
# The gateway's start waits this long for the partner's consented-lookup index of all its users
# (built once; about 30 s for the demo's 300,000 on 2 cores), so the consenting applicant the
# partner does not know is looked up rather than refused while the index builds.
_PARTNER_INDEX_WAIT_S = 180.0


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
        bank_schema, bank_table = _load_and_fit(
            "bank", federation, files.bank_schema, files.bank_table
        )
        _load_and_fit("partner", federation, files.partner_schema, files.partner_table)
        _section("3. private alignment: ECDH-PSI, partner node as its own process, mutual TLS")
        # The gateway outlives the partner node: the last application is scored without it.
        with ExitStack() as serving:
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
                _section("5. the bank's scoring gateway decides applications, mutual TLS")
                aligned, bank_only = _pick_customers(bank_table, sites.bank.data_dir)
                applications = serving.enter_context(
                    _gateway(sites, report["model_version"], bank_schema.identifier.kind)
                )
                applications.score("aligned customer, partner serving", aligned)
                applications.score("bank customer the partner does not know", bank_only)
            typer.echo("  partner node stopped; the gateway keeps serving")
            applications.score("aligned customer, partner stopped", aligned)
        typer.echo(
            f"  audit log of the decisions: cobrand audit list --db {sites.work / 'audit.db'}"
        )
        _section("6. a stranger's certificate is refused")
        _mutual_tls(out / "pki")
        _section("7. real data: UCI default of credit card clients, as FATE splits it")
        _real_data(real_data)
    typer.echo(f"\ndemo finished: reports in {out / 'report.json'} and {out / 'report.html'}")


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


def _load_and_fit(
    party: str, federation: Federation, schema_path: Path, table_path: Path
) -> tuple[PartySchema, PartyTable]:
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
    return schema, table


def _split_counts(table: PartyTable) -> str:
    return " / ".join(
        f"{name} {int((table.split == code).sum()):,}" for code, name in enumerate(SPLIT_NAMES)
    )


def _pick_customers(table: PartyTable, bank_data: Path) -> tuple[str, str]:
    """The first bank customer, in table order, inside the alignment and the first outside it."""
    found: dict[bool, str] = {}
    with AlignmentStore(bank_data) as alignment:
        for canonical in map(str, table.ids):
            found.setdefault(alignment.join_key(canonical) is not None, canonical)
            if len(found) == 2:
                return found[True], found[False]
    raise FailedPrecondition(
        f"{table.source}: the demo needs a bank customer inside the alignment and one outside it"
    )


class _Applications:
    """The bank's application flow calling the gateway (role ``app``), printing each answer."""

    def __init__(self, channel: grpc.Channel, identifier_kind: str) -> None:
        self._stub: Any = scoring_pb2_grpc.ScoringGatewayStub(channel)  # type: ignore[no-untyped-call]
        self._identifier_kind = identifier_kind
        self._sent = 0

    def score(self, label: str, identifier: str) -> None:
        """Submit one application of `identifier` (an existing customer: the gateway adds the
        stored features) and print the answer; `label` stands in for the identifier."""
        self._sent += 1
        reply = self._stub.ScoreApplication(
            scoring_pb2.ScoreApplicationRequest(
                application_id=f"DEMO-{self._sent}",
                channel=scoring_pb2.APPLICATION_CHANNEL_BANK,
                identifier_kind=self._identifier_kind,
                identifier=identifier,
                partner_lookup_consent=True,
            ),
            timeout=_CALL_TIMEOUT_S,
        )
        risk = reply.risk
        top = reply.packages[0].package if reply.packages else "none offered"
        typer.echo(
            f"  {label}: {scoring_pb2.Decision.Name(reply.decision).removeprefix('DECISION_')}, "
            f"score {risk.score} (band {risk.score_band}, PD {risk.probability_of_default:.1%}), "
            f"limit band {reply.limit_band or '-'}, top package {top}, instalment "
            f"{_instalment(reply)}"
        )
        status = scoring_pb2.PartnerSliceStatus.Name(reply.slices.partner_status)
        typer.echo(
            f"      reasons {' '.join(r.code for r in risk.reasons) or 'none'}, policy rules "
            f"{' '.join(r.code for r in risk.policy_rules) or 'none'}; slices bank"
            f"{' + partner' if reply.slices.partner else ' only'}, partner slice "
            f"{status.removeprefix('PARTNER_SLICE_STATUS_')}; request {reply.request_id}"
        )


def _instalment(reply: scoring_pb2.ScoreApplicationResponse) -> str:
    if not reply.HasField("instalment"):
        return "none offered"
    offer = reply.instalment
    channel = scoring_pb2.OfferChannel.Name(offer.channel).removeprefix("OFFER_CHANNEL_")
    return f"{offer.offer} via {channel.lower()} ({offer.propensity:.0%})"


def write_gateway_settings(
    sites: LocalSites, version_id: str, deadline_ms: float = _PARTNER_DEADLINE_MS
) -> Path:
    """The gateway's settings file for `sites`, serving `version_id`: its certificate of the
    bank's CA, pseudonym key and audit log under the sites' work directory, and the partner
    lookups' deadline `deadline_ms`.

    Raises
    ------
    FailedPrecondition
        The bank's settings name no TLS files.
    """
    work, bank_ca = sites.work, _bank_ca(sites)
    key_file = work / "pseudonym.key"
    # Created private: the key is what keeps the audit log's pseudonyms from being reversed.
    write_new(key_file, secrets.token_bytes(MIN_KEY_BYTES), mode=0o600)
    return write_settings(
        work / "gateway.yaml",
        GatewaySettings(
            listen=f"{_LOOPBACK}:0",
            tls=tls_files(bank_ca, pki.issue(bank_ca, pki.Role.GATEWAY, "gateway", (_LOOPBACK,))),
            bank=work / "bank.yaml",
            model_version=version_id,
            decision_config=_shipped("gateway", "examples", "cobrand_synth.yaml"),
            pseudonym_key=key_file,
            partner=PartnerSettings(
                address=f"{_LOOPBACK}:{sites.partner_port}",
                deadline_ms=deadline_ms,
                verify_timeout_s=_PARTNER_INDEX_WAIT_S,
            ),
            audit=AuditSettings(backend="sqlite", path=work / "audit.db"),
        ),
    )


def _bank_ca(sites: LocalSites) -> Path:
    """The bank's CA directory, whose certificates the gateway and the application flow hold."""
    bank_tls = sites.bank.tls
    if bank_tls is None:
        raise FailedPrecondition(f"{sites.work}: the bank's settings name no TLS files")
    return bank_tls.ca_bundle.parent


@contextmanager
def _gateway(sites: LocalSites, version_id: str, identifier_kind: str) -> Iterator[_Applications]:
    """The bank's gateway serving `version_id` in this process (`write_gateway_settings`), and
    an application flow holding a certificate of the bank's CA; stopped when the block ends."""
    settings = write_gateway_settings(sites, version_id)
    typer.echo(
        "starting the gateway: it checks the partner's copy of the version and waits for the "
        "partner's consented-lookup index of its users (built once)"
    )
    started = time.perf_counter()
    gateway = start_gateway(load_settings(GatewaySettings, settings))
    try:
        typer.echo(
            f"gateway serving model {version_id} on {_LOOPBACK}:{gateway.port}, started in "
            f"{time.perf_counter() - started:.1f} s (partner "
            f"{'verified' if gateway.partner.verified else 'not verified'}; settings {settings})"
        )
        bank_ca = _bank_ca(sites)
        app_tls = tls_files(bank_ca, pki.issue(bank_ca, pki.Role.APP, "demo-application-flow"))
        with create_channel(f"{_LOOPBACK}:{gateway.port}", app_tls) as channel:
            yield _Applications(channel, identifier_kind)
    finally:
        gateway.stop()


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
    federation = load_federation(_shipped("cobrand", "federations", "default_credit.yaml"))
    tables = []
    for package, path in (("bank_node", bank_file), ("partner_node", partner_file)):
        schema = load_party_schema(_shipped(package, "schemas", "default_credit.yaml"), federation)
        tables.append(load_party_table(schema, path))
    bank, partner = tables
    typer.echo(
        f"bank {len(bank):,} rows x {bank.numeric.shape[1]} features + label "
        f"(default rate {float(bank.labels['risk'].mean()):.1%}); partner {len(partner):,} rows x "
        f"{partner.numeric.shape[1]} features; both loaded with the shipped schemas"
    )


def _shipped(package: str, folder: str, name: str) -> Path:
    return Path(str(importlib.resources.files(package) / folder / name))
