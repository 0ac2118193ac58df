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

Label leakage: every seed trains twice, with the label-leakage defence off and on
(``TrainingConfig.leakage_noise`` 0 and ``--noise``, by default the product's default; the same
seed for the weights, batches and the partner, so the AUC cost is a paired difference). The
bank's trainer records the gradients it sends the partner in the first and the last training pass
(``BankTrainer.sent``) and the partner's two attacks run on them (``bank_node.leakage.attack_aucs``:
gradient norm, and the direction of each row against its batch's leading direction; rows with a
zero gradient left out). The goals: both attacks' AUC at most 0.55 with the defence on (and at
least 0.45: an AUC far below 0.5 leaks as much to an attacker who flips his score), at a mean AUC
cost of at most 0.005.
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

from bank_node.leakage import attack_aucs
from bank_node.trainer import BankTrainer
from bank_node.training_config import TrainingConfig
from bench.dataplane import DATA, Aligned, load_aligned, partner_process, train_federated
from cobrand.metrics import auc, ks

_LIGHTGBM = {
    "n_estimators": 300,
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_child_samples": 20,
}
_TEST_SHARE, _VALID_SHARE_OF_TRAIN = 0.3, 0.2
_TRAIN, _VALID, _TEST = 0, 1, 2


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


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def _goal(name: str, value: float, bound: float, *, at_most: bool = False) -> str:
    met = value <= bound if at_most else value >= bound
    return f"  goal: {name} {value:.4f} {'<=' if at_most else '>='} {bound:.4f}: " + (
        "met" if met else "NOT met"
    )


_DEFENCES = ("off", "on")
_ATTACKS = tuple(  # every seed's first and last epoch
    f"{attack} {epoch}" for epoch in ("first", "last") for attack in ("norm", "direction")
)


def main() -> None:
    """Parse options; train LightGBM twice and the federated model per seed with the defence off
    and on; print the figures and the goals."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--noise", type=float, default=TrainingConfig().leakage_noise)
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
        f"stopping, {np.sum(split == _TEST):,} test; stratified, seed 0), {args.seeds} seeds, "
        f"label noise {args.noise:g}"
    )
    joined = lightgbm_test(features, raw_labels, split)
    bank_only = lightgbm_test(features[:, :bank_columns], raw_labels, split)
    print(f"  LightGBM joined rows      test AUC {joined['auc']:.4f}  KS {joined['ks']:.4f}")
    print(f"  LightGBM bank rows        test AUC {bank_only['auc']:.4f}  KS {bank_only['ks']:.4f}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in _DEFENCES}
    attacks: dict[str, dict[str, list[float]]] = {name: {} for name in _DEFENCES}
    trainers: list[BankTrainer] = []

    def keep_trainer(*args: Any) -> BankTrainer:
        trainers.append(BankTrainer(*args))
        return trainers[-1]

    with partner_process(aligned) as (partner, tls, width):
        for seed in range(args.seeds):
            config = TrainingConfig(seed=seed)
            for name in _DEFENCES:
                noise = args.noise if name == "on" else 0.0
                started = time.perf_counter()
                run = train_federated(
                    aligned,
                    config.model_copy(update={"leakage_noise": noise}),
                    partner,
                    tls,
                    width,
                    make_trainer=keep_trainer,
                )
                run["wall"] = time.perf_counter() - started
                runs[name].append(run)
                passes = trainers[-1].sent.passes
                for epoch, recorded in (("first", min(passes)), ("last", max(passes))):
                    aucs = attack_aucs(
                        passes[recorded].positions, passes[recorded].gradients, labels
                    )
                    for attack, figure in zip(("norm", "direction"), aucs, strict=True):
                        attacks[name].setdefault(f"{attack} {epoch}", []).append(figure)
                print(
                    f"  seed {seed}, defence {name}: {max(passes)[0]} rounds, {run['wall']:.1f} s, "
                    f"test AUC {run['test']['risk']['auc']:.4f}",
                    flush=True,
                )
    figures = {
        name: {
            key: [r["test"]["risk"][key] for r in runs[name]]
            for key in ("auc", "ks", "bank_only_auc", "bank_only_ks")
        }
        for name in _DEFENCES
    }
    for name in _DEFENCES:
        print(
            f"  federated joint path, defence {name:<3}      test AUC "
            f"{_mean_sd(figures[name]['auc'])}  KS {_mean_sd(figures[name]['ks'])}"
        )
        print(
            f"  federated bank-only path, defence {name:<3}  test AUC "
            f"{_mean_sd(figures[name]['bank_only_auc'])}  KS "
            f"{_mean_sd(figures[name]['bank_only_ks'])}"
        )
    cost = [off - on for off, on in zip(figures["off"]["auc"], figures["on"]["auc"], strict=True)]
    print(f"  AUC cost of the defence (off - on, paired by seed): {_mean_sd(cost)}")
    print("  label leakage (attack AUC on the gradients the bank sent, mean +- sd over seeds):")
    for name in _DEFENCES:
        for epoch in ("first", "last"):
            print(
                f"    defence {name:<3} {epoch:<5} epoch: norm attack "
                f"{_mean_sd(attacks[name][f'norm {epoch}'])}, direction attack "
                f"{_mean_sd(attacks[name][f'direction {epoch}'])}"
            )
    on = figures["on"]
    print(
        _goal("federated mean AUC, defence on", statistics.mean(on["auc"]), joined["auc"] - 0.005)
    )
    print(
        _goal(
            "bank-only path mean AUC, defence on",
            statistics.mean(on["bank_only_auc"]),
            bank_only["auc"] - 0.01,
        )
    )
    print(_goal("mean AUC cost of the defence", statistics.mean(cost), 0.005, at_most=True))
    figures_on = [figure for key in _ATTACKS for figure in attacks["on"][key]]
    print(_goal("highest attack AUC, defence on", max(figures_on), 0.55, at_most=True))
    # An AUC well below 0.5 leaks as much to an attacker who flips his score.
    print(_goal("lowest attack AUC, defence on", min(figures_on), 0.45))


if __name__ == "__main__":
    main()
