"""`cobrand align --data DIR`: private alignment of a co-brand set with both parties on loopback.

The same run as ``cobrand partner serve`` + ``cobrand bank align`` at two sites, on one machine:
each party gets its own certificate authority (each imports only the other's CA certificate)
and a node certificate, its own settings file and its own data directory under the work
directory; the partner node runs as a separate process (``python -m partner_node``, its output
in ``partner.log``); the bank runs in this process with progress bars. DIR holds a set as
``cobrand data synth`` writes it: ``federation.yaml``, ``{bank,partner}.schema.yaml`` and the two
tables (``.csv`` or ``.parquet``). The settings files written are the ones each site would use.
`align_locally` is the same run without the command line; other commands (``cobrand demo``,
``cobrand train``) set the parties up with `local_sites` and keep its partner node serving
after `align_sites`, to train on the alignment, and issue more certificates (`tls_files`) and
settings files (`write_settings`) the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel

from bank_node.alignment_client import align_with_partner
from bank_node.cli import outcome_lines
from bank_node.config import BankNodeConfig, PartnerEndpoint
from bank_node.psi_initiator import AlignmentOutcome
from cobrand import pki
from cobrand.alignment_protocol import Progress, PsiSettings
from cobrand.alignment_store import AlignmentStore
from cobrand.child_process import stop_child
from cobrand.commands.exits import cli_errors
from cobrand.commands.progress import ProgressBars
from cobrand.errors import ConfigError, FailedPrecondition, Unavailable
from cobrand.rpc import TlsFiles
from cobrand.synth import DatasetFiles
from partner_node.config import PartnerNodeConfig

__all__ = [
    "LocalSites",
    "align_locally",
    "align_sites",
    "local_sites",
    "run",
    "tls_files",
    "write_settings",
]

# Loading a partner table of millions of rows takes a while before the node serves.
_PARTNER_START_TIMEOUT_S = 600.0
_PARTNER_STOP_TIMEOUT_S = 30.0
_LOOPBACK = "127.0.0.1"


def run(
    data: Annotated[
        Path, typer.Option(help="Directory of a co-brand set, as `cobrand data synth` writes it.")
    ],
    work: Annotated[
        Path, typer.Option(help="Working directory for certificates, settings, results and logs.")
    ] = Path("out/align"),
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Blinding processes per party (default: one per core)."),
    ] = None,
    chunk_points: Annotated[int, typer.Option(min=1, help="Points per chunk.")] = 8192,
) -> None:
    """Align the bank's and the partner's tables privately, both parties on this machine."""
    with cli_errors():
        files = _dataset_files(data)
        typer.echo(f"starting the partner node (settings and log in {work})")
        with ProgressBars() as progress:
            outcome = align_locally(
                files, work, PsiSettings(workers=workers, chunk_points=chunk_points), progress
            )
    for line in outcome_lines(outcome):
        typer.echo(line)
    summary = outcome.summary
    typer.echo(
        f"  both parties hold run {summary.run_id}: {summary.intersection_size:,} members, "
        f"digest {summary.intersection_digest.hex()[:16]}"
    )


@dataclass(frozen=True)
class LocalSites:
    """Both parties' settings on this machine, with the partner node serving.

    Attributes
    ----------
    work : Path
        Their working directory: certificates, settings files, data directories, logs.
    bank, partner : BankNodeConfig, PartnerNodeConfig
        The settings written to ``work/bank.yaml`` and ``work/partner.yaml``; the bank's names
        the serving partner node's address.
    partner_port : int
        The partner node's loopback port.
    """

    work: Path
    bank: BankNodeConfig
    partner: PartnerNodeConfig
    partner_port: int


@contextmanager
def local_sites(files: DatasetFiles, work: Path, psi: PsiSettings) -> Iterator[LocalSites]:
    """Set both parties up under `work` and run the partner node until the block ends.

    Each party gets a fresh CA and node certificate under ``work/pki``, its settings file
    (``work/{bank,partner}.yaml``) and data directory (``work/{bank,partner}-data``); the
    partner node runs as a child process logging to ``work/partner.log``, long-lived as at its
    site: it serves the alignment and then the training on it.

    Raises
    ------
    Unavailable
        If the partner node does not start.
    """
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    bank_tls, partner_tls = _two_party_pki(work / "pki")
    partner_config = PartnerNodeConfig(
        federation=files.federation.resolve(),
        schema=files.partner_schema.resolve(),
        table=files.partner_table.resolve(),
        listen=f"{_LOOPBACK}:0",
        data_dir=work / "partner-data",
        tls=partner_tls,
        psi=psi,
    )
    partner_settings = write_settings(work / "partner.yaml", partner_config)
    with _partner_process(partner_settings, work) as port:
        bank_config = BankNodeConfig(
            federation=files.federation.resolve(),
            schema=files.bank_schema.resolve(),
            table=files.bank_table.resolve(),
            data_dir=work / "bank-data",
            partner=PartnerEndpoint(address=f"{_LOOPBACK}:{port}"),
            tls=bank_tls,
            psi=psi,
        )
        write_settings(work / "bank.yaml", bank_config)
        yield LocalSites(work, bank_config, partner_config, port)


def align_sites(sites: LocalSites, progress: Progress | None = None) -> AlignmentOutcome:
    """Align the two parties' tables; return the bank's outcome.

    Raises
    ------
    FailedPrecondition
        If the two persisted results disagree (they never should).
    CobrandError, grpc.RpcError
        As the run raises them.
    """
    outcome = align_with_partner(sites.bank, progress)
    _check_agreement(sites.bank.data_dir, sites.partner.data_dir)
    return outcome


def align_locally(
    files: DatasetFiles, work: Path, psi: PsiSettings, progress: Progress | None = None
) -> AlignmentOutcome:
    """Run both parties' sides of one alignment on this machine (`local_sites`, `align_sites`);
    return the bank's outcome.

    Raises
    ------
    Unavailable
        If the partner node does not start.
    FailedPrecondition
        If the two persisted results disagree (they never should).
    CobrandError, grpc.RpcError
        As the run raises them.
    """
    with local_sites(files, work, psi) as sites:
        return align_sites(sites, progress)


def _dataset_files(directory: Path) -> DatasetFiles:
    for table_format in ("csv", "parquet"):
        files = DatasetFiles.under(directory, table_format)
        if files.bank_table.is_file() and files.partner_table.is_file():
            return files
    raise ConfigError(
        f"{directory} holds no co-brand set: expected federation.yaml, bank.schema.yaml, "
        "partner.schema.yaml and bank/partner tables (.csv or .parquet), as `cobrand data "
        "synth` writes them"
    )


def _two_party_pki(directory: Path) -> tuple[TlsFiles, TlsFiles]:
    """A fresh CA per party, each trusting the other's; the bank's and the partner's node certs."""
    shutil.rmtree(directory, ignore_errors=True)
    bank_dir, partner_dir = directory / "bank", directory / "partner"
    bank_ca = pki.init_ca(bank_dir, pki.Party.BANK)
    partner_ca = pki.init_ca(partner_dir, pki.Party.PARTNER)
    pki.import_peer_ca(bank_dir, partner_ca)
    pki.import_peer_ca(partner_dir, bank_ca)
    bank = pki.issue(bank_dir, pki.Role.BANK, "bank-node", ())
    partner = pki.issue(partner_dir, pki.Role.PARTNER, "partner-node", (_LOOPBACK, "localhost"))
    return tls_files(bank_dir, bank), tls_files(partner_dir, partner)


def tls_files(ca_dir: Path, issued: pki.IssuedFiles) -> TlsFiles:
    """A holder's certificate and key issued from `ca_dir`, with that party's trust bundle."""
    return TlsFiles(
        ca_bundle=(ca_dir / pki.TRUST_BUNDLE).resolve(),
        cert=issued.cert.resolve(),
        key=issued.key.resolve(),
    )


def write_settings(path: Path, config: BaseModel) -> Path:
    """Write a settings model as the YAML file its process reads; return `path`."""
    document: dict[str, Any] = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def _partner_process(settings: Path, work: Path) -> Iterator[int]:
    """The partner node as a child process, from start (yielding its port) to a graceful stop."""
    port_file, log_path = work / "partner.port", work / "partner.log"
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "partner_node", "serve", "--config", str(settings)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 -- this interpreter, our own module, no shell
            [*command, "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield _wait_for_port(process, port_file, log_path)
        finally:
            stop_child(process, _PARTNER_STOP_TIMEOUT_S)


def _wait_for_port(process: subprocess.Popen[bytes], port_file: Path, log_path: Path) -> int:
    deadline = time.monotonic() + _PARTNER_START_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None:
            raise Unavailable(
                f"the partner node exited with code {process.returncode} before serving: "
                f"{_last_line(log_path)} (full log: {log_path})"
            )
        if time.monotonic() > deadline:
            raise Unavailable(
                f"the partner node did not serve within {_PARTNER_START_TIMEOUT_S:.0f} s; "
                f"see {log_path}"
            )
        time.sleep(0.05)
    return int(port_file.read_text(encoding="utf-8"))


def _last_line(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def _check_agreement(bank_dir: Path, partner_dir: Path) -> None:
    with AlignmentStore(bank_dir) as bank, AlignmentStore(partner_dir) as partner:
        ours, theirs = bank.summary, partner.summary
    if (ours.run_id, ours.intersection_digest) != (theirs.run_id, theirs.intersection_digest):
        raise FailedPrecondition(
            f"the bank holds run {ours.run_id}, the partner run {theirs.run_id}: their results "
            "differ; run the alignment again"
        )
