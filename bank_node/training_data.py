"""The bank's aligned rows for training: encoded features, labels per task and the split.

Row i of every array is aligned position i of the last alignment, the same customer as the
partner's row i: the bank's table rows picked in the alignment's join-key order, as the partner
picks its own. Nothing here ever sees the partner's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cobrand.errors import InvalidRequest
from cobrand.preprocess import Encoded
from cobrand.schema import BinaryLabel, PartySchema

__all__ = ["TEST", "TRAIN", "VALID", "BankTrainingData", "task_classes", "task_widths"]

TRAIN: Final = 0
VALID: Final = 1
TEST: Final = 2
"""Split codes, as ``PartyTable.split`` holds them."""


def task_widths(schema: PartySchema) -> dict[str, int]:
    """Output width per task the bank schema has labels for: 1 if binary, else the classes."""
    return {
        task: 1 if isinstance(label, BinaryLabel) else len(label.classes)
        for task, label in schema.labels.present().items()
    }


def task_classes(schema: PartySchema) -> dict[str, tuple[str, ...]]:
    """The class names of each K-class task the bank schema has labels for, in output order."""
    return {
        task: label.classes
        for task, label in schema.labels.present().items()
        if not isinstance(label, BinaryLabel)
    }


@dataclass(frozen=True)
class BankTrainingData:
    """The bank's aligned rows, row i being aligned position i.

    Attributes
    ----------
    features : Encoded
        The bank's encoded features of the aligned rows.
    labels : mapping of str to ndarray, each shape (n,)
        Per task: binary float32 1 / 0 / NaN (unlabelled); K-class int64 index, -1 unlabelled.
    split : ndarray of int8, shape (n,)
        0 train, 1 valid, 2 test.
    tasks : mapping of str to int
        Output width per task (`task_widths`); every task needs labels.
    """

    features: Encoded
    labels: Mapping[str, npt.NDArray[Any]]
    split: npt.NDArray[np.int8]
    tasks: Mapping[str, int]

    def __post_init__(self) -> None:
        rows = len(self.split)
        sizes = {"numeric features": len(self.features.numeric)}
        sizes["categorical features"] = len(self.features.categorical)
        sizes.update({f"labels of {task}": len(values) for task, values in self.labels.items()})
        for what, size in sizes.items():
            if size != rows:
                raise InvalidRequest(f"bank training data: {what} have {size} rows, split {rows}")
        if not self.tasks:
            raise InvalidRequest("bank training data: no task to train")
        missing = sorted(set(self.tasks) - set(self.labels))
        if missing:
            raise InvalidRequest(f"bank training data: no labels for {', '.join(missing)}")
        for part, code in (("train", TRAIN), ("valid", VALID)):
            if not np.any(self.split == code):
                raise InvalidRequest(f"bank training data: no {part} rows among {rows}")
