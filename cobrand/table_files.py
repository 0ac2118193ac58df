"""Reading the columns a schema names from a CSV or Parquet file.

Only the file format is judged here (readable, header has each column once, every CSV line has
as many fields as the header); values are judged by `cobrand.tables`. Messages name the file
and, for a CSV line, its number, never its text, which holds an identifier.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cobrand.errors import TableError

__all__ = ["read_columns"]


def read_columns(path: Path, columns: Mapping[str, str]) -> pa.Table:
    """Read the named columns of a ``.csv`` or ``.parquet`` table.

    Parameters
    ----------
    path : Path
        The table; a CSV file has a header row and is UTF-8.
    columns : mapping of str to str
        The columns to read, in this order, each with the schema setting that names it
        (``features[2].name``) for messages; other columns are not read.

    Returns
    -------
    pyarrow.Table
        CSV columns are all text (empty cells are empty strings, never nulls); Parquet columns
        keep their stored types.

    Raises
    ------
    TableError
        Naming the file: an unsupported suffix, an unreadable file, a missing column (with
        the closest existing name), a column the header names twice, or a CSV line with the
        wrong number of fields (with its line number).
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise TableError(f"{path}: unsupported table format {suffix!r}; use .csv or .parquet")
    try:
        available = _csv_header(path) if suffix == ".csv" else pq.read_schema(path).names
    except (OSError, pa.ArrowException, UnicodeDecodeError, csv.Error) as exc:
        raise TableError(f"{path}: cannot read table: {exc}") from exc
    if not available:
        raise TableError(f"{path}: the table is empty (no header row)")
    _check_columns(path, available, columns)
    if suffix == ".parquet":
        try:
            return pq.read_table(path, columns=list(columns))
        except (OSError, pa.ArrowException) as exc:
            raise TableError(f"{path}: cannot read Parquet table: {exc}") from exc
    return _read_csv(path, list(columns))


def _csv_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as file:
        return next(csv.reader(file), [])


def _check_columns(path: Path, available: list[str], columns: Mapping[str, str]) -> None:
    problems = []
    for name, setting in columns.items():
        count = available.count(name)
        if count > 1:
            problems.append(f"column {name!r} ({setting}) appears {count} times in the header")
        elif count == 0:
            # Compared case-folded, so 'BAD' is offered for 'bad' too.
            folded = {column.casefold(): column for column in available}
            close = difflib.get_close_matches(name.casefold(), list(folded), n=1)
            hint = f"; did you mean {folded[close[0]]!r}?" if close else ""
            problems.append(f"column {name!r} ({setting}) not found{hint}")
    if problems:
        raise TableError(f"{path}: {'; '.join(problems)}")


def _read_csv(path: Path, columns: list[str]) -> pa.Table:
    convert = pa_csv.ConvertOptions(
        column_types=dict.fromkeys(columns, pa.string()),
        include_columns=columns,
        strings_can_be_null=False,
    )
    try:
        return pa_csv.read_csv(path, convert_options=convert)
    except pa.ArrowInvalid as exc:
        invalid_rows: list[Any] = []

        def first_bad(row: Any) -> str:
            invalid_rows.append(row)
            return "error"

        # Threaded reading does not know line numbers; read again, one thread, to find it.
        with contextlib.suppress(pa.ArrowInvalid):
            pa_csv.read_csv(
                path,
                read_options=pa_csv.ReadOptions(use_threads=False),
                parse_options=pa_csv.ParseOptions(invalid_row_handler=first_bad),
                convert_options=convert,
            )
        if not invalid_rows:
            raise TableError(f"{path}: cannot read CSV table: {exc}") from exc
        row = invalid_rows[0]  # its text is left out: it holds an identifier
        raise TableError(
            f"{path}: line {row.number}: {row.actual_columns} fields, expected "
            f"{row.expected_columns}"
        ) from exc
