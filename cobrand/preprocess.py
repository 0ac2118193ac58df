"""Per-party feature preprocessing, fitted on that party's own training rows only.

A `Preprocessor` is fitted by one party on the TRAIN rows of its own `PartyTable` and never sees
the other party's data. It turns a table into model inputs:

- numeric: missing values imputed with the training median, values clipped at training
  quantiles (0.5% and 99.5% by default) and robustly scaled, ``(x - median) / IQR``, followed by
  one 0/1 missing indicator per column that had missing values in training;
- categorical: values trimmed and lower-cased, then indexed: 0 missing, 1 unseen or rare (seen
  fewer than ``min_count`` times in training), 2 onwards the training vocabulary.

It also keeps, per numeric column, quantile bin edges (16 bins by default) in the scaled space,
for the piecewise-linear encodings of the model. The fitted state is plain JSON (never pickle:
it is read back from disk and travels with a model version) with a SHA-256 digest of its
canonical form.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pydantic
from pydantic import ConfigDict, Field

from cobrand.errors import ConfigError, TableError
from cobrand.schema import PartySchema
from cobrand.tables import PartyTable

__all__ = [
    "FORMAT",
    "CategoricalState",
    "Encoded",
    "NumericState",
    "PreprocessConfig",
    "Preprocessor",
    "RowEncoder",
]

FORMAT: Final = "cobrand.preprocessor/1"
"""Format tag written into every serialized preprocessor; bumped on any change of meaning."""

MISSING_INDEX = 0
UNSEEN_INDEX = 1
FIRST_KNOWN_INDEX = 2
"""The encoded index of a categorical column's first known category (in vocabulary order)."""

# Bound on |scaled value|: a column whose IQR is tiny next to its clipped range (a spike of one
# value plus a long tail) would otherwise produce values too large for a float32 model input.
_MAX_SCALED = 1000.0


class _Frozen(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PreprocessConfig(_Frozen):
    """How to fit a preprocessor.

    Attributes
    ----------
    min_count : int, default 5
        A category seen fewer times than this in training is encoded as unseen (index 1).
    clip_quantiles : (float, float), default (0.005, 0.995)
        Numeric values are clipped at these training quantiles before scaling.
    n_bins : int, default 16
        Quantile bins per numeric column for piecewise-linear encodings.
    """

    min_count: Annotated[int, Field(ge=1)] = 5
    clip_quantiles: tuple[
        Annotated[float, Field(ge=0.0, le=0.5)], Annotated[float, Field(ge=0.5, le=1.0)]
    ] = (0.005, 0.995)
    n_bins: Annotated[int, Field(ge=2, le=1024)] = 16


class NumericState(_Frozen):
    """What training taught about one numeric column.

    Attributes
    ----------
    name : str
    median : float
        Imputed for a missing value; maps to 0.
    scale : float
        Divisor after centring: the IQR, or a fallback for a nearly constant column.
    low, high : float
        Clipping bounds (training quantiles), in raw units.
    missing_indicator : bool
        Whether training had missing values, so the output carries a 0/1 column for them.
    bin_edges : tuple of float
        Strictly increasing quantile edges of the clipped training values, in scaled units.
    """

    name: str
    median: float
    scale: Annotated[float, Field(gt=0.0)]
    low: float
    high: float
    missing_indicator: bool
    bin_edges: Annotated[tuple[float, ...], Field(min_length=1)]

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> NumericState:
        if not self.low <= self.median <= self.high:
            raise ValueError(f"{self.name}: needs low <= median <= high")
        if any(b <= a for a, b in zip(self.bin_edges, self.bin_edges[1:], strict=False)):
            raise ValueError(f"{self.name}: bin_edges must be strictly increasing")
        return self


class CategoricalState(_Frozen):
    """The training vocabulary of one categorical column (normalized values, index 2 onwards)."""

    name: str
    vocabulary: tuple[str, ...]

    @pydantic.field_validator("vocabulary")
    @classmethod
    def _unique(cls, vocabulary: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary values must be unique")
        return vocabulary


@dataclass(frozen=True)
class Encoded:
    """Model inputs for the rows of one table.

    Attributes
    ----------
    numeric : ndarray of float32, shape (n, d)
        Scaled numeric features, then the missing indicators (see
        `Preprocessor.numeric_outputs`); always finite.
    categorical : ndarray of int64, shape (n, c)
        Category indices: 0 missing, 1 unseen or rare, 2.. known (see
        `Preprocessor.cardinalities`).
    """

    numeric: npt.NDArray[np.float32]
    categorical: npt.NDArray[np.int64]


def _normalized(values: npt.NDArray[np.object_]) -> pa.Array:
    """Trimmed, lower-cased strings; null for missing or blank."""
    text = pc.utf8_lower(pc.utf8_trim_whitespace(pa.array(values, type=pa.string())))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _normalized_one(text: str | None) -> str | None:
    """`_normalized` of one value."""
    if text is None:
        return None
    if text.isascii():
        # On ASCII, str.strip and str.lower trim and fold exactly what Arrow's utf8 kernels do
        # (tests/cobrand/test_row_encoder.py); other text goes through those kernels themselves.
        return text.strip().lower() or None
    normalized: str | None = _normalized(np.array([text], dtype=object))[0].as_py()
    return normalized


class _NumericScaling:
    """The numeric half of `Preprocessor.transform`, its per-column constants gathered once."""

    def __init__(self, states: tuple[NumericState, ...]) -> None:
        self.median = np.array([s.median for s in states])
        self.low = np.array([s.low for s in states])
        self.high = np.array([s.high for s in states])
        self.scale = np.array([s.scale for s in states])
        self.indicators = [j for j, s in enumerate(states) if s.missing_indicator]

    def apply(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        """Scaled features then missing indicators of `values`, shape (n, d), NaN missing."""
        missing = np.isnan(values)
        median, low, high, scale = self.median, self.low, self.high, self.scale
        scaled = (np.clip(np.where(missing, median, values), low, high) - median) / scale
        return np.hstack([scaled, missing[:, self.indicators]]).astype(np.float32)


def _fit_numeric(
    name: str, values: npt.NDArray[np.float64], config: PreprocessConfig
) -> NumericState:
    observed = values[~np.isnan(values)]
    if observed.size == 0:
        # Never seen in training: only its missingness can carry information.
        return NumericState(
            name=name,
            median=0.0,
            scale=1.0,
            low=0.0,
            high=0.0,
            missing_indicator=True,
            bin_edges=(0.0,),
        )
    low, q25, median, q75, high = np.quantile(
        observed, [config.clip_quantiles[0], 0.25, 0.5, 0.75, config.clip_quantiles[1]]
    )
    spread = q75 - q25 if q75 > q25 else (high - low) / 2.0
    scale = max(spread, (high - low) / _MAX_SCALED) or 1.0
    clipped = np.clip(observed, low, high)
    # Edges at observed values: a count column gets edges at its counts, not between them.
    edges = np.quantile(clipped, np.linspace(0.0, 1.0, config.n_bins + 1), method="inverted_cdf")
    return NumericState(
        name=name,
        median=float(median),
        scale=float(scale),
        low=float(low),
        high=float(high),
        missing_indicator=bool(observed.size < values.size),
        bin_edges=tuple(float(e) for e in np.unique((edges - median) / scale)),
    )


def _fit_categorical(
    name: str, values: npt.NDArray[np.object_], config: PreprocessConfig
) -> CategoricalState:
    counts = pc.value_counts(_normalized(values).drop_null())
    kept = pc.filter(
        counts.field("values"), pc.greater_equal(counts.field("counts"), config.min_count)
    )
    return CategoricalState(name=name, vocabulary=tuple(sorted(kept.to_pylist())))


class Preprocessor(_Frozen):
    """A party's fitted preprocessing; build with `fit` or `from_json`.

    Attributes
    ----------
    format : str
        `FORMAT`.
    party : {"bank", "partner"}
    config : PreprocessConfig
    train_rows : int
        Rows it was fitted on.
    numeric : tuple of NumericState
        In schema order.
    categorical : tuple of CategoricalState
        In schema order.
    """

    format: Literal["cobrand.preprocessor/1"] = FORMAT
    party: Literal["bank", "partner"]
    config: PreprocessConfig
    train_rows: Annotated[int, Field(ge=1)]
    numeric: tuple[NumericState, ...]
    categorical: tuple[CategoricalState, ...]

    @classmethod
    def fit(
        cls, table: PartyTable, schema: PartySchema, config: PreprocessConfig | None = None
    ) -> Preprocessor:
        """Fit on the TRAIN rows (split code 0) of `table`; other rows are never read.

        Parameters
        ----------
        table : PartyTable
            The party's own table, loaded with `schema`.
        schema : PartySchema
            Names the feature columns, recorded so a model version can check its inputs.
        config : PreprocessConfig, optional

        Returns
        -------
        Preprocessor

        Raises
        ------
        TableError
            The table has no training rows, or does not have the schema's feature columns.
        """
        config = config or PreprocessConfig()
        _check_shape(table, schema.numeric_features, schema.categorical_features)
        train = table.split == 0
        if not train.any():
            raise TableError(f"{table.source}: no training rows to fit the preprocessing on")
        numeric = table.numeric[train]
        categorical = table.categorical[train]
        return cls(
            party=schema.party,
            config=config,
            train_rows=int(train.sum()),
            numeric=tuple(
                _fit_numeric(name, numeric[:, j], config)
                for j, name in enumerate(schema.numeric_features)
            ),
            categorical=tuple(
                _fit_categorical(name, categorical[:, j], config)
                for j, name in enumerate(schema.categorical_features)
            ),
        )

    @property
    def numeric_outputs(self) -> tuple[str, ...]:
        """Names of the columns of `Encoded.numeric`: features, then ``<name>__missing``."""
        return tuple(s.name for s in self.numeric) + tuple(
            f"{s.name}__missing" for s in self.numeric if s.missing_indicator
        )

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Number of distinct indices per categorical column (vocabulary + missing + unseen)."""
        return tuple(len(s.vocabulary) + FIRST_KNOWN_INDEX for s in self.categorical)

    def check_schema(self, schema: PartySchema) -> None:
        """Refuse a schema whose party or feature columns differ from the fitted ones.

        Raises
        ------
        ConfigError
            Naming the first difference.
        """
        fitted = (
            self.party,
            tuple(s.name for s in self.numeric),
            tuple(s.name for s in self.categorical),
        )
        given = (schema.party, schema.numeric_features, schema.categorical_features)
        for what, mine, theirs in zip(
            ("party", "numeric features", "categorical features"), fitted, given, strict=True
        ):
            if mine != theirs:
                raise ConfigError(
                    f"preprocessor was fitted with {what} {mine}, the schema has {theirs}"
                )

    def transform(self, table: PartyTable) -> Encoded:
        """Encode every row of `table` (any split, unseen values included).

        Parameters
        ----------
        table : PartyTable
            Loaded with a schema that has the fitted feature columns.

        Returns
        -------
        Encoded

        Raises
        ------
        TableError
            The table's feature columns do not match the fitted ones in number.
        """
        _check_shape(
            table,
            tuple(s.name for s in self.numeric),
            tuple(s.name for s in self.categorical),
        )
        numeric = _NumericScaling(self.numeric).apply(table.numeric)
        categorical = np.empty((len(table), len(self.categorical)), dtype=np.int64)
        for j, state in enumerate(self.categorical):
            text = _normalized(table.categorical[:, j])
            known = pc.index_in(text, value_set=pa.array(state.vocabulary, type=pa.string()))
            index = pc.fill_null(pc.add(known, FIRST_KNOWN_INDEX), UNSEEN_INDEX)
            categorical[:, j] = pc.if_else(pc.is_null(text), MISSING_INDEX, index).to_numpy()
        return Encoded(numeric=numeric, categorical=categorical)

    def row_encoder(self) -> RowEncoder:
        """This preprocessor's `transform` for one row at a time, without a table."""
        return RowEncoder(self)

    def to_json(self) -> str:
        """The canonical JSON form: sorted keys, no whitespace, ASCII; `digest` hashes it."""
        return json.dumps(
            self.model_dump(mode="json"),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Preprocessor:
        """Read a preprocessor written by `to_json`.

        Raises
        ------
        ConfigError
            Not JSON, another format version, or a field missing or out of range (named).
        """
        try:
            return cls.model_validate_json(text)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "document"
            raise ConfigError(
                f"preprocessor JSON: {where}: {first['msg']} ({err.error_count()} problems)"
            ) from err

    def digest(self) -> bytes:
        """SHA-256 of `to_json`: two preprocessors with one digest encode alike."""
        return hashlib.sha256(self.to_json().encode("ascii")).digest()


def _check_shape(table: PartyTable, numeric: tuple[str, ...], categorical: tuple[str, ...]) -> None:
    if table.numeric.shape[1] != len(numeric) or table.categorical.shape[1] != len(categorical):
        raise TableError(
            f"{table.source}: table has {table.numeric.shape[1]} numeric and "
            f"{table.categorical.shape[1]} categorical features; expected {len(numeric)} "
            f"({', '.join(numeric)}) and {len(categorical)} ({', '.join(categorical)})"
        )


class RowEncoder:
    """`Preprocessor.transform` of one row, bit for bit, without building a `PartyTable`.

    Serving encodes one application at a time; a one-row table and Arrow kernels cost far more
    than the arithmetic. The numeric half is the very code `transform` runs; the categorical half
    looks values up in a dictionary of the vocabulary after `_normalized_one`.

    Parameters
    ----------
    preprocessor : Preprocessor
    """

    def __init__(self, preprocessor: Preprocessor) -> None:
        self._numeric = _NumericScaling(preprocessor.numeric)
        self._width = len(preprocessor.numeric)
        self._indices = tuple(
            {value: FIRST_KNOWN_INDEX + i for i, value in enumerate(state.vocabulary)}
            for state in preprocessor.categorical
        )

    def encode(self, numeric: Sequence[float], categorical: Sequence[str | None]) -> Encoded:
        """Encode one row, as `Preprocessor.transform` encodes it in a table.

        Parameters
        ----------
        numeric : sequence of float, length d
            In the fitted column order; NaN where missing.
        categorical : sequence of str or None, length c
            In the fitted column order, as given (normalized here); None where missing.

        Returns
        -------
        Encoded
            With one row.

        Raises
        ------
        TableError
            The row does not have the fitted number of numeric and categorical values.
        """
        if len(numeric) != self._width or len(categorical) != len(self._indices):
            raise TableError(
                f"one row of {len(numeric)} numeric and {len(categorical)} categorical values; "
                f"expected {self._width} and {len(self._indices)}"
            )
        indices = []
        for value, index in zip(categorical, self._indices, strict=True):
            text = _normalized_one(value)
            indices.append(MISSING_INDEX if text is None else index.get(text, UNSEEN_INDEX))
        return Encoded(
            numeric=self._numeric.apply(np.array([numeric], dtype=np.float64)),
            categorical=np.array([indices], dtype=np.int64),
        )
