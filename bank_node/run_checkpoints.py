"""The bank's durable round checkpoints of one training run, under its runs directory.

`RunCheckpoints` is the `RoundKeeper` of a run the ServerApp drives: each round's `BankState`
goes to ``<runs_dir>/<run id>/round-<n>.pt`` (``cobrand.checkpoint_files``: weights, Adam's
state, and as extras the generator's state and the early-stopping figures) the moment the round
is trained, before the partner's confirmation commits it, so a committed round is always on
disk. Reading a round (the best one, for the final evaluation) or restoring one (going back to
it after the partner was lost) reads its file back and checks it holds the weights written then.

Only what a resume can need is kept: the last committed round, the best round so far (its
weights are the model if the run stops), and the rounds trained since the last commit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bank_node.round_state import BankState, EarlyStopping
from bank_node.trainer import RoundResult
from cobrand.checkpoint_files import CheckpointDir, RoundCheckpoint, run_directory

__all__ = ["RunCheckpoints"]


class RunCheckpoints:
    """Keeps a run's round states on disk.

    Parameters
    ----------
    runs_dir : Path
        The trainer's runs directory.
    run_id : str
    on_trained : callable
        Told of each round trained, with the digest of the bank's weights at its end.
    last_committed : callable
        The last round the run committed (-1 before round 0 is).
    """

    def __init__(
        self,
        runs_dir: Path,
        run_id: str,
        *,
        on_trained: Callable[[RoundResult, bytes], None],
        last_committed: Callable[[], int],
    ) -> None:
        self.files = CheckpointDir(run_directory(runs_dir, run_id))
        self._on_trained = on_trained
        self._last_committed = last_committed
        self._digests: dict[int, bytes] = {}
        self.best_round = 0

    def keep(self, state: BankState, result: RoundResult | None) -> None:
        """Write `state` durably, then report the round trained."""
        if state.round == 0:
            self.files.keep_only(set())
        extra = {
            "generator": state.generator,
            "best_round": state.stopping.best_round,
            "best_loss": state.stopping.best_loss,
        }
        checkpoint = RoundCheckpoint(state.round, state.weights, state.optimizer, extra)
        digest = self.files.write(checkpoint)
        self._digests[state.round] = digest
        self.best_round = state.stopping.best_round
        if result is not None:
            self._on_trained(result, digest)
        self.prune()

    def prune(self) -> None:
        """Delete every checkpoint but the last committed, the best and those not committed."""
        committed = self._last_committed()
        self.files.keep_only(
            {committed, self.best_round} | {r for r in self._digests if r > committed}
        )

    def read(self, round_number: int) -> BankState:
        """Round `round_number`'s state, read back from its file; every round's digest stays
        kept, so a later restore still checks what it reads.

        Raises
        ------
        FailedPrecondition
            Naming the file: missing, damaged, or holding other weights than were written.
        """
        checkpoint = self.files.read(round_number, self._digests.get(round_number))
        extra = checkpoint.extra
        generator = extra["generator"]
        assert isinstance(generator, torch.Tensor)
        return BankState(
            round=checkpoint.round,
            weights=dict(checkpoint.weights),
            optimizer=dict(checkpoint.optimizer),
            generator=generator,
            stopping=EarlyStopping(int(extra["best_round"]), float(extra["best_loss"])),
        )

    def restore(self, round_number: int) -> BankState:
        """Go back to round `round_number`: its state (`read`), and the rounds after it
        forgotten, since they will be trained again and written anew.

        Raises
        ------
        FailedPrecondition
            Naming the file: missing, damaged, or holding other weights than were written.
        """
        state = self.read(round_number)
        self.best_round = state.stopping.best_round
        self._digests = {r: d for r, d in self._digests.items() if r <= round_number}
        return state
