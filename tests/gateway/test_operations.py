"""The gateway's operations surface over mutual TLS on loopback: standard gRPC health checking
(SERVING once serving, NOT_SERVING as it stops) and server reflection, each open only to the
roles its allow-list names.

The partner node is not started: the gateway serves the bank's slice alone, which is all these
behaviours need.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cobrand.rpc import create_channel
from gateway.server import Gateway, start_gateway
from gateway.settings import GatewaySettings
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import gateway_settings, publish_both_sides
from tests.training_sites import TrainingSites, write_training_sites

TIMEOUT = 10.0
SCORING = "cobrand.v1.ScoringGateway"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _closed_port() -> int:
    """A loopback port nothing listens on (the absent partner)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def settings(
    tmp_path_factory: pytest.TempPathFactory, throwaway_pki: ThrowAwayPki
) -> GatewaySettings:
    sites: TrainingSites = write_training_sites(
        tmp_path_factory.mktemp("sites"), customers=200, seed=43
    )
    version_id = publish_both_sides(sites)
    return gateway_settings(
        tmp_path_factory.mktemp("gateway"),
        sites,
        throwaway_pki,
        version_id,
        _closed_port(),
        verify_retry_s=600,
    )


@pytest.fixture(scope="module")
def gateway(settings: GatewaySettings) -> Iterator[Gateway]:
    started = start_gateway(settings)
    yield started
    started.stop(grace=None)


def _check(channel: grpc.Channel, service: str = "") -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)


def _listed_services(channel: grpc.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
    )
    return [service.name for reply in replies for service in reply.list_services_response.service]


def _refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    code: grpc.StatusCode = raised.value.code()
    return code


def test_a_bank_service_sees_serving_and_lists_the_scoring_gateway_through_reflection(
    gateway: Gateway, throwaway_pki: ThrowAwayPki
) -> None:
    with create_channel(f"127.0.0.1:{gateway.port}", throwaway_pki.tls("bank")) as channel:
        assert _check(channel).status == SERVING
        assert _check(channel, SCORING).status == SERVING
        assert _refused(lambda: _check(channel, "cobrand.v1.Unknown")) is grpc.StatusCode.NOT_FOUND

        listed = _listed_services(channel)

    assert SCORING in listed
    assert "grpc.health.v1.Health" in listed


def test_application_flows_may_check_health_but_not_use_reflection(
    gateway: Gateway, throwaway_pki: ThrowAwayPki
) -> None:
    for holder in ("app", "partner-app"):
        with create_channel(f"127.0.0.1:{gateway.port}", throwaway_pki.tls(holder)) as channel:
            assert _check(channel, SCORING).status == SERVING
            denied = _refused(lambda: _listed_services(channel))
            assert denied is grpc.StatusCode.PERMISSION_DENIED


def test_the_partner_node_and_the_trainer_may_not_call_health(
    gateway: Gateway, throwaway_pki: ThrowAwayPki
) -> None:
    for holder in ("partner", "bank-trainer"):
        with create_channel(f"127.0.0.1:{gateway.port}", throwaway_pki.tls(holder)) as channel:
            denied = _refused(lambda: _check(channel))
            assert denied is grpc.StatusCode.PERMISSION_DENIED


def test_a_caller_without_a_client_certificate_does_not_reach_health(
    gateway: Gateway, throwaway_pki: ThrowAwayPki
) -> None:
    trust = Path(throwaway_pki.tls("bank").ca_bundle).read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=trust)
    with grpc.secure_channel(f"127.0.0.1:{gateway.port}", credentials) as channel:
        assert _refused(lambda: _check(channel)) is grpc.StatusCode.UNAVAILABLE


def test_health_turns_not_serving_as_the_gateway_stops(
    settings: GatewaySettings, throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    own = settings.model_copy(
        update={"audit": settings.audit.model_copy(update={"path": tmp_path / "audit.db"})}
    )
    gateway = start_gateway(own)
    stopping = threading.Thread(target=gateway.stop, kwargs={"grace": 5.0})
    try:
        with create_channel(f"127.0.0.1:{gateway.port}", throwaway_pki.tls("gateway")) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SCORING), timeout=TIMEOUT
            )
            assert next(watch).status == SERVING
            stopping.start()
            assert next(watch).status == NOT_SERVING
            watch.cancel()
    finally:
        if stopping.ident is None:
            gateway.stop(grace=None)
        else:
            stopping.join()
