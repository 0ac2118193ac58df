"""In-process timing of the gateway's per-application CPU path, the old way beside the new.

    python -m bench.scoring_path [--calls 10000]

One process, no network: the median over ``--calls`` calls of each step the gateway runs for
an application, cycling over the rows of a synthetic bank table and a model version built as
the gateway tests build theirs (`tests.gateway.synth_version.save_synth_bank_version`, seeded
and untrained: the cost does not depend on the weights). Run it from the repository root.

- canonicalize: one mobile number, ``IdentifierKind.canonicalize`` of a one-element list
  (the old path, Arrow kernels) beside ``IdentifierKind.canonicalize_one``;
- encode: one row, ``Preprocessor.transform`` of a one-row ``PartyTable`` (the old path)
  beside ``RowEncoder.encode``, then the whole ``ApplicationEncoder.encode`` (field checks
  included) as the gateway calls it;
- score: ``Scorer.score`` of the encoded row with a partner embedding and without.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bank_node.model_registry import load_bank_version
from cobrand.identifiers import IDENTIFIER_KINDS
from cobrand.model_store import ModelStore
from cobrand.synth.dataset import SynthConfig, bank_schema, generate_tables
from cobrand.tables import PartyTable, load_party_table
from gateway.application import FieldValue
from gateway.config import load_decision_config
from gateway.scoring import Scorer
from tests.gateway.synth_version import EXAMPLES, PARTNER_WIDTH, save_synth_bank_version


def _median_us(call: Callable[[int], object], calls: int) -> float:
    """Median wall time of ``call(i)`` for i in range(calls), in microseconds, after a warm-up."""
    for i in range(min(calls // 10, 500)):
        call(i)
    times = []
    for i in range(calls):
        start = time.perf_counter_ns()
        call(i)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000.0


def _fields(
    table: PartyTable, numeric: list[str], categorical: list[str], row: int
) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    for j, name in enumerate(numeric):
        value = float(table.numeric[row, j])
        fields[name] = None if math.isnan(value) else value
    for j, name in enumerate(categorical):
        fields[name] = table.categorical[row, j]
    return fields


def main() -> None:
    """Build the version, time every step old and new, print one line per step."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.scoring_path", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=10_000)
    args = parser.parse_args()
    calls: int = args.calls
    with tempfile.TemporaryDirectory(prefix="scoring-path-") as tmp:
        directory = Path(tmp)
        config = SynthConfig(customers=2000, seed=11)
        schema = bank_schema(config)
        tables = generate_tables(config)
        pq.write_table(tables.bank, directory / "bank.parquet")
        table = load_party_table(schema, directory / "bank.parquet")
        store = ModelStore(directory / "models")
        manifest = save_synth_bank_version(
            store,
            table,
            schema,
            partner_weights_sha256=hashlib.sha256(b"partner weights").digest(),
            partner_preprocessor_sha256=hashlib.sha256(b"partner preprocessor").digest(),
        )
        version = load_bank_version(store, manifest.version_id)
    decision = load_decision_config(EXAMPLES / "cobrand_synth.yaml")
    scorer = Scorer(version, decision)
    preprocessor = version.preprocessor
    rows = preprocessor.row_encoder()
    n = len(table)
    numeric = [s.name for s in preprocessor.numeric]
    categorical = [s.name for s in preprocessor.categorical]
    # Applications as the gateway sees them: a required field left missing would be refused.
    fields = [_fields(table, numeric, categorical, i) for i in range(n)]
    valid = [
        f for f in fields if all(f.get(name) is not None for name in decision.application.required)
    ]
    mobiles = [f"+86 1{i % 10}{i:09d}"[:18] for i in range(n)]
    mobile = IDENTIFIER_KINDS["mobile_cn"]

    def one_row_table(i: int) -> PartyTable:
        return PartyTable(
            ids=np.array(["application"], dtype=object),
            numeric=table.numeric[i : i + 1],
            categorical=table.categorical[i : i + 1],
            labels={},
            split=np.zeros(1, dtype=np.int8),
            dropped_identifiers=0,
            source=Path("<application>"),
        )

    encoded = [scorer.encoder.encode(f) for f in valid]
    partner = np.random.default_rng(1).normal(size=(len(encoded), PARTNER_WIDTH))
    steps: list[tuple[str, Callable[[int], object], Callable[[int], object]]] = [
        (
            "canonicalize (mobile_cn)",
            lambda i: mobile.canonicalize([mobiles[i % n]]),
            lambda i: mobile.canonicalize_one(mobiles[i % n]),
        ),
        (
            "encode one row",
            lambda i: preprocessor.transform(one_row_table(i % n)),
            lambda i: rows.encode(list(table.numeric[i % n]), list(table.categorical[i % n])),
        ),
    ]
    print(f"median of {calls} calls, microseconds per call (one process, machine shared)")
    for name, old, new in steps:
        before, after = _median_us(old, calls), _median_us(new, calls)
        print(f"{name:<34} old {before:8.1f}  new {after:8.1f}  x{before / after:.1f}")
    single = {
        "ApplicationEncoder.encode": lambda i: scorer.encoder.encode(valid[i % len(valid)]),
        "Scorer.score, partner embedding": lambda i: scorer.score(
            encoded[i % len(encoded)], partner[i % len(encoded)]
        ),
        "Scorer.score, bank slice only": lambda i: scorer.score(encoded[i % len(encoded)], None),
    }
    for name, call in single.items():
        print(f"{name:<34} now {_median_us(call, calls):8.1f}")


if __name__ == "__main__":
    main()
