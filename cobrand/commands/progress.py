"""Progress bars for long runs on the command line (rich), for any `alignment_protocol.Progress`.

Each phase a run reports becomes one bar with its count, rate and time left; starting a phase
completes the bar of the one before. Nothing is drawn until the first phase starts, so a command
that fails early prints its error alone. Off a terminal rich draws nothing live, so logs and CI
output stay clean.
"""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBars

__all__ = ["ProgressBars"]


class ProgressBars:
    """Bars for the phases of runs; use as a context manager around the runs."""

    def __init__(self) -> None:
        self._bars = RichBars(
            TextColumn("{task.description:<40}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._current: TaskID | None = None

    def start(self, phase: str, total: int) -> None:
        """Complete the current bar and open one for `phase`."""
        if self._current is None:
            self._bars.start()
        self._complete_current()
        self._current = self._bars.add_task(phase, total=total)

    def advance(self, count: int) -> None:
        """Move the current bar on by `count`."""
        if self._current is not None:
            self._bars.advance(self._current, count)

    def _complete_current(self) -> None:
        if self._current is not None:
            total = self._bars.tasks[self._current].total
            self._bars.update(self._current, completed=total)

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._current is None:
            return
        if exc is None:
            self._complete_current()
        self._bars.stop()
