"""The partner's round hand-off over gRPC (``PartnerRounds``): decode, call `TrainingRuns`, encode.

Its one caller is the partner's own Flower ClientApp, which relays the bank's control-plane
messages: every method is open to role ``partner`` alone (`ROUNDS_ROLES`, enforced by the
interceptor of ``cobrand.rpc.create_server``), so neither the bank's node nor its trainer can
plan rounds here directly. A run id that cannot name a checkpoint directory is refused first,
naming it (``INVALID_ARGUMENT``).
"""

from __future__ import annotations

import grpc

from cobrand.checkpoint_files import check_run_id
from cobrand.pki import Role
from cobrand.rounds_serde import (
    partner_manifest_to_proto,
    plan_from_proto,
    progress_to_proto,
    publication_from_proto,
    status_to_proto,
)
from cobrand.rpc import ServicerAdder, service_roles
from cobrand.v1 import rounds_pb2, rounds_pb2_grpc
from partner_node.training_runs import TrainingRuns

__all__ = ["ROUNDS_ROLES", "PartnerRoundsServicer", "rounds_service"]

ROUNDS_ROLES = service_roles(
    rounds_pb2.DESCRIPTOR.services_by_name["PartnerRounds"], frozenset({Role.PARTNER})
)
"""Who may call each PartnerRounds method: the partner's own ClientApp (role ``partner``)."""


class PartnerRoundsServicer(rounds_pb2_grpc.PartnerRoundsServicer):
    """Serves one node's `TrainingRuns`."""

    def __init__(self, runs: TrainingRuns) -> None:
        self._runs = runs

    def GetStatus(  # noqa: N802 -- the generated servicer's method name
        self, request: rounds_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> rounds_pb2.GetStatusResponse:
        return status_to_proto(self._runs.status(request.run_id))

    def PlanRound(  # noqa: N802
        self, request: rounds_pb2.PlanRoundRequest, context: grpc.ServicerContext
    ) -> rounds_pb2.PlanRoundResponse:
        # First: every later refusal quotes the run id, which must be a short name to quote.
        check_run_id(request.run_id)
        progress = self._runs.plan_round(plan_from_proto(request))
        return rounds_pb2.PlanRoundResponse(run=progress_to_proto(progress))

    def PublishModel(  # noqa: N802
        self, request: rounds_pb2.PublishModelRequest, context: grpc.ServicerContext
    ) -> rounds_pb2.PublishModelResponse:
        check_run_id(request.run_id)
        publication = publication_from_proto(request)
        digest = self._runs.publish(publication)
        return partner_manifest_to_proto(publication.version_id, digest)


def rounds_service(runs: TrainingRuns) -> ServicerAdder:
    """Register PartnerRounds for `runs` on a server (for ``create_server``)."""
    servicer = PartnerRoundsServicer(runs)

    def add(server: grpc.Server) -> None:
        # The generated *_pb2_grpc modules come without type annotations.
        rounds_pb2_grpc.add_PartnerRoundsServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

    return add
