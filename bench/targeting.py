"""Benchmark bulk targeting (``cobrand target``) beside the same model scored in one process.

    python -m bench.targeting [--customers 200000] [--task instalment] [--top 50000]
                              [--batch-keys 32768] [--in-flight 4] [--repeats 3]

A synthetic co-brand set is aligned at both parties (keys assigned directly, as the tests do),
one model version is saved at the bank and published at the partner under the same id (the
gateway tests' seeded, untrained networks, `tests.gateway.gateway_sites.publish_both_sides`:
the cost does not depend on the weights; their sizes are printed), and the real partner node runs
as a process of its own (``python -m partner_node serve``), with mutual TLS, as deployed. The
partner node's first request of the version loads it (encodes its aligned rows and runs its
bottom over them); that is timed apart, as a warm-up. Then, alternating, ``--repeats`` times:

- ``cobrand target``: the command itself, end to end: the gateway's and the bank's settings, the
  bank's table, alignment and model version loaded, its aligned rows encoded, the join keys
  streamed to the partner and scored as the answers come, ranked and written (Parquet);
- ``targeting pipeline``: the same without loading (the tables and version already in memory):
  `gateway.targeting.target` and `write_ranked`;
- ``in one process``: the same model on the same rows with no RPC: the partner's aligned rows
  encoded and its bottom run here, then the same bank scoring, ranking and writing.

Customers per second are the aligned customers over the median wall time. The lists of the
command and of the single process are compared (same customers in the same order). The
pipeline can beat the single process: the partner node computed every aligned customer's
embedding when it loaded the version (the warm-up) and only looks them up, while the single
process runs the partner's encoding and bottom each time. The command's extra time is mostly
loading the bank's whole table (all its customers, not only the aligned ones).

The bench builds its sites with the tests' helpers (``tests.training_sites``,
``tests.gateway.targeting_sites``): run it from the repository root.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cobrand.aligned_rows import aligned_table
from cobrand.alignment_protocol import PsiSettings
from cobrand.alignment_store import AlignmentStore
from cobrand.commands.align import local_sites, tls_files, write_settings
from cobrand.pki import Role, issue
from cobrand.rpc import TlsFiles, create_channel
from gateway.audit_log import AuditSettings
from gateway.bulk_scoring import TASKS, BulkScorer
from gateway.config import load_decision_config
from gateway.settings import GatewaySettings, PartnerSettings
from gateway.target_cli import run as cobrand_target
from gateway.targeting import (
    DEFAULT_BATCH_KEYS,
    DEFAULT_IN_FLIGHT,
    EmbeddingBatch,
    rank,
    score_batches,
    stream_embeddings,
    target,
    write_ranked,
)
from tests.gateway.synth_version import EXAMPLES
from tests.gateway.targeting_sites import BothSides, bank_aligned, both_sides
from tests.training_sites import TrainingSites, write_training_sites

DECISIONS = EXAMPLES / "cobrand_synth.yaml"


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _in_one_process(
    sites: TrainingSites, pair: BothSides, scorer: BulkScorer, args: argparse.Namespace
) -> Callable[[Path], None]:
    """The same model on the same rows with no RPC: both sides' tables already loaded."""
    table, _ = bank_aligned(sites)
    with AlignmentStore(sites.partner_data) as store:
        partner_rows = aligned_table(pair.partner_table, store)

    def score(output: Path) -> None:
        embeddings = pair.embed(partner_rows)
        found = np.ones(len(embeddings), dtype=np.bool_)
        batches = (
            EmbeddingBatch(
                slice(start, min(start + args.batch_keys, len(embeddings))),
                embeddings[start : start + args.batch_keys],
                found[start : start + args.batch_keys],
            )
            for start in range(0, len(embeddings), args.batch_keys)
        )
        scores = score_batches(scorer, scorer.prepare(table), batches)
        write_ranked(rank(scorer.task, scores, table.ids, args.top), output)

    return score


def _gateway_settings(work: Path, gateway: TlsFiles, port: int, version_id: str) -> Path:
    """The gateway's settings file, over the bank's settings `local_sites` wrote."""
    key = work / "pseudonym.key"
    key.write_bytes(secrets.token_bytes(32))
    settings = GatewaySettings(
        listen="127.0.0.1:0",
        tls=gateway,
        bank=work / "bank.yaml",
        model_version=version_id,
        decision_config=DECISIONS,
        pseudonym_key=key,
        partner=PartnerSettings(address=f"127.0.0.1:{port}"),
        audit=AuditSettings(backend="sqlite", path=work / "audit.db"),
    )
    return write_settings(work / "gateway.yaml", settings)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-targeting-") as temporary:
        work = Path(temporary)
        started = time.perf_counter()
        sites = write_training_sites(work, customers=args.customers, seed=7)
        pair = both_sides(sites, seed=1)
        bank, partner = pair.version.bottom.spec, pair.partner.bottom.spec
        print(
            f"{sites.intersection:,} aligned customers of {args.customers:,}, model version "
            f"{pair.version.manifest.version_id} at both sides "
            f"(built in {time.perf_counter() - started:.1f} s); bottoms hidden/embedding: "
            f"bank {bank.hidden}/{bank.embedding_width}, partner "
            f"{partner.hidden}/{partner.embedding_width}"
        )
        # local_sites puts each party's data directory under `work`: the sites' own.
        with local_sites(sites.files, work, PsiSettings()) as local:
            gateway = tls_files(
                work / "pki" / "bank", issue(work / "pki" / "bank", Role.GATEWAY, "gateway")
            )
            _measure(sites, pair, local.partner_port, gateway, work, args)


def _measure(
    sites: TrainingSites,
    pair: BothSides,
    port: int,
    gateway: TlsFiles,
    work: Path,
    args: argparse.Namespace,
) -> None:
    decisions = load_decision_config(DECISIONS)
    scorer = BulkScorer(pair.version, decisions, args.task)
    version_id = pair.version.manifest.version_id
    table, keys = bank_aligned(sites)
    customers = len(table)
    with create_channel(f"127.0.0.1:{port}", gateway) as channel:
        load_s = _timed(
            lambda: list(
                stream_embeddings(channel, version_id, keys[:1], width=scorer.partner_width)
            )
        )
        print(f"partner node: first request loads the version in {load_s:.2f} s (warm-up)")

        config = _gateway_settings(work, gateway, port, version_id)

        def command() -> None:
            cobrand_target(
                config=config,
                task=args.task,
                top=args.top,
                output=work / "command.parquet",
                batch_keys=args.batch_keys,
                in_flight=args.in_flight,
            )

        def pipeline() -> None:
            ranked = target(
                scorer,
                table,
                keys,
                channel,
                top=args.top,
                batch_keys=args.batch_keys,
                in_flight=args.in_flight,
            )
            write_ranked(ranked, work / "pipeline.parquet")

        in_process = _in_one_process(sites, pair, scorer, args)
        runs: dict[str, list[float]] = {"command": [], "pipeline": [], "in_process": []}
        for _ in range(args.repeats):
            runs["command"].append(_timed(command))
            runs["pipeline"].append(_timed(pipeline))
            runs["in_process"].append(_timed(lambda: in_process(work / "in_process.parquet")))
    same = (
        pq.read_table(work / "command.parquet").column("customer_id").to_pylist()
        == pq.read_table(work / "in_process.parquet").column("customer_id").to_pylist()
    )
    labels = {
        "command": "cobrand target, end to end (mTLS)",
        "pipeline": "targeting pipeline, data loaded",
        "in_process": "in one process, no RPC",
    }
    print(
        f"task {args.task}, top {args.top:,}, batches of {args.batch_keys:,} keys, "
        f"{args.in_flight} in flight, median of {args.repeats}"
    )
    for name, times in runs.items():
        median = statistics.median(times)
        print(f"  {labels[name]:<36} {median:7.2f} s  {customers / median:>10,.0f} customers/s")
    print(f"  the command's list equals the single process's: {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--task", choices=TASKS, default=TASKS[0])
    parser.add_argument("--top", type=int, default=50_000)
    parser.add_argument("--batch-keys", type=int, default=DEFAULT_BATCH_KEYS)
    parser.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT)
    parser.add_argument("--repeats", type=int, default=3)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
