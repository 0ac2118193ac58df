"""The rules both sides of an alignment apply to what arrives, and the wire conversions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from cobrand import psi
from cobrand.alignment_protocol import (
    CommitReply,
    MatchChunk,
    OpenReply,
    OpenRequest,
    PointChunk,
    check_same_federation,
    checked_chunks,
    count_duplicates,
    join_key_array,
)
from cobrand.alignment_serde import (
    commit_reply_from_proto,
    commit_reply_to_proto,
    match_chunk_from_proto,
    match_chunk_to_proto,
    open_reply_from_proto,
    open_reply_to_proto,
    open_request_from_proto,
    open_request_to_proto,
    point_chunk_from_proto,
    point_chunk_to_proto,
)
from cobrand.alignment_store import JOIN_KEY_DTYPE
from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.federation import Federation
from cobrand.v1 import alignment_pb2

RUN = "6f1c3c57-6a53-4c39-8d0e-0a7e8a1c2b11"


def _chunk(sequence: int, count: int, *, last: bool = False, run: str = RUN) -> PointChunk:
    return PointChunk(run, sequence, bytes(32 * count), last)


def _drain(chunks: Iterable[PointChunk], total: int | None = None) -> int:
    passed = checked_chunks(chunks, run_id=RUN, what="the test's points", max_points=4, total=total)
    return sum(chunk.count for chunk in passed)


def test_a_well_formed_stream_passes_whole() -> None:
    assert _drain([_chunk(0, 4), _chunk(1, 4), _chunk(2, 1, last=True)], total=9) == 9


def test_reading_stops_at_the_last_chunk() -> None:
    def sender_that_never_closes() -> Iterator[PointChunk]:
        yield _chunk(0, 2, last=True)
        raise AssertionError("read past the last chunk")

    assert _drain(sender_that_never_closes()) == 2


@pytest.mark.parametrize(
    ("chunks", "total", "message"),
    [
        ([_chunk(1, 4, last=True)], None, "chunk 0 expected, chunk 1 arrived"),
        ([_chunk(0, 4), _chunk(0, 4, last=True)], None, "chunk 1 expected, chunk 0 arrived"),
        ([_chunk(0, 4), _chunk(2, 4, last=True)], None, "chunk 1 expected, chunk 2 arrived"),
        ([_chunk(0, 4, run="other")], None, "chunk 0 belongs to run 'other'"),
        ([_chunk(0, 5, last=True)], None, "chunk 0 holds 5 points; at most 4"),
        ([_chunk(0, 0), _chunk(1, 1, last=True)], None, "chunk 0 is empty but not the last"),
        ([_chunk(0, 4), _chunk(1, 4)], None, "the stream ended without its last chunk"),
        (
            [_chunk(0, 4), _chunk(1, 4, last=True)],
            6,
            "chunk 1 brings the stream to 8 points; 6 were",
        ),
        ([_chunk(0, 4, last=True)], 6, "chunk 0 brings the stream to 4 points; 6 were"),
    ],
)
def test_a_stream_breaking_the_rules_is_refused_naming_the_chunk(
    chunks: list[PointChunk], total: int | None, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=f"the test's points: {message}"):
        _drain(chunks, total)


def test_an_empty_last_chunk_ends_a_stream_of_matches() -> None:
    empty = MatchChunk(RUN, 0, np.empty(0, np.uint64), np.empty(0, JOIN_KEY_DTYPE), last=True)
    assert list(checked_chunks([empty], run_id=RUN, what="matches", max_points=4)) == [empty]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"protocol_version": 2},
            "speaks alignment protocol version 2; this side speaks version 1",
        ),
        ({"federation_id": "other-deal"}, "is in federation 'other-deal'; this side is in 'test"),
        ({"federation_digest": bytes(32)}, "digest 0{64}; this side's has [0-9a-f]{64}: the two"),
    ],
)
def test_a_peer_of_another_version_or_federation_is_refused_naming_both(
    federation: Federation, changes: dict[str, object], message: str
) -> None:
    claims: dict[str, object] = {
        "protocol_version": psi.PROTOCOL_VERSION,
        "federation_id": federation.federation_id,
        "federation_digest": federation.digest(),
        **changes,
    }
    with pytest.raises(FailedPrecondition, match=f"the partner.*{message}"):
        check_same_federation(federation, peer="partner", **claims)  # type: ignore[arg-type]


def test_join_key_array_holds_the_psi_join_keys() -> None:
    points = psi.hash_to_points(["a", "b", "c"], b"dst")

    keys = join_key_array(points, b"dst")

    assert keys.dtype == JOIN_KEY_DTYPE
    assert [k.tobytes() for k in keys] == psi.join_keys(points, b"dst")
    doubled = np.concatenate([keys, keys[:1]])
    assert count_duplicates(doubled[np.argsort(doubled.view("S16"))]) == 1


def test_every_message_survives_its_round_trip() -> None:
    open_request = OpenRequest(RUN, 1, "deal", bytes(range(32)), 10_000_000)
    open_reply = OpenReply(RUN, 7, 8192, 1, "deal", bytes(range(32)))
    chunk = PointChunk(RUN, 3, bytes(range(64)), last=True)
    commit = CommitReply(RUN, 5, bytes(32), dt.datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC))
    matches = MatchChunk(
        RUN,
        2,
        np.array([0, 5, 2**40], dtype=np.uint64),
        np.frombuffer(bytes(range(48)), dtype=JOIN_KEY_DTYPE),
        last=False,
    )

    assert open_request_from_proto(open_request_to_proto(open_request)) == open_request
    assert open_reply_from_proto(open_reply_to_proto(open_reply)) == open_reply
    assert point_chunk_from_proto(point_chunk_to_proto(chunk)) == chunk
    assert commit_reply_from_proto(commit_reply_to_proto(commit)) == commit
    decoded = match_chunk_from_proto(match_chunk_to_proto(matches))
    assert (decoded.run_id, decoded.sequence, decoded.last) == (RUN, 2, False)
    assert decoded.positions.tolist() == [0, 5, 2**40]
    assert decoded.join_keys.tobytes() == matches.join_keys.tobytes()


def test_matches_whose_keys_are_not_one_16_byte_key_per_position_are_refused() -> None:
    message = alignment_pb2.CommitAlignmentRequest(
        run_id=RUN, sequence=4, matched_positions=[1, 2], matched_join_keys=bytes(31)
    )

    with pytest.raises(InvalidRequest, match="chunk 4 holds 2 positions and 31 bytes"):
        match_chunk_from_proto(message)
