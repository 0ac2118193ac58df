"""What a round of the bank's training leaves behind, and who keeps it.

`BankState` is everything `bank_node.trainer.BankTrainer` continues from at the end of a round:
its modules' weights, Adam's state, the generator of batch orders and partner-slice dropout, and
the early-stopping figures (`EarlyStopping`). A `RoundKeeper` keeps each round's state, for the
best round's weights at the end and for resuming after the partner was lost: `MemoryRounds` in
memory (benchmarks, tests), ``bank_node.run_checkpoints.RunCheckpoints`` on disk (a run).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from bank_node.trainer import RoundResult

__all__ = ["BankState", "EarlyStopping", "MemoryRounds", "RoundKeeper"]


@dataclass(frozen=True)
class EarlyStopping:
    """The best round so far by validation loss (round 0, the initial weights, before any)."""

    best_round: int = 0
    best_loss: float = float("inf")

    def after(self, result: RoundResult) -> EarlyStopping:
        """The figures once `result`'s round is validated."""
        if result.valid_loss < self.best_loss:
            return EarlyStopping(result.round, result.valid_loss)
        return self

    def learning_rate(self, base: float, round_number: int) -> float:
        """Round `round_number`'s learning rate at both sides: `base`, halved for each round
        since the best one, so training settles near a plateau before early stopping ends it.

        Depends only on this state, so a resumed round gets the rate it had.
        """
        return base * 0.5 ** (round_number - 1 - self.best_round)

    def stops(self, last_round: int, patience: int) -> bool:
        """Whether training stops after `last_round`: `patience` rounds without a better one."""
        return last_round - self.best_round >= patience


@dataclass(frozen=True)
class BankState:
    """Everything the bank's training continues from at the end of a round.

    Attributes
    ----------
    round : int
    weights : dict of str to Tensor
        The bottom's (``bottom.*``) and the head's (``head.*``) weights.
    optimizer : dict
        Adam's ``state_dict()``.
    generator : Tensor
        The state of the generator of batch orders and partner-slice dropout.
    stopping : EarlyStopping
    """

    round: int
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    stopping: EarlyStopping = field(default_factory=EarlyStopping)


class RoundKeeper(Protocol):
    """Keeps the state each round ended with, for resuming and for the best round's weights."""

    def keep(self, state: BankState, result: RoundResult | None) -> None:
        """Keep `state` (round 0's comes without a result)."""

    def read(self, round_number: int) -> BankState:
        """The state kept for `round_number`, leaving every kept round as it is (the best
        round's weights for the final evaluation)."""

    def restore(self, round_number: int) -> BankState:
        """Go back to `round_number` to train the rounds after it again: its state, with the
        later rounds' states forgotten (they will be kept anew)."""


class MemoryRounds:
    """A `RoundKeeper` holding every round's state in memory."""

    def __init__(self) -> None:
        self._states: dict[int, BankState] = {}

    def keep(self, state: BankState, result: RoundResult | None) -> None:
        self._states[state.round] = copy.deepcopy(state)

    def read(self, round_number: int) -> BankState:
        return self._states[round_number]

    def restore(self, round_number: int) -> BankState:
        self._states = {r: s for r, s in self._states.items() if r <= round_number}
        return self.read(round_number)
