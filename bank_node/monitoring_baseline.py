"""The monitoring baseline of a model version: bins and training shares, ready for PSI.

Population stability compares the shares of recent values per bin with the shares on the
training rows, so every value must land in exactly one bin, in training and in production
alike: numeric bins are open at both ends and have a bin for missing values; categorical bins
are the training vocabulary plus one bin for missing, rare and unseen categories. Shares sum
to 1; `NumericBins.counts` and `CategoryBins.counts` bin production values the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Final

import numpy as np
import numpy.typing as npt
import pydantic
from pydantic import ConfigDict, Field

from cobrand.errors import InvalidRequest
from cobrand.preprocess import FIRST_KNOWN_INDEX, Preprocessor

__all__ = [
    "BASELINE_BINS",
    "OTHER_OR_MISSING",
    "CategoryBins",
    "MonitoringBaseline",
    "NumericBins",
    "fit_baseline",
]

BASELINE_BINS: Final = 10
"""Quantile bins of each numeric variable of a baseline (deciles of the training rows)."""

OTHER_OR_MISSING: Final = "other/missing"
"""The name of a categorical baseline's bin for missing, rare and unseen values."""


class _Frozen(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- Monitoring baseline --------------------------------------------------------------------


class NumericBins(_Frozen):
    """Quantile bins of a numeric variable, open at both ends, plus a last bin for missing.

    Bin 0 is ``(-inf, edges[0])``, bin i is ``[edges[i-1], edges[i])``, bin ``len(edges)`` is
    ``[edges[-1], inf)`` and the last, ``len(edges) + 1``, holds missing (NaN) values.

    Attributes
    ----------
    edges : tuple of float
        Strictly increasing inner edges; empty for a constant variable (one bin).
    shares : tuple of float
        Training share of each bin, ``len(edges) + 2`` of them, summing to 1.
    """

    edges: tuple[float, ...]
    shares: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...]

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> NumericBins:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly increasing")
        if len(self.shares) != len(self.edges) + 2:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 2} shares")
        return self

    @classmethod
    def fit(cls, values: npt.ArrayLike, n_bins: int = 10) -> NumericBins:
        """Equal-frequency bins of `values` (NaN for missing).

        Edges are the ``k / n_bins`` quantiles of the observed values; repeated ones are merged
        and those at or below the minimum dropped, so a heavily tied variable gets fewer bins
        and no bin starts empty.

        Raises
        ------
        InvalidRequest
            `values` is empty or not 1-D, holds an infinity, or `n_bins` is below 2.
        """
        if n_bins < 2:
            raise InvalidRequest(f"n_bins must be at least 2, got {n_bins}")
        array = _values(values)
        observed = array[~np.isnan(array)]
        edges: npt.NDArray[np.float64] = np.empty(0)
        if observed.size:
            quantiles = np.quantile(observed, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
            edges = np.unique(quantiles)
            edges = edges[edges > observed.min()]
        return cls(
            edges=tuple(float(e) for e in edges), shares=_shares(_numeric_counts(edges, array))
        )

    def counts(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """How many of `values` (NaN for missing) fall in each bin."""
        return _numeric_counts(np.asarray(self.edges), _values(values))


class CategoryBins(_Frozen):
    """One bin per training category, after a first bin for missing, rare and unseen values.

    Attributes
    ----------
    categories : tuple of str
        The preprocessor's vocabulary: bin ``i + 1`` is ``categories[i]``.
    shares : tuple of float
        ``len(categories) + 1`` training shares, summing to 1; share 0 is `OTHER_OR_MISSING`.
    """

    categories: tuple[str, ...]
    shares: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...]

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> CategoryBins:
        if len(self.shares) != len(self.categories) + 1:
            raise ValueError(f"{len(self.categories)} categories need {len(self.categories) + 1}")
        return self

    @classmethod
    def fit(cls, indices: npt.ArrayLike, categories: Sequence[str]) -> CategoryBins:
        """The shares of encoded category indices (``cobrand.preprocess``: 0 missing, 1 unseen
        or rare, 2.. the vocabulary `categories`).

        Raises
        ------
        InvalidRequest
            `indices` is empty or holds an index outside the vocabulary.
        """
        counts = _category_counts(len(categories), indices)
        return cls(categories=tuple(categories), shares=_shares(counts))

    def counts(self, indices: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """How many encoded indices fall in each bin."""
        return _category_counts(len(self.categories), indices)


def _numeric_counts(
    edges: npt.NDArray[np.float64], values: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    missing = np.isnan(values)
    index = np.searchsorted(edges, values[~missing], side="right")
    counts = np.bincount(index, minlength=edges.size + 2).astype(np.int64)
    counts[-1] = int(missing.sum())
    return counts


def _category_counts(categories: int, indices: npt.ArrayLike) -> npt.NDArray[np.int64]:
    array = np.asarray(indices)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise InvalidRequest(
            f"category indices must be a non-empty 1-D integer array, got {array.dtype} "
            f"of shape {array.shape}"
        )
    top = categories + FIRST_KNOWN_INDEX
    outside = (array < 0) | (array >= top)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise InvalidRequest(
            f"category index {array[first]} at row {first} is outside 0..{top - 1}"
        )
    # Missing (0) and unseen or rare (1) share bin 0; known index i goes to bin i - 1.
    bins = np.maximum(array - (FIRST_KNOWN_INDEX - 1), 0)
    return np.bincount(bins, minlength=categories + 1).astype(np.int64)


def _values(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise InvalidRequest(f"values must be a non-empty 1-D array, got shape {array.shape}")
    if np.isinf(array).any():
        first = int(np.flatnonzero(np.isinf(array))[0])
        raise InvalidRequest(f"values must be finite or NaN; row {first} is {array[first]}")
    return array


def _shares(counts: npt.NDArray[np.int64]) -> tuple[float, ...]:
    return tuple(float(share) for share in counts / counts.sum())


class MonitoringBaseline(_Frozen):
    """What production is compared with: bins and shares on the training rows.

    Attributes
    ----------
    rows : int
        Training rows the shares come from.
    scores : mapping of str to NumericBins
        Per binary task, its predicted probability of the event.
    numeric : mapping of str to NumericBins
        Per numeric bank feature, in raw units.
    categorical : mapping of str to CategoryBins
        Per categorical bank feature.
    """

    rows: int
    scores: dict[str, NumericBins]
    numeric: dict[str, NumericBins]
    categorical: dict[str, CategoryBins]


def fit_baseline(
    preprocessor: Preprocessor,
    raw_numeric: npt.NDArray[np.float64],
    categorical: npt.NDArray[np.int64],
    scores: Mapping[str, npt.NDArray[np.float64]],
) -> MonitoringBaseline:
    """The baseline of a version's training rows.

    Parameters
    ----------
    preprocessor : Preprocessor
    raw_numeric : ndarray of float64, shape (n, len(preprocessor.numeric))
        The rows' numeric bank features in raw units, NaN where missing: unclipped, as the
        gateway bins production values (the end bins are open).
    categorical : ndarray of int64, shape (n, len(preprocessor.categorical))
        The rows' encoded categories.
    scores : mapping of str to ndarray of float64
        Per binary task, the model's probability of the event on the same rows.
    """
    return MonitoringBaseline(
        rows=len(raw_numeric),
        scores={task: NumericBins.fit(score, BASELINE_BINS) for task, score in scores.items()},
        numeric={
            state.name: NumericBins.fit(raw_numeric[:, j], BASELINE_BINS)
            for j, state in enumerate(preprocessor.numeric)
        },
        categorical={
            state.name: CategoryBins.fit(categorical[:, j], state.vocabulary)
            for j, state in enumerate(preprocessor.categorical)
        },
    )
