"""Vectorised draws and Arrow column builders shared by the bank and partner generators."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "categorical_column",
    "choose_by_logits",
    "messy_categorical_column",
    "numeric_column",
    "sigmoid",
]


def sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Logistic function, elementwise."""
    return 1.0 / (1.0 + np.exp(-x))


def choose_by_logits(
    rng: np.random.Generator, logits: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """Draw one category per row with probabilities softmax(logits).

    Inverse-CDF sampling: one uniform per row instead of one Gumbel per cell. A logit of -inf
    rules a category out for that row.

    Parameters
    ----------
    rng : numpy.random.Generator
    logits : ndarray of float64, shape (n, k)
        Overwritten: at millions of rows a scratch copy would cost hundreds of megabytes.

    Returns
    -------
    ndarray of int64, shape (n,)
        Chosen column per row.
    """
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    np.cumsum(logits, axis=1, out=logits)
    threshold = rng.random(logits.shape[0]) * logits[:, -1]
    chosen: npt.NDArray[np.int64] = np.count_nonzero(logits <= threshold[:, None], axis=1)
    return chosen


def numeric_column(
    values: npt.NDArray[np.float64] | npt.NDArray[np.int64],
    missing: npt.NDArray[np.bool_],
    *,
    decimals: int | None = None,
) -> pa.Array:
    """An Arrow numeric column with nulls where `missing`.

    Parameters
    ----------
    values : ndarray of float64 or int64, shape (n,)
    missing : ndarray of bool, shape (n,)
    decimals : int, optional
        Round floats to this many decimals (files hold what a source system would print).

    Returns
    -------
    pyarrow.Array of float64 or int64, length n
    """
    return pa.array(values if decimals is None else np.round(values, decimals), mask=missing)


def categorical_column(
    names: Sequence[str], index: npt.NDArray[np.int64], missing: npt.NDArray[np.bool_]
) -> pa.Array:
    """An Arrow string column holding ``names[index]``, null where `missing`.

    Parameters
    ----------
    names : sequence of str
    index : ndarray of int64, shape (n,)
        Index into `names` per row.
    missing : ndarray of bool, shape (n,)

    Returns
    -------
    pyarrow.StringArray, length n
    """
    return pc.take(pa.array(list(names), type=pa.string()), pa.array(index, mask=missing))


def messy_categorical_column(
    rng: np.random.Generator,
    names: Sequence[str],
    index: npt.NDArray[np.int64],
    missing: npt.NDArray[np.bool_],
    *,
    messy_share: float,
) -> pa.Array:
    """Like `categorical_column`, but a share of rows typed by hand: case and spacing vary.

    Parameters
    ----------
    rng : numpy.random.Generator
    names : sequence of str
        Clean spellings.
    index : ndarray of int64, shape (n,)
    missing : ndarray of bool, shape (n,)
    messy_share : float
        Share of rows written as lower case, upper case or with stray spaces.

    Returns
    -------
    pyarrow.StringArray, length n
    """
    clean = categorical_column(names, index, missing)
    variants = [
        clean,
        pc.utf8_lower(clean),
        pc.utf8_upper(clean),
        pc.binary_join_element_wise(" ", clean, "  ", ""),
    ]
    messy = rng.random(index.size) < messy_share
    choice = np.where(messy, rng.integers(1, len(variants), size=index.size), 0)
    return pc.choose(pa.array(choice), *variants)
