"""Benchmark few large exchanges with local steps on cached embeddings against the per-batch stream.

    python -m bench.cached_embeddings [--epochs 10] [--repeats 3]

The scheme (bank side here, `CachedEmbeddingTrainer`; the partner's side is the product's
`PartnerTrainer` in its own process, unchanged): each round is one training pass of the data
plane. The bank asks for the embeddings of all its training rows in a few large batches (up to
65,536 rows each, all in flight at once, so at most the partner's ``max_pending_steps``), trains
its bottom and head for ``K`` local epochs in mini-batches on those cached embeddings, adding up
each row's d loss / d embedding (with the label-leakage defence's noise, as the product sends it),
and then sends each large batch its accumulated gradient: the partner takes one optimizer step per
large batch per round, where the per-batch stream takes one per mini-batch. The partner's learning
rate is the bank's or scaled up (it takes far fewer steps).

Printed beside, measured in the same run with ``bench.dataplane``'s functions on the same rows
(default credit, joined by id in the bench only; the split both schemas declare): centralized
training of the same network in one process (1 torch thread) and the product's pipelined
per-batch stream (one batch ahead). Every variant trains the same total of bank epochs (a
cached variant with K local epochs has epochs / K rounds, so epochs / K exchanges), keeps the
round with the best validation loss and scores the test rows with it, through the full model and
its bank-only path. Each repeat uses its own seed and runs every variant once (interleaved);
times are medians (training, per-round validation and the test scoring), AUCs mean +- sd over
the repeats, bytes the serialized data-plane messages per epoch; last, each cached variant's test
AUC minus the pipelined stream's, paired by seed.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from bank_node.dataplane_client import DataPlaneClient, PartnerPassSummary
from bank_node.trainer import BankTrainer, PlanPartnerRound, TrainingResult
from bank_node.training_config import TrainingConfig
from bank_node.training_data import TRAIN, BankTrainingData
from bench.dataplane import (
    DATA,
    Aligned,
    PartnerProcess,
    load_aligned,
    partner_process,
    sd,
    summary,
    train_centralized,
    train_federated,
)
from cobrand.rpc import TlsFiles
from cobrand.split_model import BottomSpec
from partner_node.trainer_pass import MAX_BATCH_ROWS

_T = TypeVar("_T")
CENTRALIZED = "centralized, 1 thread"
PIPELINED = "federated pipelined"


@dataclass(frozen=True)
class CachedVariant:
    """One setting of the cached-embedding scheme.

    Attributes
    ----------
    local_epochs : int
        Bank epochs on the cached embeddings per exchange (per round).
    partner_lr_scale : float
        The partner's learning rate over the bank's.
    """

    local_epochs: int
    partner_lr_scale: float

    @property
    def name(self) -> str:
        return f"cached, K={self.local_epochs}, partner lr x{self.partner_lr_scale:g}"


class CachedEmbeddingTrainer(BankTrainer):
    """The bank's trainer whose training pass is one exchange of large batches (see module).

    Parameters
    ----------
    data, bank_spec, partner, config
        As `BankTrainer`; ``config.batch_size`` is the local mini-batch.
    variant : CachedVariant
    """

    def __init__(
        self,
        data: BankTrainingData,
        bank_spec: BottomSpec,
        partner: DataPlaneClient,
        config: TrainingConfig,
        *,
        variant: CachedVariant,
    ) -> None:
        super().__init__(data, bank_spec, partner, config)
        self.variant = variant

    def fit(self, plan_partner_round: PlanPartnerRound, **options: Any) -> TrainingResult:
        """`BankTrainer.fit`, planning the partner's rounds with the variant's learning rate."""
        scale = self.variant.partner_lr_scale
        return super().fit(
            lambda round_number, lr: plan_partner_round(round_number, lr * scale), **options
        )

    def _train_pass(self, round_number: int, epoch: int, losses: list[float]) -> PartnerPassSummary:
        """One exchange: embed every training row, train K local epochs, send the sums back.

        Replaces `BankTrainer`'s per-batch pass; its rounds, validation and test scoring stay.
        """
        config = self._config
        rows = np.flatnonzero(self._data.split == TRAIN)
        # All in flight at once: the partner refuses more than its max_pending_steps.
        exchanges = [rows[i : i + MAX_BATCH_ROWS] for i in range(0, len(rows), MAX_BATCH_ROWS)]
        width = self._partner.embedding_width
        cached = np.zeros((len(self._data.split), width), dtype=np.float32)
        accumulated = np.zeros_like(cached)
        self.bottom.train()
        self.head.train()
        with (
            torch.random.fork_rng(devices=[]),
            self._partner.open_pass(round_number, train=True) as stream,
        ):
            for batch in exchanges:
                stream.send(positions=batch)
            for batch in exchanges:
                cached[batch] = stream.receive()
            self.sent.start_pass(round_number, epoch)
            for local in range(self.variant.local_epochs):
                # Seeded per round and local epoch, as BankTrainer seeds each of its passes.
                seed = np.random.SeedSequence([config.seed, round_number, local])
                torch.manual_seed(int(seed.generate_state(1)[0]))
                order = rows[torch.randperm(len(rows), generator=self._generator).numpy()]
                for start in range(0, len(order), config.batch_size):
                    batch = order[start : start + config.batch_size]
                    gradient, loss = self._train_step(batch, cached[batch])
                    accumulated[batch] += gradient
                    losses.append(loss)
            for batch in exchanges:
                stream.send(gradient=accumulated[batch])
            return stream.close()


def train_cached(
    aligned: Aligned,
    config: TrainingConfig,
    partner: PartnerProcess,
    tls: TlsFiles,
    partner_width: int,
    variant: CachedVariant,
) -> dict[str, Any]:
    """`bench.dataplane.train_federated` with the cached-embedding trainer; bytes per epoch."""
    rounds = config.max_rounds // variant.local_epochs
    run = train_federated(
        aligned,
        config.model_copy(update={"max_rounds": rounds, "patience": rounds}),
        partner,
        tls,
        partner_width,
        make_trainer=partial(CachedEmbeddingTrainer, variant=variant),
    )
    # A round here is K epochs.
    for key in ("sent_per_epoch", "received_per_epoch"):
        run[key] /= variant.local_epochs
    return run


def _numbers(kind: Callable[[str], _T]) -> Callable[[str], list[_T]]:
    return lambda text: [kind(word) for word in text.split(",")]


def main() -> None:
    """Parse options; run every variant `--repeats` times, interleaved, and print the figures."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.cached_embeddings", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--local-epochs", type=_numbers(int), default=[1, 2], help="K values, comma-separated"
    )
    parser.add_argument(
        "--partner-lr-scales",
        type=_numbers(float),
        default=[1.0, 10.0, 30.0],
        help="partner learning rate over the bank's, comma-separated",
    )
    parser.add_argument("--data-dir", type=Path, default=DATA)
    args = parser.parse_args()
    if any(args.epochs % k for k in args.local_epochs):
        parser.error(f"--epochs {args.epochs} must be a multiple of every --local-epochs value")
    variants = [CachedVariant(k, s) for k in args.local_epochs for s in args.partner_lr_scales]
    aligned = load_aligned(args.data_dir)
    split = aligned.bank.split
    train_rows = int(np.sum(split == 0))
    exchanges = -(-train_rows // MAX_BATCH_ROWS)
    print(
        f"bench.cached_embeddings: default credit, {len(split):,} aligned customers "
        f"({train_rows:,} train, {np.sum(split == 1):,} valid, {np.sum(split == 2):,} test), "
        f"{args.epochs} epochs, batch {args.batch_size}, {args.repeats} seeds, "
        f"{os.cpu_count()} CPUs; cached variants: {exchanges} large batch(es) of at most "
        f"{MAX_BATCH_ROWS:,} rows per exchange, as many partner steps per exchange"
    )
    runs: dict[str, list[dict[str, Any]]] = {
        name: [] for name in (CENTRALIZED, PIPELINED, *(v.name for v in variants))
    }
    torch.set_num_threads(1)
    with partner_process(aligned) as (partner, tls, partner_width):
        for seed in range(args.repeats):
            config = TrainingConfig(
                max_rounds=args.epochs,
                patience=args.epochs,
                batch_size=args.batch_size,
                seed=seed,
            )
            runs[CENTRALIZED].append(train_centralized(aligned, config))
            runs[PIPELINED].append(train_federated(aligned, config, partner, tls, partner_width))
            for variant in variants:
                runs[variant.name].append(
                    train_cached(aligned, config, partner, tls, partner_width, variant)
                )
            print(f"  seed {seed} done", flush=True)
    centralized = statistics.median(r["seconds"] for r in runs[CENTRALIZED])
    print(f"  ratios are to centralized with 1 thread ({centralized:.2f} s)")
    for name, variant_runs in runs.items():
        print(summary(name, variant_runs, centralized))
    print("  cached - pipelined test AUC, paired by seed (full model; bank-only path):")
    for variant in variants:
        full, bank_only = (
            [
                c["test"]["risk"][key] - p["test"]["risk"][key]
                for c, p in zip(runs[variant.name], runs[PIPELINED], strict=True)
            ]
            for key in ("auc", "bank_only_auc")
        )
        print(
            f"  {variant.name:<30} {statistics.mean(full):+.4f} +- {sd(full):.4f}; "
            f"{statistics.mean(bank_only):+.4f} +- {sd(bank_only):.4f}"
        )


if __name__ == "__main__":
    main()
