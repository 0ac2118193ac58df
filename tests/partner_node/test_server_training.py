"""The partner node started from its settings serves training beside alignment: its ClientApp
plans a round on its current alignment, the bank's trainer streams it, each with its own role."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from bank_node.dataplane_client import DataPlaneClient
from cobrand.alignment_store import AlignmentStore
from cobrand.rounds_protocol import RoundPlan
from cobrand.rounds_serde import plan_to_proto, progress_from_proto, status_from_proto
from cobrand.rpc import create_channel
from cobrand.v1 import rounds_pb2, rounds_pb2_grpc
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.training_sites import TrainingSites, running_partner, write_training_sites


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=600, seed=6)


@pytest.fixture(scope="module")
def node(throwaway_pki: ThrowAwayPki, sites: TrainingSites) -> Iterator[PartnerNode]:
    with running_partner(throwaway_pki, sites) as started:
        yield started


def test_a_round_planned_through_the_node_is_streamed_on_its_current_alignment(
    throwaway_pki: ThrowAwayPki, sites: TrainingSites, node: PartnerNode
) -> None:
    target = f"127.0.0.1:{node.port}"
    with (
        create_channel(target, throwaway_pki.tls("partner")) as client_app,
        create_channel(target, throwaway_pki.tls("bank-trainer")) as trainer,
    ):
        rounds: Any = rounds_pb2_grpc.PartnerRoundsStub(client_app)  # type: ignore[no-untyped-call]
        status = status_from_proto(rounds.GetStatus(rounds_pb2.GetStatusRequest(run_id="r1")))
        plan = plan_to_proto(RoundPlan("r1", 1, seed=0, learning_rate=1e-3))
        rounds.PlanRound(plan, timeout=10.0)
        client = DataPlaneClient(trainer, run_id="r1", embedding_width=status.embedding_width)
        with client.open_pass(1, train=True) as stream:
            stream.send(positions=np.arange(sites.intersection))
            stream.send(gradient=np.zeros_like(stream.receive()))
            summary = stream.close()
        after = progress_from_proto(
            rounds.PlanRound(
                plan_to_proto(RoundPlan("r1", 2, 0, 1e-3, previous_sha256=summary.weights_sha256)),
                timeout=10.0,
            ).run
        )

    with AlignmentStore(sites.partner_data) as store:
        assert status.alignment.intersection_sha256 == store.summary.intersection_digest
    assert summary.rows == sites.intersection
    assert after.checkpoints[1] == summary.weights_sha256
    # Both rounds' checkpoints are on disk, under the node's data directory.
    kept = sorted(p.name for p in (sites.partner_data / "runs" / "r1").iterdir())
    assert kept == ["round-0.pt", "round-1.pt"]


@pytest.mark.parametrize(
    ("holder", "method"),
    [
        ("partner", "/cobrand.v1.AlignmentService/OpenAlignment"),
        ("bank", "/cobrand.v1.PartnerRounds/GetStatus"),
        ("bank-trainer", "/cobrand.v1.PartnerRounds/PlanRound"),
    ],
)
def test_each_service_of_the_node_is_open_to_its_own_role_only(
    throwaway_pki: ThrowAwayPki, node: PartnerNode, holder: str, method: str
) -> None:
    with create_channel(f"127.0.0.1:{node.port}", throwaway_pki.tls(holder)) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=10.0)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
