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
import enum
import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.func import functional_call

from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.preprocess import Encoded
from cobrand.split_model import BottomModel, BottomSpec
from cobrand.weights import weights_digest
from partner_node.run_checkpoints import RunCheckpoints

__all__ = ["PartnerTrainer", "PassKind", "PassSummary", "Restore", "TrainerPass"]

_LOG = logging.getLogger(__name__)

# A reply must fit the data plane's message limit (16 MiB): 65,536 rows of 64 float32.
MAX_BATCH_ROWS = 65_536


class PassKind(enum.Enum):
    """What a pass over aligned rows does at the partner."""

    TRAIN = "train"
    EMBED = "embed"


@dataclass(frozen=True)
class PassSummary:
    """What a pass that ended cleanly did.

    Attributes
    ----------
    run_id : str
    round : int
    kind : PassKind
    steps : int
        Batches embedded.
    rows : int
        Rows over all batches.
    gradients_applied : int
    weights_sha256 : bytes
        `cobrand.weights.weights_digest` of the weights the pass ended with.
    """

    run_id: str
    round: int
    kind: PassKind
    steps: int
    rows: int
    gradients_applied: int
    weights_sha256: bytes


@dataclass(frozen=True)
class _Checkpoint:
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


@dataclass(frozen=True)
class _Plan:
    round: int
    learning_rate: float
    epochs: int


@dataclass(frozen=True)
class Restore:
    """Where a restarted partner's trainer continues a run: a committed round's checkpoint.

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


@dataclass(frozen=True)
class _Pending:
    """A forward pass awaiting its gradient, with the weights that produced it."""

    step: int
    output: torch.Tensor
    weights: dict[str, torch.Tensor]


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
        self._files = checkpoints
        self._checkpoints = {0: self._checkpoint()}
        # The digest of every completed round, also of those whose weights were dropped.
        self._history = [weights_digest(self._checkpoints[0].weights)]
        self._planned: _Plan | None = None
        self._epochs_done = 0
        self._busy = threading.Lock()
        if checkpoints is None:
            return
        if restore is None:
            checkpoints.keep_only(set())
            checkpoints.write(0, *self._saved(0))
        else:
            self._restore(checkpoints, restore)

    @property
    def completed_rounds(self) -> int:
        """The last round that ended cleanly (0 before any)."""
        return len(self._history) - 1

    @property
    def history(self) -> tuple[bytes, ...]:
        """The checkpoint digests of rounds 0 to the last completed."""
        return tuple(self._history)

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
            previous_sha256 is None or round_number > following or previous not in self._checkpoints
        ):
            raise FailedPrecondition(
                f"run {self.run_id!r}: cannot plan round {round_number}; the partner completed "
                f"round {following - 1}, so the next round is {following}"
            )
        if previous_sha256 is not None and self._history[previous] != previous_sha256:
            raise FailedPrecondition(
                f"run {self.run_id!r}: the partner's checkpoint of round {previous} is "
                f"{self._history[previous].hex()[:12]}, the plan continues from "
                f"{previous_sha256.hex()[:12]}"
            )
        if not np.isfinite(learning_rate) or learning_rate <= 0:
            raise InvalidRequest(f"learning rate must be positive and finite, got {learning_rate}")
        if epochs < 1:
            raise InvalidRequest(f"epochs must be at least 1, got {epochs}")
        if round_number != following:
            self._roll_back_to(previous)
        if best_round is not None:
            self._keep_only({previous - 1, previous, best_round})
        self._planned = _Plan(round_number, learning_rate, epochs)
        self._epochs_done = 0

    def round_digest(self, round_number: int) -> bytes:
        """`weights_digest` of the weights a completed round ended with."""
        if not 0 <= round_number <= self.completed_rounds:
            raise FailedPrecondition(
                f"run {self.run_id!r}: round {round_number} has not completed at the partner "
                f"(completed: {self.completed_rounds})"
            )
        return self._history[round_number]

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
            self._checkpoint_of(round_number)
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
                opened = TrainerPass(self, round_number, kind)
                yield opened
            finished = opened.finished
        finally:
            if kind is PassKind.TRAIN and not finished:
                self._rollback()
            self._busy.release()

    # --- used by TrainerPass ---------------------------------------------------------------

    def _checkpoint(self) -> _Checkpoint:
        weights = {name: t.detach().clone() for name, t in self._bottom.state_dict().items()}
        return _Checkpoint(weights, copy.deepcopy(self._optimizer.state_dict()))

    def _checkpoint_of(self, round_number: int) -> _Checkpoint:
        if round_number not in self._checkpoints:
            self.round_digest(round_number)  # names a round not completed
            raise FailedPrecondition(
                f"run {self.run_id!r}: the partner no longer keeps round {round_number}'s "
                f"weights (kept: {sorted(self._checkpoints)})"
            )
        return self._checkpoints[round_number]

    def _load(self, checkpoint: _Checkpoint) -> None:
        self._bottom.load_state_dict(checkpoint.weights)
        self._optimizer.load_state_dict(copy.deepcopy(checkpoint.optimizer))

    def _rollback(self) -> None:
        self._load(self._checkpoints[self.completed_rounds])
        self._epochs_done = 0
        _LOG.warning(
            "[PartnerTrainer] training pass did not finish; weights rolled back to round %d",
            self.completed_rounds,
        )

    def _roll_back_to(self, round_number: int) -> None:
        dropped = self.completed_rounds
        self._load(self._checkpoints[round_number])
        del self._history[round_number + 1 :]
        self._keep_only(set(self._checkpoints) - set(range(round_number + 1, dropped + 1)))
        _LOG.warning(
            "[PartnerTrainer] run %s: rounds %d to %d were not committed; rolled back to round %d",
            self.run_id,
            round_number + 1,
            dropped,
            round_number,
        )

    def _keep_only(self, rounds: set[int]) -> None:
        for round_number in set(self._checkpoints) - rounds:
            del self._checkpoints[round_number]
        if self._files is not None:
            self._files.keep_only(rounds)

    def _saved(self, round_number: int) -> tuple[Any, Any, tuple[bytes, ...]]:
        checkpoint = self._checkpoints[round_number]
        return checkpoint.weights, checkpoint.optimizer, tuple(self._history[: round_number + 1])

    def _restore(self, files: RunCheckpoints, restore: Restore) -> None:
        saved = files.read(restore.round, restore.sha256)
        self._history = list(saved.history)
        self._checkpoints = {restore.round: _Checkpoint(saved.weights, saved.optimizer)}
        self._load(self._checkpoints[restore.round])
        if restore.best_round != restore.round:
            best = files.read(restore.best_round, saved.history[restore.best_round])
            self._checkpoints[restore.best_round] = _Checkpoint(best.weights, best.optimizer)
        _LOG.warning(
            "[PartnerTrainer] run %s restored from its checkpoint of round %d",
            self.run_id,
            restore.round,
        )

    def _pass_trained(self, round_number: int) -> bytes:
        """A training pass ended cleanly: its weights' digest; the last pass completes the round."""
        planned = self._planned
        assert planned is not None
        assert planned.round == round_number
        self._epochs_done += 1
        if self._epochs_done < planned.epochs:
            return weights_digest(self._bottom.state_dict())
        checkpoint = self._checkpoint()
        digest = weights_digest(checkpoint.weights)
        if self._files is not None:
            # On disk before the summary reports the digest: whatever the bank commits survives.
            history = (*self._history, digest)
            self._files.write(round_number, checkpoint.weights, checkpoint.optimizer, history)
        self._checkpoints[round_number] = checkpoint
        self._history.append(digest)
        self._planned = None
        self._epochs_done = 0
        return digest


class TrainerPass:
    """One open pass: embed batches in step order and, when training, apply their gradients.

    Obtained from `PartnerTrainer.open_pass`; used from one thread.
    """

    def __init__(self, trainer: PartnerTrainer, round_number: int, kind: PassKind) -> None:
        self._trainer = trainer
        self._round = round_number
        self._kind = kind
        self._next_step = 0
        self._rows = 0
        self._applied = 0
        self._pending: deque[_Pending] = deque()
        self._stash: dict[str, torch.Tensor] | None = None
        self.finished = False
        bottom = trainer._bottom
        if kind is PassKind.TRAIN:
            bottom.train()
            assert trainer._planned is not None  # open_pass checked the round is planned
            for group in trainer._optimizer.param_groups:
                group["lr"] = trainer._planned.learning_rate
        else:
            bottom.eval()
            self._frozen = trainer._checkpoint_of(round_number).weights

    def embed(self, step: int, positions: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Embeddings of the rows at `positions` (already range-checked), shape (n, width).

        Raises
        ------
        InvalidRequest
            `step` is not the next step, or the batch is too large.
        FailedPrecondition
            Too many batches await their gradient, or the bottom produced a non-finite value.
        """
        if step != self._next_step:
            raise InvalidRequest(
                f"batch of step {step}: the next step of this pass is {self._next_step}"
            )
        if len(positions) > MAX_BATCH_ROWS:
            raise InvalidRequest(
                f"batch of step {step}: {len(positions)} rows; at most {MAX_BATCH_ROWS} per batch"
            )
        if len(self._pending) >= self._trainer.max_pending_steps:
            raise FailedPrecondition(
                f"batch of step {step}: {len(self._pending)} embeddings already await their "
                f"gradient; the partner accepts at most {self._trainer.max_pending_steps} in flight"
            )
        index = torch.from_numpy(positions)
        inputs = (self._trainer._numeric[index], self._trainer._categorical[index])
        bottom = self._trainer._bottom
        if self._kind is PassKind.TRAIN:
            if self._stash is None:
                # Leaf copies of the current weights: later optimizer steps leave them intact.
                self._stash = {
                    name: p.detach().clone().requires_grad_()
                    for name, p in bottom.named_parameters()
                }
            output = functional_call(bottom, self._stash, inputs)
            self._pending.append(_Pending(step, output, self._stash))
        else:
            with torch.no_grad():
                output = functional_call(bottom, self._frozen, inputs)
        values: npt.NDArray[np.float32] = output.detach().numpy()
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            raise FailedPrecondition(
                f"batch of step {step}: the partner bottom produced a non-finite embedding for "
                f"row {int(np.flatnonzero(~finite)[0])}; its weights have diverged"
            )
        self._next_step += 1
        self._rows += len(positions)
        return values

    def apply_gradient(self, step: int, gradient: npt.NDArray[np.float32]) -> None:
        """Back-propagate `gradient` (d loss / d embedding of `step`) and take one optimizer step.

        Raises
        ------
        InvalidRequest
            An embedding pass, a step not the oldest awaiting its gradient, or a gradient whose
            shape differs from that step's embedding. (Finiteness is checked on unpacking.)
        """
        if self._kind is not PassKind.TRAIN:
            raise InvalidRequest(f"gradient of step {step}: an embedding pass takes no gradients")
        if not self._pending or self._pending[0].step != step:
            awaiting = [p.step for p in self._pending]
            raise InvalidRequest(
                f"gradient of step {step}: gradients come in step order; awaiting "
                f"{awaiting[0] if awaiting else 'none'}"
            )
        pending = self._pending[0]
        if gradient.shape != tuple(pending.output.shape):
            raise InvalidRequest(
                f"gradient of step {step} is {gradient.shape[0]} x {gradient.shape[1]}; the "
                f"embedding of that step was {pending.output.shape[0]} x {pending.output.shape[1]}"
            )
        self._pending.popleft()
        names = list(pending.weights)
        grads = torch.autograd.grad(
            pending.output,
            [pending.weights[name] for name in names],
            grad_outputs=torch.from_numpy(gradient),
            allow_unused=True,
        )
        live = dict(self._trainer._bottom.named_parameters())
        for name, grad in zip(names, grads, strict=True):
            live[name].grad = grad
        self._trainer._optimizer.step()
        self._stash = None
        self._applied += 1

    def finish(self) -> PassSummary:
        """End the pass; the round's last training pass completes the round.

        Raises
        ------
        FailedPrecondition
            A training pass ends with embeddings still awaiting their gradient.
        """
        trainer = self._trainer
        if self._pending:
            raise FailedPrecondition(
                f"round {self._round}: the pass ended with steps "
                f"{[p.step for p in self._pending]} awaiting their gradient; round rolled back"
            )
        if self._kind is PassKind.TRAIN:
            digest = trainer._pass_trained(self._round)
        else:
            digest = trainer.round_digest(self._round)
        self.finished = True
        _LOG.info(
            "[PartnerTrainer] %s pass of round %d: %d steps, %d rows",
            self._kind.value,
            self._round,
            self._next_step,
            self._rows,
        )
        return PassSummary(
            run_id=trainer.run_id,
            round=self._round,
            kind=self._kind,
            steps=self._next_step,
            rows=self._rows,
            gradients_applied=self._applied,
            weights_sha256=digest,
        )
