"""Benchmark private alignment on N x N identifiers (50% overlap): floor, engine, openmined-psi.

    python -m bench.psi [--sizes 100000,1000000] [--workers 2] [--seed 1]

For each size, in one run and on the same two identifier sets:

- ``floor``: this machine's X25519 rate measured now, raw (``cryptography``'s ``exchange`` on
  parsed keys, in a tight loop) on one core and on all cores at once, each the best of three
  (the machine is shared: the floor is what it can do). ECDH-PSI needs two scalar
  multiplications per identifier per side, so with both sides on this machine the floor time is
  4N multiplications / the all-core rate. The `BlindingPool`'s own all-core rate (parsing,
  point checks and inter-process traffic included) and the cost of hashing an identifier to a
  point are printed beside it, as they are what separates an implementation from the floor.
- ``engine``: both sides' PSI computation with `BlindingPool` in one process without a network
  (hash and blind each set, re-blind the other's, derive join keys, intersect): what the
  protocol costs before gRPC, TLS and persistence, in a child process for its peak RSS.
- ``cobrand``: our PSI end to end, as deployed: the partner's node and the bank's node in two
  processes, loopback gRPC with mutual TLS, each side reading its own table and persisting its
  own result (`bench.psi_sites`). Its time is the bank's run, from opening it to both results
  persisted; peak memory is given per side, for the main process and its whole process tree.
- ``openmined-psi``: the `openmined-psi` package's client/server protocol (P-256, GCS filter
  at a false-positive rate of 1e-9, intersection revealed to the client) end to end in one
  process, in a child process of its own so that its peak RSS is its own (``os.wait4``; the
  engine's figure is its main process, not its workers).
  Skipped with a note when the package is not installed (it is a benchmark-only dependency).

Throughput is identifiers per side per second (N / seconds); ratios are ratios of times. The
machine may be shared: each measurement says how much CPU other processes used meanwhile, and
one during which they used much measures the neighbours, not this code.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from bench.psi_sites import run_sites
from cobrand import psi
from cobrand.psi_pool import BlindingPool

DOMAIN = b"cobrand-psi-v1:bench:00"
OPENMINED_FALSE_POSITIVE_RATE = 1e-9
# Each rate is the best of REPEATS measurements over about RATE_SECONDS of work per core.
RATE_SECONDS = 1.5
REPEATS = 3
CHUNK_POINTS = 4096


def identifier_sets(size: int, seed: int) -> tuple[list[str], list[str]]:
    """The bank's and the partner's canonical identifiers: `size` each, half of them common."""
    common = size // 2
    numbers = np.random.default_rng(seed).permutation(2 * size - common) + 13_800_000_000
    identifiers = [f"+86{number}" for number in numbers.tolist()]
    return identifiers[:size], identifiers[size - common :]


def _sample_points(count: int) -> bytes:
    # Points as the protocol blinds them: hashes of identifiers, each on the curve.
    return psi.hash_to_points((f"sample-{i}" for i in range(count)), DOMAIN)


def _raw_exchanges(count: int) -> float:
    """Seconds this process takes for `count` X25519 exchanges on pre-parsed keys."""
    key = X25519PrivateKey.from_private_bytes(psi.new_secret())
    points = _sample_points(min(count, 1024))
    peers = [
        X25519PublicKey.from_public_bytes(points[i : i + 32]) for i in range(0, len(points), 32)
    ]
    started = time.perf_counter()
    for i in range(count):
        key.exchange(peers[i % len(peers)])
    return time.perf_counter() - started


def _best_rate(work: int, run: Callable[[], object]) -> float:
    """Best of `REPEATS` rates of `work` units done by `run`."""
    best = 0.0
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        best = max(best, work / (time.perf_counter() - started))
    return best


def measure_floor(workers: int) -> dict[str, float]:
    """X25519 rates (multiplications/s) raw on one core, raw on `workers` cores, and pooled;
    and the seconds `psi.hash_to_points` takes per identifier."""
    probe = 2000
    per_core = int(probe / _raw_exchanges(probe) * RATE_SECONDS)
    single = max(per_core / _raw_exchanges(per_core) for _ in range(REPEATS))

    with multiprocessing.get_context("forkserver").Pool(workers) as processes:
        processes.map(_raw_exchanges, [10] * workers)  # start and import in every worker first
        all_cores = _best_rate(
            per_core * workers,
            lambda: processes.map(_raw_exchanges, [per_core] * workers, chunksize=1),
        )

    points = _sample_points(CHUNK_POINTS)
    chunks = per_core * workers // CHUNK_POINTS
    with BlindingPool(psi.new_secret(), DOMAIN, workers=workers) as pool:
        list(pool.blind([points] * 2 * workers))  # start every worker first
        pooled = _best_rate(chunks * CHUNK_POINTS, lambda: list(pool.blind([points] * chunks)))

    identifiers = [f"+86{13_800_000_000 + i}" for i in range(per_core // 4)]
    hashed = _best_rate(len(identifiers), lambda: psi.hash_to_points(identifiers, DOMAIN))
    return {
        "single_core": single,
        "all_cores": all_cores,
        "pooled": pooled,
        "hash_seconds": 1 / hashed,
    }


def run_openmined(size: int, seed: int) -> dict[str, Any]:
    """openmined-psi end to end in this process: the partner serves, the bank is the client."""
    # Imported here: an optional, benchmark-only package the other variants run without.
    import private_set_intersection.python as openmined  # type: ignore[import-untyped]

    bank, partner = identifier_sets(size, seed)
    started = time.perf_counter()
    client = openmined.client.CreateWithNewKey(True)
    server = openmined.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(
        OPENMINED_FALSE_POSITIVE_RATE, len(bank), partner, openmined.DataStructure.GCS
    )
    response = server.ProcessRequest(client.CreateRequest(bank))
    intersection = client.GetIntersection(setup, response)
    return {"seconds": time.perf_counter() - started, "intersection": len(intersection)}


def _chunks(identifiers: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(identifiers), CHUNK_POINTS):
        yield identifiers[start : start + CHUNK_POINTS]


def run_engine(size: int, seed: int, workers: int) -> dict[str, Any]:
    """Both sides' ECDH-PSI computation on `BlindingPool`s in this process, no network."""
    bank, partner = identifier_sets(size, seed)
    started = time.perf_counter()
    with (
        BlindingPool(psi.new_secret(), DOMAIN, workers) as bank_pool,
        BlindingPool(psi.new_secret(), DOMAIN, workers) as partner_pool,
    ):
        bank_twice = b"".join(partner_pool.blind(bank_pool.hash_and_blind(_chunks(bank))))
        partner_twice = b"".join(bank_pool.blind(partner_pool.hash_and_blind(_chunks(partner))))
    common = set(psi.join_keys(bank_twice, DOMAIN)) & set(psi.join_keys(partner_twice, DOMAIN))
    return {"seconds": time.perf_counter() - started, "intersection": len(common)}


def _in_child(variant: str, size: int, seed: int, workers: int) -> dict[str, Any]:
    """Run `variant` in a child process; add its peak RSS in bytes."""
    command = [sys.executable, "-m", "bench.psi", "--variant", variant]
    command += ["--sizes", str(size), "--seed", str(seed), "--workers", str(workers)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench.psi: {variant} at {size:,} failed")
    result: dict[str, Any] = json.loads(output)
    if result["intersection"] != size // 2:
        raise SystemExit(f"bench.psi: {variant} found {result['intersection']:,} common")
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return result


class _OtherLoad:
    """CPU seconds that processes other than this one and its children used meanwhile.

    The machine may be shared: a measurement during which others used much CPU is not one of
    this machine's capacity. Every process a measurement starts is a reaped child (or a child's
    reaped child), so its CPU time is this process's ``RUSAGE_CHILDREN``.
    """

    def __enter__(self) -> _OtherLoad:
        self._start = _machine_busy_seconds() - _own_cpu_seconds()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = _machine_busy_seconds() - _own_cpu_seconds() - self._start

    def __str__(self) -> str:
        return f"[others used {self.seconds:.1f} CPU-s meanwhile]"


def _machine_busy_seconds() -> float:
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:9]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _rate(label: str, value: float, unit: str) -> str:
    return f"  {label:<44} {value:>10,.0f} {unit}"


def _timed(label: str, size: int, seconds: float, peak_rss_bytes: int | None = None) -> str:
    line = f"  {label:<44} {seconds:>8.2f} s  {size / seconds:>8,.0f} items/s"
    if peak_rss_bytes is not None:
        line += f"  peak RSS {peak_rss_bytes / 2**20:>6,.0f} MiB"
    return line


def bench_size(size: int, workers: int, seed: int) -> None:
    """Measure and print the floor and openmined-psi at `size` x `size`."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\nN = {size:,} per side, {size // 2:,} common, {workers} cores (load average {load})")
    with _OtherLoad() as other_load:
        floor = measure_floor(workers)
    floor_seconds = 4 * size / floor["all_cores"]
    exchange_us = 1e6 / floor["single_core"]
    hash_us = floor["hash_seconds"] * 1e6
    print(_rate("X25519 raw, 1 core", floor["single_core"], "mult/s"))
    print(_rate(f"X25519 raw, {workers} cores", floor["all_cores"], "mult/s"))
    print(_rate(f"BlindingPool.blind, {workers} workers", floor["pooled"], "mult/s"))
    print(
        f"  hash_to_points, 1 core: {hash_us:.2f} us/identifier = "
        f"{hash_us / exchange_us:.1%} of one exchange ({exchange_us:.2f} us)"
    )
    print(f"  {other_load}")
    print(_timed("floor: 4N mults on all cores", size, floor_seconds))
    with _OtherLoad() as other_load:
        engine = _in_child("engine", size, seed, workers)
    print(
        _timed(
            f"engine: 2 BlindingPools x {workers}, no network",
            size,
            engine["seconds"],
            engine["peak_rss_bytes"],
        )
    )
    print(f"  engine time / floor: {engine['seconds'] / floor_seconds:.2f}  {other_load}")

    bank, partner = identifier_sets(size, seed)
    with _OtherLoad() as other_load:
        sites = run_sites(bank, partner, workers)
    if sites["bank"]["intersection"] != size // 2:
        raise SystemExit(f"bench.psi: cobrand found {sites['bank']['intersection']:,} common")
    ours = sites["bank"]["seconds"]
    print(_timed("cobrand: bank + partner nodes, gRPC mTLS", size, ours))
    for side, figures in sites.items():
        print(
            f"    {side:<8} peak RSS: main process {figures['peak_rss_bytes'] / 2**20:,.0f} MiB, "
            f"process tree {figures['peak_tree_rss_bytes'] / 2**20:,.0f} MiB; CPU: main "
            f"{figures['main_cpu_seconds']:.1f} s, workers {figures['helper_cpu_seconds']:.1f} s"
        )
    print(
        f"    bank process {sites['bank']['process_seconds']:.2f} s from start to exit "
        "(Python start-up, reading its table, the run)"
    )
    print(f"  cobrand time / floor: {ours / floor_seconds:.2f}  (goal <= 1.25)  {other_load}")

    if importlib.util.find_spec("private_set_intersection") is None:
        print("  openmined-psi: skipped, not installed (pip install --no-deps openmined-psi)")
        return
    with _OtherLoad() as other_load:
        openmined = _in_child("openmined", size, seed, workers)
    print(
        _timed("openmined-psi, 1 process", size, openmined["seconds"], openmined["peak_rss_bytes"])
    )
    print(f"  openmined-psi time / floor: {openmined['seconds'] / floor_seconds:.2f}  {other_load}")
    print(f"  engine throughput / openmined-psi: {openmined['seconds'] / engine['seconds']:.2f}x")
    print(
        f"  cobrand throughput / openmined-psi: {openmined['seconds'] / ours:.2f}x  (goal >= 3.5)"
    )


def main() -> None:
    """Parse options; as the parent, print every measurement; as a child, run one variant."""
    parser = argparse.ArgumentParser(prog="python -m bench.psi", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variant", choices=["engine", "openmined"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.variant == "engine":
        print(json.dumps(run_engine(sizes[0], args.seed, args.workers)))
        return
    if args.variant == "openmined":
        print(json.dumps(run_openmined(sizes[0], args.seed)))
        return
    print(f"bench.psi: sizes {', '.join(f'{n:,}' for n in sizes)}, 50% overlap, seed {args.seed}")
    for size in sizes:
        bench_size(size, args.workers, args.seed)


if __name__ == "__main__":
    main()
