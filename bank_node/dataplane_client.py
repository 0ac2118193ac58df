"""The bank trainer's end of the training data plane: passes over one stream to partner_node.

`DataPlaneClient.open_pass` opens one ``TrainingDataPlane.Exchange`` stream. The caller sends
steps (a batch of aligned positions, the gradient of an earlier step, or both) without waiting,
and reads the partner's embeddings in step order; how many batches it keeps in flight is its
choice (the trainer's pipeline depth). Requests go out through a queue that gRPC drains on its
own thread; replies come in on a reader thread, so a partner that goes silent is noticed by a
per-reply timeout rather than blocking the trainer forever, and a partner that dies breaks the
stream at once (its kernel resets the connection: ``UNAVAILABLE`` within milliseconds). Either
becomes `Unavailable`, which the run driver answers by resuming (``bank_node.rounds``).

Why a per-reply timeout rather than gRPC keepalive: a reply is due within milliseconds whenever
one is awaited, so a timeout of a few seconds catches a hung partner just as soon; it also
catches a partner whose process is alive but whose handler is stuck, which keepalive does not
(the partner's gRPC core answers HTTP/2 pings on its own threads); and keepalive pings every few
seconds would need the partner's server to accept them (by default a server answers pings more
often than every 5 minutes on a quiet connection with ``GOAWAY``).

Every reply is checked (step order, shape, finiteness) before the trainer sees it. Bytes are
counted as serialized message sizes, each way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import grpc
import numpy as np
import numpy.typing as npt

from cobrand.errors import (
    CobrandError,
    FailedPrecondition,
    InvalidRequest,
    Unavailable,
)
from cobrand.rpc import REASON_METADATA_KEY
from cobrand.tensor_wire import EXCHANGE_METHOD, pack_matrix, pack_positions, unpack_matrix
from cobrand.v1 import training_pb2

__all__ = [
    "DataPlaneClient",
    "PartnerPassSummary",
    "PassStream",
    "TrafficCounter",
    "error_from_rpc",
]

_END: Final = object()


@dataclass
class TrafficCounter:
    """Serialized message bytes and messages exchanged, each way."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0


@dataclass(frozen=True)
class PartnerPassSummary:
    """The partner's account of a pass that ended cleanly (``training.proto`` PassSummary)."""

    round: int
    steps: int
    rows: int
    gradients_applied: int
    weights_sha256: bytes


class DataPlaneClient:
    """Opens data-plane passes of one training run to the partner.

    Parameters
    ----------
    channel : grpc.Channel
        A mutual-TLS channel to partner_node made with the bank trainer's certificate
        (``cobrand.rpc.create_channel``).
    run_id : str
        The run the control plane started at both sides.
    embedding_width : int
        The partner bottom's embedding width both sides agreed on.
    reply_timeout : float
        Seconds to wait for any one reply before the partner counts as gone.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        run_id: str,
        embedding_width: int,
        reply_timeout: float = 5.0,
    ) -> None:
        self._exchange = channel.stream_stream(
            EXCHANGE_METHOD,
            request_serializer=training_pb2.ExchangeRequest.SerializeToString,
            response_deserializer=training_pb2.ExchangeResponse.FromString,
        )
        self.run_id = run_id
        self.embedding_width = embedding_width
        self.reply_timeout = reply_timeout
        self.traffic = TrafficCounter()

    def open_pass(self, round_number: int, *, train: bool) -> PassStream:
        """Open a training pass of `round_number`, or an embedding pass with its weights.

        Use as a context manager: leaving it without `PassStream.close` cancels the stream,
        and the partner undoes a training pass.
        """
        kind = training_pb2.PASS_KIND_TRAIN if train else training_pb2.PASS_KIND_EMBED
        opening = training_pb2.PassOpen(run_id=self.run_id, round=round_number, kind=kind)
        return PassStream(self._exchange, opening, self)


class PassStream:
    """One open pass; see `DataPlaneClient.open_pass`. Used from one thread."""

    def __init__(
        self,
        exchange: grpc.StreamStreamMultiCallable[
            training_pb2.ExchangeRequest, training_pb2.ExchangeResponse
        ],
        opening: training_pb2.PassOpen,
        client: DataPlaneClient,
    ) -> None:
        self._round = opening.round
        self._width = client.embedding_width
        self._timeout = client.reply_timeout
        self._traffic = client.traffic
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._rows: dict[int, int] = {}
        self._batches_sent = 0
        self._gradients_sent = 0
        self._replies = 0
        self._closed = False
        self._send(training_pb2.ExchangeRequest(open=opening))
        # No wait_for_ready: a partner that is not there fails the first read at once.
        self._call: Any = exchange(self._requests())
        self._reader = threading.Thread(
            target=self._read, name=f"dataplane-reader-r{self._round}", daemon=True
        )
        self._reader.start()

    def __enter__(self) -> PassStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._closed:
            self._call.cancel()
            self._outbox.put(_END)

    def send(
        self,
        *,
        positions: npt.NDArray[np.integer] | None = None,
        gradient: npt.NDArray[np.float32] | None = None,
    ) -> None:
        """Send the next batch, the gradient of the oldest embedding received, or both.

        Parameters
        ----------
        positions : ndarray of int, shape (n,), optional
            Aligned positions of the next batch (its step is the count of batches sent).
        gradient : ndarray of float32, shape (rows, width), optional
            d loss / d embedding for the oldest step whose gradient was not yet sent; applied
            at the partner before `positions` is embedded.
        """
        step = training_pb2.PassStep()
        if gradient is not None:
            step.gradient.step = self._gradients_sent
            step.gradient.embedding_width = gradient.shape[1]
            step.gradient.gradient = pack_matrix(gradient)
            self._gradients_sent += 1
        if positions is not None:
            step.batch.step = self._batches_sent
            step.batch.positions = pack_positions(positions)
            self._rows[self._batches_sent] = len(positions)
            self._batches_sent += 1
        self._send(training_pb2.ExchangeRequest(step=step))

    def receive(self) -> npt.NDArray[np.float32]:
        """The embeddings of the next batch, shape (rows, width), checked.

        Raises
        ------
        Unavailable
            The partner sent nothing within the reply timeout, or the stream broke.
        CobrandError
            The partner refused the pass or a step (its status and message), or its reply
            is malformed.
        """
        reply = self._next_message()
        if reply.WhichOneof("body") != "embeddings":
            raise FailedPrecondition(
                f"round {self._round}: partner ended the pass while step {self._replies} "
                "was awaited"
            )
        batch = reply.embeddings
        what = f"partner embeddings of step {batch.step} (round {self._round})"
        if batch.step != self._replies:
            raise InvalidRequest(f"{what}: expected step {self._replies}")
        if batch.embedding_width != self._width:
            raise InvalidRequest(f"{what}: width {batch.embedding_width}, agreed {self._width}")
        rows = self._rows.pop(batch.step)
        matrix = unpack_matrix(batch.embeddings, width=self._width, rows=rows, what=what)
        self._replies += 1
        return matrix

    def close(self) -> PartnerPassSummary:
        """Half-close the stream and return the partner's summary of the pass.

        Raises
        ------
        Unavailable, CobrandError
            As `receive`; also when the partner finds the pass incomplete.
        """
        self._outbox.put(_END)
        reply = self._next_message()
        if reply.WhichOneof("body") != "summary":
            raise FailedPrecondition(
                f"round {self._round}: partner sent embeddings after the pass was closed"
            )
        self._closed = True
        summary = reply.summary
        return PartnerPassSummary(
            round=summary.round,
            steps=summary.steps,
            rows=summary.rows,
            gradients_applied=summary.gradients_applied,
            weights_sha256=summary.weights_sha256,
        )

    def _send(self, request: training_pb2.ExchangeRequest) -> None:
        self._traffic.bytes_sent += request.ByteSize()
        self._traffic.messages_sent += 1
        self._outbox.put(request)

    def _requests(self) -> Iterator[training_pb2.ExchangeRequest]:
        while (request := self._outbox.get()) is not _END:
            assert isinstance(request, training_pb2.ExchangeRequest)
            yield request

    def _read(self) -> None:
        try:
            for reply in self._call:
                self._inbox.put(reply)
        except grpc.RpcError as err:
            self._inbox.put(err)
        self._inbox.put(_END)

    def _next_message(self) -> training_pb2.ExchangeResponse:
        try:
            item = self._inbox.get(timeout=self._timeout)
        except queue.Empty:
            self._call.cancel()
            raise Unavailable(
                f"partner data plane sent nothing for {self._timeout:g} s in round {self._round} "
                f"(awaiting step {self._replies}); stream cancelled"
            ) from None
        if isinstance(item, grpc.RpcError):
            raise error_from_rpc(item, f"round {self._round}") from item
        if item is _END:
            raise Unavailable(f"partner data plane closed the stream of round {self._round}")
        assert isinstance(item, training_pb2.ExchangeResponse)
        self._traffic.bytes_received += item.ByteSize()
        self._traffic.messages_received += 1
        return item


def _error_classes(base: type[CobrandError]) -> Iterator[type[CobrandError]]:
    for cls in base.__subclasses__():
        yield cls
        yield from _error_classes(cls)


def _first_class_per_status() -> dict[grpc.StatusCode, type[CobrandError]]:
    # The first direct subclass declared for a status is its general meaning
    # (InvalidRequest before ConfigError for INVALID_ARGUMENT).
    found: dict[grpc.StatusCode, type[CobrandError]] = {}
    for cls in CobrandError.__subclasses__():
        found.setdefault(cls.status, cls)
    return found


_BY_REASON: Final = {cls.reason: cls for cls in _error_classes(CobrandError)}
_BY_STATUS: Final = _first_class_per_status()


def error_from_rpc(err: grpc.RpcError, where: str) -> CobrandError:
    """The tree's error for a failed data-plane call, from its reason metadata or status.

    The reason names the class only when that class carries the call's status. A partner that
    is gone (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``CANCELLED``) or failed
    internally becomes `Unavailable`: retrying the round later may succeed.
    """
    call: Any = err
    status = call.code()
    details = call.details() or "no details"
    reason = dict(call.trailing_metadata() or ()).get(REASON_METADATA_KEY)
    message = f"partner data plane refused {where}: {status.name}: {details}"
    cls = _BY_REASON.get(reason) if isinstance(reason, str) else None
    if cls is None or cls.status != status:
        cls = _BY_STATUS.get(status, Unavailable)
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        message = f"partner data plane is unavailable in {where}: {details}"
    return cls(message)
