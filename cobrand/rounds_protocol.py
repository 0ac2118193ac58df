"""The round hand-off's plain types: what the bank's control plane and partner_node exchange.

The wire form is ``rounds.proto`` (``PartnerRounds``), converted by ``cobrand.rounds_serde``;
the bank's ServerApp sends these through Flower, the partner's ClientApp relays them to
partner_node. Both sides compare `AlignmentVersion`s before a run's first round, and the bank
compares `RunProgress.checkpoints` with what its data-plane passes reported. After the run, the
bank saves its half of the model version it keeps and asks the partner to save its own half
(`ModelPublication`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cobrand.alignment_store import AlignmentSummary
from cobrand.errors import InvalidRequest
from cobrand.model_manifest import ModelDigests

__all__ = [
    "DIGEST_BYTES",
    "AlignmentVersion",
    "ModelPublication",
    "PartnerStatus",
    "RoundPlan",
    "RunProgress",
]

DIGEST_BYTES = 32
"""Length of every checkpoint, alignment and preprocessor digest (SHA-256)."""


@dataclass(frozen=True)
class AlignmentVersion:
    """Which alignment result a side holds; equal at both sides of one alignment run.

    Attributes
    ----------
    run_id : str
        The alignment run.
    federation_sha256 : bytes
    intersection_sha256 : bytes
    intersection_size : int
    """

    run_id: str
    federation_sha256: bytes
    intersection_sha256: bytes
    intersection_size: int

    @classmethod
    def of(cls, summary: AlignmentSummary) -> AlignmentVersion:
        """The version of a committed alignment result."""
        return cls(
            run_id=summary.run_id,
            federation_sha256=summary.federation_digest,
            intersection_sha256=summary.intersection_digest,
            intersection_size=summary.intersection_size,
        )

    def differences(self, other: AlignmentVersion) -> list[str]:
        """Names of the fields that differ from `other` (empty when the same)."""
        return [
            name
            for name in ("run_id", "federation_sha256", "intersection_sha256", "intersection_size")
            if getattr(self, name) != getattr(other, name)
        ]


@dataclass(frozen=True)
class RoundPlan:
    """One round of a training run, as the bank plans it at the partner.

    Attributes
    ----------
    run_id : str
    round : int
        1 starts the run; a later round continues from round ``round - 1``'s checkpoint.
    seed : int
        The run's seed (the partner's initial weights and dropout).
    learning_rate : float
    epochs : int
        Training passes in the round; the round completes with the last.
    previous_sha256 : bytes
        The partner's checkpoint digest of round ``round - 1``, the weights the round starts
        from (restored from the partner's checkpoint file after a restart); empty only for
        round 1 of a run starting afresh.
    best_round : int
        The round whose weights are the best so far, whose checkpoint the partner keeps.
    """

    run_id: str
    round: int
    seed: int
    learning_rate: float
    epochs: int = 1
    previous_sha256: bytes = b""
    best_round: int = 0

    def __post_init__(self) -> None:
        what = f"round plan of run {self.run_id!r}"
        if not self.run_id:
            raise InvalidRequest("round plan: run_id is empty")
        if self.round < 1:
            raise InvalidRequest(f"{what}: round must be at least 1")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise InvalidRequest(
                f"{what}: learning_rate must be positive and finite, got {self.learning_rate}"
            )
        if self.epochs < 1:
            raise InvalidRequest(f"{what}: epochs must be at least 1, got {self.epochs}")
        if len(self.previous_sha256) not in (
            (0, DIGEST_BYTES) if self.round == 1 else (DIGEST_BYTES,)
        ):
            raise InvalidRequest(
                f"{what}: previous_sha256 must be a {DIGEST_BYTES}-byte digest of round "
                f"{self.round - 1}'s checkpoint, got {len(self.previous_sha256)} bytes"
            )
        if not 0 <= self.best_round < self.round:
            raise InvalidRequest(
                f"{what}: best_round {self.best_round} is not a round before {self.round}"
            )


@dataclass(frozen=True)
class RunProgress:
    """How far a run has come at the partner.

    Attributes
    ----------
    run_id : str
    checkpoints : tuple of bytes
        The weights digest of rounds 0 (initial weights) to the last completed round.
    planned_round : int
        The round planned and not yet completed, 0 if none.
    """

    run_id: str
    checkpoints: tuple[bytes, ...]
    planned_round: int = 0

    @property
    def completed_rounds(self) -> int:
        """The last round completed (0: none yet)."""
        return len(self.checkpoints) - 1


@dataclass(frozen=True)
class PartnerStatus:
    """What the partner holds before (and after) a run.

    Attributes
    ----------
    alignment : AlignmentVersion
    preprocessor_sha256 : bytes
        The version of the partner's feature pipeline.
    embedding_width : int
        Width of the partner bottom's embedding.
    run : RunProgress, optional
        The run asked about, if the partner holds it.
    """

    alignment: AlignmentVersion
    preprocessor_sha256: bytes
    embedding_width: int
    run: RunProgress | None


@dataclass(frozen=True)
class ModelPublication:
    """The bank's request that the partner save its half of the model version the bank saved.

    Attributes
    ----------
    run_id : str
        The training run whose round the version holds.
    round : int
        The round the bank chose (its best), whose partner weights the version holds.
    version_id : str
        The version's id, ``digests.version_id``.
    digests : ModelDigests
        The digests the bank's manifest names: its weights, the partner's weights of `round`
        and the partner's preprocessing.
    bank_manifest_sha256 : bytes
        The bank's ``manifest_digest`` of the version (32 bytes), for the partner to record.
    """

    run_id: str
    round: int
    version_id: str
    digests: ModelDigests
    bank_manifest_sha256: bytes

    def __post_init__(self) -> None:
        what = f"model publication of run {self.run_id!r}"
        if not self.run_id:
            raise InvalidRequest("model publication: run_id is empty")
        if self.round < 0:
            raise InvalidRequest(f"{what}: round must not be negative, got {self.round}")
        if self.version_id != self.digests.version_id:
            raise InvalidRequest(
                f"{what}: version_id {self.version_id!r} is not the id of the digests it names "
                f"({self.digests.version_id})"
            )
        if len(self.bank_manifest_sha256) != DIGEST_BYTES:
            raise InvalidRequest(
                f"{what}: bank_manifest_sha256 is {len(self.bank_manifest_sha256)} bytes; a "
                f"SHA-256 digest is {DIGEST_BYTES}"
            )
