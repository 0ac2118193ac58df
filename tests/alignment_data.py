"""Test data for private alignment: random phone sets in messy formats, written as party files."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from cobrand.federation import Federation, IdentifierKindEntry

FEDERATION = Federation(
    federation_id="test-alignment",
    version=1,
    identifier_kinds={"mobile_cn": IdentifierKindEntry(canonical_form="e164-cn-mobile")},
)
# The ways people write one Chinese mobile number (11 digits "1ddd dddd ddd").
_FORMATS = (
    "{n}",
    "+86{n}",
    "0086 {n}",
    "86-{a}-{b}-{c}",
    "+86 {a} {b} {c}",
    "({a}) {b}.{c}",
    " {a}-{b}-{c} ",
    "+86-{a}-{b}-{c}",
)


def canonical_phones(rng: random.Random, count: int) -> list[str]:
    """`count` distinct canonical mobile numbers, ``+86`` and 11 digits starting with 1."""
    numbers: set[str] = set()
    while len(numbers) < count:
        numbers.add(f"+861{rng.choice('3456789')}{rng.randrange(10**9):09d}")
    return sorted(numbers)


def messy(canonical: str, rng: random.Random) -> str:
    """One of the ways `canonical` is written in real tables."""
    n = canonical.removeprefix("+86")
    return rng.choice(_FORMATS).format(n=n, a=n[:3], b=n[3:7], c=n[7:])


def plain_canonical(raw: str) -> str:
    """A test's own normalization of `messy` output, independent of cobrand.identifiers."""
    digits = "".join(c for c in raw if c.isdigit())
    return "+86" + digits[-11:]


@dataclass(frozen=True)
class PartyFiles:
    """A party's schema and table on disk."""

    schema: Path
    table: Path


def write_federation(directory: Path, federation: Federation = FEDERATION) -> Path:
    """The federation file, as both parties hold it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "federation.yaml"
    path.write_text(yaml.safe_dump(federation.model_dump(mode="json")), encoding="utf-8")
    return path


def write_party(directory: Path, party: str, raw_ids: list[str]) -> PartyFiles:
    """A one-feature table of `raw_ids` (as written) and its schema."""
    directory.mkdir(parents=True, exist_ok=True)
    schema = directory / f"{party}.schema.yaml"
    schema.write_text(
        yaml.safe_dump(
            {
                "party": party,
                "identifier": {"column": "phone", "kind": "mobile_cn"},
                "features": [{"name": "spend", "type": "numeric"}],
            }
        ),
        encoding="utf-8",
    )
    table = directory / f"{party}.csv"
    rows = [f'"{raw}",{index % 97}' for index, raw in enumerate(raw_ids)]
    table.write_text("phone,spend\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return PartyFiles(schema, table)
