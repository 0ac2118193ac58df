"""The report's curves and tables on small inputs whose answers are known by hand."""

import itertools

import numpy as np
import pytest

from bank_node.report_curves import (
    binary_figures,
    calibration_bins,
    class_figures,
    confusion_matrix,
    decile_table,
    rank_curves,
    score_histogram,
)
from bank_node.serving_reference import calibration_check
from cobrand.errors import InvalidRequest
from cobrand.metrics import auc, ks


def _perfect(rows: int, events: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with `events` events, scored so every event outranks every non-event."""
    labels = np.zeros(rows, dtype=np.int64)
    labels[:events] = 1
    scores = np.linspace(1.0, 0.0, rows)
    return labels, scores


def _noisy(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    # Rounded to two digits so many rows tie.
    scores = np.clip(np.round(0.5 + 0.2 * (labels - 0.5) + rng.normal(0, 0.2, rows), 2), 0, 1)
    return labels, scores


def test_perfect_ranking_has_auc_one_and_roc_through_the_top_left_corner() -> None:
    labels, scores = _perfect(100, 30)
    curves = rank_curves(labels, scores)
    assert np.trapezoid(curves.tpr, curves.fpr) == pytest.approx(1.0)
    assert any(tpr == 1.0 and fpr == 0.0 for tpr, fpr in zip(curves.tpr, curves.fpr, strict=True))
    assert binary_figures(labels, scores)["auc"] == 1.0
    assert binary_figures(labels, scores)["gini"] == 1.0


def test_ks_is_maximal_where_the_last_event_is_flagged_on_a_perfect_ranking() -> None:
    labels, scores = _perfect(100, 30)
    curves = rank_curves(labels, scores)
    at = curves.ks_index
    assert (curves.population[at], curves.tpr[at], curves.fpr[at]) == (0.3, 1.0, 0.0)
    assert curves.thresholds[at - 1] == scores[29]


def test_roc_area_and_ks_curve_agree_with_the_metrics_on_tied_scores() -> None:
    labels, scores = _noisy(2000)
    curves = rank_curves(labels, scores)
    assert curves.thresholds.size < 200  # the ties are real
    assert np.trapezoid(curves.tpr, curves.fpr) == pytest.approx(auc(y_true=labels, y_score=scores))
    gap = abs(curves.tpr[curves.ks_index] - curves.fpr[curves.ks_index])
    assert gap == pytest.approx(ks(y_true=labels, y_score=scores))
    assert curves.population[-1] == curves.tpr[-1] == curves.fpr[-1] == 1.0


def test_top_decile_lift_of_a_perfect_ranking_is_one_over_the_base_rate() -> None:
    labels, scores = _perfect(1000, 250)
    table = decile_table(labels, scores)
    assert [entry["rows"] for entry in table] == [100] * 10
    assert table[0]["lift"] == pytest.approx(4.0)
    assert [entry["cumulative_capture"] for entry in table[:3]] == pytest.approx([0.4, 0.8, 1.0])
    assert table[-1]["cumulative_lift"] == pytest.approx(1.0)
    assert binary_figures(labels, scores)["top_decile_lift"] == pytest.approx(4.0)


def test_gain_reaches_one_and_deciles_cover_every_row_once() -> None:
    labels, scores = _noisy(997)
    table = decile_table(labels, scores)
    assert sum(entry["rows"] for entry in table) == 997
    assert sum(entry["events"] for entry in table) == labels.sum()
    assert table[-1]["cumulative_capture"] == pytest.approx(1.0)
    # Riskiest first: each group's scores sit at or above the next group's.
    assert all(a["min_score"] >= b["max_score"] for a, b in itertools.pairwise(table))


def test_tied_scores_share_one_decile() -> None:
    labels = np.array([1, 0, 1, 0, 0, 0, 1, 0, 0, 0])
    scores = np.array([0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    table = decile_table(labels, scores)
    assert [(e["rows"], e["events"]) for e in table] == [(3, 2), (7, 1)]
    # The three tied top rows' middle rank is 1 (0-based) so they form the second decile.
    assert [e["decile"] for e in table] == [2, 7]


def test_calibrated_scores_fall_near_the_diagonal_and_squared_ones_do_not() -> None:
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(0, 1, 50_000)
    labels = (rng.uniform(0, 1, 50_000) < probabilities).astype(np.int64)
    table = calibration_bins(labels, probabilities)
    assert len(table) == 10
    assert sum(entry["rows"] for entry in table) == 50_000
    assert all(abs(e["mean_predicted"] - e["observed_rate"]) < 0.02 for e in table)
    assert binary_figures(labels, probabilities)["calibration_error"] < 0.01
    assert binary_figures(labels, probabilities**2)["calibration_error"] > 0.1


def test_the_report_and_the_published_version_give_one_calibration_error() -> None:
    labels, scores = _noisy(500)
    check = calibration_check(y_true=labels.astype(np.float64), y_score=scores)
    assert binary_figures(labels, scores)["calibration_error"] == check.ece


def test_fewer_rows_than_deciles_have_no_calibration_error() -> None:
    assert (
        binary_figures(np.array([0, 1, 1]), np.array([0.2, 0.6, 0.9]))["calibration_error"] is None
    )


def test_a_probability_of_one_falls_in_the_last_calibration_bin() -> None:
    table = calibration_bins(np.array([1, 0]), np.array([1.0, 0.0]))
    assert [(e["lower"], e["upper"], e["rows"]) for e in table] == [(0.0, 0.1, 1), (0.9, 1.0, 1)]


def test_score_histogram_gives_each_class_shares_summing_to_one() -> None:
    labels, scores = _noisy(500)
    histogram = score_histogram(labels, scores)
    assert len(histogram["edges"]) == 21
    assert sum(histogram["events"]) == pytest.approx(1.0)
    assert sum(histogram["non_events"]) == pytest.approx(1.0)


def test_one_class_leaves_the_ranking_figures_out_and_the_curves_refuse_it() -> None:
    labels, scores = np.zeros(50, dtype=np.int64), np.linspace(0, 0.3, 50)
    figures = binary_figures(labels, scores)
    assert (figures["auc"], figures["ks"], figures["top_decile_lift"]) == (None, None, None)
    assert figures["calibration_error"] == pytest.approx(0.15, abs=0.01)
    with pytest.raises(InvalidRequest, match="0 events in 50 rows"):
        rank_curves(labels, scores)
    with pytest.raises(InvalidRequest, match="both events"):
        decile_table(labels, scores)


def test_class_figures_count_top1_hits_per_class() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    probabilities = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.1, 0.8],
            [0.6, 0.2, 0.2],
            [0.2, 0.2, 0.6],
        ]
    )
    assert confusion_matrix(labels, probabilities) == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    figures = class_figures(labels, probabilities, ("none", "shopping", "travel"))
    assert figures["top1_accuracy"] == pytest.approx(4 / 6)
    assert figures["classes"][0] == {
        "name": "none",
        "rows": 2,
        "predicted": 2,
        "correct": 1,
        "recall": 0.5,
        "precision": 0.5,
    }
    assert figures["classes"][2]["recall"] == pytest.approx(2 / 3)


def test_a_class_never_predicted_has_no_precision() -> None:
    figures = class_figures(np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]]), ("a", "b"))
    assert figures["classes"][1]["precision"] is None
    assert figures["classes"][1]["recall"] == 0.0
