"""Benchmark `cobrand data synth` at scale against writing the same rows with plain writers.

    python -m bench.synth [--customers 1000000] [--seed 1] [--format csv]

Each variant runs in its own child process, so its peak resident memory is its own (read from
``os.wait4``; tracemalloc does not see numpy's and Arrow's buffers and would slow them down):

- ``synth``: the whole command (draw the population, build both tables, write all five files);
- ``pyarrow``: the same tables generated first (untimed), then only written with plain pyarrow;
- ``pandas``: as ``pyarrow`` but through ``DataFrame.to_csv`` / ``to_parquet``; skipped with a
  note when pandas is not installed (it is not a cobrand dependency).

The ratio synth / pyarrow says what the realism costs over the bare cost of writing the bytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cobrand.synth import SynthConfig, TableFormat, generate_tables, write_dataset

VARIANTS = ("synth", "pyarrow", "pandas")


def _run_variant(variant: str, config: SynthConfig, out: Path) -> dict[str, Any]:
    """Run one variant in this process; return its timings in seconds."""
    if variant == "synth":
        started = time.perf_counter()
        write_dataset(config, out)
        return {"seconds": time.perf_counter() - started}
    started = time.perf_counter()
    tables = generate_tables(config)
    generated = time.perf_counter() - started
    named = {"bank": tables.bank, "partner": tables.partner}
    if variant == "pyarrow":
        started = time.perf_counter()
        for name, table in named.items():
            path = out / f"{name}.{config.table_format}"
            if config.table_format == "csv":
                pa_csv.write_csv(table, path)
            else:
                pq.write_table(table, path)
        return {"seconds": time.perf_counter() - started, "generate_seconds": generated}
    if importlib.util.find_spec("pandas") is None:
        return {"skipped": "pandas is not installed (not a cobrand dependency)"}
    frames = {name: table.to_pandas() for name, table in named.items()}
    started = time.perf_counter()
    for name, frame in frames.items():
        path = out / f"{name}.{config.table_format}"
        if config.table_format == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    return {"seconds": time.perf_counter() - started, "generate_seconds": generated}


def _in_child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run `variant` in a child process; add its peak RSS in bytes."""
    command = [sys.executable, "-m", "bench.synth", "--variant", variant]
    command += ["--customers", str(args.customers), "--seed", str(args.seed)]
    command += ["--format", args.format]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"bench.synth: variant {variant} failed with exit code {child.returncode}")
    result: dict[str, Any] = json.loads(output)
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return result


def _row(label: str, result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"  {label:<34} skipped: {result['skipped']}"
    return (
        f"  {label:<34} {result['seconds']:>7.2f} s   "
        f"peak RSS {result['peak_rss_bytes'] / 2**30:5.2f} GiB"
    )


def main() -> None:
    """Parse options; as the parent, run every variant in a child and print the comparison."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.synth", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    table_format: TableFormat = args.format
    config = SynthConfig(customers=args.customers, seed=args.seed, table_format=table_format)
    if args.variant:
        with tempfile.TemporaryDirectory(prefix="cobrand-bench-synth-") as out:
            print(json.dumps(_run_variant(args.variant, config, Path(out))))
        return

    print(
        f"bench.synth: {config.customers:,} bank customers, {config.n_partner:,} partner users, "
        f"{config.table_format}, seed {config.seed}, {os.cpu_count()} CPUs"
    )
    results = {variant: _in_child(variant, args) for variant in VARIANTS}
    print(_row("cobrand data synth (generate+write)", results["synth"]))
    print(_row("plain pyarrow, write only", results["pyarrow"]))
    print(_row("pandas, write only", results["pandas"]))
    synth, baseline = results["synth"], results["pyarrow"]
    print(
        f"  ratio synth / pyarrow write: {synth['seconds'] / baseline['seconds']:.1f}x "
        f"(generating the tables alone took {baseline['generate_seconds']:.2f} s; "
        "write-only variants' peak RSS includes generating the tables they write)"
    )


if __name__ == "__main__":
    main()
