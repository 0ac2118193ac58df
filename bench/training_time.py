"""Benchmark federated training through Flower against centralized training, beside Flower's floor.

    python -m bench.training_time [--rounds 10]                   # real default-credit data
    python -m bench.training_time --synthetic 1000000 --rounds 5  # 1M aligned synthetic customers

Both sides' tables are aligned first with private set intersection, as ``cobrand train`` does
(timed, and excluded from the comparison). Then, in the same run and on the same aligned rows:

- federated: what ``cobrand train`` runs after alignment (`train_aligned`), with the partner
  node that aligned still serving: the bank's SuperLink (TLS, SuperNode authentication) and the
  partner's SuperNode on loopback, the ServerApp driving the rounds over Flower and each round's
  pass over the data plane, the partner node loading its training set, and the report; timed
  from starting the SuperLink to the report written. The ServerApp's own figure
  (loading the bank's rows, training, evaluation; ``training.seconds``) is printed beside it.
- centralized: each side's rows loaded and encoded as its node does, joined in the alignment's
  order (bench only), and the same network trained on them in this one process with one torch
  thread (`bench.dataplane.train_centralized`): same rounds, batch size and seed. Timed in
  total, loading included, as the federated figure includes each node's loading.
- Flower's floor: a SuperLink and SuperNode started the same way (the SuperNode in process
  isolation, its tasks answered by a runner as the partner's are, pinned to the floor's
  ClientApp: `bench.flower_floor.runner`) and one run of ``bench/flower_floor`` exchanging as
  many empty messages as the training run's control plane did (a status before round 1, one
  plan per round, a status after the last, the model's publication): what Flower costs with
  nothing to do.

Early stopping is off (patience = rounds), so both trainings run every round. Goals (issue 10):
on default credit, federated <= 2 x centralized + the floor; at 1M aligned synthetic customers,
federated <= 2 x centralized.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import torch

from bank_node.config import BankNodeConfig
from bank_node.training_config import TrainingConfig
from bank_node.training_job import TrainingSection
from bank_node.training_set import load_training_set
from bench.dataplane import DATA, ROOT, Aligned, train_centralized
from cobrand import pki
from cobrand.aligned_rows import aligned_table
from cobrand.alignment_protocol import PsiSettings
from cobrand.alignment_store import AlignmentStore
from cobrand.commands.align import align_sites, local_sites, tls_files
from cobrand.commands.train import train_aligned
from cobrand.flower_local import LocalFederation
from cobrand.flower_sites import SuperLinkTls
from cobrand.party_files import load_own_table
from cobrand.pki import Party
from cobrand.preprocess import Preprocessor
from cobrand.schema import load_party_schema
from cobrand.settings import load_settings
from cobrand.synth import DatasetFiles, SynthConfig, write_dataset
from partner_node.config import PartnerNodeConfig

_FLOOR_APP: Final = ROOT / "bench" / "flower_floor"
# The floor's SuperNode runs its ClientApp as the partner's runs the partner's (`cobrand train`).
_FLOOR_RUNNER: Final = (sys.executable, "-m", "bench.flower_floor.runner")
_LOOPBACK: Final = "127.0.0.1"
_RUN_TIMEOUT_S: Final = 3600.0


def default_credit_files() -> DatasetFiles:
    """The real data with the schemas and federation file cobrand ships for it."""
    return DatasetFiles(
        federation=ROOT / "cobrand" / "federations" / "default_credit.yaml",
        bank_schema=ROOT / "bank_node" / "schemas" / "default_credit.yaml",
        bank_table=DATA / "default_credit_hetero_guest.csv",
        partner_schema=ROOT / "partner_node" / "schemas" / "default_credit.yaml",
        partner_table=DATA / "default_credit_hetero_host.csv",
    )


def synthetic_files(aligned_customers: int, directory: Path) -> DatasetFiles:
    """A synthetic set whose intersection is about `aligned_customers` (80% of the bank's)."""
    config = SynthConfig(
        customers=round(aligned_customers / 0.8),
        seed=0,
        partner_ratio=1.0,
        overlap=0.8,
        table_format="parquet",
    )
    files, _ = write_dataset(config, directory)
    return files


def joined_rows(work: Path) -> Aligned:
    """Both sides' aligned rows, each loaded and encoded as its own node does; joined here only."""
    bank = load_training_set(load_settings(BankNodeConfig, work / "bank.yaml"))
    partner = load_settings(PartnerNodeConfig, work / "partner.yaml")
    federation, table = load_own_table(
        Party.PARTNER, partner.federation, partner.schema_file, partner.table
    )
    preprocessor = Preprocessor.fit(table, load_party_schema(partner.schema_file, federation))
    with AlignmentStore(partner.data_dir) as store:
        aligned = aligned_table(table, store)
    return Aligned(
        bank=bank.data,
        bank_spec=bank.spec,
        partner=preprocessor.transform(aligned),
        partner_preprocessor=preprocessor,
    )


def flower_floor(work: Path, messages: int) -> tuple[float, float]:
    """Seconds from starting a SuperLink to the end of a run of `messages` empty messages, and
    of them the SuperLink's and SuperNode's start-up."""
    bank_ca = work / "pki" / "bank"
    issued = pki.issue(bank_ca, pki.Role.BANK, "floor-superlink", (_LOOPBACK,))
    superlink = tls_files(bank_ca, issued)
    started = time.perf_counter()
    with LocalFederation(
        work / "floor",
        SuperLinkTls(ca_cert=bank_ca / pki.CA_CERT, cert=superlink.cert, key=superlink.key),
    ) as federation:
        federation.start_superlink()
        federation.start_supernode({}, client_app_runner=_FLOOR_RUNNER)
        run_id = federation.run(_FLOOR_APP, {"num-messages": messages})
        status = federation.wait_finished(run_id, _RUN_TIMEOUT_S)
        startup = sum(federation.startup_seconds.values())
    if status != "finished:completed":
        raise SystemExit(f"bench.training_time: the floor run ended {status}")
    return time.perf_counter() - started, startup


def main() -> None:
    """Parse options; align, then time the three variants once each on the same rows."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.training_time", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", type=int, metavar="ALIGNED", help="synthetic customers")
    args = parser.parse_args()
    training = TrainingSection.model_validate(
        {"rounds": args.rounds, "patience": args.rounds, "batch_size": args.batch_size}
        | {"seed": args.seed}
    )
    # Flower starts the floor app's components by module name: bench is not installed.
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(path)
    with tempfile.TemporaryDirectory(prefix="cobrand-bench-training-time-") as tmp:
        work = Path(tmp)
        if args.synthetic:
            what = f"synthetic, about {args.synthetic:,} aligned customers"
            files = synthetic_files(args.synthetic, work / "set")
        else:
            what, files = "default credit", default_credit_files()
        with local_sites(files, work / "sites", PsiSettings()) as sites:
            started = time.perf_counter()
            alignment = align_sites(sites)
            print(
                f"bench.training_time: {what}: {alignment.summary.intersection_size:,} aligned "
                f"(PSI {time.perf_counter() - started:.1f} s, excluded), {args.rounds} rounds "
                f"of one epoch, batch {args.batch_size}, seed {args.seed}, {os.cpu_count()} CPUs",
                flush=True,
            )
            started = time.perf_counter()
            report = train_aligned(sites, alignment.summary, training, work)
            federated = time.perf_counter() - started
        print(f"  federated done in {federated:.1f} s", flush=True)
        centralized, test = _centralized(sites.work, training)
        # A status before round 1, a plan per round, a status after the last, the publication.
        messages = report["training"]["rounds"] + 3
        floor, startup = flower_floor(sites.work, messages)
    _print_figures(report, federated, centralized, test)
    print(
        f"  Flower floor                  {floor:8.1f} s  (SuperLink and SuperNode start-up "
        f"{startup:.1f} s, then {messages} empty messages: {(floor - startup) / messages:.1f} s "
        "each, run submission included)"
    )
    if args.synthetic:
        goal, bound = "2 x centralized", 2 * centralized
    else:
        goal, bound = "2 x centralized + floor", 2 * centralized + floor
    verdict = "met" if federated <= bound else "NOT met"
    print(f"  goal: federated {federated:.1f} s <= {goal} = {bound:.1f} s: {verdict}")


def _centralized(work: Path, training: TrainingSection) -> tuple[float, dict[str, Any]]:
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = joined_rows(work)
    config = TrainingConfig(
        max_rounds=training.rounds,
        patience=training.patience,
        batch_size=training.batch_size,
        seed=training.seed,
    )
    result = train_centralized(rows, config)
    return time.perf_counter() - started, result["test"]


def _print_figures(
    report: dict[str, Any],
    federated: float,
    centralized: float,
    centralized_test: dict[str, Any],
) -> None:
    run = report["training"]
    risk = report["tasks"].get("risk", {})
    print(
        f"  centralized, one process      {centralized:8.1f} s  1.00x   test AUC "
        f"{centralized_test.get('risk', {}).get('auc', float('nan')):.4f}"
    )
    print(
        f"  federated through Flower      {federated:8.1f} s  {federated / centralized:.2f}x  "
        f"test AUC {risk.get('auc') or float('nan'):.4f}  (ServerApp: {run['seconds']:.1f} s; "
        f"{run['bytes_exchanged'] / run['rounds'] / 1e6:.2f} MB exchanged per epoch)"
    )


if __name__ == "__main__":
    main()
