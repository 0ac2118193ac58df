"""Wire capture: with COBRAND_WIRE_CAPTURE_DIR set, a real server's traffic and Flower messages
land in a per-process file as the bytes that crossed; unset, nothing changes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_from_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cobrand import wire_capture
from cobrand.rpc import create_channel, create_server
from tests.conftest import ThrowAwayPki
from tests.flower_messages import incoming_message

_CHECK = "/grpc.health.v1.Health/Check"
_TIMEOUT_S = 5.0


@pytest.fixture
def capture_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "capture"
    monkeypatch.setenv(wire_capture.CAPTURE_DIR_ENV, str(directory))
    return directory


@pytest.fixture
def health_port(throwaway_pki: ThrowAwayPki) -> Iterator[int]:
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server, port = create_server(
        lambda s: health_pb2_grpc.add_HealthServicer_to_server(servicer, s),
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
    )
    server.start()
    yield port
    server.stop(None)


def test_without_the_variable_the_server_codec_is_left_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(wire_capture.CAPTURE_DIR_ENV, raising=False)
    codec = {"request_deserializer": bytes, "response_serializer": bytes}

    assert wire_capture.recording_codec(_CHECK, codec) is codec


def test_a_servers_request_and_response_are_captured_as_the_bytes_that_crossed(
    capture_dir: Path, health_port: int, throwaway_pki: ThrowAwayPki
) -> None:
    request = health_pb2.HealthCheckRequest(service="")
    with create_channel(f"127.0.0.1:{health_port}", throwaway_pki.tls("gateway")) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=_TIMEOUT_S)

    received, sent = list(wire_capture.read_capture(capture_dir))
    assert (received.point, received.call, received.direction, received.type) == (
        wire_capture.GRPC_SERVER,
        _CHECK,
        wire_capture.RECEIVED,
        "grpc.health.v1.HealthCheckRequest",
    )
    assert received.data == request.SerializeToString()
    assert (sent.call, sent.direction, sent.type) == (
        _CHECK,
        wire_capture.SENT,
        "grpc.health.v1.HealthCheckResponse",
    )
    assert sent.data == reply.SerializeToString()
    assert received.pid == os.getpid()
    (capture_file,) = capture_dir.glob("*.jsonl")
    assert capture_file.name == f"{received.process}-{os.getpid()}.jsonl"
    assert stat.S_IMODE(capture_file.stat().st_mode) == 0o600


def test_request_bytes_the_method_cannot_decode_are_captured_too(
    capture_dir: Path, health_port: int, throwaway_pki: ThrowAwayPki
) -> None:
    garbage = b"\xff\xff\xff\xff not a protobuf"
    with create_channel(f"127.0.0.1:{health_port}", throwaway_pki.tls("gateway")) as channel:
        call = channel.unary_unary(_CHECK, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError):
            call(garbage, timeout=_TIMEOUT_S)

    (received,) = wire_capture.read_capture(capture_dir)
    assert (received.type, received.data) == (wire_capture.UNDECODABLE, garbage)


def test_a_flower_handler_captures_the_message_it_gets_and_the_reply_it_returns(
    capture_dir: Path,
) -> None:
    @wire_capture.captured_flower_handler(wire_capture.FLOWER_CLIENT_APP)
    def echo(message: Message, context: Context) -> Message:
        return Message(RecordDict({"r": ConfigRecord({"answer": b"42"})}), reply_to=message)

    message = incoming_message(
        "train.round", RecordDict({"q": ConfigRecord({"question": b"six times seven"})})
    )
    echo(message, Context(1, 7, {}, RecordDict(), {}))

    got, replied = wire_capture.read_capture(capture_dir)
    assert [(m.point, m.call, m.direction, m.type) for m in (got, replied)] == [
        (wire_capture.FLOWER_CLIENT_APP, "train.round", direction, "flwr.proto.Message")
        for direction in (wire_capture.RECEIVED, wire_capture.SENT)
    ]
    question, answer = (message_from_proto(ProtoMessage.FromString(m.data)) for m in (got, replied))
    assert question.content.config_records["q"]["question"] == b"six times seven"
    assert answer.content.config_records["r"]["answer"] == b"42"
