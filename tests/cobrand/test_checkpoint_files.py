"""Round checkpoint files: atomic writes, digests checked on reading, damaged files refused."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch

from cobrand.checkpoint_files import CheckpointDir, RoundCheckpoint, run_directory
from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.weights import weights_digest


def _checkpoint(round_number: int = 2, seed: int = 0) -> RoundCheckpoint:
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 8)).sum().backward()
    optimizer.step()
    return RoundCheckpoint(
        round=round_number,
        weights=model.state_dict(),
        optimizer=optimizer.state_dict(),
        extra={"generator": torch.Generator().manual_seed(seed).get_state(), "best_loss": 0.5},
    )


def test_a_checkpoint_reads_back_as_written_with_its_weights_digest(tmp_path: Path) -> None:
    checkpoints = CheckpointDir(tmp_path / "run")
    written = _checkpoint()

    digest = checkpoints.write(written)
    read = checkpoints.read(2, expected_sha256=digest)

    assert digest == weights_digest(written.weights)
    assert read.weights_sha256 == digest
    state = read.optimizer["state"][0]
    assert torch.equal(state["exp_avg"], written.optimizer["state"][0]["exp_avg"])
    assert read.optimizer["param_groups"] == written.optimizer["param_groups"]
    assert torch.equal(read.extra["generator"], written.extra["generator"])
    assert checkpoints.rounds() == [2]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["round-2.pt"]


def test_a_write_that_fails_midway_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    checkpoints = CheckpointDir(tmp_path)
    digest = checkpoints.write(_checkpoint(seed=1))

    with (
        mock.patch("cobrand.checkpoint_files.os.fsync", side_effect=OSError("disk full")),
        pytest.raises(OSError, match="disk full"),
    ):
        checkpoints.write(_checkpoint(seed=2))

    assert checkpoints.read(2).weights_sha256 == digest
    assert [p.name for p in tmp_path.iterdir()] == ["round-2.pt"]


def test_a_checkpoint_of_other_weights_than_committed_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    checkpoints = CheckpointDir(tmp_path)
    checkpoints.write(_checkpoint())

    with pytest.raises(FailedPrecondition, match=r"round-2\.pt: holds checkpoint .* was committed"):
        checkpoints.read(2, expected_sha256=bytes(32))


def test_a_missing_checkpoint_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"round-3\.pt: no checkpoint of round 3"):
        CheckpointDir(tmp_path).read(3)


def _flip_byte_of(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit inside `tensor`'s bytes as stored in the file."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.numpy().tobytes())
    assert at >= 0
    data[at + 3] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("part", ["weights", "optimizer"])
def test_a_file_whose_tensor_bytes_changed_is_refused_as_corrupted_naming_the_file(
    tmp_path: Path, part: str
) -> None:
    checkpoints = CheckpointDir(tmp_path)
    written = _checkpoint()
    checkpoints.write(written)
    tensor = (
        written.weights["weight"]
        if part == "weights"
        else written.optimizer["state"][0]["exp_avg_sq"]
    )
    _flip_byte_of(checkpoints.path(2), tensor)

    with pytest.raises(FailedPrecondition, match=r"round-2\.pt: corrupted: its content no longer"):
        checkpoints.read(2)


def test_a_file_with_a_damaged_header_is_refused_naming_the_file(tmp_path: Path) -> None:
    checkpoints = CheckpointDir(tmp_path)
    checkpoints.write(_checkpoint())
    path = checkpoints.path(2)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF  # the zip signature
    path.write_bytes(bytes(data))

    with pytest.raises(FailedPrecondition, match=r"round-2\.pt: not a readable checkpoint file"):
        checkpoints.read(2)


def test_a_truncated_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    checkpoints = CheckpointDir(tmp_path)
    checkpoints.write(_checkpoint())
    path = checkpoints.path(2)
    path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(FailedPrecondition, match=r"round-2\.pt: not a readable checkpoint file"):
        checkpoints.read(2)


def test_a_file_renamed_to_another_round_is_refused(tmp_path: Path) -> None:
    checkpoints = CheckpointDir(tmp_path)
    checkpoints.write(_checkpoint(round_number=2))
    checkpoints.path(2).rename(checkpoints.path(5))

    with pytest.raises(FailedPrecondition, match=r"round-5\.pt: holds round 2, expected round 5"):
        checkpoints.read(5)


def test_keep_only_deletes_the_other_rounds(tmp_path: Path) -> None:
    checkpoints = CheckpointDir(tmp_path)
    for round_number in range(4):
        checkpoints.write(_checkpoint(round_number=round_number))

    checkpoints.keep_only({1, 3})

    assert checkpoints.rounds() == [1, 3]


@pytest.mark.parametrize("run_id", ["../etc", "a/b", ".hidden", "", "x" * 129])
def test_a_run_id_that_cannot_be_a_directory_name_is_refused(run_id: str) -> None:
    with pytest.raises(InvalidRequest, match="cannot name a checkpoint directory"):
        run_directory(Path("runs"), run_id)


def test_a_flower_run_id_names_its_directory() -> None:
    assert run_directory(Path("runs"), "8312664413904582312") == Path("runs/8312664413904582312")
