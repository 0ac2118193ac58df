"""Who may call what, proven on the real servers: the run's shared gateway and partner node
(`tests.gateway.shared_world`), called over mutual TLS with the certificate of every role of both
parties.

`ADMITTED` below is the specification, written here and not read from the code's allow-lists:
for each server, each method it serves and the certificates that may call it. Every method of
every service in the generated contracts (cobrand's own, gRPC health checking and reflection) is
called on both servers with every certificate and an empty request. A certificate the
specification admits gets past authorization (the empty request may then be refused as
INVALID_ARGUMENT and the like, never PERMISSION_DENIED); one it does not admit gets
PERMISSION_DENIED, recorded in that server's denial log; a method a server does not serve is
UNIMPLEMENTED for everyone; a method served but missing from the specification fails the test.

Then, on the same servers: request bytes that do not parse are INVALID_ARGUMENT for every
method; the gateway binds each application flow to its own party's channel; the partner's data
plane refuses a pass for a run and round its SuperNode never handed over.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import cobrand.v1
from cobrand.denials import DENIAL_LOG, GATEWAY_DENIAL_LOG
from cobrand.rpc import REASON_METADATA_KEY, create_channel
from cobrand.tensor_wire import EXCHANGE_METHOD
from cobrand.v1 import scoring_pb2, training_pb2
from gateway.server import Gateway
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import World

TIMEOUT = 10.0
RAW: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}

# Certificates of every role of both parties, by their holder names in `ThrowAwayPki`.
BANK, GATEWAY, BANK_APP, TRAINER = "bank", "gateway", "app", "bank-trainer"
PARTNER, PARTNER_APP = "partner", "partner-app"
HOLDERS = (BANK, GATEWAY, BANK_APP, TRAINER, PARTNER, PARTNER_APP)
_BANK_SERVICES = frozenset({BANK, GATEWAY})

ADMITTED: dict[str, dict[str, frozenset[str]]] = {
    "gateway": {
        "/cobrand.v1.ScoringGateway/ScoreApplication": frozenset({BANK_APP, PARTNER_APP}),
        "/grpc.health.v1.Health/Check": frozenset({BANK_APP, PARTNER_APP}) | _BANK_SERVICES,
        "/grpc.health.v1.Health/Watch": _BANK_SERVICES,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _BANK_SERVICES,
    },
    "partner node": {
        "/cobrand.v1.AlignmentService/OpenAlignment": frozenset({BANK}),
        "/cobrand.v1.AlignmentService/ReblindBankPoints": frozenset({BANK}),
        "/cobrand.v1.AlignmentService/FetchPartnerPoints": frozenset({BANK}),
        "/cobrand.v1.AlignmentService/CommitAlignment": frozenset({BANK}),
        "/cobrand.v1.TrainingDataPlane/Exchange": frozenset({TRAINER}),
        "/cobrand.v1.PartnerRounds/GetStatus": frozenset({PARTNER}),
        "/cobrand.v1.PartnerRounds/PlanRound": frozenset({PARTNER}),
        "/cobrand.v1.PartnerRounds/PublishModel": frozenset({PARTNER}),
        "/cobrand.v1.PartnerEmbeddingService/GetEmbedding": frozenset({GATEWAY}),
        "/cobrand.v1.PartnerEmbeddingService/GetEmbeddings": frozenset({GATEWAY}),
        "/cobrand.v1.PartnerEmbeddingService/StreamEmbeddings": frozenset({GATEWAY}),
        "/cobrand.v1.PartnerEmbeddingService/DescribeVersion": frozenset({GATEWAY}),
        "/cobrand.v1.ConsentedLookup/BlindEvaluate": frozenset({GATEWAY}),
        "/cobrand.v1.ConsentedLookup/GetConsentedEmbedding": frozenset({GATEWAY}),
    },
}
"""The specification: per server, each method it serves and the certificates it admits."""

_NOT_PAST_AUTHORIZATION = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass(frozen=True)
class Method:
    """One method of the generated contracts, with its streaming shape."""

    path: str
    client_streaming: bool
    server_streaming: bool


def _contract_methods() -> list[Method]:
    descriptors = [health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR]
    for module in pkgutil.iter_modules(cobrand.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptors.append(importlib.import_module(f"cobrand.v1.{module.name}").DESCRIPTOR)
    methods: list[MethodDescriptor] = [
        method
        for descriptor in descriptors
        for service in descriptor.services_by_name.values()
        for method in service.methods
    ]
    return [
        Method(
            f"/{m.containing_service.full_name}/{m.name}", m.client_streaming, m.server_streaming
        )
        for m in methods
    ]


METHODS = _contract_methods()
SERVERS = tuple(ADMITTED)


def test_the_specification_names_only_methods_of_the_contracts() -> None:
    known = {method.path for method in METHODS}
    assert {path for served in ADMITTED.values() for path in served} <= known


@dataclass(frozen=True)
class Deployment:
    """Both started servers, a channel per (server, holder), and each server's denial log."""

    channels: dict[tuple[str, str], grpc.Channel]
    denial_logs: dict[str, Path]


@pytest.fixture(scope="module")
def deployment(
    throwaway_pki: ThrowAwayPki, world: World, partner_node: PartnerNode, gateway: Gateway
) -> Iterator[Deployment]:
    ports = {"gateway": gateway.port, "partner node": partner_node.port}
    channels = {
        (server, holder): create_channel(f"127.0.0.1:{port}", throwaway_pki.tls(holder))
        for server, port in ports.items()
        for holder in HOLDERS
    }
    yield Deployment(
        channels,
        {
            # Where each server writes by default: beside the bank's and the partner's data.
            "gateway": world.sites.bank_data / GATEWAY_DENIAL_LOG,
            "partner node": world.sites.partner_data / DENIAL_LOG,
        },
    )
    for channel in channels.values():
        channel.close()


def _status(channel: grpc.Channel, method: Method, request: bytes = b"") -> grpc.StatusCode:
    """The status of calling `method` with `request` (empty: an empty message or stream)."""
    requests = iter([request] if request else [])
    try:
        if method.client_streaming and method.server_streaming:
            replies: Any = channel.stream_stream(method.path, **RAW)(requests, timeout=TIMEOUT)
        elif method.server_streaming:
            replies = channel.unary_stream(method.path, **RAW)(request, timeout=TIMEOUT)
        elif method.client_streaming:
            channel.stream_unary(method.path, **RAW)(requests, timeout=TIMEOUT)
            return grpc.StatusCode.OK
        else:
            channel.unary_unary(method.path, **RAW)(request, timeout=TIMEOUT)
            return grpc.StatusCode.OK
        # The first reply (or the end) is enough; Watch would stream on.
        next(replies, None)
        replies.cancel()
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code


def _denials(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


@pytest.mark.parametrize("holder", HOLDERS)
@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.path.rsplit(".", 1)[-1])
@pytest.mark.parametrize("server", SERVERS)
def test_a_call_is_admitted_exactly_when_the_specification_says(
    deployment: Deployment, server: str, method: Method, holder: str
) -> None:
    log = deployment.denial_logs[server]
    before = len(_denials(log))

    code = _status(deployment.channels[server, holder], method)

    served = ADMITTED[server]
    if method.path not in served:
        assert code is grpc.StatusCode.UNIMPLEMENTED, (
            f"{server} serves {method.path}, which the specification does not list"
        )
    elif holder in served[method.path]:
        assert code not in _NOT_PAST_AUTHORIZATION, f"{holder} refused {code} on {server}"
    else:
        assert code is grpc.StatusCode.PERMISSION_DENIED
        (denial,) = _denials(log)[before:]
        assert (denial["method"], denial["name"]) == (method.path, holder)
        return
    assert len(_denials(log)) == before


@pytest.mark.parametrize(
    ("server", "method"),
    [(server, m) for server in SERVERS for m in METHODS if m.path in ADMITTED[server]],
    ids=lambda value: value.path.rsplit(".", 1)[-1] if isinstance(value, Method) else value,
)
def test_random_bytes_are_invalid_argument_on_every_method_of_the_real_servers(
    deployment: Deployment, server: str, method: Method
) -> None:
    holder = min(ADMITTED[server][method.path])

    assert _status(deployment.channels[server, holder], method, b"\xff\xff\xff\xff") is (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def _application(channel: int) -> bytes:
    return bytes(
        scoring_pb2.ScoreApplicationRequest(
            application_id="bind-1",
            channel=channel,  # type: ignore[arg-type]
        ).SerializeToString()
    )


@pytest.mark.parametrize(
    ("holder", "channel", "named"),
    [
        (PARTNER_APP, scoring_pb2.APPLICATION_CHANNEL_BANK, "the partner's application flow"),
        (BANK_APP, scoring_pb2.APPLICATION_CHANNEL_PARTNER, "the bank's application flow"),
    ],
)
def test_an_application_flow_may_submit_only_on_its_own_partys_channel(
    deployment: Deployment, holder: str, channel: int, named: str
) -> None:
    log = deployment.denial_logs["gateway"]
    before = len(_denials(log))
    call = deployment.channels["gateway", holder].unary_unary(
        "/cobrand.v1.ScoringGateway/ScoreApplication", **RAW
    )

    with pytest.raises(grpc.RpcError) as caught:
        call(_application(channel), timeout=TIMEOUT)

    error: Any = caught.value
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    other = "bank" if channel == scoring_pb2.APPLICATION_CHANNEL_BANK else "partner"
    assert error.details() == (f"field 'channel': {named} may not submit on the {other} channel")
    assert dict(error.trailing_metadata())[REASON_METADATA_KEY] == "PERMISSION_DENIED"
    (denial,) = _denials(log)[before:]
    assert (denial["name"], denial["message"]) == (holder, error.details())


def test_the_data_plane_refuses_a_pass_for_a_run_the_supernode_never_handed_over(
    deployment: Deployment,
) -> None:
    opening = training_pb2.ExchangeRequest(
        open=training_pb2.PassOpen(run_id="run-never", round=3, kind=training_pb2.PASS_KIND_TRAIN)
    )
    # grpc-stubs types the call's reply stream as a CallIterator, which declares no __next__.
    replies: Any = deployment.channels["partner node", TRAINER].stream_stream(
        EXCHANGE_METHOD,
        request_serializer=training_pb2.ExchangeRequest.SerializeToString,
        response_deserializer=training_pb2.ExchangeResponse.FromString,
    )(iter([opening]), timeout=TIMEOUT)

    with pytest.raises(grpc.RpcError) as caught:
        next(replies)

    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == (
        "unknown run 'run-never', round 3: the partner's SuperNode has handed over no training run"
    )
