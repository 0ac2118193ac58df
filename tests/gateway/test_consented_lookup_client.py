"""The gateway's consented lookup client against partners that misbehave: a stand-in
ConsentedLookup server on loopback, evaluating with a key of its own or answering badly."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from cobrand import oprf
from cobrand.errors import Unavailable
from cobrand.rpc import create_channel, create_server
from cobrand.v1 import consented_lookup_pb2, consented_lookup_pb2_grpc, embedding_pb2
from gateway.audit_record import PartnerSliceStatus
from gateway.consented_lookup import ConsentedLookupClient
from gateway.partner_breaker import BreakerState, CircuitBreaker
from gateway.partner_client import PartnerClient, PartnerSlice
from gateway.settings import BreakerSettings

DOMAIN = b"\x00\x04test"
X = oprf.lookup_input("mobile_cn", "+8613800138000")
VERSION = "v1"
WIDTH = 4
DEADLINE_S = 0.4


@dataclass
class StandIn(consented_lookup_pb2_grpc.ConsentedLookupServicer):
    """Evaluates with its own key; `evaluated` replaces its answer, the delays slow it."""

    key: bytes = field(default_factory=oprf.new_scalar)
    evaluated: bytes | None = None
    evaluate_error: Exception | None = None
    evaluate_delay_s: float = 0.0
    embedding_delay_s: float = 0.0
    blinded: list[bytes] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)

    def BlindEvaluate(  # noqa: N802
        self, request: consented_lookup_pb2.BlindEvaluateRequest, context: grpc.ServicerContext
    ) -> consented_lookup_pb2.BlindEvaluateResponse:
        time.sleep(self.evaluate_delay_s)
        self.blinded.append(request.blinded_element)
        if self.evaluate_error is not None:
            raise self.evaluate_error
        answer = self.evaluated or oprf.blind_evaluate(self.key, request.blinded_element)
        return consented_lookup_pb2.BlindEvaluateResponse(
            request_id=request.request_id, evaluated_element=answer
        )

    def GetConsentedEmbedding(  # noqa: N802
        self,
        request: consented_lookup_pb2.GetConsentedEmbeddingRequest,
        context: grpc.ServicerContext,
    ) -> consented_lookup_pb2.GetConsentedEmbeddingResponse:
        time.sleep(self.embedding_delay_s)
        self.outputs.append(request.oprf_output)
        return consented_lookup_pb2.GetConsentedEmbeddingResponse(
            request_id=request.request_id,
            model_version=request.model_version,
            status=embedding_pb2.LOOKUP_STATUS_FOUND,
            embedding=[0.5] * WIDTH,
        )


@pytest.fixture
def stand_in() -> StandIn:
    return StandIn()


@pytest.fixture
def channel(stand_in: StandIn) -> Iterator[grpc.Channel]:
    def add(server: grpc.Server) -> None:
        consented_lookup_pb2_grpc.add_ConsentedLookupServicer_to_server(stand_in, server)  # type: ignore[no-untyped-call]

    server, port = create_server(add, "127.0.0.1:0", None, insecure=True)
    server.start()
    with create_channel(f"127.0.0.1:{port}", None, insecure=True) as opened:
        yield opened
    server.stop(None)


def _breaker() -> CircuitBreaker:
    """One that opens on the first failure."""
    return CircuitBreaker(BreakerSettings(min_calls=1, cool_down_s=30.0))


def _lookup(channel: grpc.Channel, breaker: CircuitBreaker) -> PartnerSlice:
    partner = PartnerClient(channel, DEADLINE_S, breaker)
    return ConsentedLookupClient(channel, DOMAIN).embedding(
        partner, "r-1", "APP-1", VERSION, X, WIDTH
    )


def test_the_partner_sees_a_blinded_element_and_the_output_is_its_keys_prf_of_the_applicant(
    stand_in: StandIn, channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.consented_lookup"):
        found = _lookup(channel, _breaker())

    assert found.status is PartnerSliceStatus.USED
    assert found.embedding is not None
    assert found.embedding.tolist() == [0.5] * WIDTH
    assert stand_in.outputs == [
        oprf.evaluate_lookup(stand_in.key, DOMAIN, "mobile_cn", "+8613800138000")
    ]
    assert stand_in.blinded[0] != oprf.hash_to_group(DOMAIN + X)
    # Logged with its request id and consent reference, never the identifier.
    assert "request r-1 consent 'APP-1' version v1: used" in caplog.text
    assert "13800138000" not in caplog.text
    # A second lookup of the same applicant sends another blinded element, the same output.
    _lookup(channel, _breaker())
    assert stand_in.blinded[0] != stand_in.blinded[1]
    assert stand_in.outputs[0] == stand_in.outputs[1]


def test_an_evaluated_element_outside_the_group_is_not_used_and_counts_as_a_failure(
    stand_in: StandIn, channel: grpc.Channel
) -> None:
    stand_in.evaluated = (1).to_bytes(32, "little")
    breaker = _breaker()

    refused = _lookup(channel, breaker)

    assert refused.status is PartnerSliceStatus.UNAVAILABLE
    assert refused.embedding is None
    assert stand_in.outputs == []
    assert breaker.state is BreakerState.OPEN


def test_both_calls_share_one_deadline(stand_in: StandIn, channel: grpc.Channel) -> None:
    # Each call alone is within the deadline; the two together are not.
    stand_in.evaluate_delay_s = DEADLINE_S * 0.6
    stand_in.embedding_delay_s = DEADLINE_S * 0.6

    late = _lookup(channel, _breaker())

    assert late.status is PartnerSliceStatus.TIMEOUT


def test_an_open_breaker_makes_no_call(stand_in: StandIn, channel: grpc.Channel) -> None:
    breaker = _breaker()
    breaker.failed()

    assert _lookup(channel, breaker).status is PartnerSliceStatus.UNAVAILABLE
    assert stand_in.blinded == []


def test_a_partner_refusing_a_lookup_itself_keeps_the_breaker_closed(
    stand_in: StandIn, channel: grpc.Channel
) -> None:
    # As while its index of every user is still building: the partner answers, promptly.
    stand_in.evaluate_error = Unavailable("the consented lookup index is still loading")
    breaker = _breaker()

    refused = _lookup(channel, breaker)

    assert refused.status is PartnerSliceStatus.UNAVAILABLE
    assert breaker.state is BreakerState.CLOSED


def test_a_partner_failing_with_an_internal_error_opens_the_breaker(
    stand_in: StandIn, channel: grpc.Channel
) -> None:
    stand_in.evaluate_error = RuntimeError("a bug at the partner")
    breaker = _breaker()

    assert _lookup(channel, breaker).status is PartnerSliceStatus.UNAVAILABLE
    assert breaker.state is BreakerState.OPEN
