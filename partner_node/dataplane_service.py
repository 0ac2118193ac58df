"""The partner's end of the training data plane: the ``TrainingDataPlane`` gRPC service.

Each ``Exchange`` stream is one pass of the bank's trainer over aligned rows: decode each
message (``cobrand.tensor_wire`` checks lengths, ranges and finiteness), call the
`PartnerTrainer`, encode its embeddings. Errors are `CobrandError`s that the server interceptor
(``cobrand.rpc``) turns into statuses: a malformed message is ``INVALID_ARGUMENT``, a pass for a
run or round the partner does not hold is ``FAILED_PRECONDITION``.

Only the bank's trainer may call it: serve it with ``allowed_roles=ALLOWED_ROLES``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Final

import grpc
import torch

from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.pki import Role
from cobrand.rpc import ServicerAdder
from cobrand.tensor_wire import EXCHANGE_METHOD, pack_matrix, unpack_matrix, unpack_positions
from cobrand.v1 import training_pb2
from partner_node.trainer import PartnerTrainer
from partner_node.trainer_pass import PassKind, PassSummary, TrainerPass

__all__ = ["ALLOWED_ROLES", "DataPlaneService"]

_LOG = logging.getLogger(__name__)

ALLOWED_ROLES: Final = {EXCHANGE_METHOD: frozenset({Role.BANK_TRAINER})}
"""The allow-list to serve this service with: the bank's trainer only."""

_CANCELLATION_GRACE_S: Final = 0.5
"""How long a pass whose request stream ended with steps awaiting their gradient waits for the
call to end: a cancelled call's request stream ends first and gRPC marks the call cancelled a
moment later; a bank that merely stopped early is answered after this wait."""

_KINDS: Final = {
    training_pb2.PASS_KIND_TRAIN: PassKind.TRAIN,
    training_pb2.PASS_KIND_EMBED: PassKind.EMBED,
}


class DataPlaneService:
    """Serves the passes of the current training run.

    Parameters
    ----------
    torch_threads : int
        Intra-op threads for the handler thread that runs torch. One per process is what keeps
        the two parties from fighting over the cores when they share a machine, and the setting
        is per thread, so the handler sets it itself.
    """

    def __init__(self, *, torch_threads: int = 1) -> None:
        self._torch_threads = torch_threads
        self._trainer: PartnerTrainer | None = None

    def attach(self, trainer: PartnerTrainer) -> None:
        """Serve `trainer`'s run from now on (the control plane starts a run this way)."""
        self._trainer = trainer

    def adder(self) -> ServicerAdder:
        """Registers this service on a server made by ``cobrand.rpc.create_server``."""
        service, method = EXCHANGE_METHOD.strip("/").split("/")
        handler = grpc.method_handlers_generic_handler(
            service,
            {
                method: grpc.stream_stream_rpc_method_handler(
                    self.exchange,
                    request_deserializer=training_pb2.ExchangeRequest.FromString,
                    response_serializer=training_pb2.ExchangeResponse.SerializeToString,
                )
            },
        )
        return lambda server: server.add_generic_rpc_handlers((handler,))

    def exchange(
        self,
        request_iterator: Iterator[training_pb2.ExchangeRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[training_pb2.ExchangeResponse]:
        torch.set_num_threads(self._torch_threads)
        opening = next(request_iterator, None)
        if opening is None:
            return
        if opening.WhichOneof("body") != "open":
            raise InvalidRequest("the first message of a pass must be `open`")
        kind = _KINDS.get(opening.open.kind)
        if kind is None:
            raise InvalidRequest("pass kind must be PASS_KIND_TRAIN or PASS_KIND_EMBED")
        trainer = self._trainer
        if trainer is None:
            raise FailedPrecondition(
                f"unknown run {opening.open.run_id!r}, round {opening.open.round}: the partner's "
                "SuperNode has handed over no training run"
            )
        call_ended = threading.Event()
        if not context.add_callback(call_ended.set):
            call_ended.set()
        with trainer.open_pass(opening.open.run_id, opening.open.round, kind) as current:
            try:
                yield from _steps(request_iterator, current, trainer.rows)
                # A cancelled call's request stream may also just end.
                cancelled = not context.is_active() or (
                    current.awaiting_gradient and call_ended.wait(_CANCELLATION_GRACE_S)
                )
            except (grpc.RpcError, GeneratorExit):
                # Reading the next request failed, or gRPC closed this reply stream.
                cancelled = True
            if cancelled:
                # The bank cancelled the pass or its connection dropped: nobody to answer.
                # Logged before leaving `open_pass`, which undoes a training pass and frees the
                # trainer for the bank's retry.
                _LOG.warning(
                    "[TrainingDataPlane.Exchange] %s pass of round %d cancelled by the bank",
                    kind.value,
                    opening.open.round,
                )
                return
            summary = current.finish()
        yield training_pb2.ExchangeResponse(summary=_summary_to_proto(summary))


def _steps(
    requests: Iterator[training_pb2.ExchangeRequest], current: TrainerPass, rows: int
) -> Iterator[training_pb2.ExchangeResponse]:
    """Apply each step's gradient, then embed its batch; one reply per batch."""
    for request in requests:
        if request.WhichOneof("body") != "step":
            raise InvalidRequest("a pass is opened once: every later message is a `step`")
        step = request.step
        if step.HasField("gradient"):
            gradient = unpack_matrix(
                step.gradient.gradient,
                width=step.gradient.embedding_width,
                what=f"gradient of step {step.gradient.step}",
            )
            current.apply_gradient(step.gradient.step, gradient)
        if step.HasField("batch"):
            what = f"batch of step {step.batch.step}"
            positions = unpack_positions(step.batch.positions, limit=rows, what=what)
            embeddings = current.embed(step.batch.step, positions)
            yield training_pb2.ExchangeResponse(
                embeddings=training_pb2.EmbeddingBatch(
                    step=step.batch.step,
                    embedding_width=embeddings.shape[1],
                    embeddings=pack_matrix(embeddings),
                )
            )


def _summary_to_proto(summary: PassSummary) -> training_pb2.PassSummary:
    return training_pb2.PassSummary(
        run_id=summary.run_id,
        round=summary.round,
        kind=next(wire for wire, kind in _KINDS.items() if kind is summary.kind),
        steps=summary.steps,
        rows=summary.rows,
        gradients_applied=summary.gradients_applied,
        weights_sha256=summary.weights_sha256,
    )
