"""The private alignment protocol as plain types, and the rules both sides apply to what arrives.

The wire contract is ``proto/cobrand/v1/alignment.proto`` (its header describes the four steps);
``cobrand.alignment_serde`` converts between its messages and the types here, so the bank's
initiator and the partner's responder are written, and tested, without gRPC.

Both sides check everything the other sends: the same protocol version, federation id and
federation file (`check_same_federation`); streams of chunks that belong to the run, are numbered
from 0 without gaps, stay within the agreed chunk size and announced total and end with their
``last`` chunk (`checked_chunks`). Points themselves are checked when they are blinded
(``psi.blind`` refuses malformed and low-order points).

Join keys travel in numpy as ``V16`` arrays (see ``cobrand.alignment_store``); `byte_order` views
them as ``S16`` where numpy must compare or sort them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from cobrand import psi
from cobrand.alignment_store import JOIN_KEY_DTYPE
from cobrand.errors import FailedPrecondition, InvalidPoint, InvalidRequest
from cobrand.federation import Federation
from cobrand.settings import Section

__all__ = [
    "MAX_POINTS_PER_CHUNK",
    "CommitReply",
    "MatchChunk",
    "NoProgress",
    "OpenReply",
    "OpenRequest",
    "PointChunk",
    "Progress",
    "PsiSettings",
    "byte_order",
    "check_same_federation",
    "checked_chunks",
    "count_duplicates",
    "join_key_array",
]

# The most points either side accepts in one chunk: 2 MiB of points, far below gRPC's limit.
MAX_POINTS_PER_CHUNK = 65_536


class PsiSettings(Section):
    """How one side runs its part of the protocol (``psi:`` in a node's settings).

    Attributes
    ----------
    workers : int, optional
        Blinding processes; default one per core, 0 blinds in the node's own process.
    chunk_points : int
        Points per chunk this side sends (and, at the partner, the most it accepts).
    """

    workers: Annotated[int, Field(ge=0)] | None = None
    chunk_points: Annotated[int, Field(ge=1, le=MAX_POINTS_PER_CHUNK)] = 8192


@dataclass(frozen=True)
class OpenRequest:
    """The bank opens a run (``OpenAlignmentRequest``)."""

    run_id: str
    protocol_version: int
    federation_id: str
    federation_digest: bytes
    bank_set_size: int


@dataclass(frozen=True)
class OpenReply:
    """The partner accepts a run (``OpenAlignmentResponse``)."""

    run_id: str
    partner_set_size: int
    max_points_per_chunk: int
    protocol_version: int
    federation_id: str
    federation_digest: bytes


@dataclass(frozen=True)
class PointChunk:
    """One chunk of a stream of points (``PointChunk``): 32 bytes per point."""

    run_id: str
    sequence: int
    points: bytes
    last: bool

    @property
    def count(self) -> int:
        """Points in the chunk.

        Raises
        ------
        InvalidPoint
            If the bytes are not a whole number of points.
        """
        count, rest = divmod(len(self.points), psi.POINT_BYTES)
        if rest:
            raise InvalidPoint(
                f"chunk {self.sequence}: points are {len(self.points)} bytes, not a multiple of "
                f"{psi.POINT_BYTES}: a truncated chunk"
            )
        return count


@dataclass(frozen=True)
class MatchChunk:
    """One chunk of the bank's matches (``CommitAlignmentRequest``).

    Attributes
    ----------
    positions : numpy.ndarray of uint64, shape (k,)
        Positions of matched points in the partner's FetchPartnerPoints stream.
    join_keys : numpy.ndarray of V16, shape (k,)
        Their join keys, in the same order.
    """

    run_id: str
    sequence: int
    positions: npt.NDArray[np.uint64]
    join_keys: npt.NDArray[np.void]
    last: bool

    @property
    def count(self) -> int:
        """Matches in the chunk."""
        return len(self.positions)


@dataclass(frozen=True)
class CommitReply:
    """The partner has persisted its result (``CommitAlignmentResponse``)."""

    run_id: str
    intersection_size: int
    intersection_digest: bytes
    committed_at: dt.datetime


class Progress(Protocol):
    """Where a side reports how far its run is (a progress bar, a log, nothing)."""

    def start(self, phase: str, total: int) -> None:
        """A phase of `total` items begins; the previous one, if any, is done."""

    def advance(self, count: int) -> None:
        """`count` more items of the current phase are done."""


class NoProgress:
    """Reports nothing."""

    def start(self, phase: str, total: int) -> None:
        """Ignore the phase."""

    def advance(self, count: int) -> None:
        """Ignore the count."""


def check_same_federation(
    federation: Federation,
    *,
    peer: str,
    protocol_version: int,
    federation_id: str,
    federation_digest: bytes,
) -> None:
    """Refuse a peer that speaks another protocol version or runs another federation (file).

    Raises
    ------
    FailedPrecondition
        Naming both sides' values: the protocol version, the federation id or the federation
        file digest differ. Matching anyway would find nobody, silently.
    """
    if protocol_version != psi.PROTOCOL_VERSION:
        raise FailedPrecondition(
            f"the {peer} speaks alignment protocol version {protocol_version}; this side "
            f"speaks version {psi.PROTOCOL_VERSION}"
        )
    if federation_id != federation.federation_id:
        raise FailedPrecondition(
            f"the {peer} is in federation {federation_id!r}; this side is in "
            f"{federation.federation_id!r}"
        )
    if federation_digest != federation.digest():
        raise FailedPrecondition(
            f"the {peer}'s federation file of {federation_id!r} has digest "
            f"{federation_digest.hex()}; this side's has {federation.digest().hex()}: the two "
            "files differ, so identifiers would be normalized or hashed differently; make them "
            "identical at both parties"
        )


class _Chunk(Protocol):
    @property
    def run_id(self) -> str: ...
    @property
    def sequence(self) -> int: ...
    @property
    def last(self) -> bool: ...
    @property
    def count(self) -> int: ...


ChunkT = TypeVar("ChunkT", bound=_Chunk)


def checked_chunks(
    chunks: Iterable[ChunkT],
    *,
    run_id: str,
    what: str,
    max_points: int,
    total: int | None = None,
) -> Iterator[ChunkT]:
    """Pass `chunks` through up to the one marked last, refusing any that break the stream rules.

    Reading stops at the last chunk, so a receiver can finish its step as soon as it has it,
    without waiting for the sender to close the stream.

    Parameters
    ----------
    chunks : iterable of PointChunk or MatchChunk
    run_id : str
        The run every chunk must belong to.
    what : str
        The stream's name in errors, e.g. "the bank's points".
    max_points : int
        Most points (or matches) in one chunk.
    total : int, optional
        Exact number of points the whole stream must hold.

    Raises
    ------
    InvalidRequest
        Naming the stream and the chunk: another run's chunk, a sequence gap or repeat, an
        oversized or empty chunk, more or fewer points than announced, or a stream that ends
        before its last chunk.
    InvalidPoint
        For a chunk of points that is not a whole number of points.
    """
    seen = 0
    for expected, chunk in enumerate(chunks):
        if chunk.run_id != run_id:
            raise InvalidRequest(
                f"{what}: chunk {chunk.sequence} belongs to run {chunk.run_id!r}, not {run_id!r}"
            )
        if chunk.sequence != expected:
            raise InvalidRequest(
                f"{what}: chunk {expected} expected, chunk {chunk.sequence} arrived (chunks "
                "must come in order, from 0, without gaps or repeats)"
            )
        if chunk.count > max_points:
            raise InvalidRequest(
                f"{what}: chunk {chunk.sequence} holds {chunk.count} points; at most "
                f"{max_points} are allowed per chunk"
            )
        if chunk.count == 0 and not chunk.last:
            raise InvalidRequest(f"{what}: chunk {chunk.sequence} is empty but not the last")
        seen += chunk.count
        if total is not None and (seen > total or (chunk.last and seen < total)):
            raise InvalidRequest(
                f"{what}: chunk {chunk.sequence} brings the stream to {seen} points; "
                f"{total} were announced"
            )
        yield chunk
        if chunk.last:
            return
    raise InvalidRequest(f"{what}: the stream ended without its last chunk")


def join_key_array(double_blinded: bytes, domain: bytes) -> npt.NDArray[np.void]:
    """`psi.join_keys` of one chunk of doubly blinded points, as a ``V16`` array."""
    return np.frombuffer(b"".join(psi.join_keys(double_blinded, domain)), dtype=JOIN_KEY_DTYPE)


def byte_order(join_keys: npt.NDArray[np.void]) -> npt.NDArray[np.bytes_]:
    """An ``S16`` view of ``V16`` join keys, which numpy compares and sorts as bytes.

    Use it for comparing and sorting only: an ``S16`` item read back as Python bytes loses its
    trailing zero bytes.
    """
    return join_keys.view(f"S{psi.JOIN_KEY_BYTES}")


def count_duplicates(sorted_keys: npt.NDArray[np.void]) -> int:
    """Keys equal to their predecessor in an ascending ``V16`` array."""
    ordered = byte_order(sorted_keys)
    return int(np.count_nonzero(ordered[1:] == ordered[:-1]))
