"""One pass of the partner's bottom over aligned rows: embed batches, apply their gradients.

A `TrainerPass` is what ``partner_node.trainer.PartnerTrainer.open_pass`` hands the data plane for
one stream: a training pass embeds each batch and back-propagates the bank's gradient for it
through the weights that produced it (weight stashing, see ``partner_node.trainer``); an
embedding pass embeds with a completed round's weights and takes no gradients. Every step is
checked (order, size, the pipeline depth the partner accepts, finiteness) before it is done.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch.func import functional_call

from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.split_model import BottomModel

__all__ = ["MAX_BATCH_ROWS", "PassKind", "PassSummary", "TrainerPass"]

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
class _Pending:
    """A forward pass awaiting its gradient, with the weights that produced it."""

    step: int
    output: torch.Tensor
    weights: dict[str, torch.Tensor]


class TrainerPass:
    """One open pass: embed batches in step order and, when training, apply their gradients.

    Obtained from ``PartnerTrainer.open_pass``, which hands it the bottom in training mode with
    its optimizer (a training pass) or in evaluation mode with a completed round's weights (an
    embedding pass), and what completes the pass; used from one thread.

    Parameters
    ----------
    run_id : str
    round_number : int
    kind : PassKind
    bottom : BottomModel
    features : (Tensor, Tensor)
        The encoded numeric and categorical features, row i being aligned position i.
    max_pending_steps : int
        Embedded batches that may await their gradient.
    optimizer : Optimizer, optional
        The bottom's, set to the round's learning rate (a training pass).
    frozen : dict of str to Tensor, optional
        The weights an embedding pass uses.
    finish : callable
        Completes the pass at the trainer; returns the digest the summary reports.
    """

    def __init__(
        self,
        *,
        run_id: str,
        round_number: int,
        kind: PassKind,
        bottom: BottomModel,
        features: tuple[torch.Tensor, torch.Tensor],
        max_pending_steps: int,
        optimizer: torch.optim.Optimizer | None,
        frozen: dict[str, torch.Tensor] | None,
        finish: Callable[[], bytes],
    ) -> None:
        self._run_id = run_id
        self._round = round_number
        self._kind = kind
        self._bottom = bottom
        self._numeric, self._categorical = features
        self._max_pending_steps = max_pending_steps
        self._optimizer = optimizer
        self._frozen = frozen
        self._complete = finish
        self._next_step = 0
        self._rows = 0
        self._applied = 0
        self._pending: deque[_Pending] = deque()
        self._stash: dict[str, torch.Tensor] | None = None
        self.finished = False

    @property
    def awaiting_gradient(self) -> bool:
        """Whether embeddings handed out still await the bank's gradient."""
        return bool(self._pending)

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
        if len(self._pending) >= self._max_pending_steps:
            raise FailedPrecondition(
                f"batch of step {step}: {len(self._pending)} embeddings already await their "
                f"gradient; the partner accepts at most {self._max_pending_steps} in flight"
            )
        index = torch.from_numpy(positions)
        inputs = (self._numeric[index], self._categorical[index])
        bottom = self._bottom
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
            assert self._frozen is not None  # an embedding pass
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
        live = dict(self._bottom.named_parameters())
        for name, grad in zip(names, grads, strict=True):
            live[name].grad = grad
        assert self._optimizer is not None  # a training pass
        self._optimizer.step()
        self._stash = None
        self._applied += 1

    def finish(self) -> PassSummary:
        """End the pass; the round's last training pass completes the round.

        Raises
        ------
        FailedPrecondition
            A training pass ends with embeddings still awaiting their gradient.
        """
        if self._pending:
            raise FailedPrecondition(
                f"round {self._round}: the pass ended with steps "
                f"{[p.step for p in self._pending]} awaiting their gradient; round rolled back"
            )
        digest = self._complete()
        self.finished = True
        _LOG.info(
            "[PartnerTrainer] %s pass of round %d: %d steps, %d rows",
            self._kind.value,
            self._round,
            self._next_step,
            self._rows,
        )
        return PassSummary(
            run_id=self._run_id,
            round=self._round,
            kind=self._kind,
            steps=self._next_step,
            rows=self._rows,
            gradients_applied=self._applied,
            weights_sha256=digest,
        )
