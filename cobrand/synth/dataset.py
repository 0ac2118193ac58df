"""A whole synthetic co-brand data set: both tables, both schemas and the federation file.

`generate_tables` draws the people once and derives both parties' tables from them in memory;
`write_dataset` adds the schema and federation files and writes everything to one directory::

    federation.yaml        the same file both parties hold
    bank.schema.yaml       the bank's table description (identifier, features, three labels)
    bank.csv               or bank.parquet
    partner.schema.yaml    the partner's table description (no labels)
    partner.csv            or partner.parquet

The schemas are built as `PartySchema` objects and dumped, so a generated set always loads.
The same configuration gives byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import yaml

from cobrand.errors import InvalidRequest
from cobrand.federation import Federation, IdentifierKindEntry
from cobrand.identifiers import IDENTIFIER_KINDS
from cobrand.schema import (
    BinaryLabel,
    CategoricalLabel,
    Feature,
    IdentifierColumn,
    Labels,
    PartySchema,
    SplitSpec,
)
from cobrand.synth import bank, partner
from cobrand.synth.phones import (
    BANK_STYLE_SHARES,
    PARTNER_STYLE_SHARES,
    STYLES,
    corrupt_mobiles,
    draw_styles,
    format_mobiles,
)
from cobrand.synth.population import draw_population

__all__ = [
    "FEDERATION_ID",
    "DatasetFiles",
    "SynthConfig",
    "SynthTables",
    "TableFormat",
    "bank_schema",
    "generate_tables",
    "partner_schema",
    "synth_federation",
    "write_dataset",
]

TableFormat = Literal["csv", "parquet"]
FEDERATION_ID: Final = "cobrand-synth"
_IDENTIFIER_KIND: Final = "mobile_cn"


@dataclass(frozen=True)
class SynthConfig:
    """What to generate.

    Attributes
    ----------
    customers : int
        Bank customers (rows of the bank table), at least 10.
    seed : int
        Seed of every random draw, and of the parties' hashed train/valid/test split.
    partner_ratio : float, default 3.0
        Partner users per bank customer.
    overlap : float, default 0.4
        Share of bank customers who are also partner users.
    invalid_share : float, default 0.001
        Share of partner rows whose phone number cannot be read; when positive the partner
        schema says ``invalid: drop`` so the loader counts and drops them.
    table_format : {"csv", "parquet"}, default "csv"
    """

    customers: int
    seed: int
    partner_ratio: float = 3.0
    overlap: float = 0.4
    invalid_share: float = 0.001
    table_format: TableFormat = "csv"

    def __post_init__(self) -> None:
        if self.customers < 10:
            raise InvalidRequest(f"customers must be at least 10, got {self.customers}")
        if self.seed < 0:
            raise InvalidRequest(f"seed must be non-negative, got {self.seed}")
        if not 0.0 <= self.overlap <= 1.0:
            raise InvalidRequest(f"overlap must be between 0 and 1, got {self.overlap}")
        if self.partner_ratio < self.overlap:
            raise InvalidRequest(
                f"partner_ratio ({self.partner_ratio}) must be at least overlap "
                f"({self.overlap}): the shared customers are partner users too"
            )
        if not 0.0 <= self.invalid_share < 0.5:
            raise InvalidRequest(f"invalid_share must be in [0, 0.5), got {self.invalid_share}")
        if self.table_format not in ("csv", "parquet"):
            raise InvalidRequest(f"table_format must be csv or parquet, got {self.table_format!r}")

    @property
    def n_overlap(self) -> int:
        """Bank customers who are partner users."""
        return round(self.overlap * self.customers)

    @property
    def n_partner(self) -> int:
        """Partner users."""
        return max(round(self.partner_ratio * self.customers), self.n_overlap)


@dataclass(frozen=True)
class SynthTables:
    """Both parties' tables, in memory.

    Attributes
    ----------
    bank : pyarrow.Table
        Identifier, features and label columns, one row per bank customer.
    partner : pyarrow.Table
        Identifier and feature columns, one row per partner user.
    overlap : int
        People in both tables.
    invalid_partner_ids : int
        Partner rows whose identifier cannot be read (the loader drops them).
    """

    bank: pa.Table
    partner: pa.Table
    overlap: int
    invalid_partner_ids: int


def generate_tables(config: SynthConfig) -> SynthTables:
    """Draw the population and both parties' tables.

    Parameters
    ----------
    config : SynthConfig

    Returns
    -------
    SynthTables
    """
    population_rng, bank_rng, partner_rng, id_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(config.seed).spawn(4)
    )
    population = draw_population(
        population_rng,
        n_bank=config.customers,
        n_partner=config.n_partner,
        n_overlap=config.n_overlap,
    )
    bank_style = draw_styles(id_rng, BANK_STYLE_SHARES, population.n_bank)
    bank_ids = format_mobiles(
        population.mobiles[population.bank_people], bank_style[population.bank_people]
    )

    people = population.partner_people
    partner_style = draw_styles(id_rng, PARTNER_STYLE_SHARES, people.size)
    # The same person is never written alike at the two parties: matching must canonicalize.
    shared = people < population.n_bank
    clash = shared & (partner_style == bank_style[np.where(shared, people, 0)])
    partner_style[clash] = (
        partner_style[clash] + id_rng.integers(1, len(STYLES), size=int(clash.sum()))
    ) % len(STYLES)
    partner_ids = format_mobiles(population.mobiles[people], partner_style)
    # Unreadable numbers only among partner-only users, so the overlap stays as configured.
    partner_only = np.flatnonzero(~shared)
    n_invalid = min(round(config.invalid_share * people.size), partner_only.size)
    unreadable = np.zeros(people.size, dtype=bool)
    unreadable[id_rng.choice(partner_only, size=n_invalid, replace=False)] = True
    partner_ids = pc.replace_with_mask(
        partner_ids,
        pa.array(unreadable),
        corrupt_mobiles(id_rng, population.mobiles[people[unreadable]]),
    )

    return SynthTables(
        bank=pa.table({bank.BANK_IDENTIFIER: bank_ids, **bank.bank_columns(bank_rng, population)}),
        partner=pa.table(
            {
                partner.PARTNER_IDENTIFIER: partner_ids,
                **partner.partner_columns(partner_rng, population),
            }
        ),
        overlap=config.n_overlap,
        invalid_partner_ids=n_invalid,
    )


def synth_federation() -> Federation:
    """The federation file of a synthetic set: matching by Chinese mobile number."""
    form = IDENTIFIER_KINDS[_IDENTIFIER_KIND].canonical_form
    return Federation(
        federation_id=FEDERATION_ID,
        version=1,
        identifier_kinds={_IDENTIFIER_KIND: IdentifierKindEntry(canonical_form=form)},
    )


def _features(numeric: tuple[str, ...], categorical: tuple[str, ...]) -> tuple[Feature, ...]:
    return tuple(Feature(name=name, type="numeric") for name in numeric) + tuple(
        Feature(name=name, type="categorical") for name in categorical
    )


def bank_schema(config: SynthConfig) -> PartySchema:
    """The bank's schema: mobile identifier, bank features, all three labels, hashed split."""
    return PartySchema(
        party="bank",
        identifier=IdentifierColumn(column=bank.BANK_IDENTIFIER, kind=_IDENTIFIER_KIND),
        features=_features(bank.BANK_NUMERIC, bank.BANK_CATEGORICAL),
        labels=Labels(
            risk=BinaryLabel(
                column=bank.RISK.column,
                kind="binary",
                positive=bank.RISK.positive,
                negative=bank.RISK.negative,
            ),
            instalment=BinaryLabel(
                column=bank.INSTALMENT.column,
                kind="binary",
                positive=bank.INSTALMENT.positive,
                negative=bank.INSTALMENT.negative,
            ),
            rights_package=CategoricalLabel(
                column=bank.RIGHTS_PACKAGE_COLUMN,
                kind="categorical",
                classes=bank.RIGHTS_PACKAGES,
            ),
        ),
        split=SplitSpec(seed=config.seed),
    )


def partner_schema(config: SynthConfig) -> PartySchema:
    """The partner's schema: phone identifier, partner features, the bank's split seed."""
    return PartySchema(
        party="partner",
        identifier=IdentifierColumn(
            column=partner.PARTNER_IDENTIFIER,
            kind=_IDENTIFIER_KIND,
            invalid="drop" if config.invalid_share > 0 else "reject",
        ),
        features=_features(partner.PARTNER_NUMERIC, partner.PARTNER_CATEGORICAL),
        # Both sides split by a keyed hash of the canonical id with one seed, so an aligned
        # person falls in the same split at both parties.
        split=SplitSpec(seed=config.seed),
    )


@dataclass(frozen=True)
class DatasetFiles:
    """Where `write_dataset` puts each file of a set, under one directory."""

    federation: Path
    bank_schema: Path
    bank_table: Path
    partner_schema: Path
    partner_table: Path

    @classmethod
    def under(cls, directory: Path, table_format: TableFormat) -> DatasetFiles:
        """The file paths of a set in `directory` with tables in `table_format`."""
        return cls(
            federation=directory / "federation.yaml",
            bank_schema=directory / "bank.schema.yaml",
            bank_table=directory / f"bank.{table_format}",
            partner_schema=directory / "partner.schema.yaml",
            partner_table=directory / f"partner.{table_format}",
        )


def _write_yaml(path: Path, document: dict[str, Any], comment: str) -> None:
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=100)
    path.write_text(f"# {comment}\n{body}", encoding="utf-8")


def _schema_document(schema: PartySchema) -> dict[str, Any]:
    document: dict[str, Any] = schema.model_dump(mode="json", exclude_none=True)
    if not schema.labels.present():
        del document["labels"]
    return document


def _write_table(table: pa.Table, path: Path, table_format: TableFormat) -> None:
    if table_format == "csv":
        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path)


def write_dataset(config: SynthConfig, directory: Path) -> tuple[DatasetFiles, SynthTables]:
    """Generate a set and write its five files into `directory` (created if missing).

    Existing files of the same names are replaced.

    Parameters
    ----------
    config : SynthConfig
    directory : Path

    Returns
    -------
    files : DatasetFiles
        Paths written.
    tables : SynthTables
        The tables as written, for a summary.
    """
    tables = generate_tables(config)
    files = DatasetFiles.under(directory, config.table_format)
    directory.mkdir(parents=True, exist_ok=True)
    origin = f"cobrand data synth --customers {config.customers} --seed {config.seed}"
    _write_yaml(
        files.federation,
        synth_federation().model_dump(mode="json"),
        f"Federation of a synthetic co-brand set ({origin}), the same at both parties.",
    )
    _write_yaml(
        files.bank_schema,
        _schema_document(bank_schema(config)),
        f"Bank table of a synthetic co-brand set ({origin}).",
    )
    _write_yaml(
        files.partner_schema,
        _schema_document(partner_schema(config)),
        f"Partner table of a synthetic co-brand set ({origin}).",
    )
    _write_table(tables.bank, files.bank_table, config.table_format)
    _write_table(tables.partner, files.partner_table, config.table_format)
    return files, tables
