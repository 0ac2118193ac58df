"""The round hand-off (``PartnerRounds``) on a real mutual-TLS loopback partner server, beside the
data plane it opens rounds on: the partner's ClientApp role plans, the bank's trainer streams."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from bank_node.dataplane_client import DataPlaneClient, PartnerPassSummary
from cobrand.errors import FailedPrecondition
from cobrand.model_manifest import ModelDigests
from cobrand.rounds_protocol import AlignmentVersion, ModelPublication, RoundPlan
from cobrand.rounds_serde import (
    plan_to_proto,
    progress_from_proto,
    publication_to_proto,
    status_from_proto,
)
from cobrand.rpc import create_channel, create_server
from cobrand.split_model import BottomSpec
from cobrand.v1 import rounds_pb2, rounds_pb2_grpc
from partner_node.dataplane_service import ALLOWED_ROLES, DataPlaneService
from partner_node.rounds_service import ROUNDS_ROLES, rounds_service
from partner_node.training_runs import PartnerTrainingSet, TrainingRuns
from tests.conftest import ThrowAwayPki
from tests.model_parts import fitted_table

ROWS, WIDTH, TIMEOUT = 60, 4, 10.0
TABLE, PREPROCESSOR = fitted_table("partner", rows=ROWS, seed=4)
ALIGNMENT = AlignmentVersion(
    run_id="alignment-1",
    federation_sha256=hashlib.sha256(b"federation").digest(),
    intersection_sha256=hashlib.sha256(b"intersection").digest(),
    intersection_size=ROWS,
)


def _training_set() -> PartnerTrainingSet:
    return PartnerTrainingSet(
        alignment=ALIGNMENT,
        features=PREPROCESSOR.transform(TABLE),
        spec=BottomSpec.from_preprocessor(PREPROCESSOR, embedding_width=WIDTH),
        preprocessor=PREPROCESSOR,
    )


@pytest.fixture(scope="module")
def port(throwaway_pki: ThrowAwayPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One partner server with both services, as partner_node serves them."""
    dataplane = DataPlaneService()
    runs = TrainingRuns(_training_set, dataplane, runs_dir=tmp_path_factory.mktemp("runs"))
    server, bound = create_server(
        [dataplane.adder(), rounds_service(runs)],
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
        allowed_roles={**ALLOWED_ROLES, **ROUNDS_ROLES},
    )
    server.start()
    yield bound
    server.stop(None)


def _channel(pki: ThrowAwayPki, port: int, holder: str) -> grpc.Channel:
    return create_channel(f"127.0.0.1:{port}", pki.tls(holder))


@pytest.fixture(scope="module")
def rounds(throwaway_pki: ThrowAwayPki, port: int) -> Iterator[rounds_pb2_grpc.PartnerRoundsStub]:
    """The stub the partner's ClientApp uses (a partner-role certificate)."""
    with _channel(throwaway_pki, port, "partner") as channel:
        yield rounds_pb2_grpc.PartnerRoundsStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def bank_channel(throwaway_pki: ThrowAwayPki, port: int) -> Iterator[grpc.Channel]:
    with _channel(throwaway_pki, port, "bank-trainer") as channel:
        yield channel


def _plan(stub: Any, run: str, round_number: int, seed: int = 3) -> Any:
    """Plan a round as the bank does: continuing from the previous round's checkpoint."""
    previous = b""
    if round_number > 1:
        held = status_from_proto(stub.GetStatus(rounds_pb2.GetStatusRequest(run_id=run))).run
        assert held is not None
        previous = held.checkpoints[round_number - 1]
    request = plan_to_proto(RoundPlan(run, round_number, seed, 1e-2, previous_sha256=previous))
    return progress_from_proto(stub.PlanRound(request, timeout=TIMEOUT).run)


def _train_pass(channel: grpc.Channel, run: str, round_number: int) -> PartnerPassSummary:
    """The bank's training pass of a round: two synchronous batches with their gradients."""
    client = DataPlaneClient(channel, run_id=run, embedding_width=WIDTH)
    with client.open_pass(round_number, train=True) as stream:
        for batch in (np.arange(0, 30), np.arange(30, ROWS)):
            stream.send(positions=batch)
            stream.send(gradient=np.full_like(stream.receive(), 0.05))
        return stream.close()


def test_planned_rounds_are_trained_over_the_data_plane_and_their_checkpoints_reported(
    rounds: Any, bank_channel: grpc.Channel
) -> None:
    started = _plan(rounds, "run-a", 1)
    first = _train_pass(bank_channel, "run-a", 1)
    planned = _plan(rounds, "run-a", 2)

    assert started.completed_rounds == 0
    assert started.planned_round == 1
    assert planned.completed_rounds == 1
    assert planned.planned_round == 2
    assert planned.checkpoints[0] == started.checkpoints[0]
    # The partner reports through the control plane the checkpoint its data plane reported.
    assert planned.checkpoints[1] == first.weights_sha256
    assert planned.checkpoints[1] != planned.checkpoints[0]


def _refusal(call: Any, request: Any) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT)
    return caught.value


def test_status_names_the_alignment_the_bottom_width_and_the_runs_progress(rounds: Any) -> None:
    _plan(rounds, "run-s", 1)

    held = status_from_proto(rounds.GetStatus(rounds_pb2.GetStatusRequest(run_id="run-s")))
    other = status_from_proto(rounds.GetStatus(rounds_pb2.GetStatusRequest(run_id="run-x")))

    assert held.alignment == ALIGNMENT
    assert held.preprocessor_sha256 == PREPROCESSOR.digest()
    assert held.embedding_width == WIDTH
    assert held.run is not None
    assert (held.run.completed_rounds, held.run.planned_round) == (0, 1)
    assert other.run is None


def test_the_bank_cannot_stream_a_round_before_the_control_plane_planned_it(
    rounds: Any, bank_channel: grpc.Channel
) -> None:
    _plan(rounds, "run-b", 1)

    with pytest.raises(FailedPrecondition, match="round 2 is not planned"):
        _train_pass(bank_channel, "run-b", 2)
    with pytest.raises(FailedPrecondition, match="unknown run 'run-other'"):
        _train_pass(bank_channel, "run-other", 1)


def test_a_round_that_does_not_follow_the_last_completed_one_is_refused(rounds: Any) -> None:
    _plan(rounds, "run-c", 1)

    digest = bytes(32)
    skipped = _refusal(
        rounds.PlanRound, plan_to_proto(RoundPlan("run-c", 3, 3, 1e-2, previous_sha256=digest))
    )
    unknown = _refusal(
        rounds.PlanRound,
        plan_to_proto(RoundPlan("run-never", 2, 3, 1e-2, previous_sha256=digest)),
    )

    assert skipped.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot plan round 3" in skipped.details()
    assert unknown.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "run-never/round-1.pt: no checkpoint of round 1" in unknown.details()


def test_a_later_round_naming_another_seed_is_refused(
    rounds: Any, bank_channel: grpc.Channel
) -> None:
    _plan(rounds, "run-d", 1, seed=3)
    _train_pass(bank_channel, "run-d", 1)

    later = RoundPlan("run-d", 2, 9, 1e-2, previous_sha256=bytes(32))
    refused = _refusal(rounds.PlanRound, plan_to_proto(later))

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "started with seed 3" in refused.details()


@pytest.mark.parametrize("learning_rate", [0.0, -1.0, float("nan"), float("inf")])
def test_a_plan_with_a_learning_rate_that_is_not_positive_and_finite_is_refused(
    rounds: Any, learning_rate: float
) -> None:
    request = rounds_pb2.PlanRoundRequest(
        run_id="run-e", round=1, seed=1, learning_rate=learning_rate
    )

    refused = _refusal(rounds.PlanRound, request)

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "learning_rate must be positive and finite" in refused.details()


def test_an_interrupted_round_is_rolled_back_and_streams_again_as_if_never_started(
    rounds: Any, bank_channel: grpc.Channel
) -> None:
    _plan(rounds, "run-uninterrupted", 1)
    uninterrupted = _train_pass(bank_channel, "run-uninterrupted", 1)
    _plan(rounds, "run-f", 1)
    client = DataPlaneClient(bank_channel, run_id="run-f", embedding_width=WIDTH)
    with client.open_pass(1, train=True) as stream:
        stream.send(positions=np.arange(10))
        stream.send(gradient=np.full_like(stream.receive(), 0.05))
        # Leaving without close() cancels the pass, as a stopped bank process does.

    interrupted = status_from_proto(rounds.GetStatus(rounds_pb2.GetStatusRequest(run_id="run-f")))
    retried = _train_pass(bank_channel, "run-f", 1)

    assert interrupted.run is not None
    assert (interrupted.run.completed_rounds, interrupted.run.planned_round) == (0, 1)
    # Same seed, same plan: the retry ends exactly where a run never interrupted ends.
    assert retried.weights_sha256 == uninterrupted.weights_sha256


def test_round_one_of_a_new_run_replaces_the_previous_run(
    rounds: Any, bank_channel: grpc.Channel
) -> None:
    _plan(rounds, "run-g", 1)
    _plan(rounds, "run-h", 1)

    old = status_from_proto(rounds.GetStatus(rounds_pb2.GetStatusRequest(run_id="run-g")))

    assert old.run is None
    with pytest.raises(FailedPrecondition, match="unknown run 'run-g'"):
        _train_pass(bank_channel, "run-g", 1)
    assert _train_pass(bank_channel, "run-h", 1).round == 1


@pytest.mark.parametrize("holder", ["bank", "bank-trainer", "partner-app"])
def test_only_the_partners_own_client_app_role_may_plan_rounds_or_publish(
    throwaway_pki: ThrowAwayPki, port: int, holder: str
) -> None:
    with _channel(throwaway_pki, port, holder) as channel:
        stub: Any = rounds_pb2_grpc.PartnerRoundsStub(channel)  # type: ignore[no-untyped-call]
        plan = _refusal(stub.PlanRound, plan_to_proto(RoundPlan("run-i", 1, 1, 1e-2)))
        status = _refusal(stub.GetStatus, rounds_pb2.GetStatusRequest(run_id="run-i"))
        digests = ModelDigests.of(
            bank_weights=bytes(32), partner_weights=bytes(32), partner_preprocessor=bytes(32)
        )
        publication = ModelPublication("run-i", 1, digests.version_id, digests, bytes(32))
        publish = _refusal(stub.PublishModel, publication_to_proto(publication))

    assert plan.code() == grpc.StatusCode.PERMISSION_DENIED
    assert status.code() == grpc.StatusCode.PERMISSION_DENIED
    assert publish.code() == grpc.StatusCode.PERMISSION_DENIED
