"""A model file changed after publication is detected by its SHA-256 and refused, naming the file,
on the real start-up and serving paths: the gateway does not start on it, the partner node does
not serve it (and serves its other versions on).

A partner whose whole copy of a version differs from what the bank recorded (a mismatched
manifest) stops the gateway's start: ``tests/gateway/test_service_lifecycle.py::
test_a_partner_holding_other_files_than_published_stops_the_start``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from cobrand.errors import FailedPrecondition
from cobrand.rpc import create_channel
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from gateway.server import start_gateway
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import World, gateway_settings, publish_both_sides
from tests.training_sites import TrainingSites

TIMEOUT = 30.0


def _flip_last_byte(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))


@pytest.fixture(scope="module")
def tampered(world: World) -> str:
    """A version published at both sides after the shared one, whose files the tests alter."""
    return publish_both_sides(world.sites, seed=9)


def test_a_gateway_does_not_start_on_a_tampered_model_file_and_names_it(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    tampered: str,
    partner_node: PartnerNode,
) -> None:
    head = sites.bank_data / "models" / tampered / "head.pt"
    _flip_last_byte(head)
    settings = gateway_settings(tmp_path, sites, throwaway_pki, tampered, partner_node.port)

    with pytest.raises(FailedPrecondition) as refused:
        start_gateway(settings)

    assert f"{head} has" in str(refused.value)
    assert "the manifest says" in str(refused.value)


def test_a_partner_node_refuses_a_tampered_model_file_naming_it_and_serves_its_other_versions(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version_id: str,
    tampered: str,
    partner_node: PartnerNode,
    aligned_key: bytes,
) -> None:
    _flip_last_byte(sites.partner_data / "models" / tampered / "partner_bottom.pt")

    with create_channel(f"127.0.0.1:{partner_node.port}", throwaway_pki.tls("gateway")) as channel:
        stub: Any = embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]

        def lookup(version: str) -> Any:
            request = embedding_pb2.GetEmbeddingRequest(
                request_id="tamper-check", model_version=version, join_key=aligned_key
            )
            return stub.GetEmbedding(request, timeout=TIMEOUT)

        with pytest.raises(grpc.RpcError) as refused:
            lookup(tampered)
        other = lookup(version_id)

    error: Any = refused.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "partner_bottom.pt has" in error.details()
    assert "the manifest says" in error.details()
    assert other.status == embedding_pb2.LOOKUP_STATUS_FOUND
