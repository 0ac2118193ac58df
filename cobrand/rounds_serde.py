"""Conversions between the round hand-off's wire messages (``cobrand.v1.rounds_pb2``) and the
plain types of ``cobrand.rounds_protocol``, in pairs: ``x_to_proto`` and ``x_from_proto``.

The bank's ServerApp and partner_node's servicer both use them, so each side encodes exactly
what the other decodes. Decoding refuses what the plain types cannot hold with `InvalidRequest`.
"""

from __future__ import annotations

from cobrand.errors import InvalidRequest
from cobrand.model_manifest import ModelDigests, check_version_id
from cobrand.rounds_protocol import (
    DIGEST_BYTES,
    AlignmentVersion,
    ModelPublication,
    PartnerStatus,
    RoundPlan,
    RunProgress,
)
from cobrand.v1 import rounds_pb2

__all__ = [
    "partner_manifest_from_proto",
    "partner_manifest_to_proto",
    "plan_from_proto",
    "plan_to_proto",
    "progress_from_proto",
    "progress_to_proto",
    "publication_from_proto",
    "publication_to_proto",
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


def publication_to_proto(publication: ModelPublication) -> rounds_pb2.PublishModelRequest:
    """Encode a model publication."""
    digests = publication.digests
    return rounds_pb2.PublishModelRequest(
        run_id=publication.run_id,
        round=publication.round,
        version_id=publication.version_id,
        bank_weights_sha256=bytes.fromhex(digests.bank_weights_sha256),
        partner_weights_sha256=bytes.fromhex(digests.partner_weights_sha256),
        partner_preprocessor_sha256=bytes.fromhex(digests.partner_preprocessor_sha256),
        bank_manifest_sha256=publication.bank_manifest_sha256,
    )


def publication_from_proto(message: rounds_pb2.PublishModelRequest) -> ModelPublication:
    """Decode a model publication: every digest 32 bytes, a version id that is theirs."""
    what = f"model publication of run {message.run_id!r}"
    for field in (
        "bank_weights_sha256",
        "partner_weights_sha256",
        "partner_preprocessor_sha256",
        "bank_manifest_sha256",
    ):
        _check_digest(getattr(message, field), f"{what}: {field}")
    check_version_id(message.version_id, f"{what}: version_id")
    return ModelPublication(
        run_id=message.run_id,
        round=message.round,
        version_id=message.version_id,
        digests=ModelDigests.of(
            bank_weights=message.bank_weights_sha256,
            partner_weights=message.partner_weights_sha256,
            partner_preprocessor=message.partner_preprocessor_sha256,
        ),
        bank_manifest_sha256=message.bank_manifest_sha256,
    )


def partner_manifest_to_proto(
    version_id: str, manifest_sha256: bytes
) -> rounds_pb2.PublishModelResponse:
    """Encode the partner's reply to a publication: its manifest digest of the version."""
    return rounds_pb2.PublishModelResponse(
        version_id=version_id, partner_manifest_sha256=manifest_sha256
    )


def partner_manifest_from_proto(
    message: rounds_pb2.PublishModelResponse, publication: ModelPublication
) -> bytes:
    """Decode the partner's reply to `publication`: its manifest digest (32 bytes).

    Raises
    ------
    InvalidRequest
        The reply names another version, or its digest is not 32 bytes.
    """
    if message.version_id != publication.version_id:
        raise InvalidRequest(
            f"the partner answered the publication of model version {publication.version_id} "
            f"for version {message.version_id!r}"
        )
    _check_digest(
        message.partner_manifest_sha256,
        f"model version {publication.version_id}: partner_manifest_sha256",
    )
    return message.partner_manifest_sha256


def _check_digest(value: bytes, what: str) -> None:
    if len(value) != DIGEST_BYTES:
        raise InvalidRequest(f"{what} is {len(value)} bytes; a SHA-256 digest is {DIGEST_BYTES}")
