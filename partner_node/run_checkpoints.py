"""The partner's durable round checkpoints of one training run, under its data directory.

``<data_dir>/runs/<run id>/round-<n>.pt`` (``cobrand.checkpoint_files``) holds the partner
bottom's weights and Adam's state at the end of round n, the digests of every round up to n (so
a restored run reports the same progress as before) and what the run was trained on: the
alignment and the preprocessing. A run the partner restores after a restart must find the
checkpoint the bank names, holding those weights, trained on the alignment and preprocessing
the partner holds now; anything else is refused with `FailedPrecondition` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cobrand.checkpoint_files import CheckpointDir, RoundCheckpoint, run_directory
from cobrand.errors import FailedPrecondition

__all__ = ["RunCheckpoints", "SavedRound"]


@dataclass(frozen=True)
class SavedRound:
    """A round as the partner restores it.

    Attributes
    ----------
    weights : dict of str to Tensor
    optimizer : dict
        Adam's ``state_dict()``.
    history : tuple of bytes
        The checkpoint digests of rounds 0 to this one.
    """

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    history: tuple[bytes, ...]


class RunCheckpoints:
    """Checkpoint files of one run at the partner.

    Parameters
    ----------
    runs_dir : Path
        The partner's ``<data_dir>/runs``.
    run_id : str
    trained_on : dict of str to str
        What the run trains on (alignment and preprocessing versions), written into every file
        and required equal when one is restored.
    """

    def __init__(self, runs_dir: Path, run_id: str, trained_on: Mapping[str, str]) -> None:
        self.files = CheckpointDir(run_directory(runs_dir, run_id))
        self._trained_on = dict(trained_on)

    def write(
        self,
        round_number: int,
        weights: Mapping[str, torch.Tensor],
        optimizer: Mapping[str, Any],
        history: tuple[bytes, ...],
    ) -> None:
        """Write round `round_number`'s checkpoint durably (`history` ends with its digest)."""
        extra = {"history": [digest.hex() for digest in history], **self._trained_on}
        self.files.write(RoundCheckpoint(round_number, weights, optimizer, extra))

    def read(self, round_number: int, expected_sha256: bytes) -> SavedRound:
        """Round `round_number`'s checkpoint, which must hold `expected_sha256`.

        Raises
        ------
        FailedPrecondition
            Naming the file: missing, damaged, other weights, or written for another alignment
            or preprocessing than the partner holds now.
        """
        checkpoint = self.files.read(round_number, expected_sha256)
        path = self.files.path(round_number)
        extra = dict(checkpoint.extra)
        changed = [key for key, value in self._trained_on.items() if extra.get(key) != value]
        if changed:
            raise FailedPrecondition(
                f"{path}: the run was trained on another {' and '.join(changed)} than the "
                "partner holds now; start a new run"
            )
        history = tuple(bytes.fromhex(digest) for digest in extra["history"])
        if len(history) != round_number + 1 or history[-1] != expected_sha256:
            raise FailedPrecondition(f"{path}: its round history does not end with this round")
        return SavedRound(dict(checkpoint.weights), dict(checkpoint.optimizer), history)

    def keep_only(self, rounds: set[int]) -> None:
        """Delete the checkpoints of every round but `rounds`."""
        self.files.keep_only(rounds)
