"""The bank's data-plane client when the partner fails: killed, frozen, absent, refusing, or
sending malformed embeddings. Real servers on loopback with mutual TLS."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from bank_node.dataplane_client import DataPlaneClient, PassStream
from cobrand.errors import (
    CobrandError,
    FailedPrecondition,
    InvalidRequest,
    PermissionDenied,
    Unavailable,
)
from cobrand.rpc import create_channel, create_server
from cobrand.tensor_wire import EXCHANGE_METHOD, pack_matrix
from cobrand.v1 import training_pb2 as pb
from partner_node.dataplane_service import DataPlaneService
from tests.bank_node import partner_process
from tests.bank_node.conftest import AlignedSet, start_partner_run
from tests.conftest import ThrowAwayPki

ROOT = Path(__file__).resolve().parents[2]
WIDTH = partner_process.SPEC.embedding_width


@pytest.fixture
def partner_pid_and_port(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port_file = tmp_path / "port"
    tls = throwaway_pki.tls("partner")
    files = [str(path) for path in (tls.ca_bundle, tls.cert, tls.key, port_file)]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bank_node.partner_process", *files], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert process.poll() is None, "the partner process exited before serving"
            assert time.monotonic() < deadline, "the partner process did not start in 60 s"
            time.sleep(0.05)
        yield process, int(port_file.read_text())
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait()


def _first_step(channel: grpc.Channel, reply_timeout: float) -> PassStream:
    client = DataPlaneClient(
        channel, run_id=partner_process.RUN, embedding_width=WIDTH, reply_timeout=reply_timeout
    )
    stream = client.open_pass(1, train=True)
    stream.send(positions=np.arange(10))
    assert stream.receive().shape == (10, WIDTH)
    stream.send(positions=np.arange(10, 20), gradient=np.zeros((10, WIDTH), dtype=np.float32))
    return stream


def test_a_partner_killed_mid_pass_is_noticed_at_once_as_unavailable(
    throwaway_pki: ThrowAwayPki, partner_pid_and_port: tuple[subprocess.Popen[bytes], int]
) -> None:
    process, port = partner_pid_and_port
    # A long reply timeout: the broken stream, not the timeout, must be what is noticed.
    with (
        create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("bank-trainer")) as channel,
        _first_step(channel, reply_timeout=60.0) as stream,
    ):
        assert stream.receive().shape == (10, WIDTH)
        process.kill()
        started = time.monotonic()
        with pytest.raises(Unavailable, match="partner data plane is unavailable in round 1"):
            stream.receive()
    assert time.monotonic() - started < 5.0


def test_a_partner_that_stops_answering_is_unavailable_after_the_reply_timeout(
    throwaway_pki: ThrowAwayPki, partner_pid_and_port: tuple[subprocess.Popen[bytes], int]
) -> None:
    process, port = partner_pid_and_port
    with (
        create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("bank-trainer")) as channel,
        _first_step(channel, reply_timeout=1.0) as stream,
    ):
        assert stream.receive().shape == (10, WIDTH)
        process.send_signal(signal.SIGSTOP)
        stream.send(positions=np.arange(20, 30), gradient=np.zeros((10, WIDTH), np.float32))
        started = time.monotonic()
        with pytest.raises(
            Unavailable, match=r"sent nothing for 1 s in round 1 \(awaiting step 2\)"
        ):
            stream.receive()
    assert 0.9 < time.monotonic() - started < 3.0


def test_a_partner_that_is_not_there_is_unavailable_at_once(throwaway_pki: ThrowAwayPki) -> None:
    server, port = create_server([], "127.0.0.1:0", throwaway_pki.tls("partner"))
    server.start()
    server.stop(None)  # the port is now closed
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("bank-trainer")) as channel:
        client = DataPlaneClient(channel, run_id="run-x", embedding_width=WIDTH)
        started = time.monotonic()
        with client.open_pass(1, train=True) as stream, pytest.raises(Unavailable):
            stream.receive()
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("holder", "run_id", "error", "message"),
    [
        ("bank-trainer", "run-other", FailedPrecondition, "unknown run 'run-other'"),
        ("bank", "run-refusals", PermissionDenied, "role 'bank' may not call"),
    ],
)
def test_a_refusal_by_the_partner_arrives_as_its_error_with_the_partners_message(
    throwaway_pki: ThrowAwayPki,
    partner_port: int,
    partner_service: DataPlaneService,
    aligned_set: AlignedSet,
    holder: str,
    run_id: str,
    error: type[CobrandError],
    message: str,
) -> None:
    start_partner_run(
        partner_service, "run-refusals", aligned_set.partner_features, aligned_set.partner_spec
    )
    with create_channel(f"127.0.0.1:{partner_port}", throwaway_pki.tls(holder)) as channel:
        client = DataPlaneClient(channel, run_id=run_id, embedding_width=16)
        with client.open_pass(0, train=False) as stream:
            stream.send(positions=np.arange(5))
            with pytest.raises(error, match=message):
                stream.receive()


def _reply(width: int, rows: int, step: int = 0, nan_row: int | None = None) -> pb.ExchangeResponse:
    values = np.ones((rows, width), dtype=np.float32)
    if nan_row is not None:
        values[nan_row, 0] = np.nan
    return pb.ExchangeResponse(
        embeddings=pb.EmbeddingBatch(
            step=step, embedding_width=width, embeddings=pack_matrix(values)
        )
    )


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (_reply(WIDTH, 3, nan_row=1), r"embeddings of step 0 \(round 1\): row 1 holds a NaN"),
        (_reply(8, 3), "width 8, agreed 4"),
        (_reply(WIDTH, 2), "32 bytes, expected 3 rows x 4 float32"),
        (_reply(WIDTH, 3, step=4), "expected step 0"),
    ],
)
def test_malformed_embeddings_from_the_partner_are_refused_by_name(
    throwaway_pki: ThrowAwayPki, reply: pb.ExchangeResponse, message: str
) -> None:
    def misbehave(requests: Iterator[pb.ExchangeRequest], context: Any) -> Iterator[Any]:
        for request in requests:
            if request.WhichOneof("body") == "step":
                yield reply

    service, method = EXCHANGE_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service,
        {
            method: grpc.stream_stream_rpc_method_handler(
                misbehave,
                request_deserializer=pb.ExchangeRequest.FromString,
                response_serializer=pb.ExchangeResponse.SerializeToString,
            )
        },
    )
    server, port = create_server(
        lambda s: s.add_generic_rpc_handlers((handler,)),
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
    )
    server.start()
    try:
        with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("bank-trainer")) as channel:
            client = DataPlaneClient(channel, run_id="run-x", embedding_width=WIDTH)
            with client.open_pass(1, train=True) as stream:
                stream.send(positions=np.arange(3))
                with pytest.raises(InvalidRequest, match=message):
                    stream.receive()
    finally:
        server.stop(None)
