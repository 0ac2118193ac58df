"""`cobrand data`: generate a synthetic co-brand set, or check a party's table against its schema.

``cobrand data synth`` writes both parties' tables, schemas and the federation file;
``cobrand data check`` loads one table the way a party node will and prints what it found: rows,
dropped identifiers, missing values, label counts and split sizes. Neither prints identifiers or
feature values.
"""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from cobrand.commands.exits import cli_errors
from cobrand.federation import load_federation
from cobrand.schema import SPLIT_NAMES, BinaryLabel, PartySchema, load_party_schema
from cobrand.synth import SynthConfig, write_dataset
from cobrand.tables import PartyTable, load_party_table

__all__ = ["app", "check", "synth"]

app = typer.Typer(
    name="data",
    help="Synthetic co-brand data and party table checks.",
    no_args_is_help=True,
)


class TableFormatOption(enum.StrEnum):
    """Table file format choices on the command line."""

    CSV = "csv"
    PARQUET = "parquet"


def _counts(pairs: list[tuple[str, int]]) -> str:
    return " · ".join(f"{name} {count:,}" for name, count in pairs)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Directory to write the five files into.")],
    customers: Annotated[int, typer.Option(min=10, help="Bank customers (bank table rows).")],
    seed: Annotated[int, typer.Option(min=0, help="Seed of every draw and of the split.")],
    table_format: Annotated[
        TableFormatOption, typer.Option("--format", help="Table file format.")
    ] = TableFormatOption.CSV,
    partner_ratio: Annotated[
        float, typer.Option(min=0.0, help="Partner users per bank customer.")
    ] = 3.0,
    overlap: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of bank customers the partner knows.")
    ] = 0.4,
    invalid_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.49,
            help="Share of partner rows with unreadable phone numbers (0: partner schema "
            "rejects bad identifiers instead of dropping them).",
        ),
    ] = 0.001,
) -> None:
    """Write a synthetic co-brand set: federation file, both schemas and both tables.

    The same options give byte-identical files; files of the same names in OUT are replaced.
    """
    with cli_errors():
        config = SynthConfig(
            customers=customers,
            seed=seed,
            partner_ratio=partner_ratio,
            overlap=overlap,
            invalid_share=invalid_share,
            table_format=table_format.value,
        )
        started = time.perf_counter()
        files, tables = write_dataset(config, out)
        elapsed = time.perf_counter() - started
    typer.echo(f"wrote synthetic co-brand set to {out} in {elapsed:.2f} s")
    typer.echo(f"  federation  {files.federation.name}")
    typer.echo(
        f"  bank        {files.bank_table.name} ({tables.bank.num_rows:,} customers), "
        f"{files.bank_schema.name}"
    )
    typer.echo(
        f"  partner     {files.partner_table.name} ({tables.partner.num_rows:,} users, "
        f"{tables.invalid_partner_ids:,} unreadable phone numbers), {files.partner_schema.name}"
    )
    typer.echo(
        f"  overlap     {tables.overlap:,} bank customers are partner users "
        f"({tables.overlap / tables.bank.num_rows:.1%})"
    )


def _label_lines(schema: PartySchema, table: PartyTable) -> list[str]:
    lines = []
    for task, label in schema.labels.present().items():
        values = table.labels[task]
        if isinstance(label, BinaryLabel):
            pairs = [
                (label.positive, int(np.sum(values == 1))),
                (label.negative, int(np.sum(values == 0))),
                ("missing", int(np.sum(np.isnan(values)))),
            ]
        else:
            per_class = np.bincount(values[values >= 0], minlength=len(label.classes))
            pairs = [(name, int(n)) for name, n in zip(label.classes, per_class, strict=True)]
            pairs.append(("missing", int(np.sum(values < 0))))
        lines.append(f"  label {task:<15} {_counts(pairs)}")
    return lines


def _missing_line(schema: PartySchema, table: PartyTable) -> str:
    shares = [
        (name, float(np.mean(np.isnan(table.numeric[:, i]))))
        for i, name in enumerate(schema.numeric_features)
    ] + [
        # Elementwise on the object array; `is None` would test the array itself.
        (name, float(np.mean(table.categorical[:, i] == None)))  # noqa: E711
        for i, name in enumerate(schema.categorical_features)
    ]
    listed = [f"{name} {share:.1%}" for name, share in shares if share > 0.0]
    return "  missing     " + (" · ".join(listed) if listed else "none")


@app.command()
def check(
    schema: Annotated[Path, typer.Option(help="The party's schema file (YAML).")],
    table: Annotated[Path, typer.Option(help="The party's table (.csv or .parquet).")],
    federation: Annotated[Path, typer.Option(help="The federation file (YAML).")],
) -> None:
    """Load a party's table as its node will, and summarize it without showing any values."""
    with cli_errors():
        party_schema = load_party_schema(schema, load_federation(federation))
        loaded = load_party_table(party_schema, table)
    split_counts = np.bincount(loaded.split, minlength=len(SPLIT_NAMES))
    typer.echo(f"{table}: {party_schema.party} table, valid")
    typer.echo(
        f"  rows        {len(loaded.ids):,} loaded, "
        f"{loaded.dropped_identifiers:,} dropped for unreadable identifiers"
    )
    typer.echo(
        f"  features    {len(party_schema.numeric_features)} numeric, "
        f"{len(party_schema.categorical_features)} categorical"
    )
    typer.echo(_missing_line(party_schema, loaded))
    typer.echo(
        "  split       "
        + _counts([(name, int(n)) for name, n in zip(SPLIT_NAMES, split_counts, strict=True)])
    )
    for line in _label_lines(party_schema, loaded):
        typer.echo(line)
