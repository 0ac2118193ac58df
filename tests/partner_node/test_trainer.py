"""The partner's trainer: exact and one-step-stale updates, rounds, rollback, refusals."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.preprocess import Encoded
from cobrand.split_model import BottomModel, BottomSpec
from partner_node.trainer import PartnerTrainer
from partner_node.trainer_pass import PassKind

# No dropout, so a pass is a deterministic function of the weights.
SPEC = BottomSpec(
    bin_edges=((-1.0, 0.0, 1.0),) * 3,
    n_indicators=1,
    cardinalities=(5,),
    embedding_width=4,
    hidden=8,
    dropout=0.0,
)
ROWS = 40
LR = 0.01


def _features(rows: int = ROWS) -> Encoded:
    rng = np.random.default_rng(0)
    return Encoded(
        numeric=rng.normal(size=(rows, 4)).astype(np.float32),
        categorical=rng.integers(0, 5, size=(rows, 1)),
    )


def _trainer(seed: int = 3, **options: Any) -> PartnerTrainer:
    trainer = PartnerTrainer("run-a", _features(), SPEC, seed=seed, **options)
    trainer.plan_round(1, learning_rate=LR)
    return trainer


def _reference(seed: int = 3) -> tuple[BottomModel, torch.optim.Adam]:
    """The same bottom as `_trainer(seed)` builds, trained by plain backprop."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BottomModel(SPEC)
    return model, torch.optim.Adam(model.parameters(), lr=LR)


def _forward(model: BottomModel, positions: npt.NDArray[np.int64]) -> torch.Tensor:
    features = _features()
    index = torch.from_numpy(positions)
    out: torch.Tensor = model(
        torch.from_numpy(features.numeric)[index], torch.from_numpy(features.categorical)[index]
    )
    return out


def _gradient(rows: int, seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


P0, P1, P2 = np.arange(0, 8), np.arange(8, 20), np.arange(20, 30)


def test_with_one_batch_in_flight_the_update_is_exact_backprop() -> None:
    trainer = _trainer()
    model, optimizer = _reference()

    with trainer.open_pass("run-a", 1, PassKind.TRAIN) as current:
        first = current.embed(0, P0)
        current.apply_gradient(0, _gradient(8, 0))
        second = current.embed(1, P1)
        current.apply_gradient(1, _gradient(12, 1))
        current.finish()

    expected = _forward(model, P0)
    np.testing.assert_allclose(first, expected.detach().numpy(), rtol=1e-6)
    expected.backward(torch.from_numpy(_gradient(8, 0)))
    optimizer.step()
    np.testing.assert_allclose(second, _forward(model, P1).detach().numpy(), rtol=1e-6)


def test_with_two_in_flight_each_gradient_goes_through_the_weights_that_made_it() -> None:
    trainer = _trainer()
    model, optimizer = _reference()

    with trainer.open_pass("run-a", 1, PassKind.TRAIN) as current:
        current.embed(0, P0)
        current.embed(1, P1)  # made by the initial weights, like step 0
        current.apply_gradient(0, _gradient(8, 0))
        current.apply_gradient(1, _gradient(12, 1))  # the weights moved since: one step stale
        third = current.embed(2, P2)
        current.apply_gradient(2, _gradient(10, 2))
        current.finish()

    initial = copy.deepcopy(model)
    _forward(model, P0).backward(torch.from_numpy(_gradient(8, 0)))
    optimizer.step()
    optimizer.zero_grad()
    _forward(initial, P1).backward(torch.from_numpy(_gradient(12, 1)))
    for live, stale in zip(model.parameters(), initial.parameters(), strict=True):
        live.grad = stale.grad
    optimizer.step()
    np.testing.assert_allclose(third, _forward(model, P2).detach().numpy(), rtol=1e-5, atol=1e-7)


def _train_round_one(trainer: PartnerTrainer) -> bytes:
    with trainer.open_pass("run-a", 1, PassKind.TRAIN) as current:
        for step, positions in enumerate((P0, P1)):
            current.embed(step, positions)
            current.apply_gradient(step, _gradient(len(positions), step))
        return current.finish().weights_sha256


def _break_off(trainer: PartnerTrainer) -> None:
    with trainer.open_pass("run-a", 1, PassKind.TRAIN) as current:
        current.embed(0, P0)
        current.apply_gradient(0, _gradient(8, 5))
        raise RuntimeError("stream broke")


def test_a_training_pass_that_breaks_off_leaves_weights_and_optimizer_as_before() -> None:
    interrupted = _trainer()
    with pytest.raises(RuntimeError, match="stream broke"):
        _break_off(interrupted)

    assert interrupted.completed_rounds == 0
    assert _train_round_one(interrupted) == _train_round_one(_trainer())


def test_embedding_passes_use_the_weights_of_the_round_they_name() -> None:
    trainer = _trainer()

    def embed(round_number: int) -> npt.NDArray[np.float32]:
        with trainer.open_pass("run-a", round_number, PassKind.EMBED) as current:
            values = current.embed(0, P2)
            summary = current.finish()
        assert summary.weights_sha256 == trainer.round_digest(round_number)
        return values

    initial = embed(0)
    _train_round_one(trainer)
    after_one = embed(1)
    trainer.plan_round(2, learning_rate=LR)
    with trainer.open_pass("run-a", 2, PassKind.TRAIN) as current:
        current.embed(0, P0)
        current.apply_gradient(0, _gradient(8, 9))
        current.finish()

    assert not np.allclose(initial, after_one)
    np.testing.assert_array_equal(embed(1), after_one)
    np.testing.assert_array_equal(embed(0), initial)
    assert trainer.round_digest(2) != trainer.round_digest(1)


def test_only_the_round_after_the_last_completed_one_can_be_planned() -> None:
    trainer = _trainer()
    with pytest.raises(FailedPrecondition, match=r"cannot plan round 2; .* the next round is 1"):
        trainer.plan_round(2, learning_rate=LR)
    with pytest.raises(InvalidRequest, match="learning rate must be positive"):
        trainer.plan_round(1, learning_rate=float("nan"))


@pytest.mark.parametrize(
    ("run_id", "round_number", "kind", "problem"),
    [
        ("run-b", 1, PassKind.TRAIN, "unknown run 'run-b'"),
        ("run-a", 2, PassKind.TRAIN, "round 2 is not planned at the partner"),
        ("run-a", 1, PassKind.EMBED, "round 1 has not completed at the partner"),
    ],
)
def test_a_pass_for_a_run_or_round_the_partner_does_not_hold_is_refused(
    run_id: str, round_number: int, kind: PassKind, problem: str
) -> None:
    with (
        pytest.raises(FailedPrecondition, match=problem),
        _trainer().open_pass(run_id, round_number, kind),
    ):
        pass


def test_one_pass_at_a_time() -> None:
    trainer = _trainer(busy_wait=0.2)
    with (
        trainer.open_pass("run-a", 1, PassKind.TRAIN),
        pytest.raises(FailedPrecondition, match="another pass is already streaming"),
        trainer.open_pass("run-a", 0, PassKind.EMBED),
    ):
        pass


def test_steps_out_of_protocol_are_refused_by_name() -> None:
    trainer = _trainer(max_pending_steps=2)
    with trainer.open_pass("run-a", 1, PassKind.TRAIN) as current:
        with pytest.raises(
            InvalidRequest, match="batch of step 1: the next step of this pass is 0"
        ):
            current.embed(1, P0)
        current.embed(0, P0)
        current.embed(1, P1)
        with pytest.raises(FailedPrecondition, match="at most 2 in flight"):
            current.embed(2, P2)
        with pytest.raises(InvalidRequest, match=r"gradient of step 1: .* awaiting 0"):
            current.apply_gradient(1, _gradient(12, 0))
        with pytest.raises(InvalidRequest, match=r"gradient of step 0 is 8 x 3; .* was 8 x 4"):
            current.apply_gradient(0, _gradient(8, 0)[:, :3])
        current.apply_gradient(0, _gradient(8, 0))
        with pytest.raises(FailedPrecondition, match=r"ended with steps \[1\] awaiting"):
            current.finish()
    assert trainer.completed_rounds == 0


def test_an_embedding_pass_takes_no_gradient() -> None:
    with _trainer().open_pass("run-a", 0, PassKind.EMBED) as current:
        current.embed(0, P0)
        with pytest.raises(InvalidRequest, match="an embedding pass takes no gradients"):
            current.apply_gradient(0, _gradient(8, 0))


def test_a_diverged_bottom_does_not_send_its_embedding() -> None:
    features = _features()
    features.numeric[5, 0] = np.nan
    trainer = PartnerTrainer("run-a", features, SPEC)
    with (
        trainer.open_pass("run-a", 0, PassKind.EMBED) as current,
        pytest.raises(FailedPrecondition, match="non-finite embedding for row 5"),
    ):
        current.embed(0, P0)
