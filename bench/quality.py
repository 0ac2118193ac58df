"""Benchmark model quality on the real default-credit data against LightGBM, and label leakage.

    python -m bench.quality [--seeds 5]

The split is the bench's own, not the schemas' hashed one: a 30% test split stratified on the
label with seed 0 (scikit-learn ``train_test_split(test_size=0.3, stratify=y, random_state=0)``),
then the validation rows for early stopping carved out of the remaining 70% the same way (20% of
it, stratified, seed 0). In the same run:

- LightGBM (``n_estimators=300, learning_rate=0.03, num_leaves=15, min_child_samples=20``, no
  early stopping) fit on all of the 70% training part, once on the joined rows' raw features and
  once on the bank's raw features only;
- our federated model (``TrainingConfig`` defaults: early stopping on the validation rows) over
  the data plane (bench.dataplane: the partner's trainer in its own process, loopback mutual
  TLS), once per training seed; the test AUC and KS (cobrand.metrics) of its joint path and of
  its bank-only path, mean +- sd over the seeds.

Label leakage, with the privacy defence off (the product has none yet): the bench records every
gradient the bank sends the partner over the data plane (a recording `DataPlaneClient`, bench
only) and attacks them as the partner could, per training epoch:

- norm attack: the AUC of each row's gradient norm as a score for the label;
- direction attack, a 2-cluster split needing no labels: per batch, each row's cosine to the
  leading singular direction of the batch's unit gradients, signed so that the smaller side
  (defaults are the minority, 22%) scores high; the AUC of that score.

Rows whose gradient is exactly zero (the partner slice dropped for them in that step) are left
out of both attacks. Printed for the first and the last epoch trained, mean +- sd over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt
from pyarrow import csv
from sklearn.model_selection import train_test_split

from bank_node.dataplane_client import DataPlaneClient, PassStream
from bank_node.trainer import TrainingConfig
from bench.dataplane import DATA, Aligned, load_aligned, partner_process, train_federated
from cobrand.metrics import auc, ks
from cobrand.v1 import training_pb2

_LIGHTGBM = {
    "n_estimators": 300,
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_child_samples": 20,
}
_TEST_SHARE, _VALID_SHARE_OF_TRAIN = 0.3, 0.2
_TRAIN, _VALID, _TEST = 0, 1, 2


class _RecordingStream(PassStream):
    """A training pass that keeps, in step order, each batch's positions and each gradient."""

    def __init__(self, *args: Any) -> None:
        self.positions: list[npt.NDArray[np.integer]] = []
        self.gradients: list[npt.NDArray[np.float32]] = []
        super().__init__(*args)

    def send(
        self,
        *,
        positions: npt.NDArray[np.integer] | None = None,
        gradient: npt.NDArray[np.float32] | None = None,
    ) -> None:
        if positions is not None:
            self.positions.append(positions.copy())
        if gradient is not None:
            self.gradients.append(gradient.copy())
        super().send(positions=positions, gradient=gradient)


class _RecordingClient(DataPlaneClient):
    """Opens training passes that record what the bank sends; keeps the passes by round."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passes: dict[int, _RecordingStream] = {}

    def open_pass(self, round_number: int, *, train: bool) -> PassStream:
        if not train:
            return super().open_pass(round_number, train=train)
        opening = training_pb2.PassOpen(
            run_id=self.run_id, round=round_number, kind=training_pb2.PASS_KIND_TRAIN
        )
        # A retried round replaces its pass: the partner undid the first one.
        self.passes[round_number] = _RecordingStream(self._exchange, opening, self)
        return self.passes[round_number]


def stratified_split(labels: npt.NDArray[np.float32]) -> npt.NDArray[np.int8]:
    """0 train, 1 valid, 2 test: 30% test, then 20% of the rest valid, stratified, seed 0."""
    rows = np.arange(len(labels))
    train, test = train_test_split(rows, test_size=_TEST_SHARE, stratify=labels, random_state=0)
    _, valid = train_test_split(
        train, test_size=_VALID_SHARE_OF_TRAIN, stratify=labels[train], random_state=0
    )
    split = np.full(len(labels), _TRAIN, dtype=np.int8)
    split[valid], split[test] = _VALID, _TEST
    return split


def raw_features(
    data_dir: Path,
) -> tuple[npt.NDArray[np.float64], int, npt.NDArray[np.float64]]:
    """Joined rows' raw features (bank columns first), the bank's column count, the labels.

    Rows are in `load_aligned`'s order: the common ids sorted as text.
    """
    bank = csv.read_csv(data_dir / "default_credit_hetero_guest.csv")
    partner = csv.read_csv(data_dir / "default_credit_hetero_host.csv")
    _, bank_rows, partner_rows = np.intersect1d(
        bank["id"].to_numpy().astype(str),
        partner["id"].to_numpy().astype(str),
        return_indices=True,
    )
    columns = [bank[name].to_numpy()[bank_rows] for name in bank.column_names if name[0] == "x"]
    bank_columns = len(columns)
    columns += [
        partner[name].to_numpy()[partner_rows] for name in partner.column_names if name != "id"
    ]
    labels = bank["y"].to_numpy()[bank_rows]
    return np.column_stack(columns).astype(np.float64), bank_columns, labels


def lightgbm_test(
    features: npt.NDArray[np.float64], labels: npt.NDArray[np.float64], split: npt.NDArray[np.int8]
) -> dict[str, float]:
    """Fit on the whole 70% training part (train and valid rows); AUC and KS on the test rows."""
    fit, test = split != _TEST, split == _TEST
    model = lightgbm.LGBMClassifier(**_LIGHTGBM, random_state=0, verbose=-1)
    model.fit(features[fit], labels[fit])
    scores = model.predict_proba(features[test])[:, 1]
    return {
        "auc": auc(y_true=labels[test], y_score=scores),
        "ks": ks(y_true=labels[test], y_score=scores),
    }


def attack_aucs(stream: _RecordingStream, labels: npt.NDArray[np.float32]) -> tuple[float, float]:
    """(norm attack AUC, direction attack AUC) on one training pass's gradients."""
    norm_scores, direction_scores, truths = [], [], []
    for positions, gradient in zip(stream.positions, stream.gradients, strict=True):
        norms = np.linalg.norm(gradient, axis=1)
        kept = norms > 0
        unit = gradient[kept] / norms[kept, None]
        # The leading direction of the batch's gradients splits it in two clusters; the
        # attacker, knowing defaults are the minority, calls the smaller side positive.
        direction = np.linalg.svd(unit, full_matrices=False)[2][0]
        cosine = unit @ direction
        if np.sum(cosine > 0) > len(cosine) / 2:
            cosine = -cosine
        norm_scores.append(norms[kept])
        direction_scores.append(cosine)
        truths.append(labels[positions[kept]])
    truth = np.concatenate(truths)
    return (
        auc(y_true=truth, y_score=np.concatenate(norm_scores)),
        auc(y_true=truth, y_score=np.concatenate(direction_scores)),
    )


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def _goal(name: str, value: float, floor: float) -> str:
    verdict = "met" if value >= floor else "NOT met"
    return f"  goal: {name} {value:.4f} >= {floor:.4f}: {verdict}"


def main() -> None:
    """Parse options; train LightGBM twice and the federated model per seed; print the figures."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    args = parser.parse_args()
    loaded = load_aligned(args.data_dir)
    labels = loaded.bank.labels["risk"]
    split = stratified_split(labels)
    aligned: Aligned = dataclasses.replace(
        loaded, bank=dataclasses.replace(loaded.bank, split=split)
    )
    features, bank_columns, raw_labels = raw_features(args.data_dir)
    if not np.array_equal(raw_labels, labels):
        raise SystemExit("bench.quality: raw rows are not in load_aligned's order")
    print(
        f"bench.quality: default credit, {len(split):,} aligned customers "
        f"({np.sum(split == _TRAIN):,} train, {np.sum(split == _VALID):,} valid for early "
        f"stopping, {np.sum(split == _TEST):,} test; stratified, seed 0), {args.seeds} seeds"
    )
    joined = lightgbm_test(features, raw_labels, split)
    bank_only = lightgbm_test(features[:, :bank_columns], raw_labels, split)
    print(f"  LightGBM joined rows      test AUC {joined['auc']:.4f}  KS {joined['ks']:.4f}")
    print(f"  LightGBM bank rows        test AUC {bank_only['auc']:.4f}  KS {bank_only['ks']:.4f}")
    runs: list[dict[str, Any]] = []
    attacks: dict[str, list[float]] = {}
    clients: list[_RecordingClient] = []

    def recording_client(*args: Any, **kwargs: Any) -> _RecordingClient:
        clients.append(_RecordingClient(*args, **kwargs))
        return clients[-1]

    with partner_process(aligned) as (partner, tls, width):
        for seed in range(args.seeds):
            config = TrainingConfig(seed=seed)
            started = time.perf_counter()
            run = train_federated(aligned, config, partner, tls, width, recording_client)
            run["wall"] = time.perf_counter() - started
            runs.append(run)
            passes = clients[-1].passes
            for epoch, name in ((min(passes), "first"), (max(passes), "last")):
                norm, direction = attack_aucs(passes[epoch], labels)
                attacks.setdefault(f"norm {name}", []).append(norm)
                attacks.setdefault(f"direction {name}", []).append(direction)
            print(
                f"  seed {seed}: {len(passes)} epochs, {run['wall']:.1f} s, test AUC "
                f"{run['test']['risk']['auc']:.4f}",
                flush=True,
            )
    figures = {
        key: [r["test"]["risk"][key] for r in runs]
        for key in ("auc", "ks", "bank_only_auc", "bank_only_ks")
    }
    print(
        f"  federated joint path      test AUC {_mean_sd(figures['auc'])}  "
        f"KS {_mean_sd(figures['ks'])}"
    )
    print(
        f"  federated bank-only path  test AUC {_mean_sd(figures['bank_only_auc'])}  "
        f"KS {_mean_sd(figures['bank_only_ks'])}"
    )
    print(_goal("federated mean AUC", statistics.mean(figures["auc"]), joined["auc"] - 0.005))
    print(
        _goal(
            "bank-only path mean AUC",
            statistics.mean(figures["bank_only_auc"]),
            bank_only["auc"] - 0.01,
        )
    )
    print("  label leakage, defence off (attack AUC on the gradients the bank sent):")
    for name in ("first", "last"):
        print(
            f"    {name} epoch: norm attack {_mean_sd(attacks[f'norm {name}'])}, "
            f"direction attack {_mean_sd(attacks[f'direction {name}'])}"
        )


if __name__ == "__main__":
    main()
