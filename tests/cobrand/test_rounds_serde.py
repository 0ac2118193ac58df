"""Round-hand-off wire conversions: round trips, and what the plain types cannot hold."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from cobrand.errors import InvalidRequest
from cobrand.model_manifest import ModelDigests
from cobrand.rounds_protocol import (
    AlignmentVersion,
    ModelPublication,
    PartnerStatus,
    RoundPlan,
    RunProgress,
)
from cobrand.rounds_serde import (
    partner_manifest_from_proto,
    partner_manifest_to_proto,
    plan_from_proto,
    plan_to_proto,
    progress_from_proto,
    progress_to_proto,
    publication_from_proto,
    publication_to_proto,
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
    plan = RoundPlan("run-1", 3, 7, 2e-3, epochs=2, previous_sha256=_digest("2"), best_round=1)
    without_run = dataclasses.replace(STATUS, run=None)

    assert plan_from_proto(plan_to_proto(plan)) == plan
    assert status_from_proto(status_to_proto(STATUS)) == STATUS
    assert status_from_proto(status_to_proto(without_run)) == without_run


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"previous_sha256": b""}, "previous_sha256 must be a 32-byte digest of round 2's"),
        ({"previous_sha256": b"short"}, "got 5 bytes"),
        ({"best_round": 3}, "best_round 3 is not a round before 3"),
    ],
)
def test_a_plan_the_partner_cannot_follow_is_refused_naming_the_field(
    fields: dict[str, object], message: str
) -> None:
    plan = rounds_pb2.PlanRoundRequest(
        run_id="run-1", round=3, seed=0, learning_rate=1e-3, epochs=1, previous_sha256=_digest("2")
    )
    for name, value in fields.items():
        setattr(plan, name, value)

    with pytest.raises(InvalidRequest, match=message):
        plan_from_proto(plan)


def test_round_one_may_start_afresh_without_a_previous_checkpoint() -> None:
    assert RoundPlan("run-1", 1, 0, 1e-3).previous_sha256 == b""


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


DIGESTS = ModelDigests.of(
    bank_weights=_digest("bank"),
    partner_weights=_digest("partner"),
    partner_preprocessor=_digest("p"),
)
PUBLICATION = ModelPublication("run-1", 2, DIGESTS.version_id, DIGESTS, _digest("bank manifest"))


def test_a_publication_and_the_partners_reply_survive_a_round_trip() -> None:
    reply = partner_manifest_to_proto(PUBLICATION.version_id, _digest("partner manifest"))

    assert publication_from_proto(publication_to_proto(PUBLICATION)) == PUBLICATION
    assert partner_manifest_from_proto(reply, PUBLICATION) == _digest("partner manifest")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("run_id", "", "run_id is empty"),
        ("version_id", "0123456789abcdef", "version_id '0123456789abcdef' is not the id of"),
        ("version_id", "V1", "version_id 'V1' is not 16 lower-case hexadecimal digits"),
        ("bank_weights_sha256", b"short", "bank_weights_sha256 is 5 bytes"),
        ("partner_weights_sha256", b"", "partner_weights_sha256 is 0 bytes"),
        ("partner_preprocessor_sha256", b"x" * 33, "partner_preprocessor_sha256 is 33 bytes"),
        ("bank_manifest_sha256", b"x" * 16, "bank_manifest_sha256 is 16 bytes"),
    ],
)
def test_a_malformed_publication_is_refused_naming_the_field(
    field: str, value: object, message: str
) -> None:
    request = publication_to_proto(PUBLICATION)
    setattr(request, field, value)

    with pytest.raises(InvalidRequest, match=message):
        publication_from_proto(request)


def test_a_reply_for_another_version_or_with_a_truncated_digest_is_refused() -> None:
    other = partner_manifest_to_proto("0123456789abcdef", _digest("partner manifest"))
    truncated = partner_manifest_to_proto(PUBLICATION.version_id, b"short")

    with pytest.raises(InvalidRequest, match="for version '0123456789abcdef'"):
        partner_manifest_from_proto(other, PUBLICATION)
    with pytest.raises(InvalidRequest, match="partner_manifest_sha256 is 5 bytes"):
        partner_manifest_from_proto(truncated, PUBLICATION)
