"""The partner's training set: its own table in the order of its current alignment, encoded.

`AlignedTrainingSets` is the `TrainingSetSource` partner_node serves runs from. It fits the
partner's preprocessing once, on its table's training rows, and re-reads the alignment result
whenever a run asks: a new alignment (another PSI run) is picked up by the next training run,
while the run in progress keeps the rows it started with.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cobrand.aligned_rows import aligned_table
from cobrand.alignment_store import AlignmentStore
from cobrand.preprocess import Preprocessor
from cobrand.rounds_protocol import AlignmentVersion
from cobrand.schema import PartySchema
from cobrand.split_model import BottomSpec
from cobrand.tables import PartyTable
from partner_node.training_runs import PartnerTrainingSet

__all__ = ["AlignedTrainingSets"]


class AlignedTrainingSets:
    """The training set of the partner's current alignment, built once per alignment.

    Parameters
    ----------
    table : PartyTable
        The partner's own table, as the node loaded it.
    schema : PartySchema
        The schema it was loaded with.
    data_dir : Path
        Where the node keeps its alignment result.
    """

    def __init__(self, table: PartyTable, schema: PartySchema, data_dir: Path) -> None:
        self._table = table
        self._schema = schema
        self._data_dir = data_dir
        self._preprocessor: Preprocessor | None = None
        self._current: PartnerTrainingSet | None = None
        # Status and plan calls may come at once; one of them builds, the other waits for it.
        self._lock = threading.Lock()

    def __call__(self) -> PartnerTrainingSet:
        """The current alignment's training set.

        Raises
        ------
        NotFound
            No alignment has been run yet.
        FailedPrecondition
            The alignment names customers the table no longer holds.
        """
        with self._lock, AlignmentStore(self._data_dir) as store:
            version = AlignmentVersion.of(store.summary)
            if self._current is None or self._current.alignment != version:
                if self._preprocessor is None:
                    self._preprocessor = Preprocessor.fit(self._table, self._schema)
                preprocessor = self._preprocessor
                self._current = PartnerTrainingSet(
                    alignment=version,
                    features=preprocessor.transform(aligned_table(self._table, store)),
                    spec=BottomSpec.from_preprocessor(preprocessor),
                    preprocessor=preprocessor,
                )
            return self._current
