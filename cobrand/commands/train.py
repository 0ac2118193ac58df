"""`cobrand train --job JOB.yaml`: align, then train one model federated, both parties on loopback.

The local run of what two sites run apart, in order:

1. each party's CA, certificates, settings and data directory under ``OUT/work``, and the
   partner node as its own long-lived process (`local_sites`);
2. private alignment of the job's tables (`align_sites`);
3. the bank's SuperLink (TLS, SuperNode authentication) with the bank trainer's settings
   (``trainer.yaml``) in its environment, and the partner's SuperNode, registered with its own
   key, whose ClientApp reaches the partner node with the partner's certificate
   (`LocalFederation`, under ``OUT/work/flower``);
4. ``flwr run bank_node/flower_app`` with the job's training keys as run config, followed
   through the run's journal with a progress bar over rounds;
5. ``OUT/report.json`` (`bank_node.report`) from the alignment and the journal's last event,
   and ``OUT/report.html`` (`bank_node.report_html`) with the test rows' scores the ServerApp
   kept.

`train_aligned` is steps 3 to 5 on sites already aligned (``cobrand demo``). The
SuperLink's server certificate and the trainer's data-plane certificate (role
``bank-trainer``) are issued from the bank's CA; nothing leaves ``OUT/work`` but the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

import bank_node.flower_app
from bank_node.report import summary_lines
from bank_node.resume import ResumePolicy
from bank_node.run_journal import journal_path, read_journal
from bank_node.run_report import finished_event, write_run_reports
from bank_node.trainer_config import TRAINER_CONFIG_ENV, TrainerConfig
from bank_node.training_job import TrainingJob, TrainingSection, load_job
from cobrand import pki
from cobrand.alignment_protocol import Progress, PsiSettings
from cobrand.alignment_store import AlignmentSummary
from cobrand.commands.align import (
    LocalSites,
    align_sites,
    local_sites,
    tls_files,
    write_settings,
)
from cobrand.commands.exits import cli_errors
from cobrand.commands.progress import ProgressBars
from cobrand.errors import FailedPrecondition
from cobrand.flower_local import LocalFederation
from cobrand.flower_sites import PARTNER_CLIENT_APP_RUNNER, SuperLinkTls
from cobrand.rpc import TlsFiles

__all__ = ["run", "train_aligned", "train_locally"]

_APP = Path(bank_node.flower_app.__file__).parent
_LOOPBACK = "127.0.0.1"
_JOURNAL_POLL_S = 0.5
# Each `flwr ls` is a process of its own (about a second): ask Flower less often than the file.
_STATUS_POLL_S = 5.0
_LOCAL_RESUME_WAIT_S = 20.0


def run(
    job: Annotated[Path, typer.Option(help="The job file (YAML): data, output directory, rounds.")],
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Blinding processes per party for alignment (default: cores)."),
    ] = None,
) -> None:
    """Align privately, train one model federated with Flower, write OUT/report.json and .html."""
    with cli_errors():
        spec = load_job(job)
        typer.echo(f"aligning, then training (settings, certificates and logs in {_work(spec)})")
        with ProgressBars() as progress:
            report = train_locally(spec, PsiSettings(workers=workers), progress)
    for line in summary_lines(report):
        typer.echo(line)
    typer.echo(f"  report          {spec.out / 'report.json'}, {spec.out / 'report.html'}")


def _work(job: TrainingJob) -> Path:
    return job.out / "work"


def train_locally(
    job: TrainingJob, psi: PsiSettings, progress: Progress | None = None
) -> dict[str, Any]:
    """Align the job's tables, then train on them (`train_aligned`) with the same partner node;
    return the report written."""
    with local_sites(job.dataset_files, _work(job), psi) as sites:
        alignment = align_sites(sites, progress)
        return train_aligned(sites, alignment.summary, job.training, job.out, progress)


def train_aligned(
    sites: LocalSites,
    alignment: AlignmentSummary,
    training: TrainingSection,
    out: Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train on the sites' alignment, their partner node serving; write the reports to `out`
    (`write_run_reports`) and return ``report.json``'s content.

    Parameters
    ----------
    sites : LocalSites
        Both parties set up by `local_sites`, aligned by `align_sites`.
    alignment : AlignmentSummary
        The bank's result of that alignment.
    training : TrainingSection
        The run's hyperparameters.
    out : Path
        Where ``report.json`` and ``report.html`` go.
    progress : Progress, optional
        Gets one phase, the rounds, advanced as each is committed.

    Raises
    ------
    FailedPrecondition
        The run ended without finishing (stopped, or its ServerApp failed: the message holds
        the end of ``flwr log``).
    CobrandError, grpc.RpcError
        As the Flower processes and the partner node raise them.
    """
    # Flower's processes run in their own directory: every path handed to them is absolute.
    work, partner_tls = sites.work, sites.partner.tls
    if sites.bank.tls is None or partner_tls is None:
        raise FailedPrecondition(f"{work}: the sites' settings name no TLS files")
    bank_ca = sites.bank.tls.ca_bundle.parent
    superlink = tls_files(bank_ca, pki.issue(bank_ca, pki.Role.BANK, "superlink", (_LOOPBACK,)))
    trainer_tls = tls_files(bank_ca, pki.issue(bank_ca, pki.Role.BANK_TRAINER, "bank-trainer"))
    trainer_settings = write_settings(
        work / "trainer.yaml",
        TrainerConfig(
            bank=work / "bank.yaml",
            runs_dir=work / "runs",
            tls=trainer_tls,
            # Nobody restarts a local partner node that died: fail soon instead of waiting.
            resume=ResumePolicy(wait_s=_LOCAL_RESUME_WAIT_S),
        ),
    )
    with LocalFederation(
        work / "flower",
        SuperLinkTls(ca_cert=bank_ca / pki.CA_CERT, cert=superlink.cert, key=superlink.key),
        superlink_env={TRAINER_CONFIG_ENV: str(trainer_settings)},
    ) as federation:
        federation.start_superlink()
        federation.start_supernode(
            _node_config(sites.partner_port, partner_tls),
            client_app_runner=PARTNER_CLIENT_APP_RUNNER,
        )
        run_id = federation.run(_APP, training.run_config)
        _follow(federation, run_id, work / "runs", training.rounds, progress)
    return write_run_reports(work / "runs", str(run_id), alignment, out)


def _node_config(port: int, tls: TlsFiles) -> dict[str, str]:
    """What the partner's ClientApp is told, as ``cobrand partner supernode`` tells it."""
    # Imported here: it imports flwr, which the other commands mounted beside this one do not.
    from partner_node.flower_client.client_app import HandOffSettings

    settings = HandOffSettings.model_validate(
        {"partner-node": f"{_LOOPBACK}:{port}", "ca-bundle": tls.ca_bundle}
        | {"cert": tls.cert, "key": tls.key}
    )
    return settings.node_config()


def _follow(
    federation: LocalFederation,
    run_id: int,
    runs_dir: Path,
    rounds: int,
    progress: Progress | None,
) -> None:
    """Advance a bar per committed round until the journal's ``finished`` event."""
    if progress is not None:
        progress.start(f"training rounds (at most {rounds})", rounds)
    journal = journal_path(runs_dir, str(run_id))
    committed = 0
    next_status = time.monotonic()
    while True:
        events = read_journal(journal)
        done = sum(event["event"] == "committed" for event in events)
        if progress is not None and done > committed:
            progress.advance(done - committed)
        committed = done
        if events and events[-1]["event"] == "finished":
            return
        if time.monotonic() >= next_status:
            status = federation.run_status(run_id)
            # The journal is written before the run ends: read it once more before giving up.
            if status.startswith("finished") and finished_event(runs_dir, str(run_id)) is None:
                tail = federation.log(run_id).strip().splitlines()[-5:]
                raise FailedPrecondition(
                    f"run {run_id} ended {status} without finishing; `flwr log` ends: "
                    + " | ".join(tail)
                )
            next_status = time.monotonic() + _STATUS_POLL_S
        time.sleep(_JOURNAL_POLL_S)
