"""Monitoring baseline bins: every value lands in exactly one bin, shares sum to 1, edges strictly
increase, ties and constant columns give fewer bins rather than empty ones."""

from __future__ import annotations

import numpy as np
import pytest

from bank_node.monitoring_baseline import CategoryBins, NumericBins
from cobrand.errors import InvalidRequest


def test_numeric_bins_are_deciles_with_a_missing_bin() -> None:
    values = np.arange(1000, dtype=np.float64)
    values[:50] = np.nan

    bins = NumericBins.fit(values)

    assert len(bins.edges) == 9
    assert all(b > a for a, b in zip(bins.edges, bins.edges[1:], strict=False))
    assert sum(bins.shares) == pytest.approx(1.0)
    assert bins.shares[-1] == pytest.approx(0.05)
    assert bins.shares[:-1] == pytest.approx([0.095] * 10, abs=0.002)


def test_values_beyond_the_training_range_land_in_the_open_outer_bins() -> None:
    bins = NumericBins.fit(np.arange(100, dtype=np.float64))

    counts = bins.counts(np.array([-1e9, 1e9, np.nan, bins.edges[0]]))

    assert counts[0] == 1
    assert counts[1] == 1  # a value on an edge joins the bin above it
    assert counts[-2] == 1
    assert counts[-1] == 1
    assert counts.sum() == 4


def test_a_constant_column_has_one_bin_of_values_and_the_missing_bin() -> None:
    bins = NumericBins.fit(np.array([3.0] * 20 + [np.nan] * 5))

    assert bins.edges == ()
    assert bins.shares == pytest.approx((0.8, 0.2))
    assert bins.counts(np.array([-5.0, 3.0, 99.0])).tolist() == [3, 0]


def test_an_all_missing_column_puts_every_share_in_the_missing_bin() -> None:
    bins = NumericBins.fit(np.full(10, np.nan))

    assert bins.edges == ()
    assert bins.shares == (0.0, 1.0)


def test_heavy_ties_merge_edges_and_leave_no_empty_first_bin() -> None:
    values = np.concatenate([np.zeros(800), np.arange(1.0, 201.0)])

    bins = NumericBins.fit(values)

    assert bins.edges[0] > 0.0
    assert bins.shares[0] == pytest.approx(0.8)
    assert min(bins.shares[:-1]) > 0
    assert sum(bins.shares) == pytest.approx(1.0)


def test_an_infinite_value_is_refused_naming_its_row() -> None:
    with pytest.raises(InvalidRequest, match="row 2 is inf"):
        NumericBins.fit(np.array([1.0, 2.0, np.inf]))


def test_category_bins_count_each_known_category_and_pool_missing_rare_and_unseen() -> None:
    indices = np.array([0, 1, 2, 2, 3, 3, 3, 4, 1, 0])

    bins = CategoryBins.fit(indices, ("gold", "retail", "student"))

    assert bins.categories == ("gold", "retail", "student")
    assert bins.shares == pytest.approx((0.4, 0.2, 0.3, 0.1))
    assert bins.counts(np.array([2, 0])).tolist() == [1, 1, 0, 0]


def test_a_category_index_outside_the_vocabulary_is_refused_naming_its_row() -> None:
    bins = CategoryBins.fit(np.array([2, 3]), ("gold", "retail"))

    with pytest.raises(InvalidRequest, match=r"category index 4 at row 1 is outside 0\.\.3"):
        bins.counts(np.array([2, 4]))


def test_baselines_round_trip_through_json() -> None:
    numeric = NumericBins.fit(np.linspace(0.0, 1.0, 50))
    categories = CategoryBins.fit(np.array([0, 2, 2]), ("gold",))

    assert NumericBins.model_validate_json(numeric.model_dump_json()) == numeric
    assert CategoryBins.model_validate_json(categories.model_dump_json()) == categories
