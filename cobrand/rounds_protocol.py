"""The round hand-off's plain types: what the bank's control plane and partner_node exchange.

The wire form is ``rounds.proto`` (``PartnerRounds``), converted by ``cobrand.rounds_serde``;
the bank's ServerApp sends these through Flower, the partner's ClientApp relays them to
partner_node. Both sides compare `AlignmentVersion`s before a run's first round, and the bank
compares `RunProgress.checkpoints` with what its data-plane passes reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cobrand.alignment_store import AlignmentSummary
from cobrand.errors import InvalidRequest

__all__ = ["AlignmentVersion", "PartnerStatus", "RoundPlan", "RunProgress"]


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
        1 starts the run.
    seed : int
        The run's seed (the partner's initial weights and dropout).
    learning_rate : float
    """

    run_id: str
    round: int
    seed: int
    learning_rate: float

    def __post_init__(self) -> None:
        if not self.run_id:
            raise InvalidRequest("round plan: run_id is empty")
        if self.round < 1:
            raise InvalidRequest(f"round plan of run {self.run_id!r}: round must be at least 1")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise InvalidRequest(
                f"round plan of run {self.run_id!r}: learning_rate must be positive and "
                f"finite, got {self.learning_rate}"
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
