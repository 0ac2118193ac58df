"""Hostile input to the partner node's embedding, round hand-off and training data-plane services,
over mutual TLS on loopback: every call ends with a clear status naming the field it refuses,
never a crash, a stack trace or a hung call, and the node serves good requests afterwards.

Each caller holds the certificate of the role the service admits (the gateway's for
embeddings, the partner's own ClientApp's for rounds, the bank's trainer's for the data plane),
so what is fuzzed is the validation behind the allow-list, not the allow-list.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cobrand.alignment_store import AlignmentStore
from cobrand.model_manifest import ModelDigests
from cobrand.psi import JOIN_KEY_BYTES
from cobrand.rpc import create_channel
from cobrand.tensor_wire import EXCHANGE_METHOD, pack_positions
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc, rounds_pb2, rounds_pb2_grpc
from cobrand.v1 import training_pb2 as pb
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.robustness.conftest import Figures
from tests.robustness.hostile import (
    CALL_TIMEOUT_S,
    Tally,
    binary,
    enum_numbers,
    floats,
    mutated,
    raw_bytes,
    send_raw,
    texts,
    uint32s,
    uint64s,
)
from tests.training_sites import TrainingSites

Code = grpc.StatusCode
FUZZ: Final = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Above the node's 16 MiB limit, so the node's limit is what refuses an oversized message.
_CLIENT_MAX_BYTES: Final = 64 * 1024 * 1024
_RUN: Final = "fuzz-run"
_WIDTH: Final = 4


def _channel(pki: ThrowAwayPki, node: PartnerNode, holder: str) -> grpc.Channel:
    return create_channel(
        f"127.0.0.1:{node.port}", pki.tls(holder), max_message_bytes=_CLIENT_MAX_BYTES
    )


@pytest.fixture(scope="module")
def embeddings(throwaway_pki: ThrowAwayPki, partner_node: PartnerNode) -> Iterator[Any]:
    with _channel(throwaway_pki, partner_node, "gateway") as channel:
        yield embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def rounds(throwaway_pki: ThrowAwayPki, partner_node: PartnerNode) -> Iterator[Any]:
    with _channel(throwaway_pki, partner_node, "partner") as channel:
        yield rounds_pb2_grpc.PartnerRoundsStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def trainer_channel(
    throwaway_pki: ThrowAwayPki, partner_node: PartnerNode
) -> Iterator[grpc.Channel]:
    with _channel(throwaway_pki, partner_node, "bank-trainer") as channel:
        yield channel


@pytest.fixture(scope="module")
def aligned_key(sites: TrainingSites) -> bytes:
    with AlignmentStore(sites.partner_data) as store:
        keys, _ = next(store.members())
    return bytes(keys[0].tobytes())


_HEX16: Final = st.text("0123456789abcdef", min_size=16, max_size=16)
_DIGEST: Final = st.binary(min_size=32, max_size=32)
_EMBEDDING_CODES: Final = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED,
}


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
            "model_version": _HEX16 | texts(),
            "join_key": binary(JOIN_KEY_BYTES),
        },
    )

    @settings(FUZZ, max_examples=120)
    @given(request=requests)
    def call(request: tuple[frozenset[str], dict[str, Any]]) -> None:
        hostile, fields = request
        message = embedding_pb2.GetEmbeddingRequest(**fields)
        tally.check(
            lambda: embeddings.GetEmbedding(message, timeout=CALL_TIMEOUT_S),
            _EMBEDDING_CODES,
            hostile,
        )

    call()
    reply = _get(embeddings, "after-fuzz", version_id, aligned_key)
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
            "model_version": _HEX16 | texts(),
            "join_keys": binary(JOIN_KEY_BYTES, 3 * JOIN_KEY_BYTES),
        },
    )

    @FUZZ
    @given(drawn=st.lists(batches, max_size=3))
    def call(drawn: list[tuple[frozenset[str], dict[str, Any]]]) -> None:
        requests = [embedding_pb2.EmbeddingBatchRequest(**fields) for _, fields in drawn]
        tally.check(
            lambda: list(embeddings.StreamEmbeddings(iter(requests), timeout=CALL_TIMEOUT_S)),
            _EMBEDDING_CODES,
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
    @given(version=_HEX16 | texts())
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


# --- PartnerRounds --------------------------------------------------------------------------


def test_get_status_answers_hostile_run_ids_with_a_clear_status(
    rounds: Any, figures: Figures
) -> None:
    tally = Tally("PartnerRounds.GetStatus", ("run_id",))

    @FUZZ
    @given(run_id=texts())
    def call(run_id: str) -> None:
        request = rounds_pb2.GetStatusRequest(run_id=run_id)
        tally.check(
            lambda: rounds.GetStatus(request, timeout=CALL_TIMEOUT_S),
            {Code.OK, Code.INVALID_ARGUMENT},
        )

    call()
    status = rounds.GetStatus(rounds_pb2.GetStatusRequest(run_id=_RUN), timeout=CALL_TIMEOUT_S)
    assert status.alignment.intersection_size > 0
    figures.add(tally.figure())


_PLAN_FIELDS: Final = (
    "run_id",
    "round",
    "seed",
    "learning_rate",
    "epochs",
    "previous_sha256",
    "best_round",
)


def test_plan_round_answers_hostile_plans_with_a_clear_status(
    rounds: Any, figures: Figures
) -> None:
    plans = mutated(
        {
            "run_id": st.just("fuzz-plan"),
            "round": st.just(1),
            "seed": st.just(5),
            "learning_rate": st.just(0.01),
            "epochs": st.just(1),
            "previous_sha256": st.just(b""),
            "best_round": st.just(0),
        },
        {
            "run_id": texts(),
            "round": uint32s(),
            "seed": uint64s(),
            "learning_rate": floats(),
            "epochs": uint32s(),
            "previous_sha256": binary(32),
            "best_round": uint32s(),
        },
    )
    tally = Tally("PartnerRounds.PlanRound", _PLAN_FIELDS)

    @FUZZ
    @given(plan=plans)
    def call(plan: tuple[frozenset[str], dict[str, Any]]) -> None:
        hostile, fields = plan
        message = rounds_pb2.PlanRoundRequest(**fields)
        tally.check(
            lambda: rounds.PlanRound(message, timeout=CALL_TIMEOUT_S),
            {Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION},
            hostile,
        )

    call()
    good = rounds_pb2.PlanRoundRequest(
        run_id="after-fuzz", round=1, seed=5, learning_rate=0.01, epochs=1
    )
    assert rounds.PlanRound(good, timeout=CALL_TIMEOUT_S).run.planned_round == 1
    figures.add(tally.figure())


def _version_of(fields: dict[str, Any]) -> str:
    """The drawn version id, or (when drawn valid) the id of the drawn digests."""
    if fields["version_id"] is not None:
        return str(fields["version_id"])
    named = ("bank_weights", "partner_weights", "partner_preprocessor")
    digests = [fields[f"{name}_sha256"] for name in named]
    if any(len(digest) != 32 for digest in digests):
        return "0" * 16
    return ModelDigests(
        **{f"{name}_sha256": digest.hex() for name, digest in zip(named, digests, strict=True)}
    ).version_id


def test_publish_model_answers_hostile_publications_with_a_clear_status(
    rounds: Any, figures: Figures
) -> None:
    digests = (
        "bank_weights_sha256",
        "partner_weights_sha256",
        "partner_preprocessor_sha256",
        "bank_manifest_sha256",
    )
    publications = mutated(
        {
            "run_id": st.just("fuzz-plan"),
            "round": st.just(0),
            "version_id": st.none(),  # the digests' own id, see _version_of
            **{name: _DIGEST for name in digests},
        },
        {
            "run_id": texts(),
            "round": uint32s(),
            "version_id": texts(),
            **{name: binary(32) for name in digests},
        },
    )
    tally = Tally("PartnerRounds.PublishModel", ("run_id", "round", "version_id", *digests))

    @FUZZ
    @given(publication=publications)
    def call(publication: tuple[frozenset[str], dict[str, Any]]) -> None:
        hostile, fields = publication
        message = rounds_pb2.PublishModelRequest(**{**fields, "version_id": _version_of(fields)})
        # Random digests never name weights the partner holds: nothing is ever published.
        tally.check(
            lambda: rounds.PublishModel(message, timeout=CALL_TIMEOUT_S),
            {Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION},
            hostile,
        )

    call()
    status = rounds.GetStatus(rounds_pb2.GetStatusRequest(run_id=_RUN), timeout=CALL_TIMEOUT_S)
    assert status.embedding_width > 0
    figures.add(tally.figure())


# --- TrainingDataPlane ----------------------------------------------------------------------


def _exchange(channel: grpc.Channel, requests: list[pb.ExchangeRequest]) -> list[Any]:
    stub = channel.stream_stream(
        EXCHANGE_METHOD,
        request_serializer=pb.ExchangeRequest.SerializeToString,
        response_deserializer=pb.ExchangeResponse.FromString,
    )
    return list(stub(iter(requests), timeout=CALL_TIMEOUT_S))


def _steps() -> st.SearchStrategy[pb.ExchangeRequest]:
    gradient = st.builds(
        pb.EmbeddingGradient,
        step=st.one_of(st.just(0), uint64s()),
        embedding_width=st.one_of(st.just(_WIDTH), uint32s()),
        gradient=st.one_of(
            binary(_WIDTH * 4, 2 * _WIDTH * 4),
            st.sampled_from([np.nan, np.inf, 1e38]).map(
                lambda v: np.full((2, _WIDTH), v, dtype=np.float32).tobytes()
            ),
        ),
    )
    batch = st.builds(
        pb.PositionBatch,
        step=st.one_of(st.just(0), uint64s()),
        positions=st.one_of(binary(4, 8), st.just(pack_positions(np.array([0, 1])))),
    )
    return st.builds(
        lambda g, b: pb.ExchangeRequest(step=pb.PassStep(gradient=g, batch=b)),
        st.none() | gradient,
        st.none() | batch,
    )


def _opening() -> st.SearchStrategy[pb.ExchangeRequest]:
    return st.builds(
        lambda run_id, number, kind: pb.ExchangeRequest(
            open=pb.PassOpen(run_id=run_id, round=number, kind=kind)
        ),
        st.one_of(st.just(_RUN), texts()),
        st.one_of(st.sampled_from([0, 1]), uint32s()),
        enum_numbers([pb.PASS_KIND_TRAIN, pb.PASS_KIND_EMBED]),
    )


def test_the_data_plane_answers_hostile_passes_with_a_clear_status(
    rounds: Any, trainer_channel: grpc.Channel, figures: Figures
) -> None:
    plan = rounds_pb2.PlanRoundRequest(run_id=_RUN, round=1, seed=5, learning_rate=0.01, epochs=1)
    rounds.PlanRound(plan, timeout=CALL_TIMEOUT_S)
    named = ("open", "step", "kind", "gradient", "batch", "positions", "width", "run", "round")
    tally = Tally("TrainingDataPlane.Exchange", named)

    @FUZZ
    @given(
        first=st.one_of(_opening(), _steps()),
        rest=st.lists(st.one_of(_steps(), _opening()), max_size=3),
    )
    def call(first: pb.ExchangeRequest, rest: list[pb.ExchangeRequest]) -> None:
        tally.check(
            lambda: _exchange(trainer_channel, [first, *rest]),
            {Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION},
        )

    call()
    rounds.PlanRound(plan, timeout=CALL_TIMEOUT_S)
    embed = pb.ExchangeRequest(open=pb.PassOpen(run_id=_RUN, round=0, kind=pb.PASS_KIND_EMBED))
    step = pb.ExchangeRequest(
        step=pb.PassStep(batch=pb.PositionBatch(step=0, positions=pack_positions(np.arange(3))))
    )
    replies = _exchange(trainer_channel, [embed, step])
    assert [r.WhichOneof("body") for r in replies] == ["embeddings", "summary"]
    figures.add(tally.figure())


# --- Undecodable requests and oversized messages --------------------------------------------

_METHODS: Final = (
    ("/cobrand.v1.PartnerEmbeddingService/GetEmbedding", "gateway", False),
    ("/cobrand.v1.PartnerEmbeddingService/StreamEmbeddings", "gateway", True),
    ("/cobrand.v1.PartnerEmbeddingService/DescribeVersion", "gateway", False),
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
        holder: _channel(throwaway_pki, partner_node, holder)
        for holder in ("gateway", "partner", "bank-trainer")
    }
    # Some random bytes are a valid message (unknown fields are kept, not refused): then the
    # fields they happen to hold are checked like any other.
    fields = (
        *("request", "model_version", "run_id", "request_id", "batch_id", "join_key"),
        *("open", "step", "kind", "round", "learning_rate", "version_id", "sha256"),
    )
    tally = Tally("partner node, random bytes as a request", fields)

    @settings(FUZZ, max_examples=100)
    @given(method=st.sampled_from(_METHODS), body=raw_bytes())
    def call(method: tuple[str, str, bool], body: bytes) -> None:
        path, holder, streaming = method
        tally.check(
            lambda: send_raw(
                channels[holder], path, body, streamed_in=streaming, streamed_out=streaming
            ),
            {*_EMBEDDING_CODES, Code.FAILED_PRECONDITION},
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
