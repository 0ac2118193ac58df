"""Typed application fields to the bank's feature row, encoded exactly as training encoded it.

An application arrives as bank fields by schema column name, each a number, a category or
missing (`FieldValue`, the domain twin of scoring.proto's ``FieldValue``). `ApplicationEncoder`
checks them and encodes them with the model version's own bank `Preprocessor`, one row at a time
(`cobrand.preprocess.RowEncoder`: the training transform's own arithmetic and vocabulary, proved
equal to it bit for bit), so training and serving cannot drift apart.

For an existing bank customer, the bank's stored row fills the fields the application leaves
out (`StoredFeatures`, e.g. `stored_features_of` over the bank's loaded table); fields the
application gives take precedence.

Refused with `InvalidRequest` naming the field: an unknown field name, a number for a
categorical field or a category for a numeric one, a number that is NaN or infinite, a negative
value of a field configured as non-negative, a category outside a configured closed set, and a
required field that is missing. A bank schema only names and types its columns, so what is
required, non-negative or closed comes from `gateway.config.ApplicationRules`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cobrand.errors import InvalidRequest
from cobrand.preprocess import Preprocessor
from cobrand.tables import PartyTable
from gateway.config import ApplicationRules

__all__ = [
    "ApplicationEncoder",
    "BankRow",
    "FieldValue",
    "StoredFeatures",
    "stored_features_of",
]

FieldValue = float | str | None
"""A number, a category, or None for missing (as scoring.proto's ``FieldValue`` oneof)."""

StoredFeatures = Callable[[str], Mapping[str, FieldValue] | None]
"""The bank's stored fields of a customer by canonical identifier; None for a non-customer."""


@dataclass(frozen=True)
class BankRow:
    """One application's bank features, as given and as the model reads them.

    Attributes
    ----------
    values : mapping of str to float, str or None
        Every bank feature: numbers as floats, categories trimmed and lower-cased as the
        preprocessor reads them, None where missing. What hard rules and reason texts read.
    numeric : ndarray of float32, shape (d,)
    categorical : ndarray of int64, shape (c,)
        The encoded row, as ``Preprocessor.transform`` gives it.
    """

    values: Mapping[str, FieldValue]
    numeric: npt.NDArray[np.float32]
    categorical: npt.NDArray[np.int64]


def stored_features_of(table: PartyTable, preprocessor: Preprocessor) -> StoredFeatures:
    """The bank's stored rows of `table` as `StoredFeatures`, by canonical identifier.

    Parameters
    ----------
    table : PartyTable
        The bank's own table, loaded with the schema the version was trained with.
    preprocessor : Preprocessor
        The version's; names the feature columns in table order.
    """
    numeric = [state.name for state in preprocessor.numeric]
    categorical = [state.name for state in preprocessor.categorical]
    row_of = {str(identifier): row for row, identifier in enumerate(table.ids)}

    def stored(customer: str) -> Mapping[str, FieldValue] | None:
        row = row_of.get(customer)
        if row is None:
            return None
        fields: dict[str, FieldValue] = {}
        for j, name in enumerate(numeric):
            value = float(table.numeric[row, j])
            fields[name] = None if math.isnan(value) else value
        for j, name in enumerate(categorical):
            fields[name] = table.categorical[row, j]
        return fields

    return stored


class ApplicationEncoder:
    """Checks application fields and encodes them with a version's bank preprocessor.

    Parameters
    ----------
    preprocessor : Preprocessor
        The model version's bank preprocessor.
    rules : ApplicationRules
        Required, non-negative and closed-set fields; their names are assumed checked against
        the preprocessor (`gateway.config.DecisionConfig.check_fields`).
    """

    def __init__(self, preprocessor: Preprocessor, rules: ApplicationRules) -> None:
        self._rows = preprocessor.row_encoder()
        self._numeric = tuple(state.name for state in preprocessor.numeric)
        self._categorical = tuple(state.name for state in preprocessor.categorical)
        self._known = frozenset(self._numeric + self._categorical)
        self._required = frozenset(rules.required)
        self._non_negative = frozenset(rules.non_negative)
        self._closed = {
            name: frozenset(value.lower() for value in values)
            for name, values in rules.categories.items()
        }

    def encode(
        self,
        fields: Mapping[str, FieldValue],
        stored: Mapping[str, FieldValue] | None = None,
    ) -> BankRow:
        """Check the fields, complete them from the stored row and encode them.

        Parameters
        ----------
        fields : mapping of str to float, str or None
            The application's bank fields by schema column name.
        stored : mapping of str to float, str or None, optional
            The bank's stored fields of an existing customer; the application's take
            precedence (an explicit None in `fields` overrides a stored value too).

        Returns
        -------
        BankRow

        Raises
        ------
        InvalidRequest
            Naming the field (and ``(stored)`` for a stored value): unknown name, wrong kind,
            NaN or infinite, negative where non-negative, outside a closed set, or a required
            field missing.
        """
        if not self._known.issuperset(fields):
            unknown = sorted(set(fields) - self._known)
            raise InvalidRequest(
                f"field {unknown[0]!r}: not a bank field of the model "
                f"(fields: {', '.join(self._numeric + self._categorical)})"
            )
        merged = {**(stored or {}), **fields}
        values: dict[str, FieldValue] = {}
        numeric: list[float] = []
        for name in self._numeric:
            number = self._number(name, merged.get(name), name not in fields)
            values[name] = number
            numeric.append(math.nan if number is None else number)
        categorical: list[str | None] = []
        for name in self._categorical:
            given, values[name] = self._category(name, merged.get(name), name not in fields)
            # The preprocessor normalizes the text as given, exactly as in training.
            categorical.append(given)
        missing = sorted(name for name in self._required if values[name] is None)
        if missing:
            raise InvalidRequest(f"field {missing[0]!r}: required, and missing")
        encoded = self._rows.encode(numeric, categorical)
        return BankRow(
            values=values, numeric=encoded.numeric[0], categorical=encoded.categorical[0]
        )

    def _number(self, name: str, value: object, stored: bool) -> float | None:
        if value is None:
            return None
        # bool is an int to Python, but never a number an applicant typed.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(
                f"{_where(name, stored)}: a numeric field needs a number, got a category"
            )
        number = float(value)
        if not math.isfinite(number):
            raise InvalidRequest(
                f"{_where(name, stored)}: {number} is not a finite number; send missing instead"
            )
        if number < 0 and name in self._non_negative:
            raise InvalidRequest(f"{_where(name, stored)}: must not be negative, got {number:g}")
        return number

    def _category(self, name: str, value: object, stored: bool) -> tuple[str | None, str | None]:
        """The category as given and as the preprocessor reads it (None when missing)."""
        if value is None:
            return None, None
        if not isinstance(value, str):
            raise InvalidRequest(
                f"{_where(name, stored)}: a categorical field needs a category, got a number"
            )
        # Read as the preprocessor reads categories: trimmed, lower case, blank is missing.
        text = value.strip().lower()
        if not text:
            return None, None
        closed = self._closed.get(name)
        if closed is not None and text not in closed:
            raise InvalidRequest(
                f"{_where(name, stored)}: unknown category; expected one of "
                f"{', '.join(sorted(closed))}"
            )
        return value, text


def _where(name: str, stored: bool) -> str:
    """How an error names a field (written only when one is raised)."""
    return f"field {name!r}{' (stored)' if stored else ''}"
