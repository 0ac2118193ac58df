"""Synthetic co-brand data: a bank and a partner table over one population, with their schemas.

People carry latent traits (financial stress, impulsive consumption, spending appetite, digital
engagement, travel and entertainment affinity, instalment appetite) that drive the bank's
features, all three bank labels and the partner's features, so the partner slice is genuinely
informative. Identifiers are Chinese mobile numbers written in different messy styles at the two
parties. Everything is vectorised numpy and Arrow: a million bank customers take seconds.

Modules: `population` (people, traits, overlap), `phones` (identifier styles), `bank` and
`partner` (each party's columns), `columns` (shared draws), `dataset` (tables and files).
"""

from cobrand.synth.dataset import (
    FEDERATION_ID,
    DatasetFiles,
    SynthConfig,
    SynthTables,
    TableFormat,
    bank_schema,
    generate_tables,
    partner_schema,
    synth_federation,
    write_dataset,
)

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
