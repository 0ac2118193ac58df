"""The test rows' scores: checks, the .npz round trip, logits to probabilities."""

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bank_node.holdout_scores import (
    TaskScores,
    load_test_scores,
    save_test_scores,
    scores_from_logits,
)
from cobrand.errors import ConfigError, InvalidRequest


def _binary(rows: int = 4) -> TaskScores:
    labels = np.repeat([1, 0], [rows // 2, rows - rows // 2])
    scores = np.linspace(1.0, 0.0, rows)
    return TaskScores(labels=labels, full=scores, bank_only=scores[::-1].copy())


def test_a_nan_score_is_refused_naming_the_task_the_path_and_the_row() -> None:
    scores = _binary()
    scores.bank_only[2] = np.nan
    with pytest.raises(InvalidRequest, match=r"task 'risk': bank-only score at test row 2 is nan"):
        scores.check("risk")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: TaskScores(s.labels, s.full * 2, s.bank_only), "full-model score .* not in"),
        (lambda s: TaskScores(s.labels + 1, s.full, s.bank_only), "label at test row 0 is 2"),
        (lambda s: TaskScores(s.labels[:3], s.full, s.bank_only), "same non-empty rows"),
        (lambda s: TaskScores(s.labels, s.full, s.bank_only, ("a", "b")), "2 class names"),
    ],
)
def test_scores_that_cannot_be_reported_are_refused(
    change: Callable[[TaskScores], TaskScores], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        change(_binary()).check("risk")


def test_class_probabilities_must_sum_to_one() -> None:
    probabilities = np.array([[0.5, 0.5], [0.5, 0.4]])
    scores = TaskScores(np.array([0, 1]), probabilities, probabilities, ("a", "b"))
    with pytest.raises(
        InvalidRequest, match=r"full-model probabilities' sum at test row 1 is 0\.9"
    ):
        scores.check("rights_package")


def test_saved_scores_load_back_equal_in_task_order(tmp_path: Path) -> None:
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1]])
    saved = {
        "zeta/../risk <b>": _binary(),
        "rights_package": TaskScores(
            np.array([1, 0]), probabilities, probabilities[::-1].copy(), ("shopping", "travel")
        ),
    }
    path = tmp_path / "out" / "test_scores.npz"
    save_test_scores(path, saved)
    loaded = load_test_scores(path)
    assert list(loaded) == list(saved)
    for task, entry in saved.items():
        assert loaded[task].classes == entry.classes
        for name in ("labels", "full", "bank_only"):
            np.testing.assert_array_equal(getattr(loaded[task], name), getattr(entry, name))
    assert [p.name for p in path.parent.iterdir()] == ["test_scores.npz"]


def test_saving_refuses_bad_scores_before_writing(tmp_path: Path) -> None:
    scores = _binary()
    scores.full[0] = np.inf
    with pytest.raises(InvalidRequest, match="task 'risk': full-model score at test row 0"):
        save_test_scores(tmp_path / "s.npz", {"risk": scores})
    assert not (tmp_path / "s.npz").exists()


def test_loading_a_missing_or_foreign_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.npz: not a test-scores file"):
        load_test_scores(tmp_path / "absent.npz")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, something=np.zeros(3))
    with pytest.raises(ConfigError, match=r"foreign\.npz: not a test-scores file"):
        load_test_scores(foreign)


def test_loading_nan_scores_names_the_file_and_the_task(tmp_path: Path) -> None:
    path = tmp_path / "nan.npz"
    full = np.array([0.1, np.nan])
    arrays = {
        "tasks": np.array(["risk"]),
        "0.labels": np.array([0, 1]),
        "0.full": full,
        "0.bank_only": full,
        "0.classes": np.array([], dtype=str),
    }
    # Written by hand: save_test_scores would refuse the NaN. numpy's stub lets a ** mapping
    # fill its `allow_pickle: bool` keyword, hence the ignore.
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"nan\.npz: task 'risk': full-model score at test row 1"):
        load_test_scores(path)


def test_scores_from_logits_keep_labelled_rows_as_probabilities() -> None:
    logits = {
        "risk": np.array([0.0, 20.0, 21.0, -1000.0, 3.0], dtype=np.float32),
        "rights_package": np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0, 0]]),
    }
    labels = {
        "risk": np.array([0.0, 1.0, 1.0, 0.0, np.nan], dtype=np.float32),
        "rights_package": np.array([1, 0, -1, 1, 0]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the large logits
        scores = scores_from_logits(logits, logits, labels, {"rights_package": ("a", "b")})
    risk, rights = scores["risk"], scores["rights_package"]
    np.testing.assert_array_equal(risk.labels, [0, 1, 1, 0])
    assert risk.full[0] == 0.5
    assert risk.full[1] < risk.full[2] < 1.0  # float32 would tie them at 1
    assert risk.full[3] == 0.0
    np.testing.assert_array_equal(rights.labels, [1, 0, 1, 0])
    np.testing.assert_allclose(rights.full, [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    assert rights.classes == ("a", "b")
    risk.check("risk")
    rights.check("rights_package")


def test_a_task_without_labelled_rows_is_left_out() -> None:
    logits = {"risk": np.zeros(3), "rights_package": np.zeros((3, 2))}
    labels = {"risk": np.array([0.0, 1.0, 0.0]), "rights_package": np.array([-1, -1, -1])}

    scores = scores_from_logits(logits, logits, labels, {"rights_package": ("a", "b")})

    assert list(scores) == ["risk"]
