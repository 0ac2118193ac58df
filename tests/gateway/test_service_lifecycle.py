"""The gateway's life: it refuses to start against a partner holding other files than published,
starts bank-only without its partner and takes the partner up once it answers, finishes the
calls in progress when stopped, and runs as ``cobrand gateway serve``."""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from cobrand.errors import FailedPrecondition
from cobrand.model_manifest import manifest_digest
from cobrand.model_store import ModelStore
from cobrand.rpc import create_server
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc, scoring_pb2
from gateway.audit_log import AuditSettings, open_audit_log
from gateway.audit_record import PartnerSliceStatus
from gateway.server import start_gateway
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_process import ServedGateway, write_config
from tests.gateway.gateway_sites import (
    Applicants,
    World,
    gateway_settings,
    publish_both_sides,
    publish_world,
    running_gateway,
)
from tests.gateway.scoring_calls import TIMEOUT, application, scoring_stub
from tests.gateway.synth_version import PARTNER_WIDTH
from tests.training_sites import TrainingSites, running_partner

USED = scoring_pb2.PARTNER_SLICE_STATUS_USED


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A world of its own: a test here publishes a version whose partner files differ."""
    return publish_world(tmp_path_factory.mktemp("sites"), customers=400, seed=37)


@pytest.fixture
def partner(throwaway_pki: ThrowAwayPki, sites: TrainingSites) -> Iterator[PartnerNode]:
    with running_partner(throwaway_pki, sites) as started:
        yield started


def test_a_partner_holding_other_files_than_published_stops_the_start(
    tmp_path: Path, throwaway_pki: ThrowAwayPki, sites: TrainingSites, partner: PartnerNode
) -> None:
    mismatched = publish_both_sides(
        sites, seed=8, recorded_peer=hashlib.sha256(b"other files").digest()
    )
    settings = gateway_settings(tmp_path, sites, throwaway_pki, mismatched, partner.port)

    with pytest.raises(FailedPrecondition, match="the partner's files differ"):
        start_gateway(settings)


def test_a_gateway_started_without_its_partner_takes_it_up_once_it_answers(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version_id: str,
    partner: PartnerNode,
    people: Applicants,
) -> None:
    port = partner.port
    partner.stop(grace=None)
    settings = gateway_settings(
        tmp_path, sites, throwaway_pki, version_id, port, verify_retry_s=0.2
    )
    with (
        running_gateway(settings) as gateway,
        scoring_stub(throwaway_pki, gateway.port) as app,
    ):
        assert not gateway.partner.verified
        before = app.ScoreApplication(application("APP-cold-1", people.aligned[0]), timeout=TIMEOUT)
        with running_partner(throwaway_pki, sites, listen=f"127.0.0.1:{port}"):
            deadline = time.monotonic() + TIMEOUT
            while not gateway.partner.verified and time.monotonic() < deadline:
                time.sleep(0.05)
            after = app.ScoreApplication(
                application("APP-cold-2", people.aligned[0]), timeout=TIMEOUT
            )

    assert before.slices.partner_status == scoring_pb2.PARTNER_SLICE_STATUS_UNAVAILABLE
    assert before.decision != scoring_pb2.DECISION_UNSPECIFIED
    assert after.slices.partner_status == USED


class SlowPartner(embedding_pb2_grpc.PartnerEmbeddingServiceServicer):
    """Describes the published version truly; answers each lookup after `delay_s`."""

    def __init__(self, sites: TrainingSites, version_id: str, delay_s: float) -> None:
        self._manifest = ModelStore(sites.partner_data / "models").manifest(version_id)
        self._delay_s = delay_s
        self.started = threading.Event()

    def DescribeVersion(  # noqa: N802
        self, request: embedding_pb2.DescribeVersionRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.DescribeVersionResponse:
        return embedding_pb2.DescribeVersionResponse(
            model_version=self._manifest.version_id,
            manifest_sha256=manifest_digest(self._manifest),
        )

    def GetEmbedding(  # noqa: N802
        self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.GetEmbeddingResponse:
        if request.request_id != "warm-up":
            self.started.set()
            time.sleep(self._delay_s)
        return embedding_pb2.GetEmbeddingResponse(
            request_id=request.request_id,
            model_version=request.model_version,
            status=embedding_pb2.LOOKUP_STATUS_FOUND,
            embedding=[0.25] * PARTNER_WIDTH,
        )


def test_stopping_the_gateway_finishes_and_records_the_calls_in_progress(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version_id: str,
    people: Applicants,
) -> None:
    slow = SlowPartner(sites, version_id, delay_s=0.8)
    server, port = create_server(
        lambda s: embedding_pb2_grpc.add_PartnerEmbeddingServiceServicer_to_server(slow, s),  # type: ignore[no-untyped-call]
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
    )
    server.start()
    settings = gateway_settings(tmp_path, sites, throwaway_pki, version_id, port, deadline_ms=5000)
    try:
        with (
            running_gateway(settings) as gateway,
            scoring_stub(throwaway_pki, gateway.port) as app,
        ):
            with ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(
                    app.ScoreApplication,
                    application("APP-in-flight", people.aligned[0]),
                    timeout=TIMEOUT,
                )
                assert slow.started.wait(TIMEOUT)
                gateway.stop(grace=TIMEOUT)
                reply = in_flight.result()
            with pytest.raises(grpc.RpcError) as refused:
                app.ScoreApplication(application("APP-after-stop", people.aligned[1]), timeout=2)
    finally:
        server.stop(None).wait()

    assert reply.slices.partner_status == USED
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with open_audit_log(settings.audit) as audit:
        recorded = audit.get(reply.request_id)
    assert recorded is not None
    assert recorded.partner_status is PartnerSliceStatus.USED


def test_cobrand_gateway_serve_answers_until_sigterm_then_stops_cleanly(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version_id: str,
    partner: PartnerNode,
    people: Applicants,
) -> None:
    settings = gateway_settings(tmp_path, sites, throwaway_pki, version_id, partner.port)
    config = tmp_path / "gateway.yaml"
    write_config(config, settings, version_id)
    with ServedGateway(config, tmp_path / "port") as served:
        with scoring_stub(throwaway_pki, served.port()) as app:
            reply = app.ScoreApplication(application("APP-cli", people.aligned[0]), timeout=TIMEOUT)
        code = served.stop(signal.SIGTERM)
        out = served.output()

    assert reply.slices.partner_status == USED
    assert code == 0, out
    assert f"gateway serving model version {version_id}" in out
    assert "partner verified" in out
    assert "gateway stopped" in out
    assert people.aligned[0][3:] not in out
    with open_audit_log(AuditSettings(backend="sqlite", path=tmp_path / "audit.db")) as audit:
        assert audit.get(reply.request_id) is not None
