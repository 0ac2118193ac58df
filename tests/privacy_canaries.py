"""Test helper (no tests): canaries planted in both parties' synthetic tables, and the byte
patterns (needles) that would show one of them, a label vector or an identifier on the wire.

`plant_canaries` rewrites a set `cobrand.synth.write_dataset` wrote (Parquet tables): a
distinctive number in one numeric feature column and a distinctive string in one categorical
feature column of each party, and the bank's risk label written with distinctive strings (its
schema says so). `Needles` holds what to look for in a captured message: each canary as it could
travel (float64, float32, text), the label strings, every identifier of both tables (as written,
canonical, and the SHA-256 of the canonical form, raw and hex), and label vectors (`label_needles`)
in the dtypes a program would put them on the wire.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from cobrand.federation import load_federation
from cobrand.schema import load_party_schema
from cobrand.synth import DatasetFiles, SynthTables
from cobrand.synth.bank import BANK_IDENTIFIER, RISK
from cobrand.synth.partner import PARTNER_IDENTIFIER
from cobrand.tables import PartyTable, load_party_table

__all__ = [
    "BANK_CATEGORY",
    "BANK_NUMBER",
    "PARTNER_CATEGORY",
    "PARTNER_NUMBER",
    "RISK_STRINGS",
    "Needle",
    "Needles",
    "label_needles",
    "plant_canaries",
]

PARTNER_NUMBER: Final = 7777777.25
PARTNER_CATEGORY: Final = "Canary Partner Category zq7"
BANK_NUMBER: Final = 8888888.75
BANK_CATEGORY: Final = "Canary Bank Occupation xk4"
RISK_STRINGS: Final = ("canary-risk-good-q3", "canary-risk-bad-q3")
"""The bank's risk label as its table writes it: negative, positive."""

_PARTNER_COLUMNS: Final = ("monthly_gmv", "category_preference")
_BANK_COLUMNS: Final = ("deposit_balance", "occupation")
# One row in `_EVERY` carries each canary: enough to be in the training rows and in the
# preprocessing's vocabulary, on both sides of the intersection.
_EVERY: Final = 5
_LABEL_DTYPES: Final = ("<i1", "<f4", "<f8", "<i4", "<i8")


@dataclass(frozen=True)
class Needle:
    """A byte pattern and what finding it would mean."""

    what: str
    data: bytes


@dataclass
class Needles:
    """The patterns to look for, by kind (``canary``, ``identifier``, ``label``)."""

    by_kind: dict[str, list[Needle]] = field(default_factory=dict)

    def add(self, kind: str, needles: Iterable[Needle]) -> None:
        """Add `needles` under `kind`."""
        self.by_kind[kind] = [*self.by_kind.get(kind, []), *needles]

    def count(self, kind: str) -> int:
        """How many patterns of `kind` there are."""
        return len(self.by_kind.get(kind, []))

    def found_in(self, data: bytes) -> list[Needle]:
        """Every pattern `data` contains."""
        return [n for needles in self.by_kind.values() for n in needles if n.data in data]


def plant_canaries(files: DatasetFiles, tables: SynthTables) -> Needles:
    """Rewrite the set's Parquet tables with the canaries and the bank schema with the risk
    label's strings; return the canary, label-string and identifier patterns."""
    partner = _planted(tables.partner, _PARTNER_COLUMNS, PARTNER_NUMBER, PARTNER_CATEGORY)
    bank = _planted(tables.bank, _BANK_COLUMNS, BANK_NUMBER, BANK_CATEGORY)
    risk = pa.array([_risk_string(v) for v in bank[RISK.column].to_pylist()], pa.string())
    bank = bank.set_column(bank.schema.get_field_index(RISK.column), RISK.column, risk)
    pq.write_table(partner, files.partner_table)
    pq.write_table(bank, files.bank_table)
    schema = yaml.safe_load(files.bank_schema.read_text(encoding="utf-8"))
    schema["labels"]["risk"]["negative"], schema["labels"]["risk"]["positive"] = RISK_STRINGS
    files.bank_schema.write_text(yaml.safe_dump(schema, sort_keys=False), encoding="utf-8")

    needles = Needles()
    needles.add(
        "canary",
        [
            *_number_needles("partner", PARTNER_NUMBER),
            *_number_needles("bank", BANK_NUMBER),
            Needle("partner category canary", PARTNER_CATEGORY.encode()),
            Needle("bank category canary", BANK_CATEGORY.encode()),
            *(Needle(f"bank risk label string {s!r}", s.encode()) for s in RISK_STRINGS),
        ],
    )
    federation = load_federation(files.federation)
    for party, column, schema_file, table_file, written in (
        ("bank", BANK_IDENTIFIER, files.bank_schema, files.bank_table, bank),
        ("partner", PARTNER_IDENTIFIER, files.partner_schema, files.partner_table, partner),
    ):
        loaded = load_party_table(load_party_schema(schema_file, federation), table_file)
        raw = [str(v) for v in written[column].to_pylist() if v]
        needles.add("identifier", _identifier_needles(party, raw, loaded))
    return needles


def label_needles(
    what: str, labels: npt.NDArray[Any], windows: int | None = None
) -> Iterator[Needle]:
    """`labels` in order, as each of the usual dtypes would put them on the wire: the whole
    vector, and each run of `windows` labels when given. Runs holding one known value only are
    left out: a run of zeros is in any zero padding."""
    values = np.asarray(labels, dtype=np.float64)
    size = windows or len(values)
    for start in range(0, max(len(values) - size + 1, 1), size):
        run = values[start : start + size]
        if len(np.unique(run[~np.isnan(run)])) < 2:
            continue
        for dtype in _LABEL_DTYPES:
            # Integers have no NaN: a missing label goes as the tables' missing class, -1.
            encoded = run.astype(dtype) if dtype[1] == "f" else np.nan_to_num(run, nan=-1)
            yield Needle(
                f"{what} labels [{start}:{start + len(run)}] as {dtype}",
                encoded.astype(dtype).tobytes(),
            )


def _planted(table: pa.Table, columns: Sequence[str], number: float, category: str) -> pa.Table:
    numeric, categorical = columns
    rows = np.arange(table.num_rows) % _EVERY == 0
    for name, value in ((numeric, number), (categorical, category)):
        values = table[name].to_pylist()
        planted = [value if hit else old for hit, old in zip(rows, values, strict=True)]
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pa.array(planted, table.schema.field(name).type))
    return table


def _risk_string(value: str | None) -> str | None:
    if value is None or value == "":
        return value
    return RISK_STRINGS[value == RISK.positive]


def _number_needles(party: str, value: float) -> list[Needle]:
    return [
        Needle(f"{party} numeric canary as float64", struct.pack("<d", value)),
        Needle(f"{party} numeric canary as float32", struct.pack("<f", value)),
        Needle(f"{party} numeric canary as text", repr(value).encode()),
    ]


def _identifier_needles(party: str, raw: Sequence[str], table: PartyTable) -> Iterator[Needle]:
    for value in raw:
        yield Needle(f"{party} identifier as written", value.encode())
    for canonical in map(str, table.ids):
        digest = hashlib.sha256(canonical.encode()).digest()
        yield Needle(f"{party} canonical identifier", canonical.encode())
        yield Needle(f"{party} identifier SHA-256", digest)
        yield Needle(f"{party} identifier SHA-256 hex", digest.hex().encode())
