"""The partner's data-plane service over a real mutual-TLS loopback server: passes, bad input, who
may call it."""

from __future__ import annotations

import queue
import re
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from cobrand.preprocess import Encoded
from cobrand.rpc import REASON_METADATA_KEY, create_channel, create_server
from cobrand.split_model import BottomSpec
from cobrand.tensor_wire import EXCHANGE_METHOD, pack_matrix, pack_positions, unpack_matrix
from cobrand.v1 import training_pb2 as pb
from partner_node.dataplane_service import ALLOWED_ROLES, DataPlaneService
from partner_node.trainer import PartnerTrainer
from partner_node.trainer_pass import PassKind
from tests.conftest import ThrowAwayPki

ROWS, WIDTH, RUN = 40, 4, "run-7"
SPEC = BottomSpec(
    bin_edges=((-1.0, 0.0, 1.0),) * 3, n_indicators=0, cardinalities=(), embedding_width=WIDTH
)
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def service() -> DataPlaneService:
    return DataPlaneService()


def _new_trainer() -> PartnerTrainer:
    rng = np.random.default_rng(1)
    features = Encoded(
        numeric=rng.normal(size=(ROWS, 3)).astype(np.float32),
        categorical=np.zeros((ROWS, 0), dtype=np.int64),
    )
    made = PartnerTrainer(RUN, features, SPEC, seed=2)
    made.plan_round(1, learning_rate=1e-3)
    return made


@pytest.fixture
def trainer(service: DataPlaneService) -> PartnerTrainer:
    made = _new_trainer()
    service.attach(made)
    return made


@pytest.fixture(scope="module")
def port(throwaway_pki: ThrowAwayPki, service: DataPlaneService) -> Iterator[int]:
    server, bound = create_server(
        service.adder(), "127.0.0.1:0", throwaway_pki.tls("partner"), allowed_roles=ALLOWED_ROLES
    )
    server.start()
    yield bound
    server.stop(None)


@pytest.fixture(scope="module")
def channel(throwaway_pki: ThrowAwayPki, port: int) -> Iterator[grpc.Channel]:
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("bank-trainer")) as made:
        yield made


def _exchange(
    channel: grpc.Channel, requests: list[pb.ExchangeRequest]
) -> list[pb.ExchangeResponse]:
    stub = channel.stream_stream(
        EXCHANGE_METHOD,
        request_serializer=pb.ExchangeRequest.SerializeToString,
        response_deserializer=pb.ExchangeResponse.FromString,
    )
    return list(stub(iter(requests), timeout=TIMEOUT))


def _refusal(channel: grpc.Channel, requests: list[pb.ExchangeRequest]) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        _exchange(channel, requests)
    return caught.value


def _open(
    round_number: int = 1, kind: pb.PassKind = pb.PASS_KIND_TRAIN, run: str = RUN
) -> pb.ExchangeRequest:
    return pb.ExchangeRequest(open=pb.PassOpen(run_id=run, round=round_number, kind=kind))


def _step(
    positions: list[int] | None = None,
    batch_step: int = 0,
    gradient: np.ndarray[Any, Any] | None = None,
    gradient_step: int = 0,
    width: int = WIDTH,
) -> pb.ExchangeRequest:
    step = pb.PassStep()
    if positions is not None:
        step.batch.step = batch_step
        step.batch.positions = pack_positions(np.array(positions))
    if gradient is not None:
        step.gradient.step = gradient_step
        step.gradient.embedding_width = width
        step.gradient.gradient = pack_matrix(gradient)
    return pb.ExchangeRequest(step=step)


def _gradient(rows: int, width: int = WIDTH) -> np.ndarray[Any, Any]:
    return np.full((rows, width), 0.1, dtype=np.float32)


def test_a_pipelined_training_pass_returns_embeddings_in_step_order_then_a_summary(
    channel: grpc.Channel, trainer: PartnerTrainer
) -> None:
    replies = _exchange(
        channel,
        [
            _open(),
            _step([0, 5, 9], batch_step=0),
            _step([1, 2], batch_step=1),
            _step([3, 39], batch_step=2, gradient=_gradient(3), gradient_step=0),
            _step(gradient=_gradient(2), gradient_step=1),
            _step(gradient=_gradient(2), gradient_step=2),
        ],
    )

    assert [r.WhichOneof("body") for r in replies] == ["embeddings"] * 3 + ["summary"]
    assert [r.embeddings.step for r in replies[:3]] == [0, 1, 2]
    rows = [unpack_matrix(r.embeddings.embeddings, width=WIDTH, what="x") for r in replies[:3]]
    assert [len(r) for r in rows] == [3, 2, 2]
    summary = replies[-1].summary
    assert (summary.run_id, summary.round, summary.kind) == (RUN, 1, pb.PASS_KIND_TRAIN)
    assert (summary.steps, summary.rows, summary.gradients_applied) == (3, 7, 3)
    assert summary.weights_sha256 == trainer.round_digest(1)
    assert trainer.completed_rounds == 1


def test_an_embedding_pass_scores_rows_with_a_completed_rounds_weights(
    channel: grpc.Channel, trainer: PartnerTrainer
) -> None:
    replies = _exchange(
        channel, [_open(0, pb.PASS_KIND_EMBED), _step(list(range(ROWS)), batch_step=0)]
    )

    assert unpack_matrix(replies[0].embeddings.embeddings, width=WIDTH, what="x").shape == (
        ROWS,
        WIDTH,
    )
    assert replies[1].summary.gradients_applied == 0


BAD_PASSES = {
    "unknown run": (
        [_open(run="run-8"), _step([0])],
        grpc.StatusCode.FAILED_PRECONDITION,
        "FAILED_PRECONDITION",
        "unknown run 'run-8': the partner is training run 'run-7'",
    ),
    "unknown round": (
        [_open(5), _step([0])],
        grpc.StatusCode.FAILED_PRECONDITION,
        "FAILED_PRECONDITION",
        "round 5 is not planned at the partner",
    ),
    "embedding with weights of a round not completed": (
        [_open(1, pb.PASS_KIND_EMBED), _step([0])],
        grpc.StatusCode.FAILED_PRECONDITION,
        "FAILED_PRECONDITION",
        "round 1 has not completed at the partner",
    ),
    "no opening": (
        [_step([0])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "the first message of a pass must be `open`",
    ),
    "unspecified kind": (
        [_open(1, pb.PASS_KIND_UNSPECIFIED)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "pass kind must be PASS_KIND_TRAIN or PASS_KIND_EMBED",
    ),
    "position out of range": (
        [_open(), _step([3, ROWS, 1])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "batch of step 0: position 40 at index 1 is outside the 40 aligned rows",
    ),
    "gradient of the wrong shape": (
        [_open(), _step([1, 2, 3]), _step(gradient=_gradient(2))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "gradient of step 0 is 2 x 4; the embedding of that step was 3 x 4",
    ),
    "gradient of the wrong width": (
        [_open(), _step([1, 2, 3]), _step(gradient=_gradient(3, 5), width=5)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "gradient of step 0 is 3 x 5; the embedding of that step was 3 x 4",
    ),
    "NaN in a gradient": (
        [
            _open(),
            _step([1, 2, 3]),
            _step(gradient=np.array([[0.0] * 4, [0.0, np.nan, 0, 0], [0.0] * 4], dtype=np.float32)),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "gradient of step 0: row 1 holds a NaN or infinite value",
    ),
    "gradient for a step not embedded": (
        [_open(), _step([1, 2, 3]), _step(gradient=_gradient(3), gradient_step=4)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        "gradient of step 4: gradients come in step order; awaiting 0",
    ),
    "pass closed before every gradient came": (
        [_open(), _step([1, 2, 3])],
        grpc.StatusCode.FAILED_PRECONDITION,
        "FAILED_PRECONDITION",
        r"the pass ended with steps \[0\] awaiting their gradient; round rolled back",
    ),
}


@pytest.mark.parametrize("case", BAD_PASSES.keys())
def test_bad_passes_are_refused_with_a_clear_status_and_the_round_stays_open(
    channel: grpc.Channel, trainer: PartnerTrainer, case: str
) -> None:
    requests, status, reason, message = BAD_PASSES[case]

    error = _refusal(channel, requests)

    assert error.code() is status
    assert dict(error.trailing_metadata())[REASON_METADATA_KEY] == reason
    assert re.search(message, error.details()), error.details()
    assert trainer.completed_rounds == 0
    retried = _exchange(channel, [_open(), _step([0, 1]), _step(gradient=_gradient(2))])
    assert retried[-1].summary.weights_sha256 == trainer.round_digest(1)


@pytest.mark.parametrize("holder", ["bank", "gateway", "partner", "app"])
def test_only_the_bank_trainer_certificate_may_stream(
    throwaway_pki: ThrowAwayPki, port: int, trainer: PartnerTrainer, holder: str
) -> None:
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls(holder)) as other:
        error = _refusal(other, [_open(), _step([0])])

    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert f"may not call {EXCHANGE_METHOD}" in error.details()
    assert trainer.completed_rounds == 0


def test_a_pass_the_bank_cancels_is_undone_and_a_prompt_retry_goes_through(
    channel: grpc.Channel, trainer: PartnerTrainer, caplog: pytest.LogCaptureFixture
) -> None:
    stub = channel.stream_stream(
        EXCHANGE_METHOD,
        request_serializer=pb.ExchangeRequest.SerializeToString,
        response_deserializer=pb.ExchangeResponse.FromString,
    )
    outbox: queue.SimpleQueue[pb.ExchangeRequest] = queue.SimpleQueue()
    for request in (_open(), _step([0, 1]), _step([2, 3], batch_step=1, gradient=_gradient(2))):
        outbox.put(request)
    call: Any = stub(iter(outbox.get, None), timeout=TIMEOUT)
    assert next(call).embeddings.step == 0
    assert next(call).embeddings.step == 1  # the gradient of step 0 was applied
    call.cancel()

    retried = _exchange(channel, [_open(), _step([0, 1]), _step(gradient=_gradient(2))])

    untouched = _new_trainer()
    with untouched.open_pass(RUN, 1, PassKind.TRAIN) as current:
        current.embed(0, np.array([0, 1]))
        current.apply_gradient(0, _gradient(2))
        current.finish()
    assert retried[-1].summary.weights_sha256 == untouched.round_digest(1)
    assert "cancelled by the bank" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
