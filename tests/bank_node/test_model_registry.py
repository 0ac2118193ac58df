"""The bank's half of a model version: saved and rebuilt with the same outputs and the class names
it was trained with, with reason-code references, a monitoring baseline and a calibration check
computed from the run's rows."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from bank_node.model_registry import (
    HEAD,
    MODEL_SHAPE,
    bank_weights_digest,
    load_bank_version,
    save_bank_version,
)
from bank_node.serving_reference import ScoreScaling, adverse_reasons, attribution_batch
from bank_node.training_data import TEST, TRAIN, BankTrainingData
from cobrand.errors import FailedPrecondition, InvalidRequest, UnknownModelVersion
from cobrand.metrics import psi_from_shares
from cobrand.model_artefacts import state_dict_bytes
from cobrand.model_manifest import MANIFEST_FILE, model_version
from cobrand.model_store import ModelStore
from cobrand.preprocess import Preprocessor
from cobrand.split_model import BottomModel, BottomSpec, HeadModel
from tests.model_parts import fitted_table

PARTNER_WEIGHTS = hashlib.sha256(b"partner weights").digest()
PARTNER_PREPROCESSOR = hashlib.sha256(b"partner preprocessor").digest()
TASKS = {"risk": 1, "rights_package": 3}
CLASSES = {"rights_package": ("travel", "dining", "fuel")}


class _Run:
    """A trained-looking bank model over a small table (weights random, seeded)."""

    def __init__(self, rows: int = 600, seed: int = 0) -> None:
        self.table, self.preprocessor = fitted_table("bank", rows, seed)
        table = self.table
        rng = np.random.default_rng(1)
        self.probability = rng.uniform(0.02, 0.5, rows)
        risk = (rng.random(rows) < self.probability).astype(np.float32)
        self.data = BankTrainingData(
            features=self.preprocessor.transform(table),
            labels={"risk": risk, "rights_package": rng.integers(-1, 3, rows)},
            split=table.split,
            tasks=TASKS,
        )
        torch.manual_seed(0)
        self.bottom = BottomModel(
            BottomSpec.from_preprocessor(self.preprocessor, embedding_width=4, hidden=8)
        ).eval()
        self.head = HeadModel(4, 3, TASKS, hidden=8, dropout=0.2).eval()

    def save(
        self,
        store: ModelStore,
        *,
        data: BankTrainingData | None = None,
        probability: npt.NDArray[np.float64] | None = None,
        classes: dict[str, Any] = CLASSES,
    ) -> str:
        """Save with the probabilities of every aligned row, split as the registry takes them."""
        data = data or self.data
        probability = self.probability if probability is None else probability
        return save_bank_version(
            store,
            bottom=self.bottom,
            head=self.head,
            preprocessor=self.preprocessor,
            data=data,
            classes=classes,
            raw_numeric=self.table.numeric,
            train_probabilities={"risk": probability[data.split == TRAIN]},
            test_probabilities={"risk": probability[data.split == TEST]},
            partner_weights_sha256=PARTNER_WEIGHTS,
            partner_preprocessor_sha256=PARTNER_PREPROCESSOR,
        ).version_id


@pytest.fixture(scope="module")
def run() -> _Run:
    return _Run()


def test_the_version_id_is_the_runs_model_version(run: _Run, tmp_path: Path) -> None:
    version_id = run.save(ModelStore(tmp_path))

    bank = bank_weights_digest(run.bottom.state_dict(), run.head.state_dict())
    assert version_id == model_version(bank.hex(), PARTNER_WEIGHTS.hex())


def test_a_saved_version_rebuilds_networks_with_the_same_outputs(run: _Run, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version = load_bank_version(store, run.save(store))
    numeric = torch.from_numpy(run.data.features.numeric[:50])
    categorical = torch.from_numpy(run.data.features.categorical[:50])
    partner = torch.randn(50, 3)
    missing = torch.zeros(50, dtype=torch.bool)

    with torch.no_grad():
        expected = run.head(run.bottom(numeric, categorical), partner, missing)
        got = version.head(version.bottom(numeric, categorical), partner, missing)

    assert version.tasks == TASKS
    assert version.preprocessor.digest() == run.preprocessor.digest()
    assert version.manifest.model.partner_preprocessor_sha256 == PARTNER_PREPROCESSOR.hex()
    assert version.scaling == ScoreScaling()
    for task in TASKS:
        assert torch.equal(got[task], expected[task])


def test_reason_codes_name_each_bank_feature_with_its_training_reference(
    run: _Run, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)
    reasons = load_bank_version(store, run.save(store)).reasons
    train = run.data.split == TRAIN
    income = run.preprocessor.numeric[0]
    scaled_median = float(np.median(run.data.features.numeric[train, 0]))

    codes = [(r.code, r.feature, r.kind) for r in reasons.bank]
    assert codes == [
        ("B01", "income", "numeric"),
        ("B02", "tenure", "numeric"),
        ("B03", "segment", "categorical"),
    ]
    # income has missing values, so its reference also clears its missing indicator (column 2).
    (column, value), indicator = reasons.bank[0].numeric
    assert column == 0
    assert value == pytest.approx(scaled_median)
    assert indicator == (2, 0.0)
    assert float(reasons.bank[0].reference) == pytest.approx(
        scaled_median * income.scale + income.median, rel=1e-5
    )
    assert reasons.bank[1].numeric[1:] == ()
    assert reasons.bank[2].reference == "retail"
    assert "{value}" in reasons.bank[0].text
    assert reasons.partner.code == "P01"
    assert not any(name in reasons.partner.text for name in ("income", "tenure", "segment"))


def test_an_applicant_at_every_reference_value_has_no_adverse_reason(
    run: _Run, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)
    version = load_bank_version(store, run.save(store))
    references = version.reasons.bank
    numeric = run.data.features.numeric[0].copy()
    categorical = run.data.features.categorical[0].copy()
    for reference in references:
        for column, value in reference.numeric:
            numeric[column] = value
        for column, index in reference.categorical:
            categorical[column] = index

    rows, categories = attribution_batch(numeric, categorical, references)
    with torch.no_grad():
        bank = version.bottom(torch.from_numpy(rows), torch.from_numpy(categories))
        logits = version.head(
            bank, torch.zeros(len(rows), 3), torch.ones(len(rows), dtype=torch.bool)
        )
    points = version.scaling.points(torch.sigmoid(logits["risk"]).numpy())

    assert len(rows) == 1 + len(references)
    assert adverse_reasons(points[0], points[1:], [r.code for r in references]) == []


def test_the_baseline_bins_training_scores_and_raw_bank_features(run: _Run, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    baseline = load_bank_version(store, run.save(store)).baseline
    train = run.data.split == TRAIN
    income_missing = float(np.mean(run.data.features.numeric[train, 2] == 1.0))

    assert baseline.rows == int(train.sum())
    assert list(baseline.scores) == ["risk"]
    assert len(baseline.scores["risk"].edges) == 9
    assert baseline.scores["risk"].edges[0] == pytest.approx(
        np.quantile(run.probability[train], 0.1)
    )
    assert baseline.numeric["income"].shares[-1] == pytest.approx(income_missing)
    assert baseline.numeric["income"].edges[0] > 100.0  # raw units, not scaled
    assert baseline.numeric["tenure"].shares[-1] == 0.0
    assert baseline.categorical["segment"].categories == ("gold", "retail", "student")
    shares = [b.shares for b in baseline.numeric.values()]
    shares += [b.shares for b in baseline.categorical.values()]
    assert [sum(s) for s in shares] == pytest.approx([1.0] * 3)


def test_the_training_rows_raw_values_fall_in_the_baseline_bins_exactly_as_saved(
    tmp_path: Path,
) -> None:
    run = _Run(seed=1)
    train = run.data.split == TRAIN
    tenure = run.preprocessor.numeric[1]
    scaled = run.data.features.numeric[train, 1].astype(np.float64)
    # tenure is whole numbers that its float32 scaled feature does not hold exactly.
    decoded = scaled * tenure.scale + tenure.median
    assert np.any(decoded != run.table.numeric[train, 1])
    store = ModelStore(tmp_path)
    baseline = load_bank_version(store, run.save(store)).baseline

    for j, state in enumerate(run.preprocessor.numeric):
        bins = baseline.numeric[state.name]
        counts = bins.counts(run.table.numeric[train, j])
        assert tuple(counts / counts.sum()) == bins.shares, state.name
        assert psi_from_shares(expected=bins.shares, actual=counts / counts.sum()) == 0.0


def test_raw_numeric_features_of_other_rows_are_refused_naming_them(
    run: _Run, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequest, match=r"raw_numeric: .* shape \(600, 2\), got \(599, 2\)"):
        save_bank_version(
            ModelStore(tmp_path),
            bottom=run.bottom,
            head=run.head,
            preprocessor=run.preprocessor,
            data=run.data,
            classes=CLASSES,
            raw_numeric=run.table.numeric[1:],
            train_probabilities={"risk": run.probability[run.data.split == TRAIN]},
            test_probabilities={"risk": run.probability[run.data.split == TEST]},
            partner_weights_sha256=PARTNER_WEIGHTS,
            partner_preprocessor_sha256=PARTNER_PREPROCESSOR,
        )


def test_calibration_is_checked_on_the_labelled_test_rows(run: _Run, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    check = load_bank_version(store, run.save(store)).calibration["risk"]
    test = run.data.split == TEST

    assert check is not None
    assert check.rows == int(test.sum())
    assert check.brier == pytest.approx(
        np.mean((run.probability[test] - run.data.labels["risk"][test]) ** 2)
    )


def test_too_few_labelled_test_rows_record_no_calibration(run: _Run, tmp_path: Path) -> None:
    risk = run.data.labels["risk"].copy()
    risk[np.flatnonzero(run.data.split == TEST)[5:]] = np.nan
    data = replace(run.data, labels={**run.data.labels, "risk": risk})
    store = ModelStore(tmp_path)

    assert load_bank_version(store, run.save(store, data=data)).calibration == {"risk": None}


def test_a_binary_task_without_probabilities_is_refused_naming_it(
    run: _Run, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequest, match="task risk: needs a probability per training row"):
        save_bank_version(
            ModelStore(tmp_path),
            bottom=run.bottom,
            head=run.head,
            preprocessor=run.preprocessor,
            data=run.data,
            classes=CLASSES,
            raw_numeric=run.table.numeric,
            train_probabilities={},
            test_probabilities={"risk": run.probability[run.data.split == TEST]},
            partner_weights_sha256=PARTNER_WEIGHTS,
            partner_preprocessor_sha256=PARTNER_PREPROCESSOR,
        )


def test_a_probability_that_is_not_one_is_refused_naming_the_task_split_and_row(
    run: _Run, tmp_path: Path
) -> None:
    probability = run.probability.copy()
    probability[np.flatnonzero(run.data.split == TEST)[7]] = np.nan

    with pytest.raises(InvalidRequest, match="task risk: probability of test row 7 is nan"):
        run.save(ModelStore(tmp_path), probability=probability)


def test_weights_other_than_the_version_names_are_refused(run: _Run, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version_id = run.save(store)
    other = HeadModel(4, 3, TASKS, hidden=8).state_dict()
    # The head and its manifest entry rewritten together: only the weights digest can tell.
    _rewrite(tmp_path / version_id, HEAD, state_dict_bytes(other))

    with pytest.raises(FailedPrecondition, match="the bank's weights hash to"):
        load_bank_version(store, version_id)


def test_a_model_shape_that_does_not_fit_the_head_is_refused(run: _Run, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version_id = run.save(store)
    directory = tmp_path / version_id
    shape = json.loads((directory / MODEL_SHAPE).read_text())
    shape["head"]["hidden"] = 9
    _rewrite(directory, MODEL_SHAPE, json.dumps(shape).encode())

    with pytest.raises(FailedPrecondition, match=r"do not rebuild the head"):
        load_bank_version(store, version_id)


def test_a_versions_class_names_survive_save_and_load_in_output_order(
    run: _Run, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)
    version_id = run.save(store)

    shape = json.loads((tmp_path / version_id / MODEL_SHAPE).read_text())

    assert load_bank_version(store, version_id).classes == CLASSES
    assert shape["classes"] == {"rights_package": ["travel", "dining", "fuel"]}


def test_a_class_list_changed_after_saving_is_refused_by_the_manifest(
    run: _Run, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)
    version_id = run.save(store)
    path = tmp_path / version_id / MODEL_SHAPE
    shape = json.loads(path.read_text())
    shape["classes"]["rights_package"].reverse()
    path.write_text(json.dumps(shape))

    with pytest.raises(FailedPrecondition, match=rf"{version_id}: {path} has .* the manifest says"):
        load_bank_version(store, version_id)


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (["travel", "dining"], "has 3 outputs, needs 3 distinct class names, got 2"),
        (["travel", "dining", "travel"], "has 3 outputs, needs 3 distinct class names, got 3"),
        (None, "has 3 outputs, needs 3 distinct class names, got 0"),
    ],
)
def test_a_class_list_that_does_not_fit_the_task_is_refused_naming_the_version_and_file(
    run: _Run, tmp_path: Path, names: list[str] | None, problem: str
) -> None:
    store = ModelStore(tmp_path)
    version_id = run.save(store)
    directory = tmp_path / version_id
    shape = json.loads((directory / MODEL_SHAPE).read_text())
    shape["classes"] = {} if names is None else {"rights_package": names}
    # The manifest rewritten too: the check of the class list itself must refuse it.
    _rewrite(directory, MODEL_SHAPE, json.dumps(shape).encode())

    with pytest.raises(
        FailedPrecondition, match=rf"model version {version_id}: {MODEL_SHAPE}: .*{problem}"
    ):
        load_bank_version(store, version_id)


@pytest.mark.parametrize(
    ("classes", "problem"),
    [
        ({}, "task rights_package has 3 outputs, needs 3 distinct class names, got 0"),
        ({"rights_package": ("a", "b")}, "task rights_package has 3 outputs"),
        ({"rights_package": ("a", "a", "b")}, "distinct class names, got 3 (a, a, b)"),
        (
            {**CLASSES, "risk": ("good", "bad")},
            "task risk is not a K-class task of the model, but has class names",
        ),
    ],
)
def test_class_names_that_do_not_fit_the_tasks_are_refused_at_saving_naming_the_task(
    run: _Run, tmp_path: Path, classes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidRequest, match=r"classes: .*" + re.escape(problem)):
        run.save(ModelStore(tmp_path), classes=classes)


def test_an_unknown_version_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelVersion):
        load_bank_version(ModelStore(tmp_path), "0123456789abcdef")


def test_preprocessor_round_trips_byte_for_byte(run: _Run, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version_id = run.save(store)

    text = (tmp_path / version_id / "bank_preprocessor.json").read_bytes()

    assert Preprocessor.from_json(text) == run.preprocessor
    assert hashlib.sha256(text).digest() == run.preprocessor.digest()


def _rewrite(directory: Path, name: str, data: bytes) -> None:
    """Replace a saved artefact and its manifest entry, as only a deliberate forger would."""
    (directory / name).write_bytes(data)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["artefacts"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
