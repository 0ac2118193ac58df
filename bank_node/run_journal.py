"""A training run's journal at the bank: one JSON object per line, appended as the run goes.

The ServerApp writes an event when the partner's status is checked (``checked``), when each
round is planned (``planned``) and committed (``committed``), when the partner is lost mid-run
(``interrupted``: the round, the reason) and the run goes back to its last committed round
(``resumed``: ``from_round``, the ``round`` trained again, the reason, the seconds waited), and
when the run finishes (``finished``). Each line is flushed and fsynced before the run moves
on, so a run stopped or killed mid-way (``flwr stop``, a dead process) leaves every event up to
that point, and a committed round stays committed. Digests are written as lower-case hex.

Example line::

    {"event": "committed", "round": 2, "bank_sha256": "9f...", "partner_sha256": "4c...", ...}
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

from cobrand.errors import FailedPrecondition

__all__ = ["RunJournal", "journal_path", "read_journal"]


def _plain(value: Any) -> Any:
    """`value` as strict JSON holds it: bytes as hex, a non-finite float as null."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def journal_path(runs_dir: Path, run_id: str) -> Path:
    """Where the run `run_id`'s journal is kept: ``<runs_dir>/<run_id>.jsonl``."""
    return runs_dir / f"{run_id}.jsonl"


class RunJournal:
    """Appends the events of one run to `path` (created with its directory if missing)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        """Append one event with its UTC time; bytes become hex, NaN and infinities null."""
        record = {"event": event, "at": dt.datetime.now(dt.UTC).isoformat(), **fields}
        line = json.dumps(_plain(record), allow_nan=False)
        with self.path.open("a", encoding="utf-8") as journal:
            journal.write(line + "\n")
            journal.flush()
            os.fsync(journal.fileno())


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The events written so far, oldest first (none if the run has not written yet).

    Raises
    ------
    FailedPrecondition
        A line other than the last is not JSON (the file is not a run journal).
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    events: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            # Only the last line can be cut short, by a process killed while writing it.
            if number < len(lines):
                raise FailedPrecondition(f"{path}: line {number} is not JSON: {exc}") from exc
    return events
