"""Round-hand-off wire conversions: round trips, and what the plain types cannot hold."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from cobrand.errors import InvalidRequest
from cobrand.rounds_protocol import AlignmentVersion, PartnerStatus, RoundPlan, RunProgress
from cobrand.rounds_serde import (
    plan_from_proto,
    plan_to_proto,
    progress_from_proto,
    progress_to_proto,
    status_from_proto,
    status_to_proto,
)
from cobrand.v1 import rounds_pb2


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


STATUS = PartnerStatus(
    alignment=AlignmentVersion("align-1", _digest("f"), _digest("i"), 1234),
    preprocessor_sha256=_digest("p"),
    embedding_width=16,
    run=RunProgress("run-1", (_digest("0"), _digest("1")), planned_round=2),
)


def test_plan_progress_and_status_survive_a_round_trip() -> None:
    plan = RoundPlan("run-1", 3, 7, 2e-3)
    without_run = dataclasses.replace(STATUS, run=None)

    assert plan_from_proto(plan_to_proto(plan)) == plan
    assert status_from_proto(status_to_proto(STATUS)) == STATUS
    assert status_from_proto(status_to_proto(without_run)) == without_run


def test_progress_without_a_round_zero_checkpoint_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="no round-0 checkpoint"):
        progress_from_proto(rounds_pb2.RunProgress(run_id="run-1"))


def test_a_checkpoint_that_is_not_a_sha256_digest_is_refused_by_round() -> None:
    message = progress_to_proto(RunProgress("run-1", (_digest("0"), b"short")))

    with pytest.raises(InvalidRequest, match="checkpoint of round 1 is 5 bytes"):
        progress_from_proto(message)


def test_a_status_with_a_truncated_intersection_digest_is_refused() -> None:
    message = status_to_proto(STATUS)
    message.alignment.intersection_sha256 = b"\x00" * 16

    with pytest.raises(InvalidRequest, match="intersection digest is 16 bytes"):
        status_from_proto(message)


def test_the_alignment_versions_name_the_fields_they_differ_in() -> None:
    other = AlignmentVersion("align-2", _digest("f"), _digest("j"), 1234)

    assert STATUS.alignment.differences(other) == ["run_id", "intersection_sha256"]
    assert STATUS.alignment.differences(STATUS.alignment) == []
