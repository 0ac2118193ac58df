"""Benchmark the partner's embedding service as the gateway calls it: one key at a time over
loopback gRPC with mutual TLS, each call with the gateway's tight deadline.

    python -m bench.embedding_lookup [--customers 20000] [--calls 2000] [--width 16]

A synthetic co-brand set is aligned at the partner (keys assigned directly, as the tests do),
a freshly initialised partner bottom is published as a model version, and the real partner
node (``partner_node.server``) serves it. Printed beside each other, measured in the same run
on the same machine, sequentially (one call in flight, a closed loop with one client):

- ``in-process lookup``: the loaded version's ``embedding(key)``, no RPC (the service's own cost);
- ``mTLS echo floor``: a do-nothing unary call of the same request and reply sizes on the same
  server stack (``cobrand.rpc.create_server`` with its interceptor, TLS, role check);
- ``GetEmbedding``: the real call, random aligned keys, deadline ``--deadline-ms``;
- ``StreamEmbeddings``: keys per second through one stream of batches of ``--batch`` keys.

Latencies are the median and the 99th percentile of ``--calls`` calls after a warm-up; the echo
and GetEmbedding calls alternate call by call so both see the same load from the rest of the
machine, and their ratio of medians is printed. The first call of a version loads it (encodes
the aligned rows and runs the bottom once), timed apart.

The bench builds its sites with the tests' helpers (``tests.training_sites``,
``tests.partner_node.embedding_sites``): run it from the repository root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.bench_pki import make_pki, tls
from cobrand.pki import Role
from cobrand.rpc import TlsFiles, create_channel, create_server
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from partner_node.server import start_partner_node
from partner_node.serving_models import ServingModels
from tests.partner_node.embedding_sites import aligned_customers, partner_table, publish_version
from tests.training_sites import write_training_sites

_ECHO = "/bench.Echo/Echo"


def _latencies(call: Callable[[int], object], calls: int) -> list[float]:
    """Seconds per call, after a warm-up of a tenth of the calls."""
    for i in range(max(1, calls // 10)):
        call(i)
    times = []
    for i in range(calls):
        started = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - started)
    return times


def _interleaved(
    first: Callable[[int], object], second: Callable[[int], object], calls: int
) -> tuple[list[float], list[float]]:
    """Seconds per call of each, the two called in turn, after a warm-up of both."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(-max(1, calls // 10), calls):
        for call, kept in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            call(i)
            if i >= 0:
                kept.append(time.perf_counter() - started)
    return times


def _summary(name: str, times: list[float]) -> str:
    p99 = float(np.quantile(times, 0.99))
    return f"{name:<32} p50 {statistics.median(times) * 1e6:8.1f} us   p99 {p99 * 1e6:8.1f} us"


def _echo_server(tls: TlsFiles) -> tuple[grpc.Server, int]:
    """A do-nothing unary method on the same server stack as the partner node."""

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server, port = create_server(
        lambda s: s.add_generic_rpc_handlers((handler,)),
        "127.0.0.1:0",
        tls,
        allowed_roles={_ECHO: frozenset({Role.GATEWAY})},
    )
    server.start()
    return server, port


def run(customers: int, calls: int, width: int, batch: int, deadline_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-embedding-") as tmp:
        work = Path(tmp)
        make_pki(work / "pki", Role.GATEWAY)
        sites = write_training_sites(work, customers=customers, seed=5)
        version = publish_version(sites, seed=1, width=width)
        keys = [key for key, _ in aligned_customers(sites, sites.intersection)]
        rng = np.random.default_rng(0)
        order = rng.integers(0, len(keys), calls + calls // 10)
        print(
            f"{customers} customers, {len(keys)} aligned; embedding width {width}; "
            f"{calls} sequential calls, deadline {deadline_s * 1e3:.0f} ms; "
            f"{os.cpu_count()} cores (shared with other work)"
        )

        models = ServingModels(
            partner_table(sites)[0], sites.partner_data / "models", sites.partner_data
        )
        started = time.perf_counter()
        loaded = models.version(version.version_id, 600.0)
        print(f"{'version load (encode + forward)':<32} {time.perf_counter() - started:8.3f} s")
        print(
            _summary(
                "in-process lookup", _latencies(lambda i: loaded.embedding(keys[order[i]]), calls)
            )
        )

        node = start_partner_node(
            sites.partner_node_config(tls(work / "pki", "partner", "partner"))
        )
        echo, echo_port = _echo_server(tls(work / "pki", "partner", "partner"))
        gateway = tls(work / "pki", "bank", "gateway")
        try:
            with (
                create_channel(f"127.0.0.1:{echo_port}", gateway) as echo_channel,
                create_channel(f"127.0.0.1:{node.port}", gateway) as channel,
            ):
                _measure(
                    echo_channel,
                    channel,
                    version.version_id,
                    keys,
                    order,
                    calls,
                    width,
                    batch,
                    deadline_s,
                )
        finally:
            node.stop(grace=None)
            echo.stop(None)


def _measure(
    echo_channel: grpc.Channel,
    channel: grpc.Channel,
    version_id: str,
    keys: list[bytes],
    order: Any,
    calls: int,
    width: int,
    batch: int,
    deadline_s: float,
) -> None:
    stub: Any = embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]
    requests = [
        embedding_pb2.GetEmbeddingRequest(
            request_id=f"bench-{i}", model_version=version_id, join_key=keys[k]
        )
        for i, k in enumerate(order)
    ]
    started = time.perf_counter()
    stub.GetEmbedding(requests[0], timeout=600.0)
    print(f"{'first call (loads the version)':<32} {time.perf_counter() - started:8.3f} s")

    request_bytes = requests[0].SerializeToString()
    reply_bytes = stub.GetEmbedding(requests[0], timeout=deadline_s).SerializeToString()
    echo = echo_channel.unary_unary(_ECHO, request_serializer=None, response_deserializer=None)
    padding = b"\x00" * max(0, len(reply_bytes) - len(request_bytes))

    def get(i: int) -> None:
        reply = stub.GetEmbedding(requests[i], timeout=deadline_s)
        assert reply.status == embedding_pb2.LOOKUP_STATUS_FOUND

    # Interleaved call by call, so both see the same load from whatever else the machine runs.
    floor, lookups = _interleaved(
        lambda i: echo(request_bytes + padding, timeout=deadline_s), get, calls
    )
    print(_summary("mTLS echo floor (same sizes)", floor))
    print(_summary("GetEmbedding", lookups))
    ratio = statistics.median(lookups) / statistics.median(floor)
    print(f"{'GetEmbedding / floor':<32} p50 {ratio:8.2f} x")

    batches = [
        embedding_pb2.EmbeddingBatchRequest(
            batch_id=f"b{start}",
            model_version=version_id,
            join_keys=b"".join(keys[start : start + batch]),
        )
        for start in range(0, len(keys), batch)
    ]

    def stream() -> Iterator[Any]:
        yield from batches

    started = time.perf_counter()
    answered = sum(len(r.found) for r in stub.StreamEmbeddings(stream(), timeout=600.0))
    seconds = time.perf_counter() - started
    print(
        f"{'StreamEmbeddings':<32} {answered / seconds:10.0f} keys/s "
        f"({answered} keys in batches of {batch}, width {width})"
    )


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4_096)
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    options = parser.parse_args()
    run(options.customers, options.calls, options.width, options.batch, options.deadline_ms / 1e3)


if __name__ == "__main__":
    main()
