"""Serving references: score scaling by points to double the odds, reference values and the
attribution batch for reason codes, and the calibration check on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bank_node.serving_reference import (
    FeatureReference,
    ScoreScaling,
    adverse_reasons,
    attribution_batch,
    calibration_check,
    category_reference,
    checked_probabilities,
    numeric_reference,
)
from bank_node.serving_reference import _chi2_tail as _chi2_tail
from cobrand.errors import InvalidRequest


def _probability_of_bad(odds_good_to_bad: float) -> float:
    return 1.0 / (1.0 + odds_good_to_bad)


def test_base_odds_score_base_points_and_doubling_the_odds_adds_pdo() -> None:
    scaling = ScoreScaling()

    points = scaling.points([_probability_of_bad(o) for o in (50.0, 100.0, 25.0)])

    assert points == pytest.approx([600.0, 620.0, 580.0])
    assert scaling.factor == pytest.approx(20.0 / math.log(2.0))


def test_a_higher_probability_of_bad_scores_fewer_points() -> None:
    points = ScoreScaling(base_points=700, base_odds=20, pdo=40).points([0.01, 0.1, 0.5, 0.9])

    assert np.all(np.diff(points) < 0)
    assert points[2] == pytest.approx(700 - 40 * math.log2(20))


def test_certain_predictions_score_finitely() -> None:
    assert np.isfinite(ScoreScaling().points([0.0, 1.0])).all()


def test_a_probability_outside_zero_one_is_refused_naming_its_index() -> None:
    with pytest.raises(InvalidRequest, match=r"index 1 is 1\.5"):
        ScoreScaling().points([0.2, 1.5])


def test_a_value_that_is_not_a_probability_is_refused_naming_what_and_where_it_is() -> None:
    with pytest.raises(InvalidRequest, match=r"^y_score index 2 is nan, not in \[0, 1\]$"):
        checked_probabilities([0.0, 1.0, math.nan, 2.0], "y_score index")


def test_references_are_the_median_and_the_most_common_index() -> None:
    assert numeric_reference([3.0, -1.0, 10.0, 0.5]) == pytest.approx(1.75)
    assert category_reference(np.array([4, 2, 4, 2, 0])) == 2


def test_attribution_batch_replaces_one_feature_per_row() -> None:
    references = [
        FeatureReference(
            code="B01",
            feature="income",
            kind="numeric",
            text="income of {value}",
            reference="1200",
            numeric=((0, 0.25), (2, 0.0)),
        ),
        FeatureReference(
            code="B02",
            feature="segment",
            kind="categorical",
            text="segment {value}",
            reference="retail",
            categorical=((0, 3),),
        ),
    ]
    numeric = np.array([1.5, -0.5, 1.0], dtype=np.float32)
    categorical = np.array([0], dtype=np.int64)

    rows, categories = attribution_batch(numeric, categorical, references)

    assert rows.tolist() == [[1.5, -0.5, 1.0], [0.25, -0.5, 0.0], [1.5, -0.5, 1.0]]
    assert categories.tolist() == [[0], [0], [3]]
    assert rows.dtype == np.float32
    assert numeric.tolist() == [1.5, -0.5, 1.0]


def test_adverse_reasons_rank_what_lowered_the_score_most_and_skip_what_raised_it() -> None:
    codes = ["B01", "B02", "B03", "B04", "B05", "P01"]

    reasons = adverse_reasons(600.0, [610.0, 590.0, 625.0, 600.0, 601.0, 610.0], codes)

    assert reasons == ["B03", "B01", "P01", "B05"]
    assert adverse_reasons(600.0, [700.0] * 6, codes, limit=2) == ["B01", "B02"]


def test_perfectly_calibrated_scores_have_a_small_error_and_a_large_p_value() -> None:
    rng = np.random.default_rng(0)
    score = rng.uniform(0.01, 0.6, 50_000)
    outcome = (rng.random(score.size) < score).astype(np.float64)

    check = calibration_check(y_true=outcome, y_score=score)

    assert check.ece < 0.01
    assert check.p_value > 0.01
    assert check.brier == pytest.approx(np.mean(score * (1 - score)), abs=0.003)
    assert len(check.bins) == 10
    assert sum(b.rows for b in check.bins) == check.rows == score.size
    assert [b.mean_predicted for b in check.bins] == sorted(b.mean_predicted for b in check.bins)


def test_overconfident_scores_are_flagged() -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.2, 0.4, 20_000)
    outcome = (rng.random(truth.size) < truth).astype(np.float64)

    check = calibration_check(y_true=outcome, y_score=np.clip(truth * 2 - 0.3, 0, 1))

    assert check.ece > 0.05
    assert check.p_value < 1e-6


def test_hosmer_lemeshow_on_known_counts() -> None:
    # Two rows per bin; bin k predicts 0.25 and sees one event out of two.
    score = np.full(6, 0.25)
    outcome = np.array([1, 0, 1, 0, 1, 0], dtype=np.float64)

    check = calibration_check(y_true=outcome, y_score=score, n_bins=3)

    # Each bin: O = 1, E = 0.5, variance 0.5 * (1 - 0.25) = 0.375, term 0.25 / 0.375.
    assert check.hosmer_lemeshow == pytest.approx(2.0)
    assert check.degrees_of_freedom == 1
    assert check.p_value == pytest.approx(math.erfc(1.0))
    assert check.ece == pytest.approx(0.25)
    assert check.brier == pytest.approx((3 * 0.75**2 + 3 * 0.25**2) / 6)


def test_p_value_with_an_even_number_of_degrees_is_the_exponential_tail() -> None:
    score = np.full(8, 0.5)
    outcome = np.array([1, 1, 1, 1, 0, 0, 0, 1], dtype=np.float64)

    check = calibration_check(y_true=outcome, y_score=score, n_bins=4)

    # Bins of two rows, E = 1, variance 0.5: terms 2, 2, 2, 0.
    assert check.hosmer_lemeshow == pytest.approx(6.0)
    assert check.p_value == pytest.approx(math.exp(-3.0))


@pytest.mark.parametrize(("statistic", "degrees"), [(15.507, 8), (14.067, 7), (3.841, 1)])
def test_chi_squared_tail_matches_tabulated_five_percent_points(
    statistic: float, degrees: int
) -> None:
    assert _chi2_tail(statistic, degrees) == pytest.approx(0.05, abs=1e-4)


def test_unlabelled_rows_are_left_out_and_bad_labels_named() -> None:
    score = np.linspace(0.05, 0.95, 40)
    outcome = np.round(score)
    outcome[:5] = np.nan

    assert calibration_check(y_true=outcome, y_score=score).rows == 35
    outcome[7] = 2.0
    with pytest.raises(InvalidRequest, match=r"row 7 is 2\.0"):
        calibration_check(y_true=outcome, y_score=score)
