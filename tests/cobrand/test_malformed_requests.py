"""Request bytes that do not parse are INVALID_ARGUMENT naming the method and the message type,
for single requests and request streams alike, over a real mutual-TLS server; the server keeps
serving. A refusal quoting a huge input keeps its status. And the channels' keepalive settings
hold a long-lived channel open."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError

from cobrand.interceptor import MAX_DETAILS_BYTES
from cobrand.rpc import create_channel
from tests.cobrand.guarded_server import RAW, Request, guarded_server, method, reason, request_bytes
from tests.conftest import ThrowAwayPki

TIMEOUT = 5.0


def _unparsable(count: int, seed: int = 5) -> list[bytes]:
    """Random byte strings that a ScoreApplicationRequest refuses to parse."""
    rng = random.Random(seed)
    found = [b"\xff\xff\xff\xff", b"\x0a\x05ab"]  # a bad tag; a string cut short
    while len(found) < count:
        data = rng.randbytes(rng.randint(1, 64))
        try:
            Request.FromString(data)
        except DecodeError:
            found.append(data)
    return found


@pytest.fixture(scope="module")
def port(throwaway_pki: ThrowAwayPki) -> Iterator[int]:
    with guarded_server(throwaway_pki.tls("gateway")) as bound:
        yield bound


@pytest.fixture(scope="module")
def channel(throwaway_pki: ThrowAwayPki, port: int) -> Iterator[grpc.Channel]:
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("app")) as made:
        yield made


def _refusal(call: Any, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT)
    return caught.value


@pytest.mark.parametrize("data", _unparsable(20), ids=lambda data: data.hex()[:16])
def test_random_bytes_to_a_unary_method_are_invalid_argument_naming_method_and_type(
    channel: grpc.Channel, data: bytes
) -> None:
    error = _refusal(channel.unary_unary(method("Unary"), **RAW), data)

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason(error) == "INVALID_REQUEST"
    assert error.details() == (
        "/cobrand.test.Guarded/Unary: request is not a valid "
        "cobrand.v1.ScoreApplicationRequest message"
    )


def test_random_bytes_in_a_client_stream_are_invalid_argument(channel: grpc.Channel) -> None:
    stream = iter([request_bytes("a-1"), _unparsable(3)[2], request_bytes("a-2")])
    error = _refusal(channel.stream_unary(method("Collect"), **RAW), stream)

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "Collect: request is not a valid cobrand.v1.ScoreApplicationRequest" in str(
        error.details()
    )


def test_random_bytes_in_a_bidirectional_stream_end_it_after_the_good_messages(
    channel: grpc.Channel,
) -> None:
    replies: Any = channel.stream_stream(method("Echo"), **RAW)(
        iter([request_bytes("a-1"), b"\xff\xff\xff\xff", request_bytes("a-2")]), timeout=TIMEOUT
    )

    assert next(replies) == request_bytes("a-1")
    with pytest.raises(grpc.RpcError) as caught:
        next(replies)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "Echo: request is not a valid" in str(caught.value.details())


def test_random_bytes_to_a_server_streaming_method_are_invalid_argument(
    channel: grpc.Channel,
) -> None:
    replies: Any = channel.unary_stream(method("Listen"), **RAW)(b"\xff\xff", timeout=TIMEOUT)

    with pytest.raises(grpc.RpcError) as caught:
        next(replies)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_caller_the_allow_list_refuses_learns_nothing_about_the_bytes(
    channel: grpc.Channel,
) -> None:
    error = _refusal(channel.unary_unary(method("Secret"), **RAW), b"\xff\xff\xff\xff")

    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


def test_the_server_keeps_serving_after_malformed_requests(channel: grpc.Channel) -> None:
    call = channel.unary_unary(method("Unary"), **RAW)
    for data in _unparsable(50, seed=9):
        assert _refusal(call, data).code() is grpc.StatusCode.INVALID_ARGUMENT

    assert call(request_bytes("still-here"), timeout=TIMEOUT) == request_bytes("still-here")


def test_a_refusal_quoting_a_huge_input_keeps_its_status_with_the_message_cut(
    channel: grpc.Channel,
) -> None:
    huge = "é" * 70_000  # two bytes each, percent-encoded to six characters on the wire

    error = _refusal(channel.unary_unary(method("Quote"), **RAW), request_bytes(huge))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = str(error.details())
    assert details.startswith("field 'application_id': 'ééé")
    kept, cut = details.removesuffix(" more characters)").rsplit("... (", 1)
    assert len(kept.encode()) <= MAX_DETAILS_BYTES
    assert len(kept) + int(cut) == len(f"field 'application_id': '{huge}' is not known")


def test_a_long_lived_channel_with_keepalive_keeps_serving_calls_between_idle_spells(
    throwaway_pki: ThrowAwayPki, port: int
) -> None:
    # The channel pings while idle (keepalive_permit_without_calls); the server must accept
    # that rather than answer GOAWAY too_many_pings, which would fail the calls after a pause.
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("app")) as channel:
        call = channel.unary_unary(method("Unary"), **RAW)
        for number in range(3):
            assert call(request_bytes(f"k-{number}"), timeout=TIMEOUT) == request_bytes(
                f"k-{number}"
            )
            time.sleep(0.5)
