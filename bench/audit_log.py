"""Benchmark the durable audit log: group commit against one commit per record, same run.

    python -m bench.audit_log [--records 4000] [--clients 32] [--postgres-dsn DSN]

For each store (SQLite in WAL mode with synchronous=FULL on a temporary file; PostgreSQL when a
DSN is given, by default from ``COBRAND_TEST_POSTGRES_DSN``, in a fresh database dropped after):

- ``group``: `AuditLog` as deployed (batches of up to 256, no linger) with `--clients` threads
  each recording its share of `--records` decisions, every call durable before it returns;
- ``per-record``: the same log and load with ``max_batch=1``, one commit and one flush per
  record: what durability costs without group commit;
- ``1 client``: one thread recording in a closed loop: the latency a lone request pays for its
  durable write (p50 and p99), the figure the gateway's p99 goal includes.

Throughput is records per second over the wall time of the whole load; the mean batch is
records / transactions. The machine may be shared with other work: figures vary run to run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from gateway.audit_log import AuditSettings, open_audit_log
from gateway.audit_record import AuditRecord
from tests.gateway.audit_records import make_record

GROUP_BATCH = 256
LATENCY_RECORDS = 300


def _load(settings: AuditSettings, records: int, clients: int) -> tuple[float, float]:
    """Records/s and mean batch size of `records` recorded by `clients` threads."""
    batch = [make_record(f"APP-{uuid.uuid4().hex[:12]}") for _ in range(records)]
    with open_audit_log(settings) as log:

        def client(share: list[AuditRecord]) -> None:
            for record in share:
                log.record(record)

        # Plain threads, each recording its share in a closed loop, as a server's handlers do
        # (a pool's own queue would cost more than the log).
        threads = [
            threading.Thread(target=client, args=(batch[i::clients],)) for i in range(clients)
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        stats = log.stats()
    assert stats.records == records
    return records / elapsed, stats.records / stats.batches


def _latency_ms(settings: AuditSettings) -> tuple[float, float]:
    """p50 and p99 in ms of one client's durable `record` calls."""
    times = []
    with open_audit_log(settings) as log:
        for _ in range(LATENCY_RECORDS):
            rec = make_record(f"APP-{uuid.uuid4().hex[:12]}")
            start = time.perf_counter()
            log.record(rec)
            times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(np.array(times) * 1000, [50, 99])
    return float(p50), float(p99)


def _report(name: str, settings: AuditSettings, records: int, clients: int) -> None:
    grouped = settings.model_copy(update={"max_batch": GROUP_BATCH})
    group, group_batch = _load(grouped, records, clients)
    single, _ = _load(settings.model_copy(update={"max_batch": 1}), records, clients)
    p50, p99 = _latency_ms(settings)
    print(f"{name}: {records} records from {clients} clients")
    print(f"  group commit      {group:10,.0f} records/s  (mean batch {group_batch:.1f})")
    print(f"  per-record commit {single:10,.0f} records/s")
    print(f"  ratio             {group / single:10.1f} x")
    print(f"  1 client          p50 {p50:.2f} ms  p99 {p99:.2f} ms per durable record")


@contextmanager
def _sqlite() -> Iterator[AuditSettings]:
    with tempfile.TemporaryDirectory(prefix="cobrand-audit-bench-") as tmp:
        yield AuditSettings(path=Path(tmp) / "audit.db")


@contextmanager
def _postgres(admin_dsn: str) -> Iterator[AuditSettings]:
    name = f"cobrand_audit_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield AuditSettings(
            backend="postgres", dsn=SecretStr(make_conninfo(admin_dsn, dbname=name))
        )
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("COBRAND_TEST_POSTGRES_DSN", ""),
        help="a role that may create databases; empty skips PostgreSQL",
    )
    args = parser.parse_args()
    with _sqlite() as settings:
        _report("sqlite (WAL, synchronous=FULL)", settings, args.records, args.clients)
    if args.postgres_dsn:
        with _postgres(args.postgres_dsn) as settings:
            _report("postgresql (synchronous_commit=on)", settings, args.records, args.clients)
    else:
        print("postgresql: skipped (no --postgres-dsn and COBRAND_TEST_POSTGRES_DSN unset)")


if __name__ == "__main__":
    main()
