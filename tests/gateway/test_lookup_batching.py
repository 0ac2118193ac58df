"""The gateway's coalescing of concurrent partner lookups (`gateway.lookup_batcher` under
`gateway.partner_client`), over mutual TLS on loopback: against a partner stand-in that counts
the calls it gets and can hold one, and against the real partner node.

A lone lookup goes at once as one GetEmbedding; lookups made while a call is under way go
together as one GetEmbeddings when it returns, each caller getting its own answer; a queued
lookup whose deadline passes is never sent; the breaker counts each lookup of a call as one call;
each model version has calls of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from cobrand.rpc import create_channel, create_server
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from gateway.applicants import JoinKeyIndex
from gateway.audit_record import PartnerSliceStatus
from gateway.lookup_batcher import LookupBatcher, LookupTimeoutError
from gateway.partner_breaker import BreakerState, CircuitBreaker
from gateway.partner_client import PartnerClient, PartnerSlice
from gateway.settings import BreakerSettings
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import Applicants
from tests.gateway.synth_version import PARTNER_WIDTH
from tests.training_sites import TrainingSites

VERSION = "0123456789abcdef"
OTHER_VERSION = "fedcba9876543210"
WIDTH = 2
DEADLINE_S = 5.0
# Time for every thread started to queue behind the held call, with a wide margin for a loaded
# machine: a thread late to queue would go in a call of its own and fail the count of calls.
SETTLE_S = 1.0


def _key(n: int) -> bytes:
    return n.to_bytes(16, "big")


def _answer(request: embedding_pb2.GetEmbeddingRequest) -> embedding_pb2.GetEmbeddingResponse:
    """The stand-in's answer: the embedding is the key's number and its negation."""
    n = float(int.from_bytes(request.join_key, "big"))
    return embedding_pb2.GetEmbeddingResponse(
        request_id=request.request_id,
        model_version=request.model_version,
        status=embedding_pb2.LOOKUP_STATUS_FOUND,
        embedding=[n, -n],
    )


class CountingPartner(embedding_pb2_grpc.PartnerEmbeddingServiceServicer):
    """Answers lookups by key (`_answer`), recording each call's lookups (their request ids);
    holds calls while `hold` is clear, and answers GetEmbeddings with `many` when set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.versions: list[set[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.many: Callable[[embedding_pb2.GetEmbeddingsRequest], Any] | None = None
        self._lock = threading.Lock()

    def _record(self, method: str, lookups: list[embedding_pb2.GetEmbeddingRequest]) -> None:
        with self._lock:
            self.calls.append((method, [lookup.request_id for lookup in lookups]))
            self.versions.append({lookup.model_version for lookup in lookups})
        self.hold.wait(10.0)

    def GetEmbedding(  # noqa: N802
        self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.GetEmbeddingResponse:
        self._record("GetEmbedding", [request])
        return _answer(request)

    def GetEmbeddings(  # noqa: N802
        self, request: embedding_pb2.GetEmbeddingsRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.GetEmbeddingsResponse:
        self._record("GetEmbeddings", list(request.lookups))
        if self.many is not None:
            answered: embedding_pb2.GetEmbeddingsResponse = self.many(request)
            return answered
        return embedding_pb2.GetEmbeddingsResponse(
            lookups=[_answer(lookup) for lookup in request.lookups]
        )


@pytest.fixture(scope="module")
def standing_in(throwaway_pki: ThrowAwayPki) -> Iterator[tuple[CountingPartner, int]]:
    partner = CountingPartner()
    server, port = create_server(
        lambda s: embedding_pb2_grpc.add_PartnerEmbeddingServiceServicer_to_server(partner, s),  # type: ignore[no-untyped-call]
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
        max_workers=40,
    )
    server.start()
    yield partner, port
    server.stop(None).wait()


@pytest.fixture
def channel(
    throwaway_pki: ThrowAwayPki, standing_in: tuple[CountingPartner, int]
) -> Iterator[grpc.Channel]:
    partner, port = standing_in
    partner.calls.clear()
    partner.versions.clear()
    partner.hold.set()
    partner.many = None
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("gateway")) as made:
        yield made


@pytest.fixture
def partner(standing_in: tuple[CountingPartner, int]) -> CountingPartner:
    return standing_in[0]


def _client(channel: grpc.Channel, deadline_s: float = DEADLINE_S, **breaker: Any) -> PartnerClient:
    return PartnerClient(channel, deadline_s, CircuitBreaker(BreakerSettings(**breaker)))


def _behind_a_held_call(
    partner: CountingPartner,
    first: Callable[[], PartnerSlice],
    queued: list[Callable[[], PartnerSlice]],
) -> list[PartnerSlice]:
    """Start `first` while the partner holds calls, then `queued`, then let the partner answer;
    the slices in that order."""
    partner.hold.clear()
    with ThreadPoolExecutor(len(queued) + 1) as pool:
        leading = pool.submit(first)
        while not partner.calls:
            time.sleep(0.005)
        following = [pool.submit(lookup) for lookup in queued]
        time.sleep(SETTLE_S)
        partner.hold.set()
        return [leading.result(), *(f.result() for f in following)]


def test_a_lone_lookup_goes_at_once_as_one_get_embedding(
    channel: grpc.Channel, partner: CountingPartner
) -> None:
    client = _client(channel)

    got = client.embedding("alone", VERSION, _key(7), WIDTH)

    assert got.status is PartnerSliceStatus.USED
    assert got.embedding is not None
    assert got.embedding.tolist() == [7.0, -7.0]
    assert partner.calls == [("GetEmbedding", ["alone"])]


def test_lookups_made_during_a_call_go_together_in_one_call_each_caller_getting_its_own(
    channel: grpc.Channel, partner: CountingPartner
) -> None:
    client = _client(channel)

    def lookup(n: int) -> Callable[[], PartnerSlice]:
        return lambda: client.embedding(f"req-{n}", VERSION, _key(n), WIDTH)

    slices = _behind_a_held_call(partner, lookup(100), [lookup(n) for n in range(12)])

    assert partner.calls[0] == ("GetEmbedding", ["req-100"])
    method, request_ids = partner.calls[1]
    assert (method, sorted(request_ids)) == ("GetEmbeddings", sorted(f"req-{n}" for n in range(12)))
    assert len(partner.calls) == 2
    for n, got in zip([100, *range(12)], slices, strict=True):
        assert got.status is PartnerSliceStatus.USED
        assert got.embedding is not None
        assert got.embedding.tolist() == [float(n), -float(n)]


def test_each_model_version_has_calls_of_its_own_never_waiting_behind_anothers(
    channel: grpc.Channel, partner: CountingPartner
) -> None:
    client = _client(channel)

    def lookup(n: int, version: str) -> Callable[[], PartnerSlice]:
        return lambda: client.embedding(f"req-{n}", version, _key(n), WIDTH)

    queued = [lookup(n, (VERSION, OTHER_VERSION)[n % 2]) for n in range(8)]
    slices = _behind_a_held_call(partner, lookup(100, VERSION), queued)

    assert {s.status for s in slices} == {PartnerSliceStatus.USED}
    calls = [
        (v.pop(), method, ids)
        for v, (method, ids) in zip(partner.versions, partner.calls, strict=True)
    ]
    # While the first version's call was held, the other's first lookup went at once, and the
    # rest of each version's lookups went together once its own call was back.
    assert calls[0] == (VERSION, "GetEmbedding", ["req-100"])
    assert calls[1][:2] == (OTHER_VERSION, "GetEmbedding")
    assert sorted((version, len(ids)) for version, _, ids in calls[2:]) == [
        (VERSION, 4),
        (OTHER_VERSION, 3),
    ]
    asked = {
        version: sorted(i for v, _, ids in calls if v == version for i in ids)
        for version in (VERSION, OTHER_VERSION)
    }
    assert asked == {
        VERSION: ["req-0", "req-100", "req-2", "req-4", "req-6"],
        OTHER_VERSION: ["req-1", "req-3", "req-5", "req-7"],
    }


def test_a_queued_lookup_whose_deadline_passes_is_never_sent(
    channel: grpc.Channel, partner: CountingPartner
) -> None:
    stub: Any = embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]

    def send(requests: Any, timeout_s: float) -> Any:
        reply = stub.GetEmbeddings(
            embedding_pb2.GetEmbeddingsRequest(lookups=requests), timeout=timeout_s
        )
        return reply.lookups

    batcher = LookupBatcher(send, max_in_flight=1)

    def lookup(request_id: str, timeout_s: float) -> Any:
        request = embedding_pb2.GetEmbeddingRequest(
            request_id=request_id, model_version=VERSION, join_key=_key(1)
        )
        return batcher.lookup(request, timeout_s)

    partner.hold.clear()
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(lookup, "held", DEADLINE_S)
        while not partner.calls:
            time.sleep(0.005)
        started = time.perf_counter()
        with pytest.raises(LookupTimeoutError):
            lookup("hurried", 0.1)
        waited = time.perf_counter() - started
        partner.hold.set()
        assert held.result().request_id == "held"

    # It gave up at its own deadline, before the held call (answered only afterwards) returned.
    assert waited >= 0.1
    assert partner.calls == [("GetEmbeddings", ["held"])]


def test_a_lookup_no_call_took_in_time_is_a_timeout_and_counts_against_the_breaker(
    channel: grpc.Channel,
) -> None:
    client = _client(channel, min_calls=2)

    def queued_too_long(deadline_s: float) -> None:
        raise LookupTimeoutError("the lookup's deadline passed before a call took it")

    slices = [client.guarded(f"req-{n}", queued_too_long) for n in range(2)]

    assert [s.status for s in slices] == [PartnerSliceStatus.TIMEOUT] * 2
    assert client.breaker.state is BreakerState.OPEN


def test_each_lookup_of_a_failed_call_counts_against_the_breaker_as_a_call(
    channel: grpc.Channel, partner: CountingPartner
) -> None:
    # Five calls at least, half of them failed: one failed call of two would not open it.
    client = _client(channel, min_calls=5, cool_down_s=60.0)

    def failing(request: embedding_pb2.GetEmbeddingsRequest) -> Any:
        # A crash at the partner (an INTERNAL error), not a refusal its handler reasoned.
        raise RuntimeError("the partner is failing")

    partner.many = failing

    def lookup(n: int) -> Callable[[], PartnerSlice]:
        return lambda: client.embedding(f"req-{n}", VERSION, _key(n), WIDTH)

    slices = _behind_a_held_call(partner, lookup(100), [lookup(n) for n in range(5)])

    assert [s.status for s in slices] == [
        PartnerSliceStatus.USED,
        *([PartnerSliceStatus.UNAVAILABLE] * 5),
    ]
    assert len(partner.calls) == 2
    assert client.breaker.state is BreakerState.OPEN
    assert client.embedding("after", VERSION, _key(1), WIDTH).status is (
        PartnerSliceStatus.UNAVAILABLE
    )
    assert len(partner.calls) == 2


def test_a_lookup_over_the_partners_unknown_key_limit_is_an_unknown_applicant_not_a_failure(
    channel: grpc.Channel, partner: CountingPartner
) -> None:
    client = _client(channel, min_calls=1)

    def over_limit(request: embedding_pb2.GetEmbeddingsRequest) -> Any:
        answers = [_answer(lookup) for lookup in request.lookups]
        for answer in answers:
            del answer.embedding[:]
            answer.status = embedding_pb2.LOOKUP_STATUS_OVER_LIMIT
        return embedding_pb2.GetEmbeddingsResponse(lookups=answers)

    partner.many = over_limit

    def lookup(n: int) -> Callable[[], PartnerSlice]:
        return lambda: client.embedding(f"req-{n}", VERSION, _key(n), WIDTH)

    slices = _behind_a_held_call(partner, lookup(100), [lookup(n) for n in range(3)])

    assert [s.status for s in slices[1:]] == [PartnerSliceStatus.UNKNOWN_APPLICANT] * 3
    assert client.breaker.state is BreakerState.CLOSED


def test_an_open_breaker_answers_unavailable_at_once_without_queueing(
    channel: grpc.Channel, partner: CountingPartner
) -> None:
    client = _client(channel, min_calls=1, cool_down_s=60.0)
    client.breaker.failed()

    got = client.embedding("req-1", VERSION, _key(1), WIDTH)

    assert got.status is PartnerSliceStatus.UNAVAILABLE
    assert partner.calls == []


def _out_of_order(request: embedding_pb2.GetEmbeddingsRequest) -> Any:
    return embedding_pb2.GetEmbeddingsResponse(
        lookups=[_answer(lookup) for lookup in reversed(request.lookups)]
    )


def _one_short(request: embedding_pb2.GetEmbeddingsRequest) -> Any:
    return embedding_pb2.GetEmbeddingsResponse(
        lookups=[_answer(lookup) for lookup in request.lookups[1:]]
    )


@pytest.mark.parametrize("many", [_out_of_order, _one_short])
def test_answers_that_are_not_to_the_lookups_asked_in_order_are_never_used(
    channel: grpc.Channel, partner: CountingPartner, many: Any
) -> None:
    client = _client(channel)
    partner.many = many

    def lookup(n: int) -> Callable[[], PartnerSlice]:
        return lambda: client.embedding(f"req-{n}", VERSION, _key(n), WIDTH)

    slices = _behind_a_held_call(partner, lookup(100), [lookup(n) for n in range(4)])

    assert [s.status for s in slices[1:]] == [PartnerSliceStatus.UNAVAILABLE] * 4
    assert [s.embedding for s in slices[1:]] == [None] * 4


# --- Against the real partner node ----------------------------------------------------------


def test_concurrent_lookups_at_the_partner_node_get_each_their_own_embedding_or_unknown(
    throwaway_pki: ThrowAwayPki,
    partner_node: PartnerNode,
    sites: TrainingSites,
    version_id: str,
    people: Applicants,
) -> None:
    index = JoinKeyIndex.read(sites.bank_data)
    keys = [index.join_key(identifier) for identifier in people.aligned[:24]]
    assert all(key is not None for key in keys)
    aligned: list[bytes] = [key for key in keys if key is not None]
    unknown = [bytes([0xEE] * 15 + [n]) for n in range(3)]
    asked = aligned + unknown
    gateway_urn = "urn:cobrand:bank:gateway:gateway"
    denials = partner_node.probes.denials(gateway_urn)
    with create_channel(f"127.0.0.1:{partner_node.port}", throwaway_pki.tls("gateway")) as ch:
        client = _client(ch)
        expected = [
            client.embedding(f"one-{n}", version_id, k, PARTNER_WIDTH) for n, k in enumerate(asked)
        ]
        with ThreadPoolExecutor(16) as pool:
            together = list(
                pool.map(
                    lambda n: client.embedding(f"many-{n}", version_id, asked[n], PARTNER_WIDTH),
                    range(len(asked)),
                )
            )

    statuses = [s.status for s in together]
    assert statuses == [PartnerSliceStatus.USED] * len(aligned) + [
        PartnerSliceStatus.UNKNOWN_APPLICANT
    ] * len(unknown)
    for got, alone in zip(together, expected, strict=True):
        assert got.status is alone.status
        if got.embedding is not None:
            assert alone.embedding is not None
            assert got.embedding.tolist() == alone.embedding.tolist()
    assert partner_node.probes.denials(gateway_urn) == denials
