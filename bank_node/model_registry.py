"""The bank's half of a model version: its networks and preprocessing, and what serving needs.

`save_bank_version` runs at the end of a training run, with the run's best round restored in the
bank's modules, and saves under the version id of the bank's and the partner's weights digests:

    bank_bottom.pt, head.pt      the bank's bottom and head state dicts
    bank_preprocessor.json       the bank's fitted preprocessing (its file hash is its digest)
    model.json                   tasks and output widths, the bottom's and head's sizes and the
                                 partner's embedding width: what rebuilds the networks; and
                                 each K-class task's class names in output order (serving names
                                 the outputs by these: the schema may have changed since)
    score_scaling.json           `ScoreScaling`: points from the risk probability
    reason_codes.json            one code per bank feature (``B01``... in the preprocessor's
                                 order: numeric features, then categorical, each in schema order)
                                 with its reference value and text, and ``P01``, the partner's
                                 contribution as one reason that names no partner feature
    monitoring_baseline.json     on the training rows: bins and shares of each binary task's
                                 predicted probability and of each bank feature (numeric ones
                                 from the table's raw float64 values, as production's are binned)
    calibration.json             per binary task, `calibration_check` on the labelled test rows

`load_bank_version` reads it back whole (every file checked against the manifest), rebuilds the
networks and checks their weights against the digest the version id is made of.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
import pydantic
import torch
from pydantic import TypeAdapter
from torch import nn

from bank_node.monitoring_baseline import MonitoringBaseline, fit_baseline
from bank_node.reason_codes import ReasonCodes, fit_reason_codes
from bank_node.serving_reference import (
    CalibrationCheck,
    ScoreScaling,
    calibration_check,
    checked_probabilities,
)
from bank_node.training_data import TEST, TRAIN, BankTrainingData
from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.model_artefacts import (
    bottom_sizes,
    json_bytes,
    load_bottom,
    load_preprocessor,
    load_state_dict,
    state_dict_bytes,
)
from cobrand.model_manifest import Manifest, ModelDigests
from cobrand.model_store import ModelStore, StoredVersion
from cobrand.preprocess import Preprocessor
from cobrand.split_model import BottomModel, HeadModel
from cobrand.weights import weights_digest

__all__ = [
    "BANK_BOTTOM",
    "BANK_PREPROCESSOR",
    "CALIBRATION",
    "HEAD",
    "MODEL_SHAPE",
    "MONITORING_BASELINE",
    "REASON_CODES",
    "SCORE_SCALING",
    "BankVersion",
    "bank_weights",
    "bank_weights_digest",
    "load_bank_version",
    "save_bank_version",
]

_LOG = logging.getLogger(__name__)

BANK_BOTTOM: Final = "bank_bottom.pt"
HEAD: Final = "head.pt"
BANK_PREPROCESSOR: Final = "bank_preprocessor.json"
MODEL_SHAPE: Final = "model.json"
SCORE_SCALING: Final = "score_scaling.json"
REASON_CODES: Final = "reason_codes.json"
MONITORING_BASELINE: Final = "monitoring_baseline.json"
CALIBRATION: Final = "calibration.json"

_CALIBRATION_BINS: Final = 10


_CALIBRATIONS = TypeAdapter(dict[str, CalibrationCheck | None])
_CLASSES = TypeAdapter(dict[str, tuple[str, ...]])
_Document = TypeVar("_Document")


@dataclass(frozen=True)
class BankVersion:
    """The bank's half of a model version, checked and ready to serve.

    Attributes
    ----------
    manifest : Manifest
    preprocessor : Preprocessor
    bottom : BottomModel
    head : HeadModel
        Both in evaluation mode.
    tasks : mapping of str to int
        Output width per task: 1 binary, K for a K-class task.
    classes : mapping of str to tuple of str
        Per K-class task, its K distinct class names in output order, as training named them.
    scaling : ScoreScaling
    reasons : ReasonCodes
    baseline : MonitoringBaseline
    calibration : mapping of str to CalibrationCheck or None
        Per binary task; None where the test rows had fewer labelled rows than bins.
    """

    manifest: Manifest
    preprocessor: Preprocessor
    bottom: BottomModel
    head: HeadModel
    tasks: Mapping[str, int]
    classes: Mapping[str, tuple[str, ...]]
    scaling: ScoreScaling
    reasons: ReasonCodes
    baseline: MonitoringBaseline
    calibration: dict[str, CalibrationCheck | None]


def bank_weights(
    bottom: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The bank's bottom and head as one checkpoint names them: ``bottom.*`` and ``head.*``."""
    return {
        **{f"bottom.{name}": tensor for name, tensor in bottom.items()},
        **{f"head.{name}": tensor for name, tensor in head.items()},
    }


def bank_weights_digest(
    bottom: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor]
) -> bytes:
    """`weights_digest` of the bank's bottom and head as one checkpoint (`bank_weights`)."""
    return weights_digest(bank_weights(bottom, head))


def save_bank_version(
    store: ModelStore,
    *,
    bottom: BottomModel,
    head: HeadModel,
    preprocessor: Preprocessor,
    data: BankTrainingData,
    classes: Mapping[str, Sequence[str]],
    raw_numeric: npt.NDArray[np.float64],
    train_probabilities: Mapping[str, npt.NDArray[np.floating[Any]]],
    test_probabilities: Mapping[str, npt.NDArray[np.floating[Any]]],
    partner_weights_sha256: bytes,
    partner_preprocessor_sha256: bytes,
    scaling: ScoreScaling | None = None,
) -> Manifest:
    """Save the bank's half of the trained model as a version.

    Parameters
    ----------
    store : ModelStore
        The bank's registry.
    bottom, head : BottomModel, HeadModel
        The bank's modules with the chosen round's weights.
    preprocessor : Preprocessor
        The bank's preprocessing that encoded `data`.
    data : BankTrainingData
        The run's aligned rows (features, labels, split).
    classes : mapping of str to sequence of str
        The class names of each K-class task of `data`, in output order (the training set's
        ``classes``); a binary task has none.
    raw_numeric : ndarray of float64, shape (n, len(preprocessor.numeric))
        The bank table's numeric features of the same rows as `data`, in the preprocessor's
        order, NaN where missing (``PartyTable.numeric`` of the aligned table). The baseline
        bins these rather than values decoded from the float32 features, which would put
        whole numbers (an age of 26 decoded as 25.99999988) a bin below where production
        puts them.
    train_probabilities, test_probabilities : mapping of str to ndarray
        Per binary task, the full model's predicted probability of the event on the training
        rows (for the baseline) and on the test rows (for calibration), each in aligned order:
        ``np.flatnonzero(data.split == TRAIN)`` and ``... == TEST``.
    partner_weights_sha256 : bytes
        The partner's weights digest of the chosen round, as the run committed it.
    partner_preprocessor_sha256 : bytes
        The partner preprocessing's digest the run checked.
    scaling : ScoreScaling, optional
        Defaults to 600 points at odds 50:1 good to bad, 20 points to double the odds.

    Returns
    -------
    Manifest
        Its ``version_id`` is the run's model version.

    Raises
    ------
    InvalidRequest
        A binary task without probabilities, or probabilities of another length or outside
        [0, 1] (the task, split and row are named), `raw_numeric` of another shape, or class
        names that are not K distinct names for each K-class task (the task is named).
    """
    problem = _class_problem(data.tasks, classes)
    if problem is not None:
        raise InvalidRequest(f"classes: {problem}")
    expected = (len(data.split), len(preprocessor.numeric))
    if np.shape(raw_numeric) != expected:
        raise InvalidRequest(
            f"raw_numeric: needs the raw numeric features of every aligned row, shape "
            f"{expected}, got {np.shape(raw_numeric)}"
        )
    binary = [task for task, width in data.tasks.items() if width == 1]
    train, test = data.split == TRAIN, data.split == TEST
    scores = {
        task: _probabilities(task, "training", train_probabilities.get(task), int(train.sum()))
        for task in binary
    }
    test_scores = {
        task: _probabilities(task, "test", test_probabilities.get(task), int(test.sum()))
        for task in binary
    }
    bottom_state, head_state = bottom.state_dict(), head.state_dict()
    model = ModelDigests.of(
        bank_weights=bank_weights_digest(bottom_state, head_state),
        partner_weights=partner_weights_sha256,
        partner_preprocessor=partner_preprocessor_sha256,
    )
    calibration = {
        task: (
            calibration_check(y_true=data.labels[task][test], y_score=test_scores[task])
            if np.count_nonzero(~np.isnan(data.labels[task][test])) >= _CALIBRATION_BINS
            else None
        )
        for task in binary
    }
    files = {
        BANK_BOTTOM: state_dict_bytes(bottom_state),
        HEAD: state_dict_bytes(head_state),
        BANK_PREPROCESSOR: preprocessor.to_json().encode("ascii"),
        MODEL_SHAPE: json_bytes(_model_shape(bottom, head, classes)),
        SCORE_SCALING: json_bytes((scaling or ScoreScaling()).model_dump(mode="json")),
        REASON_CODES: json_bytes(
            fit_reason_codes(
                preprocessor, data.features.numeric[train], data.features.categorical[train]
            ).model_dump(mode="json")
        ),
        MONITORING_BASELINE: json_bytes(
            fit_baseline(
                preprocessor, raw_numeric[train], data.features.categorical[train], scores
            ).model_dump(mode="json")
        ),
        CALIBRATION: json_bytes(_CALIBRATIONS.dump_python(calibration, mode="json")),
    }
    manifest = store.save("bank", model, files)
    _LOG.info("[ModelRegistry] bank model version %s saved", manifest.version_id)
    return manifest


def load_bank_version(store: ModelStore, version_id: str) -> BankVersion:
    """Read the bank's half of a version, rebuild its networks and check their weights.

    Raises
    ------
    UnknownModelVersion
        The bank holds no such version.
    FailedPrecondition
        A file differs from the manifest, does not parse (named), the class names of a K-class
        task are not K distinct names, or the weights are not the ones the version id names.
    """
    version = store.load(version_id)
    preprocessor = load_preprocessor(version, BANK_PREPROCESSOR)
    shape = version.document(MODEL_SHAPE)
    try:
        bottom = load_bottom(version, BANK_BOTTOM, shape["bank_bottom"], preprocessor)
        head = HeadModel(
            bottom.spec.embedding_width,
            shape["partner_embedding_width"],
            shape["tasks"],
            hidden=shape["head"]["hidden"],
            dropout=shape["head"]["dropout"],
        )
        head.load_state_dict(load_state_dict(version, HEAD))
    except (KeyError, TypeError, RuntimeError) as err:
        raise FailedPrecondition(
            f"model version {version_id}: {MODEL_SHAPE} and {HEAD} do not rebuild the head: {err}"
        ) from err
    head.eval()
    digest = bank_weights_digest(bottom.state_dict(), head.state_dict())
    if digest.hex() != version.manifest.model.bank_weights_sha256:
        raise FailedPrecondition(
            f"model version {version_id}: the bank's weights hash to {digest.hex()[:12]}, the "
            f"version names {version.manifest.model.bank_weights_sha256[:12]}"
        )
    return BankVersion(
        manifest=version.manifest,
        preprocessor=preprocessor,
        bottom=bottom,
        head=head,
        tasks=dict(shape["tasks"]),
        # A version saved before class names were recorded has none: one with a K-class task
        # is refused, as its outputs can no longer be named.
        classes=_parsed_classes(version, shape.get("classes", {}), shape["tasks"]),
        scaling=_parsed(version, SCORE_SCALING, TypeAdapter(ScoreScaling)),
        reasons=_parsed(version, REASON_CODES, TypeAdapter(ReasonCodes)),
        baseline=_parsed(version, MONITORING_BASELINE, TypeAdapter(MonitoringBaseline)),
        calibration=_parsed(version, CALIBRATION, _CALIBRATIONS),
    )


def _probabilities(
    task: str, split: str, given: npt.NDArray[np.floating[Any]] | None, rows: int
) -> npt.NDArray[np.float64]:
    if given is None or np.shape(given) != (rows,):
        raise InvalidRequest(
            f"task {task}: needs a probability per {split} row ({rows}), got "
            f"{'none' if given is None else np.shape(given)}"
        )
    return checked_probabilities(given, f"task {task}: probability of {split} row")


def _class_problem(tasks: Mapping[str, int], classes: Mapping[str, Sequence[str]]) -> str | None:
    """What is wrong with `classes` as the class names of `tasks`' K-class tasks, if anything."""
    for task in sorted(set(classes) | {task for task, width in tasks.items() if width > 1}):
        width, names = tasks.get(task, 1), classes.get(task, ())
        if width == 1:
            return f"task {task} is not a K-class task of the model, but has class names"
        if len(names) != width or len(set(names)) != width:
            return (
                f"task {task} has {width} outputs, needs {width} distinct class names, got "
                f"{len(names)} ({', '.join(names)})"
            )
    return None


def _model_shape(
    bottom: BottomModel, head: HeadModel, classes: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    first, dropout = head.trunk[0], head.trunk[2]
    assert isinstance(first, nn.Linear)
    assert isinstance(dropout, nn.Dropout)
    tasks = {}
    for task, layer in head.outputs.items():
        assert isinstance(layer, nn.Linear)
        tasks[task] = layer.out_features
    return {
        "tasks": tasks,
        "classes": {task: list(names) for task, names in classes.items()},
        "bank_bottom": bottom_sizes(bottom.spec),
        # The head's input is both embeddings and the partner-missing flag.
        "partner_embedding_width": first.in_features - bottom.spec.embedding_width - 1,
        "head": {"hidden": first.out_features, "dropout": dropout.p},
    }


def _parsed_classes(
    version: StoredVersion, given: object, tasks: Mapping[str, int]
) -> dict[str, tuple[str, ...]]:
    try:
        classes = _CLASSES.validate_python(given)
    except pydantic.ValidationError as err:
        raise FailedPrecondition(
            f"model version {version.manifest.version_id}: {MODEL_SHAPE}: classes: "
            f"{err.errors()[0]['msg']}"
        ) from err
    problem = _class_problem(tasks, classes)
    if problem is not None:
        raise FailedPrecondition(
            f"model version {version.manifest.version_id}: {MODEL_SHAPE}: {problem}"
        )
    return classes


def _parsed(version: StoredVersion, name: str, adapter: TypeAdapter[_Document]) -> _Document:
    try:
        return adapter.validate_python(version.document(name))
    except pydantic.ValidationError as err:
        raise FailedPrecondition(
            f"model version {version.manifest.version_id}: {name}: {err.errors()[0]['msg']}"
        ) from err
