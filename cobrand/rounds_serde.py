"""Conversions between the round hand-off's wire messages (``cobrand.v1.rounds_pb2``) and the
plain types of ``cobrand.rounds_protocol``, in pairs: ``x_to_proto`` and ``x_from_proto``.

The bank's ServerApp and partner_node's servicer both use them, so each side encodes exactly
what the other decodes. Decoding refuses what the plain types cannot hold with `InvalidRequest`.
"""

from __future__ import annotations

from cobrand.errors import InvalidRequest
from cobrand.rounds_protocol import (
    DIGEST_BYTES,
    AlignmentVersion,
    PartnerStatus,
    RoundPlan,
    RunProgress,
)
from cobrand.v1 import rounds_pb2

__all__ = [
    "plan_from_proto",
    "plan_to_proto",
    "progress_from_proto",
    "progress_to_proto",
    "status_from_proto",
    "status_to_proto",
]


def plan_to_proto(plan: RoundPlan) -> rounds_pb2.PlanRoundRequest:
    """Encode a round plan."""
    return rounds_pb2.PlanRoundRequest(
        run_id=plan.run_id,
        round=plan.round,
        seed=plan.seed,
        learning_rate=plan.learning_rate,
        epochs=plan.epochs,
        previous_sha256=plan.previous_sha256,
        best_round=plan.best_round,
    )


def plan_from_proto(message: rounds_pb2.PlanRoundRequest) -> RoundPlan:
    """Decode a round plan (its rules are checked by `RoundPlan`)."""
    return RoundPlan(
        run_id=message.run_id,
        round=message.round,
        seed=message.seed,
        learning_rate=message.learning_rate,
        epochs=message.epochs,
        previous_sha256=message.previous_sha256,
        best_round=message.best_round,
    )


def progress_to_proto(progress: RunProgress) -> rounds_pb2.RunProgress:
    """Encode a run's progress."""
    return rounds_pb2.RunProgress(
        run_id=progress.run_id,
        checkpoint_sha256=list(progress.checkpoints),
        planned_round=progress.planned_round,
    )


def progress_from_proto(message: rounds_pb2.RunProgress) -> RunProgress:
    """Decode a run's progress: at least round 0's checkpoint, each a SHA-256 digest."""
    if not message.checkpoint_sha256:
        raise InvalidRequest(f"progress of run {message.run_id!r} has no round-0 checkpoint")
    for round_number, digest in enumerate(message.checkpoint_sha256):
        _check_digest(digest, f"checkpoint of round {round_number}")
    return RunProgress(
        run_id=message.run_id,
        checkpoints=tuple(message.checkpoint_sha256),
        planned_round=message.planned_round,
    )


def status_to_proto(status: PartnerStatus) -> rounds_pb2.GetStatusResponse:
    """Encode the partner's status."""
    alignment = status.alignment
    reply = rounds_pb2.GetStatusResponse(
        alignment=rounds_pb2.AlignmentVersion(
            run_id=alignment.run_id,
            federation_sha256=alignment.federation_sha256,
            intersection_sha256=alignment.intersection_sha256,
            intersection_size=alignment.intersection_size,
        ),
        preprocessor_sha256=status.preprocessor_sha256,
        embedding_width=status.embedding_width,
    )
    if status.run is not None:
        reply.run.CopyFrom(progress_to_proto(status.run))
    return reply


def status_from_proto(message: rounds_pb2.GetStatusResponse) -> PartnerStatus:
    """Decode the partner's status."""
    alignment = message.alignment
    _check_digest(alignment.federation_sha256, "federation digest")
    _check_digest(alignment.intersection_sha256, "intersection digest")
    _check_digest(message.preprocessor_sha256, "preprocessor digest")
    if message.embedding_width < 1:
        raise InvalidRequest("partner status: embedding_width must be at least 1")
    return PartnerStatus(
        alignment=AlignmentVersion(
            run_id=alignment.run_id,
            federation_sha256=alignment.federation_sha256,
            intersection_sha256=alignment.intersection_sha256,
            intersection_size=alignment.intersection_size,
        ),
        preprocessor_sha256=message.preprocessor_sha256,
        embedding_width=message.embedding_width,
        run=progress_from_proto(message.run) if message.HasField("run") else None,
    )


def _check_digest(value: bytes, what: str) -> None:
    if len(value) != DIGEST_BYTES:
        raise InvalidRequest(f"{what} is {len(value)} bytes; a SHA-256 digest is {DIGEST_BYTES}")
