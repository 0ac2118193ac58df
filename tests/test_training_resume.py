"""A partner_node killed mid-training and restarted on the same data directory and address, or
frozen mid-round and thawed: the bank's run notices through the data plane, waits for it,
resumes from the last committed round at both sides and ends exactly where a run never
interrupted ends.

The partner runs as its own process (``python -m partner_node serve``), killed with SIGKILL or
stopped with SIGSTOP in round 2. The bank's side is `train_run` in this process, reaching the
partner's round hand-off directly, as its ClientApp would relay it (the Flower hop adds nothing
to a resume: the ClientApp relays to whichever partner_node answers at its address).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from bank_node.config import BankNodeConfig, PartnerEndpoint
from bank_node.dataplane_client import error_from_rpc
from bank_node.resume import ResumePolicy
from bank_node.rounds import RunOutcome, train_run
from bank_node.run_journal import RunJournal, read_journal
from bank_node.training_config import TrainingConfig
from bank_node.training_set import BankTrainingSet, load_training_set
from cobrand.rounds_protocol import ModelPublication, PartnerStatus, RoundPlan, RunProgress
from cobrand.rounds_serde import (
    partner_manifest_from_proto,
    plan_to_proto,
    progress_from_proto,
    publication_to_proto,
    status_from_proto,
)
from cobrand.rpc import create_channel
from cobrand.v1 import rounds_pb2, rounds_pb2_grpc
from tests.conftest import ThrowAwayPki
from tests.training_sites import TrainingSites, write_training_sites

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
# Small batches: a round's pass lasts about half a second, long enough to be killed inside.
CONFIG = TrainingConfig(max_rounds=4, patience=4, batch_size=8, head_hidden=16, seed=3)
START_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 5.0


class HandOff:
    """The partner's control plane through its hand-off service; failures as the error tree."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub: Any = rounds_pb2_grpc.PartnerRoundsStub(channel)  # type: ignore[no-untyped-call]

    def status(self, run_id: str) -> PartnerStatus:
        request = rounds_pb2.GetStatusRequest(run_id=run_id)
        return status_from_proto(self._call(self._stub.GetStatus, request, "status"))

    def plan_round(self, plan: RoundPlan) -> RunProgress:
        reply = self._call(self._stub.PlanRound, plan_to_proto(plan), f"plan {plan.round}")
        return progress_from_proto(reply.run)

    def publish(self, publication: ModelPublication) -> bytes:
        request = publication_to_proto(publication)
        reply = self._call(self._stub.PublishModel, request, "publish")
        return partner_manifest_from_proto(reply, publication)

    @staticmethod
    def _call(method: Any, request: Any, what: str) -> Any:
        try:
            return method(request, timeout=30.0)
        except grpc.RpcError as err:
            raise error_from_rpc(err, what) from err


@dataclass
class PartnerProcess:
    """partner_node serving the training sites' partner side, restartable on its address."""

    work: Path
    sites: TrainingSites
    pki: ThrowAwayPki
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.sites.partner_node_config(self.pki.tls("partner")).model_copy(
            update={"listen": f"127.0.0.1:{self.port}"}
        )
        settings = self.work / "partner.yaml"
        document = config.model_dump(mode="json", by_alias=True, exclude_none=True)
        settings.write_text(yaml.safe_dump(document), encoding="utf-8")
        port_file = self.work / "partner.port"
        port_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "partner_node", "serve", "--config", str(settings)]
        with (self.work / "partner.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "--port-file", str(port_file)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists():
            assert self.process.poll() is None, (self.work / "partner.log").read_text()
            assert time.monotonic() < deadline, "partner_node did not serve in time"
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def kill(self) -> float:
        """SIGKILL the node; the wall-clock time of the kill."""
        killed = self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=30)
        return killed

    def signal(self, signum: int) -> float:
        """Send `signum` to the node; the wall-clock time it was sent."""
        assert self.process is not None
        sent = time.time()
        os.killpg(self.process.pid, signum)
        return sent

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            os.killpg(self.process.pid, signal.SIGCONT)
            self.process.wait(timeout=30)


@dataclass(frozen=True)
class Bank:
    """What the bank's run needs: its training set and channels to the partner's address."""

    training_set: BankTrainingSet
    hand_off: HandOff
    dataplane: grpc.Channel
    runs_dir: Path

    def run(self, run_id: str) -> RunOutcome:
        return train_run(
            run_id,
            lambda: self.training_set,
            self.hand_off,
            self.dataplane,
            CONFIG,
            RunJournal(self.runs_dir / f"{run_id}.jsonl"),
            runs_dir=self.runs_dir,
            models_dir=self.runs_dir.parent / "bank-models",
            reply_timeout=REPLY_TIMEOUT_S,
            resume=ResumePolicy(wait_s=90.0, first_retry_s=0.25, max_backoff_s=1.0),
        )


@pytest.fixture(scope="module")
def partner(
    tmp_path_factory: pytest.TempPathFactory, throwaway_pki: ThrowAwayPki
) -> Iterator[PartnerProcess]:
    work = tmp_path_factory.mktemp("resume")
    sites = write_training_sites(work, customers=4000, seed=21)
    node = PartnerProcess(work, sites, throwaway_pki)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def bank(partner: PartnerProcess, throwaway_pki: ThrowAwayPki) -> Iterator[Bank]:
    sites = partner.sites
    training_set = load_training_set(
        BankNodeConfig(
            federation=sites.files.federation,
            schema=sites.files.bank_schema,
            table=sites.files.bank_table,
            data_dir=sites.bank_data,
            partner=PartnerEndpoint(address=f"127.0.0.1:{partner.port}"),
            insecure=True,
        )
    )
    target = f"127.0.0.1:{partner.port}"
    with (
        create_channel(target, throwaway_pki.tls("partner")) as control,
        create_channel(target, throwaway_pki.tls("bank-trainer")) as dataplane,
    ):
        yield Bank(training_set, HandOff(control), dataplane, partner.work / "runs")


@dataclass(frozen=True)
class Interrupted:
    """A run interrupted once: its outcome, its two journal events, how soon it noticed."""

    outcome: RunOutcome
    interrupted: dict[str, Any]
    resumed: dict[str, Any]
    noticed_s: float


@pytest.fixture(scope="module")
def steady(bank: Bank) -> RunOutcome:
    """The run never interrupted that the others must end as."""
    return bank.run("steady")


def _interrupted_run(bank: Bank, run_id: str, interrupt: Callable[[], float]) -> Interrupted:
    """Run `run_id`, calling `interrupt` once round 2 is planned (streaming begins)."""
    journal = bank.runs_dir / f"{run_id}.jsonl"
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bank-run") as pool:
        running = pool.submit(bank.run, run_id)
        deadline = time.monotonic() + 120
        while not any(e["event"] == "planned" and e["round"] == 2 for e in read_journal(journal)):
            assert time.monotonic() < deadline, read_journal(journal)
            time.sleep(0.02)
        at = interrupt()
        outcome = running.result(timeout=120)
    events = read_journal(journal)
    names = [e["event"] for e in events]
    assert names.count("interrupted") == names.count("resumed") == 1, names
    assert names[-1] == "finished"
    interrupted = events[names.index("interrupted")]
    resumed = events[names.index("resumed")]
    noticed = dt.datetime.fromisoformat(interrupted["at"]).timestamp() - at
    print(
        f"\n{run_id}: noticed {noticed:.3f} s after the partner was hit "
        f"({interrupted['reason']}); resumed {resumed['waited_seconds']:.1f} s later"
        f"\ntest AUC risk: resumed {outcome.training.test['risk']['auc']:.6f}"
    )
    return Interrupted(outcome, interrupted, resumed, noticed)


def _assert_same_run(resumed: RunOutcome, steady: RunOutcome) -> None:
    # Both sides restored weights, optimizer state, generators and early stopping, and each
    # party seeds its dropout per round and epoch in its own process: round 2 trained again
    # ends exactly where it ended in the run never interrupted, and so does the run. The
    # tolerance on test AUC is therefore zero, far inside its noise (a standard error of about
    # 0.01 on these test rows).
    assert resumed.checkpoints == steady.checkpoints
    assert resumed.model == steady.model
    assert resumed.training.test == steady.training.test


def test_a_partner_killed_mid_round_and_restarted_lets_the_run_resume_and_end_the_same(
    partner: PartnerProcess, bank: Bank, steady: RunOutcome
) -> None:
    def kill_and_restart() -> float:
        killed_at = partner.kill()
        partner.start()  # same data directory, same address
        return killed_at

    run = _interrupted_run(bank, "killed", kill_and_restart)

    assert run.interrupted["round"] == 2
    assert "partner data plane is unavailable in round 2" in run.interrupted["reason"]
    assert run.noticed_s < 1.0, "a killed partner breaks the data-plane stream at once"
    assert (run.resumed["from_round"], run.resumed["round"]) == (1, 2)
    _assert_same_run(run.outcome, steady)
    kept = {p.name for p in (partner.sites.partner_data / "runs" / "killed").iterdir()}
    assert f"round-{run.outcome.training.best_round}.pt" in kept
    assert f"round-{CONFIG.max_rounds}.pt" in kept


def test_a_partner_frozen_mid_round_is_noticed_after_the_reply_timeout_and_resumed_when_thawed(
    partner: PartnerProcess, bank: Bank, steady: RunOutcome
) -> None:
    def freeze_then_thaw() -> float:
        frozen_at = partner.signal(signal.SIGSTOP)
        # Thawed once the bank has given up on the stream (its reply timeout is 5 s).
        threading.Timer(REPLY_TIMEOUT_S + 1.0, partner.signal, (signal.SIGCONT,)).start()
        return frozen_at

    run = _interrupted_run(bank, "frozen", freeze_then_thaw)

    assert run.interrupted["round"] == 2
    assert "sent nothing for 5 s in round 2" in run.interrupted["reason"]
    assert REPLY_TIMEOUT_S - 0.1 < run.noticed_s < REPLY_TIMEOUT_S + 1.5
    assert (run.resumed["from_round"], run.resumed["round"]) == (1, 2)
    _assert_same_run(run.outcome, steady)
