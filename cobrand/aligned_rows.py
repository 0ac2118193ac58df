"""A party's own table in the order of its last alignment: row i becomes aligned position i.

Both parties hold the intersection sorted by join key (``cobrand.alignment_store``), each as join
key -> its own canonical identifier, so each side picks its own rows in that order and position
i is the same customer at both sides without either seeing the other's identifiers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from cobrand.alignment_store import AlignmentStore
from cobrand.errors import FailedPrecondition
from cobrand.tables import PartyTable

__all__ = ["aligned_rows", "aligned_table"]


def aligned_rows(table: PartyTable, store: AlignmentStore) -> npt.NDArray[np.int64]:
    """The table row of each aligned position, shape (intersection_size,).

    Raises
    ------
    FailedPrecondition
        The alignment names customers the table no longer holds (the table changed since the
        alignment ran): run the alignment again.
    """
    members = [ids for _, ids in store.members()]
    canonical = np.concatenate(members) if members else np.array([], dtype=object)
    found = pc.index_in(
        pa.array(canonical, type=pa.string()), value_set=pa.array(table.ids, type=pa.string())
    )
    rows: npt.NDArray[np.int64] = pc.fill_null(found, -1).to_numpy().astype(np.int64)
    missing = rows < 0
    if missing.any():
        raise FailedPrecondition(
            f"{table.source}: {int(missing.sum())} of the {len(rows)} customers of alignment "
            f"{store.summary.run_id!r} are not in the table (the first at aligned position "
            f"{int(np.argmax(missing))}); the table changed since the alignment, run it again"
        )
    return rows


def aligned_table(table: PartyTable, store: AlignmentStore) -> PartyTable:
    """`table` cut to the aligned customers, in alignment order (see `aligned_rows`)."""
    rows = aligned_rows(table, store)
    return dataclasses.replace(
        table,
        ids=table.ids[rows],
        numeric=table.numeric[rows],
        categorical=table.categorical[rows],
        labels={task: values[rows] for task, values in table.labels.items()},
        split=table.split[rows],
    )
