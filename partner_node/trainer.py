"""The partner's side of split-learning training: its bottom model over its aligned rows.

A `PartnerTrainer` holds one training run: the partner's encoded features in aligned-position
order (row i is aligned position i, the same customer as the bank's row i), its `BottomModel`
and optimizer, and the weights each completed round ended with. It knows nothing of gRPC; the
data-plane service decodes messages and calls it. Nothing here reads labels: the partner learns
only from the gradients the bank sends for its embeddings.

Rounds. The control plane plans each round (`plan_round`) before the bank streams it: its
learning rate and its number of training passes (epochs); a pass names its round and the trainer
refuses one it was not told about. The round completes when its last pass ends cleanly: its
weights and Adam's state are kept in memory and, given `RunCheckpoints`, written to disk before
the pass's summary reports their digest. A training pass that does not finish cleanly (stream
broken, bad gradient, bank gone) rolls the weights and the optimizer back to the end of the
previous round, so the round is retried from its start. Embedding passes use the weights of a
completed round the trainer keeps, so the bank can evaluate the round it chose (early stopping)
while training moved on.

Resuming. A plan that names the checkpoint it continues from may plan again a round the trainer
completed but the bank never committed (the partner rolls back to the named round), and a
trainer built with `Restore` continues a run from its checkpoint files after a restart. Each plan
that names the best round so far lets the trainer drop every checkpoint a resume can no longer
need, in memory and on disk.

Staleness. The bank may ask for the next batch before it returns the gradient of the previous
one (pipelining, `max_pending_steps` > 1). Backward through a cached graph fails once the
optimizer has changed the weights that produced it, so each forward pass runs on a stashed copy
of the weights of that moment (weight stashing, as in PipeDream): a gradient is always
back-propagated through the weights that produced its embedding, then applied to the current
weights. With one batch in flight (synchronous) the current weights are those weights and the
update is exact; with two in flight it is one optimizer step stale.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.preprocess import Encoded
from cobrand.split_model import BottomModel, BottomSpec
from cobrand.weights import weights_digest
from partner_node.run_checkpoints import CompletedRounds, Restore, RoundState, RunCheckpoints
from partner_node.trainer_pass import PassKind, TrainerPass

__all__ = ["PartnerTrainer"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    round: int
    learning_rate: float
    epochs: int


def _stream_seed(seed: int, round_number: int, epoch: int) -> int:
    # The bank seeds its side of each pass the same way (bank_node.trainer).
    return int(np.random.SeedSequence([seed, round_number, epoch]).generate_state(1)[0])


class PartnerTrainer:
    """One training run of the partner's bottom model.

    Parameters
    ----------
    run_id : str
        The run the control plane started; passes must name it.
    features : Encoded
        The partner's encoded features, row i being aligned position i.
    spec : BottomSpec
        The partner bottom's shape (from its preprocessor).
    seed : int
        Seeds the initial weights and dropout.
    max_pending_steps : int
        How many embedded batches may await their gradient (the pipeline depth the partner
        accepts); bounds the graphs the partner keeps.
    busy_wait : float
        Seconds a new pass waits for the previous one to end before it is refused.
    checkpoints : RunCheckpoints, optional
        Where each completed round is written; without it rounds are kept in memory only.
    restore : Restore, optional
        Continue the run from `checkpoints` instead of starting it (a fresh start clears them
        and writes round 0).

    Raises
    ------
    FailedPrecondition
        Restoring from a checkpoint that is missing, damaged or not the one named.
    """

    def __init__(
        self,
        run_id: str,
        features: Encoded,
        spec: BottomSpec,
        *,
        seed: int = 0,
        max_pending_steps: int = 4,
        busy_wait: float = 2.0,
        checkpoints: RunCheckpoints | None = None,
        restore: Restore | None = None,
    ) -> None:
        if len(features.numeric) != len(features.categorical):
            raise InvalidRequest(
                f"partner features disagree on the aligned rows: {len(features.numeric)} "
                f"numeric, {len(features.categorical)} categorical"
            )
        if max_pending_steps < 1:
            raise InvalidRequest(f"max_pending_steps must be at least 1, got {max_pending_steps}")
        self.run_id = run_id
        self.rows = len(features.numeric)
        self.embedding_width = spec.embedding_width
        self.max_pending_steps = max_pending_steps
        self.busy_wait = busy_wait
        self._seed = seed
        self._numeric = torch.from_numpy(features.numeric)
        self._categorical = torch.from_numpy(features.categorical)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._bottom = BottomModel(spec)
        self._optimizer = torch.optim.Adam(self._bottom.parameters())
        self._rounds = CompletedRounds(run_id, self._state(), checkpoints, restore)
        self._planned: _Plan | None = None
        self._epochs_done = 0
        self._busy = threading.Lock()
        if restore is not None:
            self._load(self._rounds.state(restore.round))
            _LOG.warning(
                "[PartnerTrainer] run %s restored from its checkpoint of round %d",
                run_id,
                restore.round,
            )

    @property
    def completed_rounds(self) -> int:
        """The last round that ended cleanly (0 before any)."""
        return self._rounds.last

    @property
    def history(self) -> tuple[bytes, ...]:
        """The checkpoint digests of rounds 0 to the last completed."""
        return self._rounds.history

    def plan_round(
        self,
        round_number: int,
        *,
        learning_rate: float,
        epochs: int = 1,
        previous_sha256: bytes | None = None,
        best_round: int | None = None,
    ) -> None:
        """Accept a round's plan from the control plane (again to change it).

        Parameters
        ----------
        round_number : int
            The round after the last completed one or, with `previous_sha256`, any round whose
            previous round's checkpoint the trainer keeps (later rounds are rolled back).
        learning_rate : float
        epochs : int
            Training passes in the round.
        previous_sha256 : bytes, optional
            The digest round ``round_number - 1`` must have.
        best_round : int, optional
            The best round so far: every checkpoint but it and the last two rounds before
            `round_number` is dropped (the bank commits ``round_number - 1`` when this plan is
            answered, so the one before may still be resumed from).

        Raises
        ------
        FailedPrecondition
            A round the trainer cannot continue to, or a previous round with another digest.
        InvalidRequest
            The learning rate is not positive and finite, or epochs below 1.
        """
        following = self.completed_rounds + 1
        previous = round_number - 1
        if round_number != following and (
            previous_sha256 is None or round_number > following or not self._rounds.holds(previous)
        ):
            raise FailedPrecondition(
                f"run {self.run_id!r}: cannot plan round {round_number}; the partner completed "
                f"round {following - 1}, so the next round is {following}"
            )
        held = self._rounds.digest(previous)
        if previous_sha256 is not None and held != previous_sha256:
            raise FailedPrecondition(
                f"run {self.run_id!r}: the partner's checkpoint of round {previous} is "
                f"{held.hex()[:12]}, the plan continues from {previous_sha256.hex()[:12]}"
            )
        if not np.isfinite(learning_rate) or learning_rate <= 0:
            raise InvalidRequest(f"learning rate must be positive and finite, got {learning_rate}")
        if epochs < 1:
            raise InvalidRequest(f"epochs must be at least 1, got {epochs}")
        if round_number != following:
            self._load(self._rounds.roll_back_to(previous))
            _LOG.warning(
                "[PartnerTrainer] run %s: rounds after %d were not committed; rolled back to it",
                self.run_id,
                previous,
            )
        if best_round is not None:
            self._rounds.keep_only({previous - 1, previous, best_round})
        self._planned = _Plan(round_number, learning_rate, epochs)
        self._epochs_done = 0

    def round_digest(self, round_number: int) -> bytes:
        """`weights_digest` of the weights a completed round ended with."""
        return self._rounds.digest(round_number)

    def round_weights(self, round_number: int) -> Mapping[str, torch.Tensor]:
        """The bottom's weights a completed round ended with (to publish; not to be changed).

        Raises
        ------
        FailedPrecondition
            The round has not completed, or its weights are no longer kept.
        """
        return self._rounds.state(round_number).weights

    @contextmanager
    def open_pass(self, run_id: str, round_number: int, kind: PassKind) -> Iterator[TrainerPass]:
        """Run one pass; on leaving without `TrainerPass.finish`, a training pass is undone.

        Raises
        ------
        FailedPrecondition
            Another run, a round not planned (TRAIN) or not completed (EMBED), or another pass
            already streaming.
        """
        if run_id != self.run_id:
            raise FailedPrecondition(
                f"unknown run {run_id!r}: the partner is training run {self.run_id!r}"
            )
        planned = self._planned
        if kind is PassKind.TRAIN and (planned is None or planned.round != round_number):
            raise FailedPrecondition(
                f"run {run_id!r}: round {round_number} is not planned at the partner "
                f"(completed: {self.completed_rounds}, planned: "
                f"{planned.round if planned else 'none'})"
            )
        if kind is PassKind.EMBED:
            self._rounds.state(round_number)
        # A pass the bank just abandoned may still be winding down (its stream's cancellation
        # reaches this process a moment later), so a prompt retry waits briefly for it.
        if not self._busy.acquire(timeout=self.busy_wait):
            raise FailedPrecondition(f"run {run_id!r}: another pass is already streaming")
        finished = False
        try:
            # Dropout draws from torch's process-wide generator, seeded here from the run's seed
            # and the round: a retried round draws the same masks (when no other thread of the
            # process draws meanwhile, as when the bank trainer shares it in tests).
            with torch.random.fork_rng(devices=[]):
                epoch = self._epochs_done if kind is PassKind.TRAIN else 0
                torch.manual_seed(_stream_seed(self._seed, round_number, epoch))
                opened = self._pass(round_number, kind)
                yield opened
            finished = opened.finished
        finally:
            if kind is PassKind.TRAIN and not finished:
                self._rollback()
            self._busy.release()

    # --- used by TrainerPass ---------------------------------------------------------------

    def _pass(self, round_number: int, kind: PassKind) -> TrainerPass:
        train = kind is PassKind.TRAIN
        self._bottom.train(train)
        if train:
            assert self._planned is not None  # open_pass checked the round is planned
            for group in self._optimizer.param_groups:
                group["lr"] = self._planned.learning_rate
        return TrainerPass(
            run_id=self.run_id,
            round_number=round_number,
            kind=kind,
            bottom=self._bottom,
            features=(self._numeric, self._categorical),
            max_pending_steps=self.max_pending_steps,
            optimizer=self._optimizer if train else None,
            frozen=None if train else self._rounds.state(round_number).weights,
            finish=(
                (lambda: self._pass_trained(round_number))
                if train
                else (lambda: self.round_digest(round_number))
            ),
        )

    def _state(self) -> RoundState:
        weights = {name: t.detach().clone() for name, t in self._bottom.state_dict().items()}
        return RoundState(weights, copy.deepcopy(self._optimizer.state_dict()))

    def _load(self, state: RoundState) -> None:
        self._bottom.load_state_dict(state.weights)
        self._optimizer.load_state_dict(copy.deepcopy(state.optimizer))

    def _rollback(self) -> None:
        self._load(self._rounds.state(self.completed_rounds))
        self._epochs_done = 0
        _LOG.warning(
            "[PartnerTrainer] training pass did not finish; weights rolled back to round %d",
            self.completed_rounds,
        )

    def _pass_trained(self, round_number: int) -> bytes:
        """A training pass ended cleanly: its weights' digest; the last pass completes the round."""
        planned = self._planned
        assert planned is not None
        assert planned.round == round_number
        self._epochs_done += 1
        if self._epochs_done < planned.epochs:
            return weights_digest(self._bottom.state_dict())
        digest = self._rounds.commit(self._state())
        self._planned = None
        self._epochs_done = 0
        return digest
