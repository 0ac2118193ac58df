"""Party schema files: how one party's table maps to identifier, features, labels and split.

Each party describes its own table in YAML::

    party: bank                      # bank | partner
    identifier: {column: mobile, kind: mobile_cn, invalid: reject}   # or invalid: drop
    features:
      - {name: age, type: numeric}
      - {name: occupation, type: categorical}   # free strings allowed
    labels:                          # bank only; any subset of the three tasks
      risk: {column: bad_flag, kind: binary, positive: "1", negative: "0"}
      instalment: {column: took_instalment, kind: binary, positive: "yes", negative: "no"}
      rights_package: {column: package_taken, kind: categorical, classes: [shopping, travel]}
    split:                           # optional
      column: split                  # values train | valid | test; or, without a column:
      seed: 20261123                 # deterministic split by keyed hash of the identifier
      fractions: {train: 0.7, valid: 0.15, test: 0.15}

Label values are compared as trimmed strings. YAML reads an unquoted ``yes``/``no``/``true``
as a boolean, which would never equal the cell text ``"yes"``, so a boolean there is refused
with a hint to quote it; an unquoted number is taken as its text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import BeforeValidator, ConfigDict, Field, StringConstraints

from cobrand.errors import SchemaError
from cobrand.federation import Federation
from cobrand.identifiers import IDENTIFIER_KINDS
from cobrand.yamlfile import load_yaml_model

__all__ = [
    "SPLIT_NAMES",
    "BinaryLabel",
    "CategoricalLabel",
    "Feature",
    "IdentifierColumn",
    "Labels",
    "PartySchema",
    "SplitFractions",
    "SplitSpec",
    "load_party_schema",
]

SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")
"""Split names in code order: a table's split code is the index in this tuple."""

ColumnName = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]


def _label_value_as_text(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(
            'YAML read this value as a boolean; write it in quotes (e.g. "yes") to compare '
            "it with the cell text"
        )
    if isinstance(value, int):
        return str(value)
    return value


LabelValue = Annotated[
    str,
    BeforeValidator(_label_value_as_text),
    StringConstraints(min_length=1, strip_whitespace=True),
]


class _Frozen(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentifierColumn(_Frozen):
    """The column holding the customer identifier and how to read it."""

    column: ColumnName
    kind: str
    invalid: Literal["reject", "drop"] = "reject"
    """``reject``: an unreadable identifier is an error; ``drop``: such rows are counted and
    left out."""

    @pydantic.field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in IDENTIFIER_KINDS:
            raise ValueError(
                f"unknown identifier kind {kind!r}; known kinds: {', '.join(IDENTIFIER_KINDS)}"
            )
        return kind


class Feature(_Frozen):
    """One feature column: ``numeric`` (read as float) or ``categorical`` (any string)."""

    name: ColumnName
    type: Literal["numeric", "categorical"]


class BinaryLabel(_Frozen):
    """A yes/no task: which cell text means the event (positive) and which does not."""

    column: ColumnName
    kind: Literal["binary"]
    positive: LabelValue
    negative: LabelValue

    @pydantic.model_validator(mode="after")
    def _distinct_values(self) -> BinaryLabel:
        if self.positive == self.negative:
            raise ValueError(f"positive and negative are both {self.positive!r}")
        return self


class CategoricalLabel(_Frozen):
    """A K-class task; the class index is the position in `classes`."""

    column: ColumnName
    kind: Literal["categorical"]
    classes: Annotated[tuple[LabelValue, ...], Field(min_length=2)]

    @pydantic.field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            raise ValueError(f"classes listed more than once: {', '.join(repeated)}")
        return classes


class Labels(_Frozen):
    """The bank's label columns; any subset of the three tasks."""

    risk: BinaryLabel | None = None
    instalment: BinaryLabel | None = None
    rights_package: CategoricalLabel | None = None

    def present(self) -> dict[str, BinaryLabel | CategoricalLabel]:
        """The tasks this table has labels for, by task name, in declaration order."""
        tasks: dict[str, BinaryLabel | CategoricalLabel | None] = {
            "risk": self.risk,
            "instalment": self.instalment,
            "rights_package": self.rights_package,
        }
        return {name: label for name, label in tasks.items() if label is not None}


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class SplitFractions(_Frozen):
    """Shares of train, valid and test rows; they must sum to 1."""

    train: Annotated[float, Field(gt=0.0, le=1.0)] = 0.7
    valid: Fraction = 0.15
    test: Fraction = 0.15

    @pydantic.model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + valid + test must sum to 1, not {total:g}")
        return self


class SplitSpec(_Frozen):
    """Where the train/valid/test split comes from: a column, or a keyed hash of the id."""

    column: ColumnName | None = None
    seed: Annotated[int, Field(strict=True, ge=0, lt=2**64)] = 0
    fractions: SplitFractions = SplitFractions()

    @pydantic.model_validator(mode="after")
    def _column_or_hash(self) -> SplitSpec:
        # A seed or fractions beside a split column would be silently ignored.
        unused = sorted({"seed", "fractions"} & self.model_fields_set)
        if self.column is not None and unused:
            raise ValueError(
                f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} only used "
                "without a split column; remove them or the column"
            )
        return self


class PartySchema(_Frozen):
    """A party's table description, validated.

    Attributes
    ----------
    party : {"bank", "partner"}
    identifier : IdentifierColumn
    features : tuple of Feature
        At least one; numeric and categorical columns keep this order in a loaded table.
    labels : Labels
        Empty for the partner, which never holds labels.
    split : SplitSpec
    """

    party: Literal["bank", "partner"]
    identifier: IdentifierColumn
    features: Annotated[tuple[Feature, ...], Field(min_length=1)]
    labels: Labels = Labels()
    split: SplitSpec = SplitSpec()

    @pydantic.field_validator("labels")
    @classmethod
    def _labels_only_at_the_bank(cls, labels: Labels, info: pydantic.ValidationInfo) -> Labels:
        if info.data.get("party") == "partner" and labels.present():
            raise ValueError(
                "a partner schema holds no labels (they stay at the bank); "
                f"remove {', '.join(labels.present())}"
            )
        return labels

    @pydantic.model_validator(mode="after")
    def _each_column_used_once(self) -> PartySchema:
        uses: dict[str, list[str]] = {}
        for column, setting in self.column_settings():
            uses.setdefault(column, []).append(setting)
        twice = {column: settings for column, settings in uses.items() if len(settings) > 1}
        if twice:
            raise ValueError(
                "; ".join(
                    f"column {column!r} is used by {' and '.join(settings)}"
                    for column, settings in twice.items()
                )
            )
        return self

    def column_settings(self) -> list[tuple[str, str]]:
        """(column name, setting naming it) for every column the table must have."""
        settings = [(self.identifier.column, "identifier.column")]
        settings += [(f.name, f"features[{i}].name") for i, f in enumerate(self.features)]
        settings += [
            (lab.column, f"labels.{task}.column") for task, lab in self.labels.present().items()
        ]
        if self.split.column is not None:
            settings.append((self.split.column, "split.column"))
        return settings

    @property
    def numeric_features(self) -> tuple[str, ...]:
        """Names of the numeric feature columns, in schema order."""
        return tuple(f.name for f in self.features if f.type == "numeric")

    @property
    def categorical_features(self) -> tuple[str, ...]:
        """Names of the categorical feature columns, in schema order."""
        return tuple(f.name for f in self.features if f.type == "categorical")


def load_party_schema(path: Path, federation: Federation) -> PartySchema:
    """Read and validate a party schema file against the federation.

    Parameters
    ----------
    path : Path
        The party schema YAML file.
    federation : Federation
        The federation this party belongs to; the identifier kind must be one it lists.

    Raises
    ------
    SchemaError
        Naming the file and the key: unreadable or invalid YAML, unknown keys, a label block on
        a partner schema, a column used twice, fractions not summing to 1, or an identifier kind
        the federation does not list.
    """
    schema = load_yaml_model(path, PartySchema, SchemaError)
    kind = schema.identifier.kind
    if kind not in federation.identifier_kinds:
        raise SchemaError(
            f"{path}: identifier.kind: {kind!r} is not listed in federation "
            f"{federation.federation_id!r} (it lists {', '.join(federation.identifier_kinds)})"
        )
    return schema
