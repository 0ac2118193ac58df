"""Hot swap of the served model version: a version published at both sides is swapped in while
applications keep coming, none fails and none combines two versions; a version the partner does
not hold yet is refused and the gateway serves on; ``cobrand gateway serve`` swaps on SIGHUP."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from cobrand.errors import FailedPrecondition
from cobrand.rpc import create_channel, create_server
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc, scoring_pb2
from gateway.applicants import JoinKeyIndex
from gateway.partner_breaker import CircuitBreaker
from gateway.partner_client import PartnerClient
from gateway.server import Gateway
from gateway.settings import BreakerSettings, GatewaySettings
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
    """A world of its own: the tests here publish more versions and swap between them."""
    return publish_world(tmp_path_factory.mktemp("sites"), customers=400, seed=41)


@pytest.fixture(scope="module")
def versions(world: World) -> tuple[str, str]:
    """Two versions published at both sides, their partner bottoms seeded differently."""
    second = publish_both_sides(world.sites, seed=11)
    assert second != world.version_id
    return world.version_id, second


@pytest.fixture(scope="module")
def partner(throwaway_pki: ThrowAwayPki, world: World) -> Iterator[PartnerNode]:
    with running_partner(throwaway_pki, world.sites) as started:
        yield started


def _settings(
    tmp_path: Path, pki: ThrowAwayPki, sites: TrainingSites, version_id: str, port: int
) -> GatewaySettings:
    # A lenient deadline: the partner slice is used on a shared machine, so each reply's
    # embedding can be checked against its version's.
    return gateway_settings(tmp_path, sites, pki, version_id, port, deadline_ms=2000)


@pytest.fixture
def gateway(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    versions: tuple[str, str],
    partner: PartnerNode,
) -> Iterator[Gateway]:
    settings = _settings(tmp_path, throwaway_pki, sites, versions[0], partner.port)
    with running_gateway(settings) as started:
        assert started.partner.verified
        yield started


def _partner_embeddings(
    pki: ThrowAwayPki,
    sites: TrainingSites,
    port: int,
    versions: tuple[str, ...],
    identifiers: list[str],
) -> dict[tuple[str, str], tuple[float, ...]]:
    """What the partner answers for each (version, applicant), asked directly as the gateway."""
    index = JoinKeyIndex.read(sites.bank_data)
    expected: dict[tuple[str, str], tuple[float, ...]] = {}
    with create_channel(f"127.0.0.1:{port}", pki.tls("gateway")) as channel:
        client = PartnerClient(channel, TIMEOUT, CircuitBreaker(BreakerSettings()))
        for version_id in versions:
            for identifier in identifiers:
                key = index.join_key(identifier)
                assert key is not None
                found = client.embedding("expected", version_id, key, PARTNER_WIDTH)
                assert found.embedding is not None
                expected[version_id, identifier] = tuple(found.embedding.tolist())
    return expected


def test_a_swap_under_load_drops_no_call_and_never_combines_two_versions(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    versions: tuple[str, str],
    partner: PartnerNode,
    gateway: Gateway,
    people: Applicants,
) -> None:
    first, second = versions
    identifiers = people.aligned[:6]
    sent: dict[str, str] = {}
    replies: list[scoring_pb2.ScoreApplicationResponse] = []
    errors: list[grpc.RpcError] = []
    enough_before = threading.Event()
    swapped = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        with scoring_stub(throwaway_pki, gateway.port) as app:
            # Each worker keeps sending until it has seen the swap, then sends a few more.
            after_swap = 0
            for call in range(400):
                application_id = f"APP-swap-{worker}-{call}"
                identifier = identifiers[call % len(identifiers)]
                try:
                    reply = app.ScoreApplication(
                        application(application_id, identifier, consent=True), timeout=TIMEOUT
                    )
                except grpc.RpcError as err:
                    with lock:
                        errors.append(err)
                    return
                with lock:
                    sent[reply.request_id] = identifier
                    replies.append(reply)
                    if len(replies) >= 12:
                        enough_before.set()
                after_swap += swapped.is_set()
                if after_swap >= 3:
                    return

    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(client, worker) for worker in range(4)]
        assert enough_before.wait(60)
        gateway.swap(second)
        swapped.set()
        for worker in workers:
            worker.result()

    assert errors == []
    assert gateway.versions.current == second
    assert {reply.model_version for reply in replies} == {first, second}
    assert {reply.slices.partner_status for reply in replies} == {USED}
    expected = _partner_embeddings(
        throwaway_pki, sites, partner.port, versions, sorted(set(sent.values()))
    )
    for reply in replies:
        record = gateway.audit.get(reply.request_id)
        assert record is not None
        assert record.result.model_version == reply.model_version
        if reply.slices.partner_status == USED:
            assert record.partner_embedding == expected[reply.model_version, sent[reply.request_id]]
    # The two versions' partner bottoms differ, so the check above tells them apart.
    assert not np.allclose(
        expected[first, identifiers[0]], expected[second, identifiers[0]], atol=1e-6
    )
    with scoring_stub(throwaway_pki, gateway.port) as app:
        after = app.ScoreApplication(
            application("APP-after-swap", identifiers[0], consent=True), timeout=TIMEOUT
        )
        named_previous = app.ScoreApplication(
            application("APP-names-previous", identifiers[0], model_version=first, consent=True),
            timeout=TIMEOUT,
        )
    assert after.model_version == second
    assert after.slices.partner_status == USED
    assert named_previous.model_version == first
    assert named_previous.slices.partner_status == USED


class HoldingPartner(embedding_pb2_grpc.PartnerEmbeddingServiceServicer):
    """Forwards to the real partner node, holding applications' lookups of `held` until
    `release` is set."""

    def __init__(self, stub: Any, held: str) -> None:
        self._stub = stub
        self._held = held
        self.holding = threading.Event()
        self.release = threading.Event()

    def DescribeVersion(  # noqa: N802
        self, request: embedding_pb2.DescribeVersionRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.DescribeVersionResponse:
        reply: embedding_pb2.DescribeVersionResponse = self._stub.DescribeVersion(request)
        return reply

    def GetEmbedding(  # noqa: N802
        self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.GetEmbeddingResponse:
        if request.request_id != "warm-up" and request.model_version == self._held:
            self.holding.set()
            self.release.wait(TIMEOUT)
        reply: embedding_pb2.GetEmbeddingResponse = self._stub.GetEmbedding(request)
        return reply


def test_a_call_in_progress_during_the_swap_finishes_on_its_version(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    versions: tuple[str, str],
    partner: PartnerNode,
    people: Applicants,
) -> None:
    first, second = versions
    identifier = people.aligned[0]
    upstream = create_channel(f"127.0.0.1:{partner.port}", throwaway_pki.tls("gateway"))
    holding = HoldingPartner(
        embedding_pb2_grpc.PartnerEmbeddingServiceStub(upstream),  # type: ignore[no-untyped-call]
        held=first,
    )
    server, port = create_server(
        lambda s: embedding_pb2_grpc.add_PartnerEmbeddingServiceServicer_to_server(holding, s),  # type: ignore[no-untyped-call]
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
    )
    server.start()
    try:
        with (
            running_gateway(_settings(tmp_path, throwaway_pki, sites, first, port)) as gateway,
            scoring_stub(throwaway_pki, gateway.port) as app,
        ):
            with ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(
                    app.ScoreApplication,
                    application("APP-in-flight", identifier, consent=True),
                    timeout=TIMEOUT,
                )
                assert holding.holding.wait(TIMEOUT)
                gateway.swap(second)
                after = app.ScoreApplication(
                    application("APP-after", identifier, consent=True), timeout=TIMEOUT
                )
                holding.release.set()
                during = in_flight.result()
            recorded = gateway.audit.get(during.request_id)
    finally:
        holding.release.set()
        server.stop(None).wait()
        upstream.close()

    expected = _partner_embeddings(throwaway_pki, sites, partner.port, versions, [identifier])
    assert (during.model_version, during.slices.partner_status) == (first, USED)
    assert recorded is not None
    assert recorded.result.model_version == first
    assert recorded.partner_embedding == expected[first, identifier]
    assert (after.model_version, after.slices.partner_status) == (second, USED)


def test_a_version_the_partner_does_not_hold_is_refused_and_the_served_one_stays(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    versions: tuple[str, str],
    gateway: Gateway,
    people: Applicants,
) -> None:
    # The bank's half published and the partner's digest recorded, but the partner half went
    # to another registry than the one the partner node serves from.
    elsewhere = dataclasses.replace(sites, partner_data=tmp_path / "unpublished")
    unpublished = publish_both_sides(elsewhere, seed=13)

    with pytest.raises(FailedPrecondition, match=f"model version {unpublished} is not verified"):
        gateway.swap(unpublished)

    assert gateway.versions.current == versions[0]
    assert gateway.partner.verified
    with scoring_stub(throwaway_pki, gateway.port) as app:
        reply = app.ScoreApplication(
            application("APP-after-refusal", people.aligned[0], consent=True), timeout=TIMEOUT
        )
    assert reply.model_version == versions[0]
    assert reply.slices.partner_status == USED


def test_cobrand_gateway_serve_swaps_to_the_files_version_on_sighup_and_serves_on_a_refusal(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    versions: tuple[str, str],
    partner: PartnerNode,
    people: Applicants,
) -> None:
    first, second = versions
    settings = _settings(tmp_path, throwaway_pki, sites, first, partner.port)
    config = tmp_path / "gateway.yaml"
    write_config(config, settings, first)
    with ServedGateway(config, tmp_path / "port") as served:
        with scoring_stub(throwaway_pki, served.port()) as app:
            before = app.ScoreApplication(
                application("APP-hup-before", people.aligned[0], consent=True), timeout=TIMEOUT
            )
            write_config(config, settings, "0123456789abcdef")
            served.process.send_signal(signal.SIGHUP)
            # The refusal is logged as an error (stderr without a configured handler).
            (refusal,) = served.logged("swap refused")
            refused = app.ScoreApplication(
                application("APP-hup-refused", people.aligned[0], consent=True), timeout=TIMEOUT
            )
            write_config(config, settings, second)
            served.process.send_signal(signal.SIGHUP)
            after = refused
            deadline = time.monotonic() + 30
            call = 0
            while after.model_version != second and time.monotonic() < deadline:
                time.sleep(0.1)
                call += 1
                after = app.ScoreApplication(
                    application(f"APP-hup-{call}", people.aligned[0], consent=True), timeout=TIMEOUT
                )
        code = served.stop(signal.SIGTERM)

    assert before.model_version == first
    assert "swap refused, still serving model version " + first in refusal
    assert "0123456789abcdef" in refusal
    assert refused.model_version == first
    assert after.model_version == second
    assert after.slices.partner_status == USED
    assert code == 0, served.output()
