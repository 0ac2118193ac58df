"""Round checkpoint files: one side's weights and optimizer state at the end of a round, on disk.

Both parties keep the rounds a run may resume from in a directory of their own (the bank under
its runs directory, the partner under its data directory), one file per round,
``round-<n>.pt``. A file is written whole or not at all: to a temporary name in the same
directory, flushed and fsynced, renamed over the final name, and the directory fsynced, so a
process killed while writing leaves the previous file intact.

A file holds the weights, the optimizer's state and whatever else the side needs to continue
identically (``extra``: a generator's state, early-stopping figures, digests of earlier rounds),
saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``, which unpickles
tensors and plain containers only. It records two digests: the weights' (`weights_digest`, the
checkpoint's name that both sides report and commit) and one over everything else. Reading
recomputes both and refuses a file whose content no longer matches, or whose weights are not the
checkpoint the caller expects, with `FailedPrecondition` naming the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch

from cobrand.durable import fsync_path
from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.weights import weights_digest

__all__ = ["CheckpointDir", "RoundCheckpoint", "check_run_id", "run_directory"]

_FORMAT: Final = 1
_NAME: Final = re.compile(r"round-(\d+)\.pt")
# A run id names a directory: no separators, no leading dot, nothing a shell would mangle.
_RUN_ID: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> None:
    """Refuse a run id that could not be a file or directory name of its own.

    Raises
    ------
    InvalidRequest
        `run_id` holds a separator, starts with a dot, or is empty or too long.
    """
    if not _RUN_ID.fullmatch(run_id):
        raise InvalidRequest(
            f"run id {run_id!r} cannot name a checkpoint directory: use letters, digits, '.', "
            "'_' and '-' (not first), at most 128"
        )


def run_directory(runs_dir: Path, run_id: str) -> Path:
    """``runs_dir/run_id``, the directory of one run's checkpoints.

    Raises
    ------
    InvalidRequest
        `run_id` could not be a directory name of its own (`check_run_id`).
    """
    check_run_id(run_id)
    return runs_dir / run_id


@dataclass(frozen=True)
class RoundCheckpoint:
    """One side's state at the end of a round.

    Attributes
    ----------
    round : int
        0 for the initial weights.
    weights : dict of str to Tensor
        The modules' weights, named as the side's digest names them.
    optimizer : dict
        The optimizer's ``state_dict()``.
    extra : dict
        Anything else the side restores (tensors and plain values only).
    """

    round: int
    weights: Mapping[str, torch.Tensor]
    optimizer: Mapping[str, Any]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weights_sha256(self) -> bytes:
        """`weights_digest` of the weights: the checkpoint's name."""
        return weights_digest(self.weights)


class CheckpointDir:
    """The round checkpoints of one run at one side, in `directory` (created when first written).

    Parameters
    ----------
    directory : Path
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, round_number: int) -> Path:
        """Where round `round_number`'s checkpoint is kept."""
        return self.directory / f"round-{round_number}.pt"

    def rounds(self) -> list[int]:
        """The rounds that have a checkpoint file, ascending."""
        if not self.directory.is_dir():
            return []
        found = (_NAME.fullmatch(path.name) for path in self.directory.iterdir())
        return sorted(int(match.group(1)) for match in found if match)

    def write(self, checkpoint: RoundCheckpoint) -> bytes:
        """Write `checkpoint` atomically and durably; returns its weights digest."""
        self.directory.mkdir(parents=True, exist_ok=True)
        digest = checkpoint.weights_sha256
        document = {
            "format": _FORMAT,
            "round": checkpoint.round,
            "weights_sha256": digest.hex(),
            "state_sha256": _state_digest(checkpoint).hex(),
            "weights": dict(checkpoint.weights),
            "optimizer": dict(checkpoint.optimizer),
            "extra": dict(checkpoint.extra),
        }
        final = self.path(checkpoint.round)
        partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
        try:
            with partial.open("wb") as file:
                torch.save(document, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        fsync_path(self.directory)
        return digest

    def read(self, round_number: int, expected_sha256: bytes | None = None) -> RoundCheckpoint:
        """Load round `round_number`'s checkpoint and check it.

        Parameters
        ----------
        round_number : int
        expected_sha256 : bytes, optional
            The weights digest the caller committed for this round.

        Raises
        ------
        FailedPrecondition
            Naming the file: missing, unreadable, of another round, corrupted (its content no
            longer matches its digests), or holding other weights than `expected_sha256`.
        """
        path = self.path(round_number)
        if not path.is_file():
            raise FailedPrecondition(f"{path}: no checkpoint of round {round_number}")
        try:
            document = torch.load(path, map_location="cpu", weights_only=True)
            checkpoint = RoundCheckpoint(
                round=document["round"],
                weights=document["weights"],
                optimizer=document["optimizer"],
                extra=document["extra"],
            )
            recorded_weights = bytes.fromhex(document["weights_sha256"])
            recorded_state = bytes.fromhex(document["state_sha256"])
            if document["format"] != _FORMAT:
                raise ValueError(f"format {document['format']}, expected {_FORMAT}")
            digest = checkpoint.weights_sha256
            state = _state_digest(checkpoint)
        except Exception as exc:  # any failure to unpickle or to read it means a damaged file
            raise FailedPrecondition(
                f"{path}: not a readable checkpoint file ({type(exc).__name__}: {exc})"
            ) from exc
        if checkpoint.round != round_number:
            raise FailedPrecondition(
                f"{path}: holds round {checkpoint.round}, expected round {round_number}"
            )
        if digest != recorded_weights or state != recorded_state:
            raise FailedPrecondition(
                f"{path}: corrupted: its content no longer matches the digests it was written with"
            )
        if expected_sha256 is not None and digest != expected_sha256:
            raise FailedPrecondition(
                f"{path}: holds checkpoint {digest.hex()[:12]} of round {round_number}, but "
                f"{expected_sha256.hex()[:12]} was committed"
            )
        return checkpoint

    def keep_only(self, rounds: set[int]) -> None:
        """Delete every round's checkpoint but those of `rounds`."""
        for round_number in self.rounds():
            if round_number not in rounds:
                self.path(round_number).unlink(missing_ok=True)


def _state_digest(checkpoint: RoundCheckpoint) -> bytes:
    """SHA-256 over the optimizer state and extras: every tensor's bytes, every value's repr."""
    digest = hashlib.sha256()
    _update(digest, "optimizer", checkpoint.optimizer)
    _update(digest, "extra", checkpoint.extra)
    return digest.digest()


def _update(digest: Any, name: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(weights_digest({name: value}))
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            _update(digest, f"{name}.{key}", value[key])
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _update(digest, f"{name}[{index}]", item)
    else:
        digest.update(f"{name}={value!r};".encode())
