"""The partner's one open alignment run: what it holds, its steps in order, and how it ends.

A run moves through its steps once and in order, under the run id the bank chose::

    opened -> re-blinding -> re-blinded -> sending own points -> sent -> committing

Only the run opened last is open: `OpenRun.replace` abandons any unfinished run, so a bank that
vanished mid-run costs nothing but its memory until the next run. Every step claims the run
with `OpenRun.begin` (refusing an unknown run or a step out of order) and any error inside
`OpenRun.abandon_on_error`, a closed stream included, abandons it. An abandoned run is never
persisted: the previous result stays in place, whole.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cobrand.errors import FailedPrecondition, NotFound
from cobrand.psi_pool import BlindingPool

__all__ = ["OpenRun", "Run", "Step"]

_LOG = logging.getLogger(__name__)


class Step(enum.Enum):
    """Where a run is; the value completes "the partner has ..."."""

    OPEN = "opened"
    REBLINDING = "re-blinding the bank's points"
    REBLINDED = "re-blinded the bank's points"
    FETCHING = "sending its own points"
    FETCHED = "sent its own points"
    COMMITTING = "committing"


@dataclass
class Run:
    """One run's state at the partner; its secret never leaves this process."""

    run_id: str
    bank_set_size: int
    secret: bytes
    step: Step = Step.OPEN
    opened_at: float = field(default_factory=time.monotonic)
    # Join keys of the bank's points after re-blinding, sorted once all have arrived.
    bank_keys: npt.NDArray[np.void] | None = None
    # Position in the fetch stream -> row of the partner's identifiers.
    shuffle: npt.NDArray[np.int64] | None = None
    # One pool from re-blinding to the end of fetching, so its workers start once per run.
    pool: BlindingPool | None = None

    def close_pool(self) -> None:
        """Stop the run's blinding workers, if any."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class OpenRun:
    """Holds the one open run; safe to use from the server's handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: Run | None = None

    @property
    def run_id(self) -> str | None:
        """The id of the run open now, if any."""
        run = self._run
        return None if run is None else run.run_id

    def replace(self, run: Run) -> None:
        """Make `run` the open run, abandoning the one before if it was unfinished."""
        with self._lock:
            replaced, self._run = self._run, run
        if replaced is not None:
            replaced.close_pool()
            _LOG.warning(
                "[Alignment.Open] run %s abandoned while %s: run %s replaces it",
                replaced.run_id,
                replaced.step.value,
                run.run_id,
            )

    def begin(self, run_id: str, expected: Step, step: Step) -> Run:
        """Claim the open run for a step that needs it at `expected`; it is at `step` now.

        Raises
        ------
        NotFound
            If `run_id` is not the open run.
        FailedPrecondition
            If the run is not at `expected` (a step repeated or out of order).
        """
        with self._lock:
            run = self._run
            if run is None or run.run_id != run_id:
                raise NotFound(
                    f"alignment run {run_id!r} is not open at the partner (unknown, finished, "
                    "abandoned or replaced by a newer run); open a new run"
                )
            if run.step is not expected:
                raise FailedPrecondition(
                    f"run {run_id}: the partner has {run.step.value}; this step needs a run "
                    f"that has {expected.value}"
                )
            run.step = step
        return run

    def advance(self, run: Run, step: Step) -> None:
        """`run` has completed a step and is at `step`.

        Raises
        ------
        NotFound
            If a newer run replaced it meanwhile.
        """
        with self._lock:
            self.check_current(run)
            run.step = step

    def check_current(self, run: Run) -> None:
        """Refuse to go on with a run a newer one replaced (NotFound)."""
        if self._run is not run:
            raise NotFound(f"alignment run {run.run_id} was replaced by a newer run")

    def close(self, run: Run) -> None:
        """`run` is over (committed): no run is open until the next one."""
        with self._lock:
            if self._run is run:
                self._run = None

    @contextmanager
    def abandon_on_error(self, run: Run) -> Iterator[None]:
        """Abandon `run` when the block ends by any exception, a closed stream included."""
        try:
            yield
        except BaseException as exc:
            run.close_pool()
            why = "the stream was closed" if isinstance(exc, GeneratorExit) else str(exc)
            with self._lock:
                if self._run is run:
                    self._run = None
                    _LOG.warning(
                        "[Alignment] run %s abandoned while %s: %s",
                        run.run_id,
                        run.step.value,
                        why or type(exc).__name__,
                    )
            raise
