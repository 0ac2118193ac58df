"""The bank's side of private alignment: drive one run against the partner and persist it.

`run_alignment` talks to any `AlignmentPeer` (``bank_node.alignment_client`` over gRPC; tests
plug in the partner's responder directly) through the steps of ``alignment.proto``:

1. open: both sides agree on protocol version and federation (file);
2. the bank streams H(x)^a for its identifiers and keeps the join keys of the partner's answers
   (H(x)^a)^b, sorted, with each key's bank row;
3. the partner streams H(y)^b in a random order; the bank blinds them to (H(y)^b)^a and looks
   each join key up in its sorted keys (numpy ``searchsorted``), noting matched positions;
4. the bank sends the matched positions and join keys; the partner persists its result and
   answers with its digest, which must equal the bank's before the bank persists its own.

The bank never holds a Python object per point: keys are ``V16`` arrays (16 bytes per bank
identifier, plus 8 for its row), matches 32 bytes each. If the bank fails to persist after
the partner has, the two results differ in run id until the next run; consumers compare the
run id and intersection digest of both sides before they use an alignment.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cobrand import psi
from cobrand.alignment_protocol import (
    MAX_POINTS_PER_CHUNK,
    CommitReply,
    MatchChunk,
    NoProgress,
    OpenReply,
    OpenRequest,
    PointChunk,
    Progress,
    PsiSettings,
    byte_order,
    check_same_federation,
    checked_chunks,
    count_duplicates,
    join_key_array,
)
from cobrand.alignment_store import (
    JOIN_KEY_DTYPE,
    AlignmentSummary,
    intersection_digest,
    write_alignment,
)
from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.federation import Federation
from cobrand.pki import Party
from cobrand.psi_pool import BlindingPool

__all__ = ["AlignmentOutcome", "AlignmentPeer", "run_alignment"]

_LOG = logging.getLogger(__name__)


class AlignmentPeer(Protocol):
    """The partner, as the bank's side of the protocol sees it."""

    def open(self, request: OpenRequest) -> OpenReply:
        """Open a run."""

    def reblind(self, chunks: Iterator[PointChunk]) -> Iterator[PointChunk]:
        """Re-blind the bank's points: one answer per chunk, in order."""

    def fetch(self, run_id: str) -> Iterator[PointChunk]:
        """The partner's own blinded points."""

    def commit(self, chunks: Iterator[MatchChunk]) -> CommitReply:
        """Send the matches; the partner persists and acknowledges."""


@dataclass(frozen=True)
class AlignmentOutcome:
    """A finished run, as the bank persisted it."""

    summary: AlignmentSummary
    path: Path
    seconds: float


@dataclass(frozen=True)
class _Matches:
    """The partner positions that matched, their join keys and the bank rows they match."""

    positions: npt.NDArray[np.uint64]
    join_keys: npt.NDArray[np.void]
    bank_rows: npt.NDArray[np.int64]


def run_alignment(
    federation: Federation,
    ids: npt.NDArray[np.object_],
    peer: AlignmentPeer,
    data_dir: Path,
    psi_settings: PsiSettings,
    progress: Progress | None = None,
) -> AlignmentOutcome:
    """Align the bank's identifiers with the partner's and persist the bank's result.

    Parameters
    ----------
    federation : Federation
    ids : numpy.ndarray of object (str), shape (n,)
        The bank's canonical identifiers, unique (``PartyTable.ids``).
    peer : AlignmentPeer
    data_dir : Path
        Where the bank's result is persisted.
    psi_settings : PsiSettings
    progress : Progress, optional

    Raises
    ------
    FailedPrecondition
        If the partner speaks another protocol version or holds another federation (file), or
        its committed result differs from the bank's.
    InvalidRequest, InvalidPoint
        If the partner's answers break the protocol (wrong counts, malformed, low-order or
        duplicate points).
    grpc.RpcError
        From a gRPC peer: the partner refused a step or the connection failed.
    """
    started = time.perf_counter()
    progress = progress or NoProgress()
    if len(ids) == 0:
        raise InvalidRequest("the bank has no identifiers to align")
    domain = psi.domain_tag(federation)
    run_id = str(uuid.uuid4())
    reply = peer.open(
        OpenRequest(
            run_id=run_id,
            protocol_version=psi.PROTOCOL_VERSION,
            federation_id=federation.federation_id,
            federation_digest=federation.digest(),
            bank_set_size=len(ids),
        )
    )
    _check_open_reply(reply, run_id, federation)
    chunk_points = min(psi_settings.chunk_points, reply.max_points_per_chunk)
    _LOG.info(
        "[Alignment] run %s opened: bank %d, partner %d identifiers",
        run_id,
        len(ids),
        reply.partner_set_size,
    )
    with BlindingPool(psi.new_secret(), domain, psi_settings.workers) as pool:
        keys, rows = _reblind_own(pool, peer, ids, run_id, chunk_points, domain, progress)
        matches = _match_partner(pool, peer, reply, keys, rows, domain, progress)
    del keys, rows
    committed = _commit(peer, run_id, matches, chunk_points, progress)
    order = np.argsort(byte_order(matches.join_keys), kind="stable")
    sorted_keys = matches.join_keys[order]
    summary = AlignmentSummary(
        run_id=run_id,
        party=Party.BANK,
        federation_id=federation.federation_id,
        federation_digest=federation.digest(),
        protocol_version=psi.PROTOCOL_VERSION,
        committed_at=dt.datetime.now(dt.UTC),
        own_rows=len(ids),
        peer_rows=reply.partner_set_size,
        intersection_size=len(sorted_keys),
        intersection_digest=intersection_digest(sorted_keys),
    )
    if (committed.intersection_size, committed.intersection_digest) != (
        summary.intersection_size,
        summary.intersection_digest,
    ):
        raise FailedPrecondition(
            f"run {run_id}: the partner committed {committed.intersection_size} members "
            f"(digest {committed.intersection_digest.hex()[:16]}), the bank found "
            f"{summary.intersection_size} (digest {summary.intersection_digest.hex()[:16]}); "
            "the bank keeps its previous result; run the alignment again"
        )
    path = write_alignment(data_dir, summary, sorted_keys, ids[matches.bank_rows[order]])
    return AlignmentOutcome(summary, path, time.perf_counter() - started)


def _check_open_reply(reply: OpenReply, run_id: str, federation: Federation) -> None:
    check_same_federation(
        federation,
        peer="partner",
        protocol_version=reply.protocol_version,
        federation_id=reply.federation_id,
        federation_digest=reply.federation_digest,
    )
    if reply.run_id != run_id:
        raise InvalidRequest(f"the partner opened run {reply.run_id!r}; the bank asked {run_id}")
    if not 1 <= reply.max_points_per_chunk <= MAX_POINTS_PER_CHUNK:
        raise InvalidRequest(
            f"the partner accepts {reply.max_points_per_chunk} points per chunk; 1 to "
            f"{MAX_POINTS_PER_CHUNK} are allowed"
        )
    if reply.partner_set_size == 0:
        raise InvalidRequest("the partner announces an empty set; nothing to align")


def _reblind_own(
    pool: BlindingPool,
    peer: AlignmentPeer,
    ids: npt.NDArray[np.object_],
    run_id: str,
    chunk_points: int,
    domain: bytes,
    progress: Progress,
) -> tuple[npt.NDArray[np.void], npt.NDArray[np.int64]]:
    """Steps 2: the join keys of all bank identifiers, sorted, and the bank row of each."""
    n = len(ids)
    starts = range(0, n, chunk_points)

    def requests() -> Iterator[PointChunk]:
        # The last chunk leaves once the pool's stream has ended, so the pool is free for step 3
        # by the time the partner has answered it.
        blinded = pool.hash_and_blind(
            ids[start : start + chunk_points].tolist() for start in starts
        )
        held: PointChunk | None = None
        for sequence, points in enumerate(blinded):
            if held is not None:
                yield held
            held = PointChunk(run_id, sequence, points, last=False)
        if held is not None:
            yield replace(held, last=True)

    keys = np.empty(n, dtype=JOIN_KEY_DTYPE)
    progress.start("bank points re-blinded by the partner", n)
    answers = checked_chunks(
        peer.reblind(requests()),
        run_id=run_id,
        what="the partner's re-blinded points",
        max_points=chunk_points,
        total=n,
    )
    for answer, start in zip(answers, starts, strict=False):
        expected = min(chunk_points, n - start)
        if len(answer.points) != expected * psi.POINT_BYTES:
            raise InvalidRequest(
                f"the partner's re-blinded points: chunk {answer.sequence} holds "
                f"{len(answer.points)} bytes for {expected} points of {psi.POINT_BYTES} bytes"
            )
        keys[start : start + expected] = join_key_array(answer.points, domain)
        progress.advance(expected)
    rows = np.argsort(byte_order(keys), kind="stable")
    keys = keys[rows]
    duplicates = count_duplicates(keys)
    if duplicates:
        raise InvalidRequest(
            f"the partner's re-blinded points: {duplicates} repeat another; distinct bank "
            "identifiers must stay distinct"
        )
    return keys, rows


def _match_partner(
    pool: BlindingPool,
    peer: AlignmentPeer,
    reply: OpenReply,
    keys: npt.NDArray[np.void],
    rows: npt.NDArray[np.int64],
    domain: bytes,
    progress: Progress,
) -> _Matches:
    """Step 3: blind the partner's points and find them among the bank's keys."""
    ordered = byte_order(keys)
    incoming = checked_chunks(
        peer.fetch(reply.run_id),
        run_id=reply.run_id,
        what="the partner's points",
        max_points=reply.max_points_per_chunk,
        total=reply.partner_set_size,
    )
    positions: list[npt.NDArray[np.uint64]] = []
    matched_keys: list[npt.NDArray[np.void]] = []
    bank_rows: list[npt.NDArray[np.int64]] = []
    offset = 0
    progress.start("partner points matched", reply.partner_set_size)
    for blinded in pool.blind(chunk.points for chunk in incoming):
        chunk_keys = join_key_array(blinded, domain)
        found = np.minimum(np.searchsorted(ordered, byte_order(chunk_keys)), len(ordered) - 1)
        hits = np.flatnonzero(ordered[found] == byte_order(chunk_keys))
        positions.append((offset + hits).astype(np.uint64))
        matched_keys.append(chunk_keys[hits])
        bank_rows.append(rows[found[hits]])
        offset += len(chunk_keys)
        progress.advance(len(chunk_keys))
    matches = _Matches(
        np.concatenate(positions), np.concatenate(matched_keys), np.concatenate(bank_rows)
    )
    if len(np.unique(matches.bank_rows)) != len(matches.bank_rows):
        raise InvalidRequest(
            "the partner's points: two of them match the same bank identifier; the partner's "
            "identifiers must be distinct"
        )
    return matches


def _commit(
    peer: AlignmentPeer, run_id: str, matches: _Matches, chunk_points: int, progress: Progress
) -> CommitReply:
    """Step 4: send the matches in chunks; the partner persists first and answers its digest."""
    count = len(matches.positions)
    starts = range(0, max(count, 1), chunk_points)
    progress.start("matches committed", count)

    def chunks() -> Iterator[MatchChunk]:
        for sequence, start in enumerate(starts):
            stop = start + chunk_points
            yield MatchChunk(
                run_id,
                sequence,
                matches.positions[start:stop],
                matches.join_keys[start:stop],
                last=stop >= count,
            )
            progress.advance(min(stop, count) - start)

    reply = peer.commit(chunks())
    if reply.run_id != run_id:
        raise InvalidRequest(f"the partner committed run {reply.run_id!r}, not {run_id}")
    return reply
