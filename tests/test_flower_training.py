"""Flower as the control plane, with the real processes on loopback: the bank's SuperLink (TLS,
SuperNode authentication), the partner's SuperNode and its long-lived partner_node, started once
for this module. The risk team's ``flwr`` CLI submits, lists and stops runs.

Each Flower message costs seconds here (``notes/flower-1.41.md``), so the tests send few: a run
of two rounds is four messages (status, two plans, closing status).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bank_node.config import BankNodeConfig, PartnerEndpoint
from bank_node.run_journal import read_journal
from bank_node.trainer_config import TRAINER_CONFIG_ENV, TrainerConfig
from cobrand.cli import app
from cobrand.flower_local import LocalFederation
from cobrand.flower_sites import PARTNER_CLIENT_APP_RUNNER, SuperLinkTls
from cobrand.model_store import ModelStore
from cobrand.rounds_serde import status_from_proto
from cobrand.rpc import create_channel
from cobrand.v1 import rounds_pb2, rounds_pb2_grpc
from tests.conftest import ThrowAwayPki
from tests.training_sites import TrainingSites, write_training_sites

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "bank_node" / "flower_app"
RUN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Sites:
    """The running federation and what the tests read at each site."""

    federation: LocalFederation
    runs_dir: Path
    trainer: Path
    training: TrainingSites
    partner_port: int
    partner_log: Path
    pki: ThrowAwayPki
    started_seconds: float


def _write(path: Path, settings: Any) -> Path:
    document = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _start_partner_node(
    work: Path, training: TrainingSites, pki: ThrowAwayPki
) -> tuple[subprocess.Popen[bytes], int]:
    settings = _write(
        work / "partner.yaml",
        training.partner_node_config(pki.tls("partner")),
    )
    port_file = work / "partner.port"
    command = [sys.executable, "-m", "partner_node", "serve", "--config", str(settings)]
    with (work / "partner.log").open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port-file", str(port_file)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert process.poll() is None, (work / "partner.log").read_text()
        assert time.monotonic() < deadline, "partner_node did not serve within 60 s"
        time.sleep(0.05)
    return process, int(port_file.read_text())


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, throwaway_pki: ThrowAwayPki) -> Iterator[Sites]:
    work = tmp_path_factory.mktemp("flower")
    # Enough aligned rows that a pass of single-row batches lasts several seconds (the stop test).
    training = write_training_sites(work, customers=8000, seed=12)
    started = time.perf_counter()
    partner, port = _start_partner_node(work, training, throwaway_pki)
    bank = _write(
        work / "bank.yaml",
        BankNodeConfig(
            federation=training.files.federation,
            schema=training.files.bank_schema,
            table=training.files.bank_table,
            data_dir=training.bank_data,
            partner=PartnerEndpoint(address=f"127.0.0.1:{port}"),
            tls=throwaway_pki.tls("bank"),
        ),
    )
    trainer = _write(
        work / "trainer.yaml",
        TrainerConfig(bank=bank, runs_dir=work / "runs", tls=throwaway_pki.tls("bank-trainer")),
    )
    bank_ca = throwaway_pki.ca_dir("bank")
    # The SuperLink's certificate is the bank's node certificate (bank CA, SAN 127.0.0.1).
    superlink_tls = SuperLinkTls(
        ca_cert=bank_ca / "ca.crt",
        cert=throwaway_pki.tls("bank").cert,
        key=throwaway_pki.tls("bank").key,
    )
    partner_app = throwaway_pki.tls("partner")
    federation = LocalFederation(
        work, superlink_tls, superlink_env={TRAINER_CONFIG_ENV: str(trainer)}
    )
    try:
        federation.start_superlink()
        federation.start_supernode(
            {
                "partner-node": f"127.0.0.1:{port}",
                "ca-bundle": str(partner_app.ca_bundle),
                "cert": str(partner_app.cert),
                "key": str(partner_app.key),
            },
            client_app_runner=PARTNER_CLIENT_APP_RUNNER,
        )
        yield Sites(
            federation,
            work / "runs",
            trainer,
            training,
            port,
            work / "partner.log",
            throwaway_pki,
            time.perf_counter() - started,
        )
    finally:
        federation.close()
        os.killpg(partner.pid, signal.SIGTERM)
        partner.wait(timeout=30)


def _events(sites: Sites, run_id: int) -> list[dict[str, Any]]:
    return read_journal(sites.runs_dir / f"{run_id}.jsonl")


def _partner_progress(sites: Sites, run_id: int) -> Any:
    with create_channel(f"127.0.0.1:{sites.partner_port}", sites.pki.tls("partner")) as channel:
        stub: Any = rounds_pb2_grpc.PartnerRoundsStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.GetStatus(rounds_pb2.GetStatusRequest(run_id=str(run_id)), timeout=30)
    return status_from_proto(reply).run


def test_a_run_submitted_with_flwr_trains_its_rounds_and_commits_both_sides_checkpoints(
    sites: Sites,
) -> None:
    submitted = time.perf_counter()
    run_id = sites.federation.run(APP, {"num-rounds": 2, "patience": 2, "batch-size": 128})
    status = sites.federation.wait_finished(run_id, RUN_TIMEOUT_S)
    wall = time.perf_counter() - submitted

    events = _events(sites, run_id)
    log = sites.federation.log(run_id)
    assert status == "finished:completed", log
    assert [e["event"] for e in events] == [
        "checked", "planned", "committed", "planned", "committed", "finished",
    ]  # fmt: skip
    finished = events[-1]
    progress = _partner_progress(sites, run_id)
    assert progress.completed_rounds == 2
    committed = [e for e in events if e["event"] == "committed"]
    assert [e["partner_sha256"] for e in committed] == [c.hex() for c in progress.checkpoints[1:]]
    assert finished["partner_sha256"] == progress.checkpoints[finished["best_round"]].hex()
    assert 0.5 < finished["test"]["risk"]["auc"] <= 1.0
    assert f"run {run_id} finished: best round" in log
    listed = sites.federation.flwr("ls")["runs"]
    assert str(run_id) in {run["run-id"] for run in listed}
    # The model is published at both sites, each holding the other's manifest digest.
    version = finished["model_version"]
    bank = ModelStore(sites.training.bank_data / "models").manifest(version)
    partner = ModelStore(sites.training.partner_data / "models").manifest(version)
    assert bank.peer_manifest_sha256 == finished["partner_manifest_sha256"]
    assert partner.peer_manifest_sha256 == finished["bank_manifest_sha256"]
    assert f"model version {version} at both sides" in log
    _report(sites, events, wall)


def test_the_risk_team_writes_a_finished_runs_reports_at_the_bank(
    sites: Sites, tmp_path: Path
) -> None:
    run_id = sites.federation.run(APP, {"num-rounds": 1, "batch-size": 256})
    assert sites.federation.wait_finished(run_id, RUN_TIMEOUT_S) == "finished:completed"
    command = ["bank", "report", "--trainer-config", str(sites.trainer), "--out", str(tmp_path)]

    written = CliRunner().invoke(app, [*command, "--run", str(run_id)])
    unknown = CliRunner().invoke(app, [*command, "--run", "404"])
    outside = CliRunner().invoke(app, [*command, "--run", f"../runs/{run_id}"])

    assert written.exit_code == 0, written.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["run_id"] == str(run_id)
    assert report["model_version"] in (tmp_path / "report.html").read_text()
    assert f"model {report['model_version']}" in written.output
    assert unknown.exit_code == 2
    assert unknown.output.startswith("error: run 404 has not finished")
    assert outside.exit_code == 2
    assert "cannot name a checkpoint directory" in outside.output


def test_a_run_stopped_mid_round_with_flwr_stop_ends_and_the_partner_rolls_the_round_back(
    sites: Sites,
) -> None:
    # Single-row synchronous batches: round 1's pass lasts long enough to be stopped inside it.
    run_id = sites.federation.run(APP, {"num-rounds": 3, "batch-size": 1, "pipeline-depth": 1})
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while "planned" not in [e["event"] for e in _events(sites, run_id)]:
        assert time.monotonic() < deadline, sites.federation.log(run_id)
        time.sleep(0.1)

    stopped_at = time.perf_counter()
    sites.federation.stop(run_id)
    status = sites.federation.wait_finished(run_id, 30.0)
    progress = _wait_partner_idle(sites, run_id, deadline=time.monotonic() + 30)
    ended = time.perf_counter() - stopped_at

    assert status == "finished:stopped"
    assert [e["event"] for e in _events(sites, run_id)] == ["checked", "planned"]
    assert progress.completed_rounds == 0, "round 1 finished before the stop reached the bank"
    assert "weights rolled back to round 0" in sites.partner_log.read_text()
    print(f"\nflwr stop -> run finished and partner rolled back: {ended:.1f} s")


def _wait_partner_idle(sites: Sites, run_id: int, deadline: float) -> Any:
    """The partner's progress of the run once the cancelled pass has been rolled back."""
    while "weights rolled back to round 0" not in sites.partner_log.read_text():
        assert time.monotonic() < deadline, sites.partner_log.read_text()
        time.sleep(0.1)
    return _partner_progress(sites, run_id)


def _report(sites: Sites, events: list[dict[str, Any]], wall: float) -> None:
    """Flower's fixed floor here, for the benchmark: start-up, then one round trip per message."""
    control = [e["control_seconds"] for e in events if "control_seconds" in e]
    startup = sites.federation.startup_seconds
    print(
        f"\nstart-up: partner_node + SuperLink + SuperNode online {sites.started_seconds:.1f} s "
        f"(SuperLink {startup['superlink']:.1f} s, SuperNode {startup['supernode']:.1f} s)"
        f"\ncontrol round trips (status, plan 1, plan 2): "
        + ", ".join(f"{s:.1f} s" for s in control)
        + f"\nrun wall time from `flwr run` to finished: {wall:.1f} s; training "
        f"{events[-1]['seconds']:.1f} s"
    )
