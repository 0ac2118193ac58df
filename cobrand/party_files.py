"""Loading one party's own files at its node: the federation, its schema and its table.

A node is configured with three paths; pointing it at the other party's schema (an easy slip,
the files sit side by side in a demo) is refused here rather than discovered as a bad match.
"""

from __future__ import annotations

from pathlib import Path

from cobrand.errors import SchemaError
from cobrand.federation import Federation, load_federation
from cobrand.pki import Party
from cobrand.schema import load_party_schema
from cobrand.tables import PartyTable, load_party_table

__all__ = ["load_own_table"]


def load_own_table(
    party: Party, federation_file: Path, schema_file: Path, table_file: Path
) -> tuple[Federation, PartyTable]:
    """Read the federation file and `party`'s own schema and table.

    Raises
    ------
    FederationError, SchemaError, TableError
        Naming the file and key (and the first bad row for a table); a `SchemaError` too if
        the schema describes the other party's table.
    """
    federation = load_federation(federation_file)
    schema = load_party_schema(schema_file, federation)
    if schema.party != party.value:
        raise SchemaError(
            f"{schema_file}: key 'party' is {schema.party!r}, but this is the {party.value}'s "
            "node; give it the schema of its own table"
        )
    return federation, load_party_table(schema, table_file)
