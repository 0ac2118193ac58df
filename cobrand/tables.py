"""Loading one party's table (CSV or Parquet) as its schema describes it.

`load_party_table` reads only the columns the schema names, judges every value itself and
returns a `PartyTable` of numpy arrays: canonical identifiers, numeric and categorical features,
labels per task and a train/valid/test split code per row.

CSV cells are all read as text, so types are ours to judge; Parquet columns may be stored as
numbers or text. Every problem is a `TableError` naming the file, the column (and the schema
setting that names it) and the first offending data row, counted from 1 after the header.
Nothing is dropped silently: under ``identifier.invalid: drop`` rows with unreadable identifiers
are left out and counted in `PartyTable.dropped_identifiers`; under ``reject`` the first one is
an error. Identifier values never appear in messages or logs.

Missing values: in numeric and categorical features an empty cell, ``NA``, ``nan`` or ``null``
(any case) is missing; in a label column only an empty cell is (that row does not train that
task); identifiers and split cells are never optional.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from cobrand.errors import TableError
from cobrand.identifiers import IDENTIFIER_KINDS
from cobrand.schema import (
    SPLIT_NAMES,
    BinaryLabel,
    CategoricalLabel,
    PartySchema,
    SplitFractions,
)
from cobrand.table_files import read_columns

__all__ = ["PartyTable", "hash_split", "load_party_table"]

logger = logging.getLogger(__name__)

_MISSING_TOKENS = pa.array(["", "na", "nan", "null"])
_NUMBER = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_SPLIT_PERSON = b"cobrand.split"


@dataclass(frozen=True)
class PartyTable:
    """One party's table, loaded and checked; row i of every array is the same customer.

    Attributes
    ----------
    ids : numpy.ndarray of object (str), shape (n,)
        Canonical identifiers, unique.
    numeric : numpy.ndarray of float64, shape (n, n_numeric)
        Numeric features in schema order; NaN where missing.
    categorical : numpy.ndarray of object (str or None), shape (n, n_categorical)
        Categorical features in schema order, as written; None where missing.
    labels : dict of str to numpy.ndarray, each shape (n,)
        Per task present: binary -> float32 1 / 0 / NaN (missing); categorical -> int64 class
        index, -1 where missing.
    split : numpy.ndarray of int8, shape (n,)
        0 train, 1 valid, 2 test.
    dropped_identifiers : int
        Rows left out because their identifier was unreadable (``invalid: drop``).
    source : Path
        The file the table was read from.
    """

    ids: npt.NDArray[np.object_]
    numeric: npt.NDArray[np.float64]
    categorical: npt.NDArray[np.object_]
    labels: dict[str, npt.NDArray[Any]]
    split: npt.NDArray[np.int8]
    dropped_identifiers: int
    source: Path

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class _Column:
    """A column being judged: where it came from, for error messages."""

    path: Path
    name: str
    setting: str
    rows: npt.NDArray[np.int64]  # 1-based data row number of each element

    def error(self, position: int, problem: str) -> TableError:
        return TableError(
            f"{self.path}: column {self.name!r} ({self.setting}): data row "
            f"{self.rows[position]}: {problem}"
        )


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _as_text(column: _Column, values: pa.Array) -> pa.Array:
    """Text of a column stored as text or numbers; missing values become empty strings."""
    if pa.types.is_floating(values.type):
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        try:
            values = pc.cast(values, pa.string())
        except pa.ArrowException as exc:
            raise TableError(
                f"{column.path}: column {column.name!r} ({column.setting}): cannot read values "
                f"of type {values.type} as text"
            ) from exc
    return pc.fill_null(values, "")


def _missing_feature(text: pa.Array) -> npt.NDArray[np.bool_]:
    folded = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    return np.asarray(pc.is_in(folded, value_set=_MISSING_TOKENS).to_numpy(zero_copy_only=False))


def _numeric(column: _Column, values: pa.Array) -> npt.NDArray[np.float64]:
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        numbers = np.asarray(
            pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
        infinite = np.isinf(numbers)  # NaN stored in Parquet is a missing value
        if infinite.any():
            first = int(np.argmax(infinite))
            raise column.error(first, f"{numbers[first]} is not a finite number")
        return numbers
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise TableError(
            f"{column.path}: column {column.name!r} ({column.setting}): a numeric feature "
            f"cannot be stored as {kind}"
        )
    text = pc.utf8_trim_whitespace(pc.fill_null(values, ""))
    missing = _missing_feature(text)
    try:
        present = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), text)
        numbers = np.asarray(
            pc.cast(present, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
        # Arrow also reads spellings such as "inf" or "Infinity"; only finite numbers count.
        bad = ~missing & ~np.isfinite(numbers)
    except pa.ArrowInvalid as exc:
        # Arrow does not say which row failed; the stricter pattern finds the first one.
        bad = ~(missing | pc.match_substring_regex(text, _NUMBER).to_numpy(zero_copy_only=False))
        if not bad.any():
            raise TableError(f"{column.path}: column {column.name!r}: {exc}") from exc
    if bad.any():
        first = int(np.argmax(bad))
        raise column.error(first, f"{_shown(text[first].as_py())} is not a finite number")
    return numbers


def _categorical(column: _Column, values: pa.Array) -> npt.NDArray[np.object_]:
    text = _as_text(column, values)
    out = np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)
    out[_missing_feature(text)] = None
    return out


def _index_in(text: pa.Array, declared: list[str]) -> npt.NDArray[np.float64]:
    """Position of each value in `declared`, NaN where it is none of them."""
    index = pc.index_in(text, value_set=pa.array(declared, type=pa.string()))
    return np.asarray(index.to_numpy(zero_copy_only=False), dtype=np.float64)


def _label(
    column: _Column, values: pa.Array, label: BinaryLabel | CategoricalLabel
) -> npt.NDArray[Any]:
    text = pc.utf8_trim_whitespace(_as_text(column, values))
    if isinstance(label, BinaryLabel):
        declared = [label.negative, label.positive]
        out_type: type[np.generic] = np.float32
    else:
        declared = list(label.classes)
        out_type = np.int64
    index = _index_in(text, declared)
    found = ~np.isnan(index)
    empty = np.asarray(pc.equal(text, "").to_numpy(zero_copy_only=False))
    bad = ~(found | empty)
    if bad.any():
        first = int(np.argmax(bad))
        raise column.error(
            first,
            f"label {_shown(text[first].as_py())} is none of the declared values "
            f"({', '.join(map(repr, declared))}) and not empty",
        )
    missing_code = np.nan if out_type is np.float32 else -1
    return np.where(found, np.nan_to_num(index), missing_code).astype(out_type)


def hash_split(
    ids: npt.NDArray[np.object_], seed: int, fractions: SplitFractions
) -> npt.NDArray[np.int8]:
    """Assign train/valid/test by a keyed hash of each canonical identifier.

    BLAKE2b keyed by `seed` maps each identifier to a uniform number in [0, 1), cut at the
    fractions. It depends on the identifier alone, not on row order or the rest of the table,
    so reruns agree and both parties, given the same seed, put a common customer in the same
    split.

    Parameters
    ----------
    ids : numpy.ndarray of object (str), shape (n,)
        Canonical identifiers.
    seed : int
        Non-negative; the hash key.
    fractions : SplitFractions
        Expected shares of train, valid and test.

    Returns
    -------
    numpy.ndarray of int8, shape (n,)
        0 train, 1 valid, 2 test.
    """
    keyed = hashlib.blake2b(key=seed.to_bytes(8, "big"), digest_size=8, person=_SPLIT_PERSON)

    def digest(identifier: str) -> bytes:
        # Copying the keyed state skips hashing the key block again for every identifier.
        h = keyed.copy()
        h.update(identifier.encode())
        return h.digest()

    digests = b"".join(map(digest, ids))
    uniform = np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64
    cuts = np.array([fractions.train, fractions.train + fractions.valid])
    codes: npt.NDArray[np.int8] = np.searchsorted(cuts, uniform, side="right").astype(np.int8)
    return codes


def _split_column(column: _Column, values: pa.Array) -> npt.NDArray[np.int8]:
    text = pc.utf8_lower(pc.utf8_trim_whitespace(_as_text(column, values)))
    codes = _index_in(text, list(SPLIT_NAMES))
    bad = np.isnan(codes)
    if bad.any():
        first = int(np.argmax(bad))
        raise column.error(
            first, f"split {_shown(text[first].as_py())} is not one of train, valid, test"
        )
    return codes.astype(np.int8)


def _identifiers(
    column: _Column, values: pa.Array, schema: PartySchema
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.bool_]]:
    kind = schema.identifier.kind
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    # Floats are refused: 1.0 and 1 would both read as "1" and silently become one customer.
    if not (
        pa.types.is_integer(values.type)
        or pa.types.is_string(values.type)
        or pa.types.is_large_string(values.type)
    ):
        raise TableError(
            f"{column.path}: column {column.name!r} (identifier.column): identifiers must be "
            f"stored as text or integers, not {values.type}"
        )
    canonical = IDENTIFIER_KINDS[kind].canonicalize(_as_text(column, values))
    invalid = canonical.invalid
    if schema.identifier.invalid == "reject" and invalid.any():
        raise column.error(
            int(np.argmax(invalid)),
            f"not a readable {kind} identifier ({int(invalid.sum())} such rows; "
            "identifier.invalid: drop would leave them out and count them)",
        )
    return canonical.values, ~invalid


def _check_unique(column: _Column, ids: npt.NDArray[np.object_]) -> None:
    # dictionary_encode numbers values in order of first appearance, so a row repeats an
    # earlier one exactly when its code is not above every code before it.
    codes = pa.array(ids, type=pa.string()).dictionary_encode().indices.to_numpy()
    before = np.concatenate([[-1], np.maximum.accumulate(codes)[:-1]])
    repeats = codes <= before
    if repeats.any():
        second = int(np.argmax(repeats))
        first = int(np.argmax(codes == codes[second]))
        raise column.error(
            second,
            f"identifier repeats the one in data row {column.rows[first]} after "
            f"canonicalization ({int(repeats.sum())} repeated rows)",
        )


def load_party_table(schema: PartySchema, path: Path) -> PartyTable:
    """Read and check a party's table as `schema` describes it.

    Parameters
    ----------
    schema : PartySchema
        The party's validated schema.
    path : Path
        A ``.csv`` (header row, UTF-8) or ``.parquet`` file.

    Returns
    -------
    PartyTable

    Raises
    ------
    TableError
        Naming the file, the column and the first offending data row: a missing column (with
        the closest existing name), a value that is not a number in a numeric feature, ``inf``,
        a label outside the declared values, a split other than train/valid/test, an unreadable
        identifier under ``invalid: reject``, an identifier repeated after canonicalization,
        or a table without rows.
    """
    setting_of = dict(schema.column_settings())
    table = read_columns(path, setting_of)
    if table.num_rows == 0:
        raise TableError(f"{path}: the table has no data rows")

    def column(name: str, rows: npt.NDArray[np.int64]) -> tuple[_Column, pa.Array]:
        return _Column(path, name, setting_of[name], rows), table.column(name).combine_chunks()

    all_rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
    ids, keep = _identifiers(*column(schema.identifier.column, all_rows), schema)
    dropped = int((~keep).sum())
    if dropped:
        logger.warning(
            "[Tables.Load] dropped %d rows with unreadable identifiers from %s", dropped, path
        )
        # From here on `column` reads the filtered table; `rows` keeps the file's row numbers.
        table, ids, rows = table.filter(pa.array(keep)), ids[keep], all_rows[keep]
        if table.num_rows == 0:
            raise TableError(
                f"{path}: no rows left after dropping {dropped} unreadable identifiers"
            )
    else:
        rows = all_rows
    _check_unique(column(schema.identifier.column, rows)[0], ids)

    numeric = np.empty((len(ids), len(schema.numeric_features)), dtype=np.float64)
    for j, name in enumerate(schema.numeric_features):
        numeric[:, j] = _numeric(*column(name, rows))
    categorical = np.empty((len(ids), len(schema.categorical_features)), dtype=object)
    for j, name in enumerate(schema.categorical_features):
        categorical[:, j] = _categorical(*column(name, rows))
    labels = {
        task: _label(*column(label.column, rows), label)
        for task, label in schema.labels.present().items()
    }
    split_spec = schema.split
    if split_spec.column is None:
        split = hash_split(ids, split_spec.seed, split_spec.fractions)
    else:
        split = _split_column(*column(split_spec.column, rows))
    logger.info("[Tables.Load] loaded %d rows from %s", len(ids), path)
    return PartyTable(ids, numeric, categorical, labels, split, dropped, path)
