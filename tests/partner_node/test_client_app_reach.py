"""The partner's ClientApp reaches its node only through the round hand-off: its credentials
(role ``partner``) are refused on every other method the node serves, over real mutual TLS, on
the run's shared partner node (`tests.gateway.shared_world`)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool

from cobrand.pki import Role
from cobrand.rpc import create_channel
from partner_node.alignment_service import ALIGNMENT_ROLES
from partner_node.dataplane_service import ALLOWED_ROLES as DATAPLANE_ROLES
from partner_node.embedding_service import EMBEDDING_ROLES
from partner_node.flower_client.client_app import HandOffSettings
from partner_node.rounds_service import ROUNDS_ROLES
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki

# Every method the node serves other than the hand-off (PartnerRounds).
OTHER_METHODS = sorted({**ALIGNMENT_ROLES, **DATAPLANE_ROLES, **EMBEDDING_ROLES})


@pytest.fixture(scope="module")
def client_app(throwaway_pki: ThrowAwayPki, partner_node: PartnerNode) -> HandOffSettings:
    """The hand-off settings a SuperNode gives the ClientApp (its certificate: role partner)."""
    files = throwaway_pki.tls("partner")
    return HandOffSettings.from_node_config(
        {
            "partner-node": f"127.0.0.1:{partner_node.port}",
            "ca-bundle": str(files.ca_bundle),
            "cert": str(files.cert),
            "key": str(files.key),
        }
    )


def test_the_hand_off_is_the_only_service_open_to_the_client_apps_role() -> None:
    served = {**ALIGNMENT_ROLES, **DATAPLANE_ROLES, **ROUNDS_ROLES, **EMBEDDING_ROLES}

    open_to_partner = {method for method, roles in served.items() if Role.PARTNER in roles}

    assert open_to_partner == set(ROUNDS_ROLES)
    assert all(method.startswith("/cobrand.v1.PartnerRounds/") for method in open_to_partner)


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_the_client_apps_credentials_are_refused_on_every_other_method_of_the_node(
    client_app: HandOffSettings, method: str
) -> None:
    with (
        create_channel(client_app.partner_node, client_app.tls) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _call_once(channel, method)

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()


def _call_once(channel: grpc.Channel, method: str) -> None:
    """Call `method` with one empty request, in the call shape its contract declares."""
    shape = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
    raw = {"request_serializer": None, "response_deserializer": None}
    if shape.client_streaming and shape.server_streaming:
        list(channel.stream_stream(method, **raw)(iter([b""]), timeout=10.0))
    elif shape.client_streaming:
        channel.stream_unary(method, **raw)(iter([b""]), timeout=10.0)
    elif shape.server_streaming:
        list(channel.unary_stream(method, **raw)(b"", timeout=10.0))
    else:
        channel.unary_unary(method, **raw)(b"", timeout=10.0)
