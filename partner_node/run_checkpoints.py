"""The rounds a partner's training run completed: in memory, and durable under its data directory.

`CompletedRounds` is the trainer's record of its run: every completed round's digest and the
states (weights and Adam's) a resume or an evaluation may still need.

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
from cobrand.weights import weights_digest

__all__ = ["CompletedRounds", "Restore", "RoundState", "RunCheckpoints", "SavedRound"]


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


@dataclass(frozen=True)
class RoundState:
    """The partner bottom's weights and Adam's state at the end of a round."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


@dataclass(frozen=True)
class Restore:
    """Where a restarted partner continues a run: a committed round's checkpoint.

    Attributes
    ----------
    round : int
        The round whose checkpoint the run continues from.
    sha256 : bytes
        Its weights digest, as the bank committed it.
    best_round : int
        The best round so far, whose checkpoint is restored too (for the bank's evaluation).
    """

    round: int
    sha256: bytes
    best_round: int


class CompletedRounds:
    """The rounds a run completed at the partner: each one's digest, and the states still kept,
    in memory and (given `RunCheckpoints`) on disk.

    Parameters
    ----------
    run_id : str
    initial : RoundState
        Round 0, the initial weights.
    files : RunCheckpoints, optional
        Where each round is also written; a fresh run clears them and writes round 0.
    restore : Restore, optional
        Continue from `files` instead: the rounds up to ``restore.round`` as they were.

    Raises
    ------
    FailedPrecondition
        Restoring from a checkpoint that is missing, damaged or not the one named.
    """

    def __init__(
        self,
        run_id: str,
        initial: RoundState,
        files: RunCheckpoints | None = None,
        restore: Restore | None = None,
    ) -> None:
        self._run_id = run_id
        self._files = files
        self._states = {0: initial}
        # The digest of every completed round, also of those whose state was dropped.
        self._history = [weights_digest(initial.weights)]
        if files is None:
            return
        if restore is None:
            files.keep_only(set())
            files.write(0, initial.weights, initial.optimizer, self.history)
            return
        saved = files.read(restore.round, restore.sha256)
        self._history = list(saved.history)
        self._states = {restore.round: RoundState(saved.weights, saved.optimizer)}
        if restore.best_round != restore.round:
            best = files.read(restore.best_round, saved.history[restore.best_round])
            self._states[restore.best_round] = RoundState(best.weights, best.optimizer)

    @property
    def last(self) -> int:
        """The last round completed (0 before any)."""
        return len(self._history) - 1

    @property
    def history(self) -> tuple[bytes, ...]:
        """The checkpoint digests of rounds 0 to the last completed."""
        return tuple(self._history)

    def holds(self, round_number: int) -> bool:
        """Whether round `round_number`'s state is kept."""
        return round_number in self._states

    def digest(self, round_number: int) -> bytes:
        """`weights_digest` of the weights a completed round ended with.

        Raises
        ------
        FailedPrecondition
            The round has not completed.
        """
        if not 0 <= round_number <= self.last:
            raise FailedPrecondition(
                f"run {self._run_id!r}: round {round_number} has not completed at the partner "
                f"(completed: {self.last})"
            )
        return self._history[round_number]

    def state(self, round_number: int) -> RoundState:
        """The state a completed round ended with.

        Raises
        ------
        FailedPrecondition
            The round has not completed, or its state is no longer kept.
        """
        self.digest(round_number)
        if round_number not in self._states:
            raise FailedPrecondition(
                f"run {self._run_id!r}: the partner no longer keeps round {round_number}'s "
                f"weights (kept: {sorted(self._states)})"
            )
        return self._states[round_number]

    def commit(self, state: RoundState) -> bytes:
        """Complete the next round with `state`, on disk first; returns its digest."""
        digest = weights_digest(state.weights)
        round_number = self.last + 1
        if self._files is not None:
            # On disk before the digest is reported: whatever the bank commits survives.
            history = (*self._history, digest)
            self._files.write(round_number, state.weights, state.optimizer, history)
        self._states[round_number] = state
        self._history.append(digest)
        return digest

    def roll_back_to(self, round_number: int) -> RoundState:
        """Forget the rounds after `round_number` (kept); its state, to continue from."""
        state = self.state(round_number)
        later = set(range(round_number + 1, self.last + 1))
        del self._history[round_number + 1 :]
        self.keep_only(set(self._states) - later)
        return state

    def keep_only(self, rounds: set[int]) -> None:
        """Drop every state but those of `rounds`, in memory and on disk."""
        for round_number in set(self._states) - rounds:
            del self._states[round_number]
        if self._files is not None:
            self._files.keep_only(rounds)
