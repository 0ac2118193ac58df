"""The bank's training set: its own table in the order of its current alignment, encoded.

What the bank's ServerApp trains a run on: the bank's features, labels and split for the
aligned customers (row i is aligned position i, the partner's row i), the bank bottom's shape
and the alignment they belong to, which the run checks the partner holds too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bank_node.config import BankNodeConfig
from bank_node.training_data import BankTrainingData, task_classes, task_widths
from cobrand.aligned_rows import aligned_table
from cobrand.alignment_store import AlignmentStore
from cobrand.party_files import load_own_table
from cobrand.pki import Party
from cobrand.preprocess import Preprocessor
from cobrand.rounds_protocol import AlignmentVersion
from cobrand.schema import load_party_schema
from cobrand.split_model import BottomSpec

__all__ = ["BankTrainingSet", "load_training_set"]


@dataclass(frozen=True)
class BankTrainingSet:
    """The bank's aligned rows of its current alignment.

    Attributes
    ----------
    alignment : AlignmentVersion
    data : BankTrainingData
    raw_numeric : numpy.ndarray of float64, shape (n, n_numeric)
        The aligned rows' numeric features as the table holds them (NaN where missing), in the
        preprocessor's order: what the monitoring baseline bins, as production values are.
    spec : BottomSpec
        The bank bottom's shape.
    preprocessor : Preprocessor
        Fitted on the training rows of the bank's whole table.
    classes : mapping of str to tuple of str
        The class names of each K-class task, in output order.
    """

    alignment: AlignmentVersion
    data: BankTrainingData
    raw_numeric: npt.NDArray[np.float64]
    spec: BottomSpec
    preprocessor: Preprocessor
    classes: Mapping[str, tuple[str, ...]]


def load_training_set(config: BankNodeConfig) -> BankTrainingSet:
    """Load the bank's table and its current alignment, and encode the aligned rows.

    Raises
    ------
    ConfigError
        A bad federation, schema or table file (named).
    NotFound
        No alignment has been run yet.
    FailedPrecondition
        The alignment names customers the table no longer holds.
    InvalidRequest
        The aligned rows lack training or validation rows, or labels.
    """
    federation, table = load_own_table(
        Party.BANK, config.federation, config.schema_file, config.table
    )
    schema = load_party_schema(config.schema_file, federation)
    preprocessor = Preprocessor.fit(table, schema)
    with AlignmentStore(config.data_dir) as store:
        alignment = AlignmentVersion.of(store.summary)
        aligned = aligned_table(table, store)
    return BankTrainingSet(
        alignment=alignment,
        data=BankTrainingData(
            features=preprocessor.transform(aligned),
            labels=aligned.labels,
            split=aligned.split,
            tasks=task_widths(schema),
        ),
        raw_numeric=aligned.numeric,
        spec=BottomSpec.from_preprocessor(preprocessor),
        preprocessor=preprocessor,
        classes=task_classes(schema),
    )
