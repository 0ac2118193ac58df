"""Benchmark the consented lookup as the gateway makes it, beside the aligned lookup it adds to.

    python -m bench.consented_lookup [--customers 20000] [--calls 1000] [--width 16]

A synthetic co-brand set is aligned at the partner (keys assigned directly, as the tests do), a
partner bottom is published as a model version, and the real partner node
(``partner_node.server``) serves it over loopback with mutual TLS. Printed, measured in the
same run on the same machine:

- the partner's index build: every partner user's lookup output (``partner_node.oprf_index``),
  users per second on every core; beside it, reading that index back from the file a node
  saves it to (``partner_node.oprf_index_file``: the table's digest, the read, the MAC and the
  checks, as a restarted node does), users per second, and how many times faster;
- in process, one core: the gateway's blind, the partner's evaluation, the gateway's unblind
  and finalize, and the partner's on-demand embedding of one row;
- over gRPC, sequentially, interleaved call by call so both see the same load: an aligned
  ``GetEmbedding`` by join key (what `gateway.partner_client` does) and a whole consented
  lookup of a partner user outside the alignment (`gateway.consented_lookup`: blind,
  BlindEvaluate, unblind, finalize, GetConsentedEmbedding; the partner appends two audit lines,
  the first fsynced), each p50 and p99, and their ratio of medians;
- the node restarted: how long its first consented lookup takes, the saved index read back.

The bench builds its sites with the tests' helpers (``tests.training_sites``,
``tests.partner_node.embedding_sites``): run it from the repository root.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_pki import make_pki, tls
from bench.closed_loop import Call, Sample, interleaved
from cobrand import oprf
from cobrand.federation import load_federation
from cobrand.pki import Role
from cobrand.rpc import create_channel
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from gateway.audit_record import PartnerSliceStatus
from gateway.consented_lookup import ConsentedLookupClient
from gateway.partner_breaker import CircuitBreaker
from gateway.partner_client import PartnerClient
from gateway.settings import BreakerSettings
from partner_node.config import ConsentedLookupSettings
from partner_node.oprf_index import build_index
from partner_node.oprf_index_file import OPRF_INDEX_FILE, IndexBinding, load_saved_index, save_index
from partner_node.server import start_partner_node
from partner_node.serving_models import ServingModels
from tests.partner_node.embedding_sites import aligned_customers, partner_table, publish_version
from tests.training_sites import write_training_sites

_KIND = "mobile_cn"


def _summary(name: str, sample: Sample) -> str:
    return f"{name:<32} p50 {sample.p50_ms() * 1e3:8.1f} us   p99 {sample.p99_ms() * 1e3:8.1f} us"


def _alone(call: Call, calls: int) -> Sample:
    """`calls` calls after a warm-up of a tenth as many."""
    for n in range(calls // 10):
        call(n)
    sample = Sample()
    for n in range(calls):
        sample.add(call, n)
    return sample


def run(customers: int, calls: int, width: int, deadline_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-consented-") as tmp:
        work = Path(tmp)
        make_pki(work / "pki", Role.GATEWAY)
        sites = write_training_sites(work, customers=customers, seed=5)
        version = publish_version(sites, seed=1, width=width)
        domain = oprf.lookup_domain(load_federation(sites.files.federation))
        table, _ = partner_table(sites)
        aligned = aligned_customers(sites, sites.intersection)
        outside = sorted(set(np.asarray(table.ids, dtype=str)) - {i for _, i in aligned})
        rng = np.random.default_rng(0)
        picks = rng.integers(0, min(len(aligned), len(outside)), calls + calls // 10)
        print(
            f"{customers} bank customers; {len(table)} partner users, {len(aligned)} aligned, "
            f"{len(outside)} outside the alignment; embedding width {width}; {calls} calls "
            f"each, deadline {deadline_s * 1e3:.0f} ms; {os.cpu_count()} cores (shared with "
            "other work)"
        )
        _in_process(sites, version.version_id, table, outside, domain, calls, work)

        config = sites.partner_node_config(tls(work / "pki", "partner", "partner")).model_copy(
            update={"consented_lookup": ConsentedLookupSettings(lookups_per_minute=10**9)}
        )
        node = start_partner_node(config)
        try:
            with create_channel(
                f"127.0.0.1:{node.port}", tls(work / "pki", "bank", "gateway")
            ) as channel:
                _over_grpc(
                    channel,
                    version.version_id,
                    aligned,
                    outside,
                    picks,
                    domain,
                    calls,
                    width,
                    deadline_s,
                )
        finally:
            node.stop(grace=None)
        started = time.perf_counter()
        node = start_partner_node(config)
        try:
            with create_channel(
                f"127.0.0.1:{node.port}", tls(work / "pki", "bank", "gateway")
            ) as channel:
                first = ConsentedLookupClient(channel, domain).embedding(
                    PartnerClient(channel, 600.0, CircuitBreaker(BreakerSettings())),
                    "restart",
                    "BENCH-restart",
                    version.version_id,
                    oprf.lookup_input(_KIND, outside[0]),
                    width,
                )
            assert first.status is PartnerSliceStatus.USED, first.status
            print(
                f"{'restart to first consented':<32} {time.perf_counter() - started:8.3f} s "
                "(table, version and saved index loaded)"
            )
        finally:
            node.stop(grace=None)


def _index_build_and_load(key: bytes, ids: Any, domain: bytes, saved: Path) -> None:
    """Time building the index of `ids` and reading it back from the file a node saves."""
    workers = os.cpu_count() or 1
    started = time.perf_counter()
    index = build_index(key, _KIND, ids, domain, workers)
    built_s = time.perf_counter() - started
    print(
        f"{'index build':<32} {len(ids) / built_s:10.0f} users/s "
        f"({len(ids)} users in {built_s:.2f} s, {workers} threads)"
    )
    save_index(saved, IndexBinding.of(key, domain, _KIND, ids), index.outputs, index.rows)
    # What a restarted node does: the table's binding, then the file read and checked. The
    # file was just written, so it is read from the page cache, as at a restart that follows
    # a stop on a machine with the memory to spare.
    started = time.perf_counter()
    loaded = load_saved_index(saved, IndexBinding.of(key, domain, _KIND, ids))
    loaded_s = time.perf_counter() - started
    assert loaded is not None
    print(
        f"{'index load (saved file)':<32} {len(ids) / loaded_s:10.0f} users/s "
        f"({len(ids)} users in {loaded_s:.3f} s, {saved.stat().st_size / 2**20:.1f} MiB; "
        f"{built_s / loaded_s:.0f}x the build)"
    )


def _in_process(
    sites: Any,
    version_id: str,
    table: Any,
    outside: list[str],
    domain: bytes,
    calls: int,
    work: Path,
) -> None:
    key = oprf.new_scalar()
    _index_build_and_load(key, table.ids, domain, work / OPRF_INDEX_FILE)
    x = domain + oprf.lookup_input(_KIND, outside[0])
    r, blinded = oprf.blind(x)
    evaluated = oprf.blind_evaluate(key, blinded)
    steps: list[tuple[str, Call]] = [
        ("gateway blind", lambda _: len(oprf.blind(x))),
        ("partner blind evaluate", lambda _: len(oprf.blind_evaluate(key, blinded))),
        ("gateway unblind + finalize", lambda _: len(oprf.finalize(x, r, evaluated))),
    ]
    models = ServingModels(table, sites.partner_data / "models", sites.partner_data)
    loaded = models.version(version_id, 600.0)
    row = list(np.asarray(table.ids, dtype=str)).index(outside[0])
    steps.append(
        (
            "partner embed one row",
            lambda _: len(
                loaded.embed_row(table.numeric[row].tolist(), table.categorical[row].tolist())
            ),
        )
    )
    for name, step in steps:
        print(_summary(name, _alone(step, calls)))


def _over_grpc(
    channel: Any,
    version_id: str,
    aligned: list[tuple[bytes, str]],
    outside: list[str],
    picks: Any,
    domain: bytes,
    calls: int,
    width: int,
    deadline_s: float,
) -> None:
    stub: Any = embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]
    partner = PartnerClient(channel, deadline_s, CircuitBreaker(BreakerSettings()))
    consented = ConsentedLookupClient(channel, domain)
    # The first calls load the version and build the index: timed apart.
    started = time.perf_counter()
    stub.GetEmbedding(
        embedding_pb2.GetEmbeddingRequest(
            request_id="load", model_version=version_id, join_key=aligned[0][0]
        ),
        timeout=600.0,
    )
    print(f"{'first call (loads the version)':<32} {time.perf_counter() - started:8.3f} s")
    started = time.perf_counter()
    warm = PartnerClient(channel, 600.0, CircuitBreaker(BreakerSettings()))
    first = consented.embedding(
        warm, "index", "BENCH-index", version_id, oprf.lookup_input(_KIND, outside[0]), width
    )
    assert first.status is PartnerSliceStatus.USED, first.status
    print(f"{'first consented (builds index)':<32} {time.perf_counter() - started:8.3f} s")

    def get(i: int) -> None:
        found = partner.embedding(f"a-{i}", version_id, aligned[picks[i]][0], width)
        assert found.status is PartnerSliceStatus.USED, found.status

    def lookup(i: int) -> None:
        x = oprf.lookup_input(_KIND, outside[picks[i]])
        found = consented.embedding(partner, f"c-{i}", f"BENCH-{i}", version_id, x, width)
        assert found.status is PartnerSliceStatus.USED, found.status

    aligned_sample, consented_sample = interleaved(get, lookup, calls, calls // 10)
    print(_summary("aligned GetEmbedding", aligned_sample))
    print(_summary("consented lookup", consented_sample))
    ratio = consented_sample.p50_ms() / aligned_sample.p50_ms()
    print(f"{'consented / aligned':<32} p50 {ratio:8.2f} x")


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=1_000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    options = parser.parse_args()
    run(options.customers, options.calls, options.width, options.deadline_ms / 1e3)


if __name__ == "__main__":
    main()
