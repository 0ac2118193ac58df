"""Risk metrics against hand-computed values and brute-force pairwise definitions."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobrand.errors import InvalidRequest
from cobrand.metrics import (
    PSI_SHARE_FLOOR,
    PSI_SHIFT_AT,
    PSI_WATCH_AT,
    PsiVerdict,
    auc,
    gini,
    ks,
    psi,
    psi_from_shares,
    psi_verdict,
)


def _pairwise_auc(y: npt.NDArray[np.int64], s: npt.NDArray[np.float64]) -> float:
    bad, good = s[y == 1], s[y == 0]
    wins = (bad[:, None] > good[None, :]).sum() + 0.5 * (bad[:, None] == good[None, :]).sum()
    return float(wins / (bad.size * good.size))


def _threshold_ks(y: npt.NDArray[np.int64], s: npt.NDArray[np.float64]) -> float:
    bad, good = s[y == 1], s[y == 0]
    return float(max(abs(np.mean(bad <= t) - np.mean(good <= t)) for t in np.unique(s)))


_labelled_scores = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < n),
        # Few distinct scores so ties are common.
        st.lists(st.integers(-3, 3).map(float), min_size=n, max_size=n),
    )
)


def test_auc_matches_hand_computed_example() -> None:
    # Pairs (bad, good): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4.
    assert auc(y_true=[0, 0, 1, 1], y_score=[0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auc_counts_a_tie_between_bad_and_good_as_one_half() -> None:
    assert auc(y_true=[0, 1], y_score=[0.5, 0.5]) == pytest.approx(0.5)
    # bad@1 ties good@1 (0.5), loses to good@2 (0); bad@2 beats good@1 (1), ties good@2 (0.5).
    assert auc(y_true=[0, 1, 0, 1], y_score=[1.0, 1.0, 2.0, 2.0]) == pytest.approx(0.5)


def test_gini_is_twice_auc_minus_one_and_negative_for_a_reversed_score() -> None:
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert gini(y_true=y, y_score=s) == pytest.approx(0.5)
    assert gini(y_true=y, y_score=[-v for v in s]) == pytest.approx(-0.5)


def test_ks_matches_hand_computed_example() -> None:
    # CDF(bad) at 0.1, 0.35, 0.4, 0.8 = 0, .5, .5, 1; CDF(good) = .5, .5, 1, 1.
    assert ks(y_true=[0, 0, 1, 1], y_score=[0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5)


def test_ks_of_a_perfect_separation_is_one_and_of_all_tied_scores_is_zero() -> None:
    assert ks(y_true=[0, 0, 1, 1], y_score=[1, 2, 3, 4]) == pytest.approx(1.0)
    assert ks(y_true=[0, 0, 1, 1], y_score=[7, 7, 7, 7]) == pytest.approx(0.0)


@settings(max_examples=200, deadline=None)
@given(_labelled_scores)
def test_auc_equals_brute_force_pairwise_count(case: tuple[list[int], list[float]]) -> None:
    y, s = np.array(case[0]), np.array(case[1])
    assert auc(y_true=y, y_score=s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(_labelled_scores)
def test_ks_equals_brute_force_threshold_scan(case: tuple[list[int], list[float]]) -> None:
    y, s = np.array(case[0]), np.array(case[1])
    assert ks(y_true=y, y_score=s) == pytest.approx(_threshold_ks(y, s), abs=1e-12)


def test_auc_is_fast_on_a_million_rows() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, size=1_000_000)
    s = rng.normal(size=y.size) + y
    # Two unit-variance normals one apart: AUC = Phi(1 / sqrt(2)).
    expected = 0.5 * (1.0 + math.erf(0.5))
    assert auc(y_true=y, y_score=s) == pytest.approx(expected, abs=0.002)


def test_psi_matches_hand_computed_two_bucket_shift() -> None:
    expected = np.arange(100.0)  # median edge 49.5: shares 0.5 / 0.5
    actual = np.r_[np.zeros(75), np.full(25, 99.0)]  # shares 0.75 / 0.25
    by_hand = 0.25 * math.log(0.75 / 0.5) + (-0.25) * math.log(0.25 / 0.5)
    assert psi(expected=expected, actual=actual, bins=2) == pytest.approx(by_hand)


def test_psi_floors_an_empty_bucket_instead_of_going_infinite() -> None:
    expected = np.arange(100.0)
    actual = np.zeros(50)  # the upper bucket is empty
    by_hand = 0.5 * math.log(1.0 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi(expected=expected, actual=actual, bins=2) == pytest.approx(by_hand)


def test_psi_of_a_sample_against_itself_is_zero() -> None:
    sample = np.random.default_rng(1).lognormal(size=5000)
    assert psi(expected=sample, actual=sample) == pytest.approx(0.0, abs=1e-12)


def test_psi_verdict_uses_the_risk_team_thresholds() -> None:
    assert (PSI_WATCH_AT, PSI_SHIFT_AT) == (0.10, 0.25)
    assert psi_verdict(0.099) is PsiVerdict.STABLE
    assert psi_verdict(0.10) is PsiVerdict.WATCH
    assert psi_verdict(0.2499) is PsiVerdict.WATCH
    assert psi_verdict(0.25) is PsiVerdict.SHIFT


@pytest.mark.parametrize(
    ("y_true", "y_score", "message"),
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "both events"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "index 1 is 2"),
        ([0, 1, 1], [0.1, float("nan"), 0.3], "index 1 is nan"),
        ([0, 1], [0.1, 0.2, 0.3], "one length"),
    ],
)
def test_rank_metrics_refuse_bad_input_naming_the_problem(
    y_true: list[int], y_score: list[float], message: str
) -> None:
    for metric in (auc, gini, ks):
        with pytest.raises(InvalidRequest, match=message):
            metric(y_true=y_true, y_score=y_score)


def test_psi_refuses_non_finite_values_and_too_few_bins() -> None:
    with pytest.raises(InvalidRequest, match="actual must be finite; index 2"):
        psi(expected=[1.0, 2.0, 3.0], actual=[1.0, 2.0, float("inf")])
    with pytest.raises(InvalidRequest, match="bins must be at least 2"):
        psi(expected=[1.0, 2.0], actual=[1.0, 2.0], bins=1)
    with pytest.raises(InvalidRequest, match="expected must be a non-empty"):
        psi(expected=[], actual=[1.0])


def test_psi_from_shares_of_identical_shares_is_zero() -> None:
    shares = [0.1, 0.2, 0.3, 0.4, 0.0]
    assert psi_from_shares(expected=shares, actual=shares) == 0.0


def test_psi_from_shares_matches_the_textbook_sum() -> None:
    expected, actual = [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]
    by_hand = sum((a - e) * math.log(a / e) for e, a in zip(expected, actual, strict=True))
    assert by_hand == pytest.approx(0.2282, abs=1e-4)  # .137 + .011 + .009 + .071
    assert psi_from_shares(expected=expected, actual=actual) == pytest.approx(by_hand)


def test_psi_from_shares_floors_an_empty_bucket_on_either_side() -> None:
    assert PSI_SHARE_FLOOR == 1e-4
    emptied = (PSI_SHARE_FLOOR - 0.5) * math.log(PSI_SHARE_FLOOR / 0.5)
    appeared = (0.5 - PSI_SHARE_FLOOR) * math.log(0.5 / PSI_SHARE_FLOOR)
    assert psi_from_shares(expected=[0.5, 0.5, 0.0], actual=[1.0, 0.0, 0.0]) == pytest.approx(
        0.5 * math.log(1.0 / 0.5) + emptied
    )
    assert psi_from_shares(expected=[1.0, 0.0], actual=[0.5, 0.5]) == pytest.approx(
        -0.5 * math.log(0.5) + appeared
    )


def test_psi_from_raw_samples_is_psi_from_their_bucket_shares() -> None:
    expected = np.arange(100.0)
    actual = np.r_[np.zeros(75), np.full(25, 99.0)]
    assert psi(expected=expected, actual=actual, bins=2) == psi_from_shares(
        expected=[0.5, 0.5], actual=[0.75, 0.25]
    )


@pytest.mark.parametrize(
    ("expected", "actual", "message"),
    [
        ([0.5, 0.5], [1.0], "one share per bucket, got 2 and 1"),
        ([0.5, 0.5], [1.2, -0.2], "actual shares must be in \\[0, 1\\]; index 0 is 1.2"),
        ([0.5, 0.4], [0.5, 0.5], "expected shares must sum to 1, got 0.9"),
        ([0.5, float("nan")], [0.5, 0.5], "expected must be finite; index 1"),
    ],
)
def test_psi_from_shares_refuses_shares_that_are_not_a_distribution(
    expected: list[float], actual: list[float], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        psi_from_shares(expected=expected, actual=actual)
