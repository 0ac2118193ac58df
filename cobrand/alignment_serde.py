"""Conversions between the alignment wire messages (``cobrand.v1.alignment_pb2``) and the plain
types of ``cobrand.alignment_protocol``, in pairs: ``x_to_proto`` and ``x_from_proto``.

The bank's client and the partner's servicer both use them, so each side encodes exactly what
the other decodes. Decoding refuses what the plain types cannot hold (join keys that are not
whole 16-byte keys) with `InvalidRequest`; every protocol rule is checked by the side that
receives the message, not here.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from cobrand.alignment_protocol import CommitReply, MatchChunk, OpenReply, OpenRequest, PointChunk
from cobrand.alignment_store import JOIN_KEY_DTYPE
from cobrand.errors import InvalidRequest
from cobrand.v1 import alignment_pb2

__all__ = [
    "commit_reply_from_proto",
    "commit_reply_to_proto",
    "match_chunk_from_proto",
    "match_chunk_to_proto",
    "open_reply_from_proto",
    "open_reply_to_proto",
    "open_request_from_proto",
    "open_request_to_proto",
    "point_chunk_from_proto",
    "point_chunk_to_proto",
]


def open_request_to_proto(request: OpenRequest) -> alignment_pb2.OpenAlignmentRequest:
    """Encode the bank's OpenAlignment request."""
    return alignment_pb2.OpenAlignmentRequest(
        run_id=request.run_id,
        protocol_version=request.protocol_version,
        federation_id=request.federation_id,
        federation_digest=request.federation_digest,
        bank_set_size=request.bank_set_size,
    )


def open_request_from_proto(message: alignment_pb2.OpenAlignmentRequest) -> OpenRequest:
    """Decode the bank's OpenAlignment request."""
    return OpenRequest(
        run_id=message.run_id,
        protocol_version=message.protocol_version,
        federation_id=message.federation_id,
        federation_digest=message.federation_digest,
        bank_set_size=message.bank_set_size,
    )


def open_reply_to_proto(reply: OpenReply) -> alignment_pb2.OpenAlignmentResponse:
    """Encode the partner's OpenAlignment response."""
    return alignment_pb2.OpenAlignmentResponse(
        run_id=reply.run_id,
        partner_set_size=reply.partner_set_size,
        max_points_per_chunk=reply.max_points_per_chunk,
        protocol_version=reply.protocol_version,
        federation_id=reply.federation_id,
        federation_digest=reply.federation_digest,
    )


def open_reply_from_proto(message: alignment_pb2.OpenAlignmentResponse) -> OpenReply:
    """Decode the partner's OpenAlignment response."""
    return OpenReply(
        run_id=message.run_id,
        partner_set_size=message.partner_set_size,
        max_points_per_chunk=message.max_points_per_chunk,
        protocol_version=message.protocol_version,
        federation_id=message.federation_id,
        federation_digest=message.federation_digest,
    )


def point_chunk_to_proto(chunk: PointChunk) -> alignment_pb2.PointChunk:
    """Encode one chunk of points (either direction)."""
    return alignment_pb2.PointChunk(
        run_id=chunk.run_id, sequence=chunk.sequence, points=chunk.points, last=chunk.last
    )


def point_chunk_from_proto(message: alignment_pb2.PointChunk) -> PointChunk:
    """Decode one chunk of points (either direction)."""
    return PointChunk(
        run_id=message.run_id, sequence=message.sequence, points=message.points, last=message.last
    )


def match_chunk_to_proto(chunk: MatchChunk) -> alignment_pb2.CommitAlignmentRequest:
    """Encode one chunk of the bank's matches."""
    return alignment_pb2.CommitAlignmentRequest(
        run_id=chunk.run_id,
        sequence=chunk.sequence,
        matched_positions=chunk.positions.tolist(),
        matched_join_keys=chunk.join_keys.tobytes(),
        last=chunk.last,
    )


def match_chunk_from_proto(message: alignment_pb2.CommitAlignmentRequest) -> MatchChunk:
    """Decode one chunk of the bank's matches.

    Raises
    ------
    InvalidRequest
        If the join keys are not whole 16-byte keys, one per position.
    """
    positions = np.array(message.matched_positions, dtype=np.uint64)
    keys = message.matched_join_keys
    if len(keys) != len(positions) * JOIN_KEY_DTYPE.itemsize:
        raise InvalidRequest(
            f"commit chunk {message.sequence} holds {len(positions)} positions and "
            f"{len(keys)} bytes of join keys; {JOIN_KEY_DTYPE.itemsize} bytes per position "
            "are required"
        )
    return MatchChunk(
        run_id=message.run_id,
        sequence=message.sequence,
        positions=positions,
        join_keys=np.frombuffer(keys, dtype=JOIN_KEY_DTYPE),
        last=message.last,
    )


def commit_reply_to_proto(reply: CommitReply) -> alignment_pb2.CommitAlignmentResponse:
    """Encode the partner's CommitAlignment response."""
    message = alignment_pb2.CommitAlignmentResponse(
        run_id=reply.run_id,
        intersection_size=reply.intersection_size,
        intersection_digest=reply.intersection_digest,
    )
    message.committed_at.FromDatetime(reply.committed_at)
    return message


def commit_reply_from_proto(message: alignment_pb2.CommitAlignmentResponse) -> CommitReply:
    """Decode the partner's CommitAlignment response."""
    return CommitReply(
        run_id=message.run_id,
        intersection_size=message.intersection_size,
        intersection_digest=message.intersection_digest,
        committed_at=message.committed_at.ToDatetime(tzinfo=dt.UTC),
    )
