"""The gateway's operations surface over mutual TLS on loopback: standard gRPC health checking
(SERVING once serving, NOT_SERVING as it stops) and server reflection, each open only to the
roles its allow-list names, and the Prometheus metrics scraped over HTTP after real calls.

The gateway serves the run's shared world (`tests.gateway.shared_world`) without its partner
node: it serves the bank's slice alone, which is all these behaviours need.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from cobrand.errors import ConfigError
from cobrand.rpc import create_channel
from cobrand.settings import load_settings
from cobrand.v1 import scoring_pb2
from gateway.server import Gateway, start_gateway
from gateway.settings import GatewaySettings
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import Applicants, World, gateway_settings, running_gateway
from tests.gateway.scoring_calls import TIMEOUT, application, scoring_stub
from tests.loopback import unused_port

SCORING = "cobrand.v1.ScoringGateway"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def settings(
    tmp_path_factory: pytest.TempPathFactory, throwaway_pki: ThrowAwayPki, world: World
) -> GatewaySettings:
    settings = gateway_settings(
        tmp_path_factory.mktemp("gateway"),
        world.sites,
        throwaway_pki,
        world.version_id,
        unused_port(),
        verify_retry_s=600,
    )
    return settings.model_copy(update={"metrics_listen": "127.0.0.1:0"})


@pytest.fixture(scope="module")
def gateway(settings: GatewaySettings) -> Iterator[Gateway]:
    with running_gateway(settings) as started:
        yield started


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


def _scraped(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_latency_decisions_and_fallbacks_of_real_calls(
    gateway: Gateway, throwaway_pki: ThrowAwayPki, people: Applicants
) -> None:
    assert gateway.metrics_port is not None
    before = _scraped(gateway.metrics_port)

    with scoring_stub(throwaway_pki, gateway.port) as stub:
        # The partner is absent: an aligned customer falls back as UNAVAILABLE, a customer
        # outside the alignment without consent as NO_CONSENT.
        known = stub.ScoreApplication(application("OPS-1", people.aligned[0]), timeout=TIMEOUT)
        unknown = stub.ScoreApplication(application("OPS-2", people.bank_only[0]), timeout=TIMEOUT)
        retried = stub.ScoreApplication(application("OPS-1", people.aligned[0]), timeout=TIMEOUT)
        assert retried.replayed
        bad = application("OPS-3", people.aligned[0], monthly_income=float("nan"))
        assert _refused(lambda: stub.ScoreApplication(bad, timeout=TIMEOUT)) is (
            grpc.StatusCode.INVALID_ARGUMENT
        )

    after = _scraped(gateway.metrics_port)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    outcomes = {"approve": 0, "refer": 0, "decline": 0}
    for reply in (known, unknown):
        outcomes[scoring_pb2.Decision.Name(reply.decision).removeprefix("DECISION_").lower()] += 1
    for decision, count in outcomes.items():
        assert grew("cobrand_gateway_decisions_total", decision=decision) == count
    assert grew("cobrand_gateway_partner_fallbacks_total", status="unavailable") == 1
    assert grew("cobrand_gateway_partner_fallbacks_total", status="no_consent") == 1
    assert grew("cobrand_gateway_partner_fallbacks_total", status="timeout") == 0
    # Three answered calls (the retry too) and one refused, each timed under its status.
    assert grew("cobrand_gateway_score_application_seconds_count", code="OK") == 3
    assert grew("cobrand_gateway_score_application_seconds_count", code="INVALID_ARGUMENT") == 1
    assert grew("cobrand_gateway_score_application_seconds_sum", code="OK") > 0
    assert grew("cobrand_gateway_score_application_seconds_bucket", code="OK", le="+Inf") == 3


def test_a_metrics_address_without_a_port_is_refused_naming_the_setting(
    settings: GatewaySettings, tmp_path: Path
) -> None:
    body = settings.model_dump(mode="json", exclude_none=True)
    body["metrics_listen"] = "9464"
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="metrics_listen"):
        load_settings(GatewaySettings, path)
