"""Early stopping's figures: the best round, when training stops, each round's learning rate."""

from __future__ import annotations

import pytest

from bank_node.round_state import EarlyStopping


def test_the_learning_rate_halves_each_round_since_the_best_and_resets_on_a_better_one() -> None:
    stopping = EarlyStopping(best_round=3, best_loss=0.4)

    rates = [stopping.learning_rate(1e-3, r) for r in (4, 5, 6)]
    improved = EarlyStopping(best_round=5, best_loss=0.39)

    assert rates == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert improved.learning_rate(1e-3, 6) == pytest.approx(1e-3)


def test_training_stops_after_patience_rounds_without_a_better_one() -> None:
    stopping = EarlyStopping(best_round=2, best_loss=0.5)

    assert not stopping.stops(4, patience=3)
    assert stopping.stops(5, patience=3)
