"""The bank's round checkpoints of a run: what is kept, and what a restore gives back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bank_node.round_state import BankState, EarlyStopping
from bank_node.run_checkpoints import RunCheckpoints
from bank_node.trainer import RoundResult
from cobrand.errors import FailedPrecondition
from cobrand.weights import weights_digest


def _state(round_number: int, best_round: int, seed: int = 0) -> BankState:
    generator = torch.Generator().manual_seed(1000 * seed + round_number)
    weights = {"bottom.w": torch.randn(3, 2, generator=generator), "head.b": torch.zeros(2)}
    optimizer = {"state": {0: {"step": torch.tensor(float(round_number))}}, "param_groups": []}
    return BankState(
        round=round_number,
        weights=weights,
        optimizer=optimizer,
        generator=generator.get_state(),
        stopping=EarlyStopping(best_round, 1.0 / (1 + best_round)),
    )


def _result(round_number: int) -> RoundResult:
    return RoundResult(round_number, 0.5, 0.5, {}, 1.0, 10, 10, bytes(32))


class Run:
    """A run's checkpoints with its commits played by hand."""

    def __init__(self, runs_dir: Path) -> None:
        self.committed = -1
        self.trained: list[tuple[int, bytes]] = []
        self.checkpoints = RunCheckpoints(
            runs_dir,
            "run-7",
            on_trained=lambda result, digest: self.trained.append((result.round, digest)),
            last_committed=lambda: self.committed,
        )

    def kept(self) -> list[int]:
        return self.checkpoints.files.rounds()


def test_each_round_is_written_before_it_is_reported_and_reads_back_whole(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.checkpoints.keep(_state(0, 0), None)
    written = _state(1, 1)

    run.checkpoints.keep(written, _result(1))
    restored = run.checkpoints.restore(1)

    assert run.trained == [(1, weights_digest(written.weights))]
    assert (tmp_path / "run-7" / "round-1.pt").is_file()
    assert all(torch.equal(restored.weights[k], v) for k, v in written.weights.items())
    assert torch.equal(restored.optimizer["state"][0]["step"], torch.tensor(1.0))
    assert torch.equal(restored.generator, written.generator)
    assert restored.stopping == written.stopping


def test_only_the_last_committed_the_best_and_the_uncommitted_rounds_are_kept(
    tmp_path: Path,
) -> None:
    run = Run(tmp_path)
    run.checkpoints.keep(_state(0, 0), None)
    for round_number, best in ((1, 1), (2, 2), (3, 2), (4, 2)):
        run.committed = round_number - 1  # each plan confirms the round before
        run.checkpoints.keep(_state(round_number, best), _result(round_number))

    assert run.kept() == [2, 3, 4]
    run.committed = 4
    run.checkpoints.prune()
    assert run.kept() == [2, 4]


def test_a_fresh_run_clears_what_an_earlier_attempt_left(tmp_path: Path) -> None:
    Run(tmp_path).checkpoints.keep(_state(5, 5), _result(5))

    run = Run(tmp_path)
    run.checkpoints.keep(_state(0, 0), None)

    assert run.kept() == [0]


def test_a_checkpoint_replaced_by_other_weights_is_refused_naming_the_file(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.checkpoints.keep(_state(0, 0), None)
    run.checkpoints.keep(_state(1, 1), _result(1))
    other = Run(tmp_path / "elsewhere")
    other.checkpoints.keep(_state(1, 1, seed=2), _result(1))
    other.checkpoints.files.path(1).replace(run.checkpoints.files.path(1))

    with pytest.raises(FailedPrecondition, match=r"run-7/round-1\.pt: holds checkpoint .* but"):
        run.checkpoints.restore(1)


def test_reading_the_best_round_keeps_later_rounds_checked_for_a_restore(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.checkpoints.keep(_state(0, 0), None)
    for round_number in (1, 2, 3):
        run.checkpoints.keep(_state(round_number, 1), _result(round_number))
    other = Run(tmp_path / "elsewhere")
    other.checkpoints.keep(_state(3, 1, seed=2), _result(3))

    best = run.checkpoints.read(1)
    other.checkpoints.files.path(3).replace(run.checkpoints.files.path(3))

    assert best.round == 1
    assert run.checkpoints.best_round == 1
    with pytest.raises(FailedPrecondition, match=r"run-7/round-3\.pt: holds checkpoint .* but"):
        run.checkpoints.restore(3)
