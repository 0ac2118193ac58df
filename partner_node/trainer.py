"""The partner's side of split-learning training: its bottom model over its aligned rows.

A `PartnerTrainer` holds one training run: the partner's encoded features in aligned-position
order (row i is aligned position i, the same customer as the bank's row i), its `BottomModel`
and optimizer, and the weights each completed round ended with. It knows nothing of gRPC; the
data-plane service decodes messages and calls it. Nothing here reads labels: the partner learns
only from the gradients the bank sends for its embeddings.

Rounds. The control plane plans each round (`plan_round`) before the bank streams it; a pass
names its round and the trainer refuses one it was not told about. A training pass that does not
finish cleanly (stream broken, bad gradient, bank gone) rolls the weights and the optimizer back
to the end of the previous round, so a retried round starts from the same state. Embedding
passes use the weights of any completed round, so the bank can evaluate the round it chose
(early stopping) while training moved on.

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

__all__ = ["PartnerTrainer", "PassKind", "PassSummary", "TrainerPass"]

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
class _Pending:
    """A forward pass awaiting its gradient, with the weights that produced it."""

    step: int
    output: torch.Tensor
    weights: dict[str, torch.Tensor]


def _stream_seed(seed: int, round_number: int) -> int:
    return int(np.random.SeedSequence([seed, round_number]).generate_state(1)[0])


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
        self._checkpoints = {0: self._checkpoint()}
        self._planned: dict[int, float] = {}
        self._busy = threading.Lock()

    @property
    def completed_rounds(self) -> int:
        """The last round that ended cleanly (0 before any)."""
        return max(self._checkpoints)

    def plan_round(self, round_number: int, *, learning_rate: float) -> None:
        """Accept the next round's plan from the control plane (again to change it).

        Raises
        ------
        FailedPrecondition
            `round_number` is not the round after the last completed one.
        InvalidRequest
            The learning rate is not positive and finite.
        """
        following = self.completed_rounds + 1
        if round_number != following:
            raise FailedPrecondition(
                f"run {self.run_id!r}: cannot plan round {round_number}; the partner completed "
                f"round {following - 1}, so the next round is {following}"
            )
        if not np.isfinite(learning_rate) or learning_rate <= 0:
            raise InvalidRequest(f"learning rate must be positive and finite, got {learning_rate}")
        self._planned = {round_number: learning_rate}

    def round_digest(self, round_number: int) -> bytes:
        """`weights_digest` of the weights a completed round ended with."""
        return weights_digest(self._checkpoint_of(round_number).weights)

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
        if kind is PassKind.TRAIN and round_number not in self._planned:
            raise FailedPrecondition(
                f"run {run_id!r}: round {round_number} is not planned at the partner "
                f"(completed: {self.completed_rounds}, planned: {sorted(self._planned) or 'none'})"
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
                torch.manual_seed(_stream_seed(self._seed, round_number))
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
            raise FailedPrecondition(
                f"run {self.run_id!r}: round {round_number} has not completed at the partner "
                f"(completed: {self.completed_rounds})"
            )
        return self._checkpoints[round_number]

    def _rollback(self) -> None:
        last = self._checkpoints[self.completed_rounds]
        self._bottom.load_state_dict(last.weights)
        self._optimizer.load_state_dict(copy.deepcopy(last.optimizer))
        _LOG.warning(
            "[PartnerTrainer] training pass did not finish; weights rolled back to round %d",
            self.completed_rounds,
        )

    def _commit(self, round_number: int) -> bytes:
        self._checkpoints[round_number] = self._checkpoint()
        self._planned = {}
        return self.round_digest(round_number)


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
            for group in trainer._optimizer.param_groups:
                group["lr"] = trainer._planned[round_number]
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
        """End the pass; a training pass completes its round.

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
            digest = trainer._commit(self._round)
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
