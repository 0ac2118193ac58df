"""Hostile input to the partner node's lookup services (PartnerEmbeddingService and
ConsentedLookup) over mutual TLS on loopback, from the gateway's certificate: every call ends
with a clear status naming the field it refuses, never a crash, a stack trace or a hung call,
and the node serves good lookups afterwards. Random bytes as a request, to every method of the
node, and a message over its size limit are refused too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cobrand import oprf
from cobrand.psi import JOIN_KEY_BYTES
from cobrand.tensor_wire import EXCHANGE_METHOD
from cobrand.v1 import (
    consented_lookup_pb2,
    consented_lookup_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
)
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.robustness.conftest import Figures
from tests.robustness.hostile import (
    CALL_TIMEOUT_S,
    VERSION_LIKE,
    Tally,
    binary,
    fuzz,
    hostile_channel,
    mutated,
    raw_bytes,
    send_raw,
    texts,
)

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

Code = grpc.StatusCode
FUZZ: Final = fuzz(60)
_LOOKUP_CODES: Final = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def gateway_channel(
    throwaway_pki: ThrowAwayPki, partner_node: PartnerNode
) -> Iterator[grpc.Channel]:
    with hostile_channel(partner_node.port, throwaway_pki.tls("gateway")) as channel:
        yield channel


@pytest.fixture(scope="module")
def embeddings(gateway_channel: grpc.Channel) -> Any:
    return embedding_pb2_grpc.PartnerEmbeddingServiceStub(gateway_channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def consented(gateway_channel: grpc.Channel) -> Any:
    return consented_lookup_pb2_grpc.ConsentedLookupStub(gateway_channel)  # type: ignore[no-untyped-call]


def _get(stub: Any, request_id: str, version: str, key: bytes) -> Any:
    request = embedding_pb2.GetEmbeddingRequest(
        request_id=request_id, model_version=version, join_key=key
    )
    return stub.GetEmbedding(request, timeout=CALL_TIMEOUT_S)


# --- PartnerEmbeddingService ----------------------------------------------------------------


def test_get_embedding_answers_hostile_fields_with_a_clear_status(
    embeddings: Any, version_id: str, aligned_key: bytes, figures: Figures
) -> None:
    tally = Tally(
        "PartnerEmbeddingService.GetEmbedding", ("request_id", "model_version", "join_key")
    )
    requests = mutated(
        {
            "request_id": st.uuids().map(str),
            "model_version": st.just(version_id),
            "join_key": st.just(aligned_key) | st.binary(min_size=16, max_size=16),
        },
        {
            "request_id": texts(),
            "model_version": VERSION_LIKE | texts(),
            "join_key": binary(JOIN_KEY_BYTES),
        },
    )

    @fuzz(120)
    @given(request=requests)
    def call(request: tuple[frozenset[str], dict[str, Any]]) -> None:
        hostile, fields = request
        message = embedding_pb2.GetEmbeddingRequest(**fields)
        tally.check(
            lambda: embeddings.GetEmbedding(message, timeout=CALL_TIMEOUT_S),
            _LOOKUP_CODES,
            hostile,
        )

    call()
    reply = _get(embeddings, "after-fuzz", version_id, aligned_key)
    assert reply.status == embedding_pb2.LOOKUP_STATUS_FOUND
    figures.add(tally.figure())


def test_get_embeddings_answers_hostile_lookups_with_a_clear_status(
    embeddings: Any, version_id: str, aligned_key: bytes, figures: Figures
) -> None:
    tally = Tally(
        "PartnerEmbeddingService.GetEmbeddings",
        ("lookups", "request_id", "model_version", "join_key"),
    )
    lookups = mutated(
        {
            "request_id": st.uuids().map(str),
            "model_version": st.just(version_id),
            "join_key": st.just(aligned_key) | st.binary(min_size=16, max_size=16),
        },
        {
            "request_id": texts(),
            "model_version": VERSION_LIKE | texts(),
            "join_key": binary(JOIN_KEY_BYTES),
        },
    )
    # Up to past the cap of 256 lookups, in lists of a few or of many copies of one.
    drawn_lookups = st.lists(lookups, max_size=4) | st.tuples(
        lookups, st.sampled_from((255, 256, 257, 1_000))
    ).map(lambda many: [many[0]] * many[1])

    @FUZZ
    @given(drawn=drawn_lookups)
    def call(drawn: list[tuple[frozenset[str], dict[str, Any]]]) -> None:
        message = embedding_pb2.GetEmbeddingsRequest(
            lookups=[embedding_pb2.GetEmbeddingRequest(**fields) for _, fields in drawn]
        )
        too_many = {"lookups"} if not drawn or len(drawn) > 256 else set()
        tally.check(
            lambda: embeddings.GetEmbeddings(message, timeout=CALL_TIMEOUT_S),
            _LOOKUP_CODES,
            frozenset().union(too_many, *(hostile for hostile, _ in drawn)),
        )

    call()
    good = embedding_pb2.GetEmbeddingsRequest(
        lookups=[
            embedding_pb2.GetEmbeddingRequest(
                request_id="after-fuzz", model_version=version_id, join_key=aligned_key
            )
        ]
    )
    (reply,) = embeddings.GetEmbeddings(good, timeout=CALL_TIMEOUT_S).lookups
    assert reply.status == embedding_pb2.LOOKUP_STATUS_FOUND
    figures.add(tally.figure())


def test_stream_embeddings_answers_hostile_batches_with_a_clear_status(
    embeddings: Any, version_id: str, aligned_key: bytes, figures: Figures
) -> None:
    tally = Tally(
        "PartnerEmbeddingService.StreamEmbeddings", ("batch_id", "model_version", "join_keys")
    )
    batches = mutated(
        {
            "batch_id": st.uuids().map(str),
            "model_version": st.just(version_id),
            "join_keys": st.just(aligned_key) | st.binary(min_size=32, max_size=32),
        },
        {
            "batch_id": texts(),
            "model_version": VERSION_LIKE | texts(),
            "join_keys": binary(JOIN_KEY_BYTES, 3 * JOIN_KEY_BYTES),
        },
    )

    @FUZZ
    @given(drawn=st.lists(batches, max_size=3))
    def call(drawn: list[tuple[frozenset[str], dict[str, Any]]]) -> None:
        requests = [embedding_pb2.EmbeddingBatchRequest(**fields) for _, fields in drawn]
        tally.check(
            lambda: list(embeddings.StreamEmbeddings(iter(requests), timeout=CALL_TIMEOUT_S)),
            _LOOKUP_CODES,
            frozenset().union(*(hostile for hostile, _ in drawn)),
        )

    call()
    good = embedding_pb2.EmbeddingBatchRequest(
        batch_id="after-fuzz", model_version=version_id, join_keys=aligned_key
    )
    (reply,) = embeddings.StreamEmbeddings(iter([good]), timeout=CALL_TIMEOUT_S)
    assert list(reply.found) == [True]
    figures.add(tally.figure())


def test_describe_version_answers_hostile_versions_with_a_clear_status(
    embeddings: Any, version_id: str, figures: Figures
) -> None:
    tally = Tally("PartnerEmbeddingService.DescribeVersion", ("model_version",))

    @FUZZ
    @given(version=VERSION_LIKE | texts())
    def call(version: str) -> None:
        request = embedding_pb2.DescribeVersionRequest(model_version=version)
        tally.check(
            lambda: embeddings.DescribeVersion(request, timeout=CALL_TIMEOUT_S),
            {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND},
        )

    call()
    request = embedding_pb2.DescribeVersionRequest(model_version=version_id)
    assert embeddings.DescribeVersion(request, timeout=CALL_TIMEOUT_S).model_version == version_id
    figures.add(tally.figure())


# --- ConsentedLookup -----------------------------------------------------------------------


def test_blind_evaluate_answers_hostile_fields_with_a_clear_status(
    consented: Any, figures: Figures
) -> None:
    tally = Tally(
        "ConsentedLookup.BlindEvaluate", ("request_id", "consent_reference", "blinded_element")
    )
    requests = mutated(
        {
            "request_id": st.uuids().map(str),
            "consent_reference": st.just("APP-fuzz-1"),
            "blinded_element": st.binary(min_size=1, max_size=40).map(oprf.hash_to_group),
        },
        {
            "request_id": texts(),
            "consent_reference": texts(),
            # Most random 32 bytes are no canonical encoding of a ristretto255 element.
            "blinded_element": binary(oprf.ELEMENT_BYTES),
        },
    )

    @FUZZ
    @given(request=requests)
    def call(request: tuple[frozenset[str], dict[str, Any]]) -> None:
        hostile, fields = request
        message = consented_lookup_pb2.BlindEvaluateRequest(**fields)
        tally.check(
            lambda: consented.BlindEvaluate(message, timeout=CALL_TIMEOUT_S),
            {Code.OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED},
            hostile,
        )

    call()
    figures.add(tally.figure())


def test_get_consented_embedding_answers_hostile_fields_with_a_clear_status(
    consented: Any, version_id: str, figures: Figures
) -> None:
    fields = ("request_id", "consent_reference", "model_version", "oprf_output")
    tally = Tally("ConsentedLookup.GetConsentedEmbedding", fields)
    requests = mutated(
        {
            "request_id": st.uuids().map(str),
            "consent_reference": st.just("APP-fuzz-1"),
            "model_version": st.just(version_id),
            "oprf_output": st.binary(min_size=oprf.OUTPUT_BYTES, max_size=oprf.OUTPUT_BYTES),
        },
        {
            "request_id": texts(),
            "consent_reference": texts(),
            "model_version": VERSION_LIKE | texts(),
            "oprf_output": binary(oprf.OUTPUT_BYTES),
        },
    )

    @FUZZ
    @given(request=requests)
    def call(request: tuple[frozenset[str], dict[str, Any]]) -> None:
        hostile, values = request
        message = consented_lookup_pb2.GetConsentedEmbeddingRequest(**values)
        tally.check(
            lambda: consented.GetConsentedEmbedding(message, timeout=CALL_TIMEOUT_S),
            _LOOKUP_CODES,
            hostile,
        )

    call()
    good = consented_lookup_pb2.GetConsentedEmbeddingRequest(
        request_id="after-fuzz",
        consent_reference="APP-fuzz-1",
        model_version=version_id,
        oprf_output=bytes(oprf.OUTPUT_BYTES),
    )
    reply = consented.GetConsentedEmbedding(good, timeout=CALL_TIMEOUT_S)
    assert reply.status == embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY
    figures.add(tally.figure())


# --- Undecodable requests and oversized messages --------------------------------------------

_METHODS: Final = (
    ("/cobrand.v1.PartnerEmbeddingService/GetEmbedding", "gateway", False),
    ("/cobrand.v1.PartnerEmbeddingService/GetEmbeddings", "gateway", False),
    ("/cobrand.v1.PartnerEmbeddingService/StreamEmbeddings", "gateway", True),
    ("/cobrand.v1.PartnerEmbeddingService/DescribeVersion", "gateway", False),
    ("/cobrand.v1.ConsentedLookup/BlindEvaluate", "gateway", False),
    ("/cobrand.v1.ConsentedLookup/GetConsentedEmbedding", "gateway", False),
    ("/cobrand.v1.PartnerRounds/GetStatus", "partner", False),
    ("/cobrand.v1.PartnerRounds/PlanRound", "partner", False),
    ("/cobrand.v1.PartnerRounds/PublishModel", "partner", False),
    (EXCHANGE_METHOD, "bank-trainer", True),
)


def test_random_bytes_as_a_request_are_refused_and_the_node_serves_on(
    throwaway_pki: ThrowAwayPki,
    partner_node: PartnerNode,
    embeddings: Any,
    version_id: str,
    aligned_key: bytes,
    figures: Figures,
) -> None:
    channels = {
        holder: hostile_channel(partner_node.port, throwaway_pki.tls(holder))
        for holder in ("gateway", "partner", "bank-trainer")
    }
    # Some random bytes are a valid message (unknown fields are kept, not refused): then the
    # fields they happen to hold are checked like any other.
    fields = (
        *("request", "model_version", "run_id", "request_id", "batch_id", "join_key", "lookups"),
        *("open", "step", "kind", "round", "learning_rate", "version_id", "sha256"),
        *("consent_reference", "blinded_element", "oprf_output"),
    )
    tally = Tally("partner node, random bytes as a request", fields)

    @fuzz(100)
    @given(method=st.sampled_from(_METHODS), body=raw_bytes())
    def call(method: tuple[str, str, bool], body: bytes) -> None:
        path, holder, streaming = method
        tally.check(
            lambda: send_raw(
                channels[holder], path, body, streamed_in=streaming, streamed_out=streaming
            ),
            {*_LOOKUP_CODES, Code.FAILED_PRECONDITION},
        )

    try:
        call()
        oversized = embedding_pb2.GetEmbeddingRequest(
            request_id="x" * (17 * 1024 * 1024), model_version=version_id, join_key=aligned_key
        )
        tally.check(
            lambda: embeddings.GetEmbedding(oversized, timeout=CALL_TIMEOUT_S),
            {Code.RESOURCE_EXHAUSTED},
        )
    finally:
        for channel in channels.values():
            channel.close()
    assert _get(embeddings, "after-fuzz", version_id, aligned_key).status == (
        embedding_pb2.LOOKUP_STATUS_FOUND
    )
    figures.add(tally.figure())
