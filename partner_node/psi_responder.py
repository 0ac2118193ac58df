"""The partner's side of private alignment: answer one bank run at a time, persist the result.

Each run goes open -> reblind (bank points ^ b) -> fetch (own points ^ b, shuffled) -> commit ->
persisted, once and in order (``partner_node.alignment_runs`` keeps the one open run). Any
error, a cancelled stream or a replaced run abandons the run; the previous persisted result
stays in place, whole.

What the bank can learn from the partner's answers is bounded by the run: one re-blinding of at
most as many points as it announced (never a second pass with the same secret), then the
partner's own points in a fresh random order. At commit the partner checks every join key the
bank claims is one it re-blinded in this run, so the bank cannot make it record keys it never
saw. One pool of blinding workers serves a run from re-blinding to the end of fetching, so its
processes start once per run. Memory: 16 bytes per bank point (their join keys, sorted) and 8
per own identifier (the shuffle), plus 24 per match; no Python object per point.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cobrand import psi
from cobrand.alignment_protocol import (
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
from cobrand.errors import ConfigError, InvalidRequest
from cobrand.federation import Federation
from cobrand.pki import Party
from cobrand.psi_pool import BlindingPool
from partner_node.alignment_runs import OpenRun, Run, Step

__all__ = ["PsiResponder"]

_LOG = logging.getLogger(__name__)


class PsiResponder:
    """Answers the bank's alignment runs over the partner's canonical identifiers.

    Parameters
    ----------
    federation : Federation
        The federation file both parties hold.
    ids : numpy.ndarray of object (str), shape (n,)
        The partner's canonical identifiers, unique (``PartyTable.ids``).
    data_dir : Path
        Where the partner's result is persisted (``cobrand.alignment_store``).
    psi_settings : PsiSettings
        Blinding workers and chunk size (also the most points accepted per chunk).
    progress : Progress, optional
        Told about each run's phases.

    Raises
    ------
    ConfigError
        If `ids` is empty: there is nobody to align.
    """

    def __init__(
        self,
        federation: Federation,
        ids: npt.NDArray[np.object_],
        data_dir: Path,
        psi_settings: PsiSettings,
        progress: Progress | None = None,
    ) -> None:
        if len(ids) == 0:
            raise ConfigError("the partner has no identifiers to align")
        self._federation = federation
        self._domain = psi.domain_tag(federation)
        self._ids = ids
        self._data_dir = data_dir
        self._settings = psi_settings
        self._progress = progress or NoProgress()
        self._runs = OpenRun()

    @property
    def open_run_id(self) -> str | None:
        """The id of the run open now, if any."""
        return self._runs.run_id

    def open(self, request: OpenRequest) -> OpenReply:
        """Open a run, abandoning any unfinished one.

        Raises
        ------
        FailedPrecondition
            If the bank speaks another protocol version or holds another federation (file).
        InvalidRequest
            If the run id is not a UUID or the bank announces no identifiers.
        """
        check_same_federation(
            self._federation,
            peer="bank",
            protocol_version=request.protocol_version,
            federation_id=request.federation_id,
            federation_digest=request.federation_digest,
        )
        _check_run_id(request.run_id)
        if request.bank_set_size == 0:
            raise InvalidRequest(
                f"run {request.run_id}: bank_set_size is 0, the bank announces an empty set; "
                "nothing to align"
            )
        run = Run(request.run_id, request.bank_set_size, psi.new_secret())
        self._runs.replace(run)
        _LOG.info(
            "[Alignment.Open] run %s: bank %d, partner %d identifiers",
            run.run_id,
            run.bank_set_size,
            len(self._ids),
        )
        return OpenReply(
            run_id=run.run_id,
            partner_set_size=len(self._ids),
            max_points_per_chunk=self._settings.chunk_points,
            protocol_version=psi.PROTOCOL_VERSION,
            federation_id=self._federation.federation_id,
            federation_digest=self._federation.digest(),
        )

    def reblind(self, chunks: Iterable[PointChunk]) -> Iterator[PointChunk]:
        """Re-blind the bank's points, one answer per chunk, in order.

        Raises
        ------
        NotFound
            If the first chunk names a run that is not open.
        FailedPrecondition
            If this run's points were re-blinded already.
        InvalidRequest, InvalidPoint
            For a chunk that breaks the stream rules, a malformed or low-order point, or
            duplicate points (the bank's identifiers were not unique).
        """
        incoming = iter(chunks)
        first = next(incoming, None)
        if first is None:
            raise InvalidRequest("the bank's points: the stream held no chunk")
        run = self._runs.begin(first.run_id, Step.OPEN, Step.REBLINDING)

        def finish() -> None:
            assert run.bank_keys is not None
            run.bank_keys = _sorted_unique(run.bank_keys, "the bank's points")

        answers = self._reblind(run, chain([first], incoming))
        yield from self._complete_before_last(run, answers, finish, Step.REBLINDED)

    def _reblind(self, run: Run, chunks: Iterable[PointChunk]) -> Iterator[PointChunk]:
        keys = run.bank_keys = np.empty(run.bank_set_size, dtype=JOIN_KEY_DTYPE)
        # Filled by the pool's feeder as chunks are read, emptied as their answers come back.
        is_last: deque[bool] = deque()

        def points() -> Iterator[bytes]:
            for chunk in checked_chunks(
                chunks,
                run_id=run.run_id,
                what="the bank's points",
                max_points=self._settings.chunk_points,
                total=run.bank_set_size,
            ):
                is_last.append(chunk.last)
                yield chunk.points

        self._progress.start("bank points re-blinded", run.bank_set_size)
        done = 0
        run.pool = BlindingPool(run.secret, self._domain, self._settings.workers)
        for sequence, reblinded in enumerate(run.pool.blind(points())):
            self._runs.check_current(run)
            chunk_keys = join_key_array(reblinded, self._domain)
            keys[done : done + len(chunk_keys)] = chunk_keys
            done += len(chunk_keys)
            self._progress.advance(len(chunk_keys))
            yield PointChunk(run.run_id, sequence, reblinded, is_last.popleft())

    def fetch(self, run_id: str) -> Iterator[PointChunk]:
        """The partner's own points, blinded, in a fresh random order.

        Raises
        ------
        NotFound
            If `run_id` is not open.
        FailedPrecondition
            Before the bank's points are re-blinded, or if they were fetched already.
        """
        run = self._runs.begin(run_id, Step.REBLINDED, Step.FETCHING)
        yield from self._complete_before_last(run, self._fetch(run), run.close_pool, Step.FETCHED)

    def _fetch(self, run: Run) -> Iterator[PointChunk]:
        n = len(self._ids)
        size = self._settings.chunk_points
        # The order must be unguessable: the bank learns which positions matched.
        run.shuffle = np.random.default_rng(secrets.randbits(128)).permutation(n)
        shuffle = run.shuffle
        chunks = (self._ids[shuffle[start : start + size]].tolist() for start in range(0, n, size))
        last_sequence = (n - 1) // size
        self._progress.start("partner points sent", n)
        # A run reaches REBLINDED only with its pool made.
        assert run.pool is not None
        for sequence, points in enumerate(run.pool.hash_and_blind(chunks)):
            self._runs.check_current(run)
            self._progress.advance(len(points) // psi.POINT_BYTES)
            yield PointChunk(run.run_id, sequence, points, sequence == last_sequence)

    def commit(self, chunks: Iterable[MatchChunk]) -> CommitReply:
        """Check the bank's matches, persist the partner's result, then acknowledge.

        Raises
        ------
        NotFound
            If the first chunk names a run that is not open.
        FailedPrecondition
            Before the partner's points were fetched.
        InvalidRequest
            For a chunk that breaks the stream rules, positions out of range or not ascending,
            or a join key the partner never re-blinded in this run.
        """
        incoming = iter(chunks)
        first = next(incoming, None)
        if first is None:
            raise InvalidRequest("the bank's matches: the stream held no chunk")
        run = self._runs.begin(first.run_id, Step.FETCHED, Step.COMMITTING)
        with self._runs.abandon_on_error(run):
            reply = self._commit(run, chain([first], incoming))
        self._runs.close(run)
        return reply

    def _commit(self, run: Run, chunks: Iterable[MatchChunk]) -> CommitReply:
        # A run reaches FETCHED only after both were set.
        assert run.bank_keys is not None
        assert run.shuffle is not None
        bank_keys = byte_order(run.bank_keys)
        positions: list[npt.NDArray[np.uint64]] = []
        keys: list[npt.NDArray[np.void]] = []
        next_position = 0
        for chunk in checked_chunks(
            chunks,
            run_id=run.run_id,
            what="the bank's matches",
            max_points=self._settings.chunk_points,
        ):
            if chunk.count:
                _check_positions(chunk, next_position, len(self._ids))
                next_position = int(chunk.positions[-1]) + 1
                found = np.searchsorted(bank_keys, byte_order(chunk.join_keys))
                found = np.minimum(found, len(bank_keys) - 1)
                unknown = np.flatnonzero(bank_keys[found] != byte_order(chunk.join_keys))
                if unknown.size:
                    raise InvalidRequest(
                        f"the bank's matches: chunk {chunk.sequence} match {unknown[0]} has a "
                        "join key the partner never re-blinded in this run"
                    )
            positions.append(chunk.positions)
            keys.append(chunk.join_keys)
        matched = np.concatenate(positions).astype(np.int64)
        all_keys = np.concatenate(keys)
        order = np.argsort(byte_order(all_keys), kind="stable")
        sorted_keys = all_keys[order]
        if count_duplicates(sorted_keys):
            raise InvalidRequest("the bank's matches: a join key is claimed by two positions")
        summary = AlignmentSummary(
            run_id=run.run_id,
            party=Party.PARTNER,
            federation_id=self._federation.federation_id,
            federation_digest=self._federation.digest(),
            protocol_version=psi.PROTOCOL_VERSION,
            committed_at=dt.datetime.now(dt.UTC),
            own_rows=len(self._ids),
            peer_rows=run.bank_set_size,
            intersection_size=len(sorted_keys),
            intersection_digest=intersection_digest(sorted_keys),
        )
        self._runs.check_current(run)
        write_alignment(
            self._data_dir, summary, sorted_keys, self._ids[run.shuffle[matched[order]]]
        )
        _LOG.info(
            "[Alignment.Commit] run %s committed: bank %d, partner %d, intersection %d, %.1f s",
            run.run_id,
            run.bank_set_size,
            len(self._ids),
            len(sorted_keys),
            time.monotonic() - run.opened_at,
        )
        return CommitReply(
            run.run_id, summary.intersection_size, summary.intersection_digest, summary.committed_at
        )

    def _complete_before_last(
        self,
        run: Run,
        answers: Iterator[PointChunk],
        finish: Callable[[], None],
        step: Step,
    ) -> Iterator[PointChunk]:
        """Pass `answers` on, but the last only once `finish` has run and `run` is at `step`.

        The bank starts its next step as soon as it holds the last answer, so by then this
        step must be complete; and a bank that hangs up after it abandons nothing.
        """
        held: PointChunk | None = None
        with self._runs.abandon_on_error(run):
            for answer in answers:
                if answer.last:
                    held = answer
                else:
                    yield answer
            finish()
            self._runs.advance(run, step)
        # Our own streams end with the chunk marked last.
        assert held is not None
        yield held


def _check_run_id(run_id: str) -> None:
    try:
        canonical = str(uuid.UUID(run_id))
    except ValueError:
        canonical = ""
    if canonical != run_id:
        raise InvalidRequest(f"run id {run_id!r} is not a UUID in its canonical text form")


def _sorted_unique(keys: npt.NDArray[np.void], what: str) -> npt.NDArray[np.void]:
    ordered = keys[np.argsort(byte_order(keys), kind="stable")]
    duplicates = count_duplicates(ordered)
    if duplicates:
        raise InvalidRequest(
            f"{what}: {duplicates} points repeat an earlier point; each identifier must be "
            "sent once"
        )
    return ordered


def _check_positions(chunk: MatchChunk, first_allowed: int, limit: int) -> None:
    positions = chunk.positions
    if int(positions[0]) < first_allowed or bool(np.any(positions[1:] <= positions[:-1])):
        raise InvalidRequest(
            f"the bank's matches: chunk {chunk.sequence} positions are not strictly ascending "
            "across the stream"
        )
    if int(positions[-1]) >= limit:
        raise InvalidRequest(
            f"the bank's matches: chunk {chunk.sequence} names position {int(positions[-1])}; "
            f"the partner sent {limit} points"
        )
