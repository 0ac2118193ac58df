"""A partner restarted mid-run resumes it from its checkpoint files; several epochs per round.

Each "node" here is a real mutual-TLS loopback server holding a fresh `TrainingRuns` over the same
runs directory: stopping one and starting another is what a partner_node restart leaves behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cobrand.errors import FailedPrecondition
from cobrand.rounds_protocol import RoundPlan, RunProgress
from cobrand.rounds_serde import plan_to_proto, progress_from_proto, status_from_proto
from cobrand.rpc import create_channel, create_server
from cobrand.v1 import rounds_pb2, rounds_pb2_grpc
from partner_node.dataplane_service import ALLOWED_ROLES, DataPlaneService
from partner_node.rounds_service import ROUNDS_ROLES, rounds_service
from partner_node.training_runs import PartnerTrainingSet, TrainingRuns, TrainingSetSource
from tests.conftest import ThrowAwayPki
from tests.partner_node.test_rounds_service import TIMEOUT, _refusal, _train_pass, _training_set


@dataclass
class Node:
    """A running partner: its hand-off stub (ClientApp role) and the bank trainer's channel."""

    rounds: Any
    dataplane: grpc.Channel

    def plan(self, plan: RoundPlan) -> RunProgress:
        return progress_from_proto(self.rounds.PlanRound(plan_to_proto(plan), timeout=TIMEOUT).run)

    def progress(self, run: str) -> RunProgress | None:
        request = rounds_pb2.GetStatusRequest(run_id=run)
        return status_from_proto(self.rounds.GetStatus(request, timeout=TIMEOUT)).run

    def train(self, run: str, round_number: int) -> bytes:
        return _train_pass(self.dataplane, run, round_number).weights_sha256


@contextmanager
def _node(
    pki: ThrowAwayPki, runs_dir: Path, source: TrainingSetSource = _training_set
) -> Iterator[Node]:
    dataplane = DataPlaneService()
    runs = TrainingRuns(source, dataplane, runs_dir=runs_dir)
    server, port = create_server(
        [dataplane.adder(), rounds_service(runs)],
        "127.0.0.1:0",
        pki.tls("partner"),
        allowed_roles={**ALLOWED_ROLES, **ROUNDS_ROLES},
    )
    server.start()
    try:
        with (
            create_channel(f"127.0.0.1:{port}", pki.tls("partner")) as control,
            create_channel(f"127.0.0.1:{port}", pki.tls("bank-trainer")) as trainer,
        ):
            yield Node(rounds_pb2_grpc.PartnerRoundsStub(control), trainer)  # type: ignore[no-untyped-call]
    finally:
        server.stop(None)


def _plan(run: str, round_number: int, previous: bytes = b"", **fields: Any) -> RoundPlan:
    return RoundPlan(run, round_number, 3, 1e-2, previous_sha256=previous, **fields)


def _two_rounds(node: Node, run: str) -> tuple[bytes, ...]:
    """Rounds 1 and 2 of `run`, as the bank plans and streams them; every digest so far."""
    initial = node.plan(_plan(run, 1)).checkpoints[0]
    first = node.train(run, 1)
    node.plan(_plan(run, 2, first, best_round=1))
    second = node.train(run, 2)
    return initial, first, second


def test_a_restarted_partner_restores_the_named_checkpoint_and_trains_on_identically(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path / "steady") as steady:
        digests = _two_rounds(steady, "run-r")
        steady.plan(_plan("run-r", 3, digests[2], best_round=1))
        uninterrupted = steady.train("run-r", 3)

    with _node(throwaway_pki, tmp_path / "runs") as before:
        assert _two_rounds(before, "run-r") == digests
    with _node(throwaway_pki, tmp_path / "runs") as restarted:
        progress = restarted.plan(_plan("run-r", 3, digests[2], best_round=1))
        resumed = restarted.train("run-r", 3)

    assert progress.checkpoints == digests
    assert progress.planned_round == 3
    assert resumed == uninterrupted


def test_a_round_trained_but_not_committed_is_planned_again_and_rolled_back(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path) as node:
        initial, first, second = _two_rounds(node, "run-b")
        # The bank never committed round 2 (its reply was lost): it plans round 2 again.
        again = node.plan(_plan("run-b", 2, first, best_round=1))
        retrained = node.train("run-b", 2)

    assert again.checkpoints == (initial, first)
    assert retrained == second


def test_a_restarted_partner_missing_the_named_checkpoint_refuses_naming_the_file(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path) as before:
        _, first, _ = _two_rounds(before, "run-m")
    (tmp_path / "run-m" / "round-2.pt").unlink()

    with _node(throwaway_pki, tmp_path) as restarted:
        refused = _refusal(
            restarted.rounds.PlanRound, plan_to_proto(_plan("run-m", 3, first, best_round=1))
        )

    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "run-m/round-2.pt: no checkpoint of round 2" in refused.details()


def test_a_checkpoint_other_than_the_bank_committed_is_refused_naming_the_file(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path) as before:
        _, first, _ = _two_rounds(before, "run-x")

    with _node(throwaway_pki, tmp_path) as restarted:
        # Round 2's file holds `second`; the plan says round 2 ended with `first`.
        refused = _refusal(
            restarted.rounds.PlanRound, plan_to_proto(_plan("run-x", 3, first, best_round=1))
        )

    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "run-x/round-2.pt: holds checkpoint" in refused.details()
    assert "was committed" in refused.details()


def test_a_partner_restarted_on_another_alignment_refuses_to_resume(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path) as before:
        _, _, second = _two_rounds(before, "run-a")

    def realigned() -> PartnerTrainingSet:
        held = _training_set()
        alignment = dataclasses.replace(held.alignment, run_id="alignment-2")
        return dataclasses.replace(held, alignment=alignment)

    with _node(throwaway_pki, tmp_path, realigned) as restarted:
        refused = _refusal(
            restarted.rounds.PlanRound, plan_to_proto(_plan("run-a", 3, second, best_round=1))
        )

    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "run-a/round-2.pt: the run was trained on another alignment" in refused.details()


def test_the_partner_keeps_only_the_checkpoints_a_resume_can_need(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    run = "run-k"
    with _node(throwaway_pki, tmp_path) as node:
        previous = node.plan(_plan(run, 1)).checkpoints[0]
        for round_number in range(1, 5):
            if round_number > 1:
                node.plan(_plan(run, round_number, previous, best_round=1))
            previous = node.train(run, round_number)

    # Planning round 4 (best round 1) left rounds 1, 2 (the bank commits 3 when that plan is
    # answered) and 3; round 4 was written since.
    assert sorted(p.name for p in (tmp_path / run).iterdir()) == [
        "round-1.pt", "round-2.pt", "round-3.pt", "round-4.pt",
    ]  # fmt: skip


def test_a_round_of_several_epochs_completes_with_its_last_pass(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path) as node:
        node.plan(_plan("run-e", 1, epochs=2))
        after_first = node.train("run-e", 1)
        midway = node.progress("run-e")
        after_second = node.train("run-e", 1)
        done = node.plan(_plan("run-e", 2, after_second, best_round=1))
        with pytest.raises(FailedPrecondition, match="round 1 is not planned"):
            node.train("run-e", 1)

    assert midway is not None
    assert (midway.completed_rounds, midway.planned_round) == (0, 1)
    assert after_first != after_second
    assert done.checkpoints[1] == after_second
