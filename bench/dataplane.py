"""Benchmark the training data plane on the real default-credit data against centralized training.

    python -m bench.dataplane [--epochs 10] [--batch-size 256] [--repeats 3]

Variants, all training the same network (bank and partner piecewise-linear bottoms, multi-task
head, partner-slice dropout 0.3, Adam) for the same epochs and batches, scoring the validation
rows after every epoch and the test rows at the end:

- ``centralized, N threads``: the joined network in this one process, torch with 1 thread and
  with torch's default (the machine's cores);
- ``federated pipelined``: the bank's trainer here, the partner's trainer in a second process,
  over the data plane on loopback with mutual TLS, one batch ahead (the partner one step stale);
  one torch thread per process;
- ``federated synchronous``: the same, waiting for each embedding (exact updates).

Rows are the UCI data's customers joined by id here, in the bench only; the split is the one
both schemas declare (hashed by id: 70% train, 15% valid, 15% test). Each repeat uses its own
seed and runs every variant once (interleaved); times are medians, AUCs mean +- sd over the
repeats, and the staleness effect is the paired difference of test AUC, pipelined minus
synchronous, per seed. Timed: training, per-epoch validation and the test scoring, with both
processes up and the data loaded. The partner process learns each round's plan over a pipe,
standing in for the control plane.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bank_node.dataplane_client import DataPlaneClient
from bank_node.evaluation import task_metrics, total_loss
from bank_node.trainer import BankTrainer
from bank_node.training_config import TrainingConfig
from bank_node.training_data import BankTrainingData, task_widths
from bench.bench_pki import make_pki, tls
from cobrand.federation import load_federation
from cobrand.pki import Role
from cobrand.preprocess import Encoded, Preprocessor
from cobrand.rpc import TlsFiles, create_channel, create_server
from cobrand.schema import load_party_schema
from cobrand.split_model import BottomModel, BottomSpec, HeadModel
from cobrand.tables import load_party_table
from partner_node.dataplane_service import ALLOWED_ROLES, DataPlaneService
from partner_node.trainer import PartnerTrainer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
_CENTRALIZED = ("centralized, 1 thread", "centralized, default threads")
VARIANTS = (*_CENTRALIZED, "federated pipelined", "federated synchronous")


@dataclass(frozen=True)
class Aligned:
    """Both sides' encoded rows in one aligned order, and each side's bottom spec."""

    bank: BankTrainingData
    bank_spec: BottomSpec
    partner: Encoded
    partner_preprocessor: Preprocessor


def load_aligned(data_dir: Path) -> Aligned:
    """Load both default-credit files with their schemas; join them by id (bench only)."""
    federation = load_federation(ROOT / "cobrand" / "federations" / "default_credit.yaml")
    tables = {}
    preprocessors = {}
    for party, name in (("bank", "guest"), ("partner", "host")):
        schema = load_party_schema(
            ROOT / f"{party}_node" / "schemas" / "default_credit.yaml", federation
        )
        table = load_party_table(schema, data_dir / f"default_credit_hetero_{name}.csv")
        tables[party] = (schema, table)
        preprocessors[party] = Preprocessor.fit(table, schema)
    (bank_schema, bank), (_, partner) = tables["bank"], tables["partner"]
    _, bank_rows, partner_rows = np.intersect1d(
        bank.ids.astype(str), partner.ids.astype(str), return_indices=True
    )
    bank_encoded = preprocessors["bank"].transform(bank)
    partner_encoded = preprocessors["partner"].transform(partner)
    return Aligned(
        bank=BankTrainingData(
            features=Encoded(bank_encoded.numeric[bank_rows], bank_encoded.categorical[bank_rows]),
            labels={task: values[bank_rows] for task, values in bank.labels.items()},
            split=bank.split[bank_rows],
            tasks=task_widths(bank_schema),
        ),
        bank_spec=BottomSpec.from_preprocessor(preprocessors["bank"]),
        partner=Encoded(
            partner_encoded.numeric[partner_rows], partner_encoded.categorical[partner_rows]
        ),
        partner_preprocessor=preprocessors["partner"],
    )


def train_centralized(aligned: Aligned, config: TrainingConfig) -> dict[str, Any]:
    """The joined network in one process, trained as the two trainers train it together."""
    data, partner_spec = aligned.bank, BottomSpec.from_preprocessor(aligned.partner_preprocessor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        bank_bottom = BottomModel(aligned.bank_spec)
        head = HeadModel(
            aligned.bank_spec.embedding_width,
            partner_spec.embedding_width,
            data.tasks,
            hidden=config.head_hidden,
            dropout=config.head_dropout,
        )
        torch.manual_seed(config.seed + 1)
        partner_bottom = BottomModel(partner_spec)
    modules = torch.nn.ModuleList([bank_bottom, head, partner_bottom])
    optimizer = torch.optim.Adam(modules.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    bank = (torch.from_numpy(data.features.numeric), torch.from_numpy(data.features.categorical))
    partner = (
        torch.from_numpy(aligned.partner.numeric),
        torch.from_numpy(aligned.partner.categorical),
    )
    labels = {task: torch.from_numpy(data.labels[task]) for task in data.tasks}

    def logits(rows: torch.Tensor, missing: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = head(
            bank_bottom(*(t[rows] for t in bank)),
            partner_bottom(*(t[rows] for t in partner)),
            missing,
        )
        return out

    def evaluate(split: int) -> tuple[dict[str, dict[str, float]], float]:
        rows = torch.from_numpy(np.flatnonzero(data.split == split))
        modules.eval()
        with torch.no_grad():
            present = torch.zeros(len(rows), dtype=torch.bool)
            full, bank_only = logits(rows, present), logits(rows, ~present)
            split_labels = {task: values[rows] for task, values in labels.items()}
            loss = float(total_loss(full, split_labels))
        return task_metrics(full, bank_only, split_labels), loss

    started = time.perf_counter()
    train = np.flatnonzero(data.split == 0)
    best: tuple[float, dict[str, Any]] = (float("inf"), {})
    for _ in range(config.max_rounds):
        modules.train()
        order = torch.from_numpy(train[torch.randperm(len(train), generator=generator).numpy()])
        for batch in torch.split(order, config.batch_size):
            missing = torch.rand(len(batch), generator=generator) < config.partner_dropout
            loss = total_loss(logits(batch, missing), {t: v[batch] for t, v in labels.items()})
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
        _, valid_loss = evaluate(1)
        if valid_loss < best[0]:
            best = (valid_loss, copy.deepcopy(modules.state_dict()))
    modules.load_state_dict(best[1])
    test, _ = evaluate(2)
    return {"seconds": time.perf_counter() - started, "test": test}


def serve_partner(work: Path) -> None:
    """The partner process: serve the data plane; take runs and round plans on stdin."""
    features = np.load(work / "partner.npz")
    encoded = Encoded(features["numeric"], features["categorical"])
    spec = BottomSpec.from_preprocessor(
        Preprocessor.from_json((work / "partner-preprocessor.json").read_text())
    )
    service = DataPlaneService(torch_threads=1)
    server, port = create_server(
        service.adder(),
        "127.0.0.1:0",
        tls(work / "pki", "partner", "partner"),
        allowed_roles=ALLOWED_ROLES,
    )
    server.start()
    print(f"port {port}", flush=True)
    trainer: PartnerTrainer | None = None
    for line in sys.stdin:
        command, *words = line.split()
        if command == "run":
            trainer = PartnerTrainer(words[0], encoded, spec, seed=int(words[1]))
            service.attach(trainer)
        elif command == "plan" and trainer is not None:
            trainer.plan_round(int(words[0]), learning_rate=float(words[1]))
        print("ok", flush=True)
    server.stop(None)


class PartnerProcess:
    """The partner's process seen from the bank's side of the bench: its port and its pipe."""

    def __init__(self, work: Path) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.dataplane", "--serve-partner", str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.port = int(self._read().removeprefix("port "))

    def _read(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise SystemExit("bench.dataplane: the partner process exited")
        return line.strip()

    def command(self, *words: object) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(" ".join(map(str, words)) + "\n")
        self._process.stdin.flush()
        if self._read() != "ok":
            raise SystemExit(f"bench.dataplane: the partner refused {words}")

    def planner(self) -> Callable[[int, float], None]:
        return lambda round_number, learning_rate: self.command("plan", round_number, learning_rate)

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=30)


@contextmanager
def partner_process(aligned: Aligned) -> Iterator[tuple[PartnerProcess, TlsFiles, int]]:
    """Certificates and the partner's rows in a temporary folder, and its process serving them.

    Yields the process, the bank trainer's TLS files and the partner's embedding width.
    """
    with tempfile.TemporaryDirectory(prefix="cobrand-bench-dataplane-") as tmp:
        work = Path(tmp)
        make_pki(work / "pki", Role.BANK_TRAINER)
        np.savez(
            work / "partner.npz",
            numeric=aligned.partner.numeric,
            categorical=aligned.partner.categorical,
        )
        (work / "partner-preprocessor.json").write_text(aligned.partner_preprocessor.to_json())
        partner = PartnerProcess(work)
        try:
            width = BottomSpec.from_preprocessor(aligned.partner_preprocessor).embedding_width
            yield partner, tls(work / "pki", "bank", "bank-trainer"), width
        finally:
            partner.close()


def train_federated(
    aligned: Aligned,
    config: TrainingConfig,
    partner: PartnerProcess,
    tls: TlsFiles,
    partner_width: int,
    make_client: Callable[..., DataPlaneClient] = DataPlaneClient,
    make_trainer: Callable[..., BankTrainer] = BankTrainer,
) -> dict[str, Any]:
    """Train with the bank's trainer here and the partner's in `partner`; `make_client` and
    `make_trainer` (the constructors by default) let a bench observe the data plane or change
    how the bank trains."""
    run_id = f"bench-d{config.pipeline_depth}-s{config.seed}"
    partner.command("run", run_id, config.seed + 1)
    with create_channel(f"127.0.0.1:{partner.port}", tls) as channel:
        client = make_client(channel, run_id=run_id, embedding_width=partner_width)
        trainer = make_trainer(aligned.bank, aligned.bank_spec, client, config)
        result = trainer.fit(partner.planner())
    return {
        "seconds": result.seconds,
        "test": result.test,
        "sent_per_epoch": statistics.mean(r.bytes_sent for r in result.rounds),
        "received_per_epoch": statistics.mean(r.bytes_received for r in result.rounds),
    }


def summary(name: str, runs: list[dict[str, Any]], centralized: float) -> str:
    """One variant's lines: median time, its ratio to `centralized`, AUCs, bytes per epoch."""
    seconds = statistics.median(r["seconds"] for r in runs)
    aucs = [r["test"]["risk"]["auc"] for r in runs]
    bank_only = [r["test"]["risk"]["bank_only_auc"] for r in runs]
    each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    line = (
        f"  {name:<30} {seconds:7.2f} s  {seconds / centralized:5.2f}x   test AUC "
        f"{statistics.mean(aucs):.4f} +- {sd(aucs):.4f}  (bank-only path "
        f"{statistics.mean(bank_only):.4f})\n  {'':<30} runs: {each} s"
    )
    if "sent_per_epoch" in runs[0]:
        sent = statistics.mean(r["sent_per_epoch"] for r in runs)
        received = statistics.mean(r["received_per_epoch"] for r in runs)
        line += f"; per epoch {sent / 1e6:.2f} MB sent, {received / 1e6:.2f} MB received"
    return line


def sd(values: list[float]) -> float:
    """Sample standard deviation; 0 for one value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    """Parse options; run every variant `--repeats` times, interleaved, and print the figures."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.dataplane", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--serve-partner", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_partner:
        serve_partner(args.serve_partner)
        return
    default_threads = torch.get_num_threads()
    aligned = load_aligned(args.data_dir)
    split = aligned.bank.split
    print(
        f"bench.dataplane: default credit, {len(split):,} aligned customers "
        f"({np.sum(split == 0):,} train, {np.sum(split == 1):,} valid, {np.sum(split == 2):,} "
        f"test), {args.epochs} epochs, batch {args.batch_size}, {args.repeats} seeds, "
        f"{os.cpu_count()} CPUs, torch default threads {default_threads}"
    )
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    with partner_process(aligned) as (partner, tls, partner_width):
        for seed in range(args.repeats):
            config = TrainingConfig(
                max_rounds=args.epochs,
                patience=args.epochs,
                batch_size=args.batch_size,
                seed=seed,
            )
            for variant, threads in zip(_CENTRALIZED, (1, default_threads), strict=True):
                torch.set_num_threads(threads)
                runs[variant].append(train_centralized(aligned, config))
            for variant, depth in (("federated pipelined", 2), ("federated synchronous", 1)):
                depth_config = config.model_copy(update={"pipeline_depth": depth})
                runs[variant].append(
                    train_federated(aligned, depth_config, partner, tls, partner_width)
                )
            print(f"  seed {seed} done", flush=True)
    centralized = statistics.median(r["seconds"] for r in runs[_CENTRALIZED[0]])
    print(f"  ratios are to centralized with 1 thread ({centralized:.2f} s)")
    for variant in VARIANTS:
        print(summary(variant, runs[variant], centralized))
    stale = [
        p["test"]["risk"]["auc"] - s["test"]["risk"]["auc"]
        for p, s in zip(runs["federated pipelined"], runs["federated synchronous"], strict=True)
    ]
    print(
        f"  staleness effect (pipelined - synchronous test AUC, paired by seed): "
        f"{statistics.mean(stale):+.4f} +- {sd(stale):.4f}"
    )


if __name__ == "__main__":
    main()
