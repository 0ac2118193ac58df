"""Bulk targeting for campaigns: the whole aligned base scored through both sides, ranked.

The bank's aligned rows are encoded once (`gateway.bulk_scoring.BulkScorer.prepare`); their
join keys go to the partner's ``StreamEmbeddings`` in batches on one bidirectional stream with
several batches in flight (`stream_embeddings`), and each answered batch is scored as it
arrives (`score_batches`), so the partner's lookups, the wire and the bank's forward passes
overlap. Every answer must be of the requested model version: embeddings of two versions are
never combined. Keys the partner does not hold are scored bank-only and flagged.

`rank` keeps the customers with an offer, best propensity first (ties in alignment order), and
`write_ranked` writes the list as CSV or Parquet by the file's suffix. The list names customers
by the bank's own customer identifier: it is bank-internal output that never leaves the bank.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cobrand.alignment_protocol import NoProgress, Progress
from cobrand.durable import write_atomically
from cobrand.errors import ConfigError, FailedPrecondition, Unavailable, UnknownModelVersion
from cobrand.tables import PartyTable
from cobrand.tensor_wire import unpack_matrix
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from gateway.bulk_scoring import AlignedBank, BulkScorer, BulkScores
from gateway.scoring import INSTALMENT

__all__ = [
    "DEFAULT_BATCH_KEYS",
    "DEFAULT_IN_FLIGHT",
    "OUTPUT_SUFFIXES",
    "EmbeddingBatch",
    "Ranked",
    "check_output",
    "rank",
    "score_batches",
    "stream_embeddings",
    "target",
    "write_ranked",
]

_LOG = logging.getLogger(__name__)

DEFAULT_BATCH_KEYS: Final = 32_768
DEFAULT_IN_FLIGHT: Final = 4
OUTPUT_SUFFIXES: Final = (".csv", ".parquet")

# How often a request generator blocked on a full pipeline looks whether the call ended.
_POLL_S = 0.1


@dataclass(frozen=True)
class EmbeddingBatch:
    """The partner's answer for a run of aligned rows.

    Attributes
    ----------
    rows : slice
        The aligned positions answered (step 1).
    matrix : ndarray of float32, shape (n, width)
        Zeros where not found.
    found : ndarray of bool, shape (n,)
    """

    rows: slice
    matrix: npt.NDArray[np.float32]
    found: npt.NDArray[np.bool_]


def stream_embeddings(
    channel: grpc.Channel,
    version_id: str,
    join_keys: npt.NDArray[np.void],
    *,
    width: int,
    batch_keys: int = DEFAULT_BATCH_KEYS,
    in_flight: int = DEFAULT_IN_FLIGHT,
    timeout_s: float | None = None,
) -> Iterator[EmbeddingBatch]:
    """The partner's embeddings of `join_keys`, batch by batch, over one pipelined stream.

    Parameters
    ----------
    channel : grpc.Channel
        To the partner node, with the gateway's certificate.
    version_id : str
        Every answer must be of this version.
    join_keys : ndarray of V16, shape (n,)
        The aligned join keys, in alignment order.
    width : int
        The version's partner embedding width (the bank head's).
    batch_keys : int
        Keys per request.
    in_flight : int
        Requests sent ahead of the answers consumed.
    timeout_s : float, optional
        Deadline of the whole stream.

    Raises
    ------
    UnknownModelVersion
        The partner does not serve `version_id` (its answer names what it holds).
    FailedPrecondition
        An answer of another version, width, batch or row count (both named).
    Unavailable
        The partner ended the stream before answering every batch.
    InvalidRequest
        An answer's matrix does not unpack (NaN, wrong length; the row is named).
    """
    starts = range(0, len(join_keys), batch_keys)
    run = uuid.uuid4().hex[:12]
    slots = threading.Semaphore(in_flight)
    ended = threading.Event()

    def requests() -> Iterator[embedding_pb2.EmbeddingBatchRequest]:
        for number, start in enumerate(starts):
            # gRPC reads this generator on its own thread; wait for a free slot, not forever.
            while not slots.acquire(timeout=_POLL_S):
                if ended.is_set():
                    return
            yield embedding_pb2.EmbeddingBatchRequest(
                batch_id=f"{run}-{number}",
                model_version=version_id,
                join_keys=join_keys[start : start + batch_keys].tobytes(),
            )

    stub: Any = embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]
    responses = stub.StreamEmbeddings(requests(), timeout=timeout_s)
    try:
        for number, start in enumerate(starts):
            stop = min(start + batch_keys, len(join_keys))
            try:
                response = next(responses, None)
            except grpc.RpcError as err:
                call: Any = err
                if call.code() == grpc.StatusCode.NOT_FOUND:
                    raise UnknownModelVersion(
                        f"the partner does not serve model version {version_id}: {call.details()}"
                    ) from err
                raise
            if response is None:
                raise Unavailable(
                    f"the partner ended the embedding stream after {number} of {len(starts)} "
                    "batches"
                )
            slots.release()
            yield _batch(response, f"{run}-{number}", version_id, width, slice(start, stop))
    finally:
        ended.set()
        responses.cancel()


def _batch(
    response: embedding_pb2.EmbeddingBatchResponse,
    batch_id: str,
    version_id: str,
    width: int,
    rows: slice,
) -> EmbeddingBatch:
    count = rows.stop - rows.start
    if response.model_version != version_id:
        raise FailedPrecondition(
            f"batch {batch_id}: the partner answered with model version "
            f"{response.model_version or '(none)'}, the bank scores model version {version_id}; "
            "embeddings of two versions are never combined"
        )
    if response.batch_id != batch_id:
        raise FailedPrecondition(
            f"the partner answered batch {response.batch_id!r} where {batch_id!r} was due"
        )
    if response.embedding_width != width:
        raise FailedPrecondition(
            f"batch {batch_id}: embeddings of width {response.embedding_width}, model version "
            f"{version_id}'s head reads {width}"
        )
    if len(response.found) != count:
        raise FailedPrecondition(
            f"batch {batch_id}: {len(response.found)} found flags for {count} keys"
        )
    matrix = unpack_matrix(
        response.embeddings, width=width, rows=count, what=f"embeddings of batch {batch_id}"
    )
    return EmbeddingBatch(rows, matrix, np.array(response.found, dtype=np.bool_))


def score_batches(
    scorer: BulkScorer,
    bank: AlignedBank,
    batches: Iterable[EmbeddingBatch],
    progress: Progress | None = None,
) -> BulkScores:
    """Score each batch of embeddings as it comes, over consecutive runs of the aligned rows.

    Raises
    ------
    FailedPrecondition
        No aligned rows, or the batches do not cover them exactly, in order.
    """
    if not len(bank):
        raise FailedPrecondition("the alignment holds no customers to score")
    progress = progress or NoProgress()
    progress.start("scoring aligned customers", len(bank))
    parts = []
    covered = 0
    for batch in batches:
        if batch.rows.start != covered:
            raise FailedPrecondition(
                f"embeddings for aligned rows from {batch.rows.start}, {covered} was due"
            )
        parts.append(scorer.score(bank, batch.rows, batch.matrix, batch.found))
        covered = batch.rows.stop
        progress.advance(batch.rows.stop - batch.rows.start)
    if covered != len(bank):
        raise FailedPrecondition(f"embeddings for {covered} of the {len(bank)} aligned rows")
    return BulkScores.concatenate(parts)


@dataclass(frozen=True)
class Ranked:
    """The ranked campaign list: customers with an offer, best propensity first."""

    task: str
    customer_id: npt.NDArray[np.object_]
    scores: BulkScores

    def table(self) -> pa.Table:
        """As written: rank, customer_id, propensity, the offer (and channel), partner_missing."""
        columns: dict[str, Any] = {
            "rank": pa.array(np.arange(1, len(self.customer_id) + 1), pa.int64()),
            "customer_id": pa.array(self.customer_id, pa.string()),
            "propensity": pa.array(self.scores.propensity, pa.float64()),
        }
        if self.task == INSTALMENT:
            columns["offer"] = pa.array(self.scores.offer, pa.string())
            columns["channel"] = pa.array(self.scores.channel, pa.string())
        else:
            columns["package"] = pa.array(self.scores.offer, pa.string())
        columns["partner_missing"] = pa.array(self.scores.partner_missing, pa.bool_())
        return pa.table(columns)


def target(
    scorer: BulkScorer,
    table: PartyTable,
    join_keys: npt.NDArray[np.void],
    channel: grpc.Channel,
    *,
    top: int,
    batch_keys: int = DEFAULT_BATCH_KEYS,
    in_flight: int = DEFAULT_IN_FLIGHT,
    timeout_s: float | None = None,
    progress: Progress | None = None,
) -> Ranked:
    """Score the bank's aligned base through both sides and rank it for `scorer`'s task.

    Parameters
    ----------
    scorer : BulkScorer
    table : PartyTable
        The bank's table in alignment order.
    join_keys : ndarray of V16, shape (len(table),)
        The alignment's join keys, in the same order.
    channel : grpc.Channel
        To the partner node.
    top : int
        Customers to keep, at least 1.
    batch_keys, in_flight, timeout_s
        As for `stream_embeddings`.
    progress : Progress, optional

    Raises
    ------
    FailedPrecondition
        No aligned customers, or not one join key per row; as `stream_embeddings` and
        `score_batches` raise it.
    UnknownModelVersion, Unavailable, InvalidRequest
        As `stream_embeddings` raises them.
    """
    if len(join_keys) != len(table):
        raise FailedPrecondition(
            f"{len(join_keys)} join keys for {len(table)} aligned rows of the bank's table"
        )
    if not len(table):
        raise FailedPrecondition("the alignment holds no customers to score")
    bank = scorer.prepare(table)
    version_id = scorer.version.manifest.version_id
    batches = stream_embeddings(
        channel,
        version_id,
        join_keys,
        width=scorer.partner_width,
        batch_keys=batch_keys,
        in_flight=in_flight,
        timeout_s=timeout_s,
    )
    scores = score_batches(scorer, bank, batches, progress)
    return rank(scorer.task, scores, table.ids, top)


def rank(task: str, scores: BulkScores, customer_ids: npt.NDArray[np.object_], top: int) -> Ranked:
    """The `top` customers with an offer by propensity, highest first, ties in aligned order.

    Parameters
    ----------
    task : str
    scores : BulkScores
        Of every aligned row.
    customer_ids : ndarray of str (object), shape (n,)
        The bank's identifier of each aligned row.
    top : int
        At least 1.
    """
    offered = np.flatnonzero(scores.offer != "")
    order = offered[np.argsort(-scores.propensity[offered], kind="stable")][:top]
    return Ranked(
        task=task,
        customer_id=customer_ids[order],
        scores=BulkScores(
            propensity=scores.propensity[order],
            offer=scores.offer[order],
            channel=scores.channel[order],
            partner_missing=scores.partner_missing[order],
        ),
    )


def check_output(path: Path, option: str = "output file") -> None:
    """Refuse an output path that cannot be written, before any work is done.

    Raises
    ------
    ConfigError
        Naming `option` and the path: an unknown suffix, a directory, or a folder that does
        not exist or is not writable.
    """
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(
            f"{option} {path}: the suffix must be {' or '.join(OUTPUT_SUFFIXES)} "
            "(the format is chosen by it)"
        )
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory")
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: folder {folder} does not exist or is not writable")


def write_ranked(ranked: Ranked, path: Path) -> None:
    """Write the list as CSV or Parquet by the suffix, whole or not at all (`write_atomically`).

    Raises
    ------
    ConfigError
        An unknown suffix or an unwritable place (named).
    """
    check_output(path)
    table = ranked.table()
    buffer = pa.BufferOutputStream()
    if path.suffix.lower() == ".csv":
        pa_csv.write_csv(table, buffer)
    else:
        pq.write_table(table, buffer)
    write_atomically(path, buffer.getvalue().to_pybytes())
    _LOG.info("[Targeting] %d customers ranked for %s written to %s", len(table), ranked.task, path)
