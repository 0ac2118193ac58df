"""The partner node's PartnerEmbeddingService over mutual TLS on loopback: a published version's
embedding of an aligned customer, by join key, for the bank's gateway alone; keys outside the
alignment answered as such; malformed requests refused naming the field."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pytest

from cobrand.model_manifest import manifest_digest
from cobrand.model_store import ModelStore
from cobrand.rpc import REASON_METADATA_KEY, create_channel
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from partner_node.embedding_service import MAX_BATCH_KEYS
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.partner_node.embedding_sites import (
    PublishedVersion,
    aligned_customers,
    publish_version,
)
from tests.training_sites import TrainingSites, running_partner, write_training_sites

TIMEOUT = 30.0
WIDTH = 5


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=600, seed=21)


@pytest.fixture(scope="module")
def version(sites: TrainingSites) -> PublishedVersion:
    return publish_version(sites, seed=4, width=WIDTH)


@pytest.fixture(scope="module")
def node(
    throwaway_pki: ThrowAwayPki, sites: TrainingSites, version: PublishedVersion
) -> Iterator[PartnerNode]:
    with running_partner(throwaway_pki, sites) as started:
        yield started


@contextmanager
def _stub(pki: ThrowAwayPki, node: PartnerNode, holder: str = "gateway") -> Iterator[Any]:
    with create_channel(f"127.0.0.1:{node.port}", pki.tls(holder)) as channel:
        yield embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def gateway(throwaway_pki: ThrowAwayPki, node: PartnerNode) -> Iterator[Any]:
    with _stub(throwaway_pki, node) as stub:
        yield stub


def _get(stub: Any, version_id: str, key: bytes, request_id: str = "req-1") -> Any:
    return stub.GetEmbedding(
        embedding_pb2.GetEmbeddingRequest(
            request_id=request_id, model_version=version_id, join_key=key
        ),
        timeout=TIMEOUT,
    )


def _refusal(call: Any, *args: Any) -> Any:
    """The error `call` ends with (a grpc.Call too: code, details, trailing metadata)."""
    with pytest.raises(grpc.RpcError) as raised:
        call(*args)
    return raised.value


def test_an_aligned_customer_gets_the_versions_bottom_output_on_its_own_encoded_row(
    gateway: Any, sites: TrainingSites, version: PublishedVersion
) -> None:
    customers = aligned_customers(sites, 8)

    replies = [
        _get(gateway, version.version_id, key, f"req-{i}") for i, (key, _) in enumerate(customers)
    ]

    expected = version.expected([canonical for _, canonical in customers])
    for i, reply in enumerate(replies):
        assert reply.request_id == f"req-{i}"
        assert reply.model_version == version.version_id
        assert reply.status == embedding_pb2.LOOKUP_STATUS_FOUND
        assert len(reply.embedding) == WIDTH
        np.testing.assert_allclose(reply.embedding, expected[i], rtol=1e-5, atol=1e-6)


def test_a_key_outside_the_alignment_is_answered_unknown_key_without_an_embedding(
    gateway: Any, version: PublishedVersion
) -> None:
    reply = _get(gateway, version.version_id, os.urandom(16))

    assert reply.status == embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY
    assert list(reply.embedding) == []
    assert reply.request_id == "req-1"


def test_an_unknown_model_version_is_not_found_naming_it(
    gateway: Any, sites: TrainingSites, version: PublishedVersion
) -> None:
    key = aligned_customers(sites, 1)[0][0]

    refused = _refusal(_get, gateway, "0123456789abcdef", key)

    assert refused.code() == grpc.StatusCode.NOT_FOUND
    assert "model_version 0123456789abcdef is not published" in refused.details()
    assert version.version_id in refused.details()
    assert (REASON_METADATA_KEY, "UNKNOWN_MODEL_VERSION") in refused.trailing_metadata()


def test_describe_version_gives_the_partners_manifest_digest_of_a_published_version(
    gateway: Any, sites: TrainingSites, version: PublishedVersion
) -> None:
    reply = gateway.DescribeVersion(
        embedding_pb2.DescribeVersionRequest(model_version=version.version_id), timeout=TIMEOUT
    )

    manifest = ModelStore(sites.partner_data / "models").manifest(version.version_id)
    assert reply.model_version == version.version_id
    assert reply.manifest_sha256 == manifest_digest(manifest)
    refused = _refusal(
        gateway.DescribeVersion,
        embedding_pb2.DescribeVersionRequest(model_version="0123456789abcdef"),
    )
    assert refused.code() == grpc.StatusCode.NOT_FOUND
    assert "model_version 0123456789abcdef" in refused.details()


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("join_key", {"join_key": b"\x01" * 15}),
        ("join_key", {"join_key": b""}),
        ("request_id", {"request_id": ""}),
        ("request_id", {"request_id": "r" * 129}),
        ("request_id", {"request_id": "line\nbreak"}),
        ("model_version", {"model_version": "v1"}),
    ],
)
def test_a_malformed_request_is_refused_naming_the_field(
    gateway: Any,
    sites: TrainingSites,
    version: PublishedVersion,
    field: str,
    change: dict[str, Any],
) -> None:
    fields: dict[str, Any] = {
        "request_id": "req-bad",
        "model_version": version.version_id,
        "join_key": aligned_customers(sites, 1)[0][0],
        **change,
    }

    refused = _refusal(gateway.GetEmbedding, embedding_pb2.GetEmbeddingRequest(**fields), TIMEOUT)

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith(field), refused.details()


@pytest.mark.parametrize("holder", ["app", "bank-trainer", "bank"])
def test_only_the_banks_gateway_may_call_the_service(
    throwaway_pki: ThrowAwayPki,
    node: PartnerNode,
    sites: TrainingSites,
    version: PublishedVersion,
    holder: str,
) -> None:
    key = aligned_customers(sites, 1)[0][0]
    with _stub(throwaway_pki, node, holder) as stub:
        single = _refusal(_get, stub, version.version_id, key)
        stream = _refusal(
            lambda: list(stub.StreamEmbeddings(iter([_batch("b", version, key)]), timeout=TIMEOUT))
        )

    for refused in (single, stream):
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"role '{holder}' may not call" in refused.details()


def _batch(batch_id: str, version: PublishedVersion, *keys: bytes) -> Any:
    return embedding_pb2.EmbeddingBatchRequest(
        batch_id=batch_id, model_version=version.version_id, join_keys=b"".join(keys)
    )


def test_streamed_batches_are_answered_in_order_with_a_found_flag_per_key(
    gateway: Any, sites: TrainingSites, version: PublishedVersion
) -> None:
    customers = aligned_customers(sites, 30)
    keys = [key for key, _ in customers]
    expected = version.expected([canonical for _, canonical in customers])
    stranger = os.urandom(16)
    batches = [
        _batch("b0", version, *keys[:10]),
        _batch("b1", version, keys[20], stranger, keys[12]),
        _batch("b2", version, *reversed(keys[10:30])),
    ]

    replies = list(gateway.StreamEmbeddings(iter(batches), timeout=TIMEOUT))

    assert [r.batch_id for r in replies] == ["b0", "b1", "b2"]
    assert all(r.model_version == version.version_id for r in replies)
    assert all(r.embedding_width == WIDTH for r in replies)
    matrices = [np.frombuffer(r.embeddings, dtype="<f4").reshape(-1, WIDTH) for r in replies]
    assert [list(r.found) for r in replies] == [[True] * 10, [True, False, True], [True] * 20]
    np.testing.assert_allclose(matrices[0], expected[:10], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(matrices[1][[0, 2]], expected[[20, 12]], rtol=1e-5, atol=1e-6)
    assert not matrices[1][1].any()
    np.testing.assert_allclose(matrices[2], expected[10:30][::-1], rtol=1e-5, atol=1e-6)


def test_an_oversized_batch_ends_the_stream_after_answering_the_batches_before_it(
    gateway: Any, sites: TrainingSites, version: PublishedVersion
) -> None:
    key = aligned_customers(sites, 1)[0][0]
    batches = [
        _batch("first", version, key),
        _batch("huge", version, *[key] * (MAX_BATCH_KEYS + 1)),
        _batch("after", version, key),
    ]
    answered: list[Any] = []

    refused = _refusal(
        lambda: answered.extend(gateway.StreamEmbeddings(iter(batches), timeout=TIMEOUT))
    )
    still_served = _get(gateway, version.version_id, key)

    assert [r.batch_id for r in answered] == ["first"]
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details() == (
        f"join_keys of batch huge: {MAX_BATCH_KEYS + 1} keys; at most {MAX_BATCH_KEYS} per batch"
    )
    assert still_served.status == embedding_pb2.LOOKUP_STATUS_FOUND


@pytest.mark.parametrize(
    ("join_keys", "message"),
    [
        (b"", "join_keys of batch b: 0 bytes is not a whole, non-zero number of 16-byte keys"),
        (b"\x01" * 17, "join_keys of batch b: 17 bytes is not a whole"),
    ],
)
def test_a_batch_of_malformed_keys_is_refused_naming_the_field(
    gateway: Any, version: PublishedVersion, join_keys: bytes, message: str
) -> None:
    request = embedding_pb2.EmbeddingBatchRequest(
        batch_id="b", model_version=version.version_id, join_keys=join_keys
    )

    refused = _refusal(lambda: list(gateway.StreamEmbeddings(iter([request]), timeout=TIMEOUT)))

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith(message)


def test_logs_name_a_lookup_by_request_id_and_a_hash_prefix_never_by_the_key(
    gateway: Any, sites: TrainingSites, version: PublishedVersion, caplog: pytest.LogCaptureFixture
) -> None:
    key = aligned_customers(sites, 1)[0][0]
    stranger = os.urandom(16)

    with caplog.at_level(logging.DEBUG, logger="partner_node"):
        _get(gateway, version.version_id, key, "req-logged")
        _get(gateway, version.version_id, stranger, "req-stranger")

    lines = [r.getMessage() for r in caplog.records if r.name == "partner_node.embedding_service"]
    tags = [hashlib.blake2b(raw, digest_size=4).hexdigest() for raw in (key, stranger)]
    assert lines == [
        f"[Embedding.Get] request req-logged key {tags[0]} version {version.version_id}: found",
        f"[Embedding.Get] request req-stranger key {tags[1]} version {version.version_id}: "
        "unknown key",
    ]
    for raw in (key, stranger):
        assert all(raw.hex() not in line and repr(raw) not in line for line in lines)


def test_a_newly_published_version_loads_while_the_one_in_service_keeps_answering(
    gateway: Any, sites: TrainingSites, version: PublishedVersion
) -> None:
    customers = aligned_customers(sites, 3)
    newer = publish_version(sites, seed=9, width=7)
    stop = threading.Event()
    answered: list[int] = []
    failures: list[grpc.RpcError] = []

    def serve_the_old_version() -> None:
        while not stop.is_set():
            try:
                reply = _get(gateway, version.version_id, customers[len(answered) % 3][0])
            except grpc.RpcError as failure:
                failures.append(failure)
                return
            answered.append(len(reply.embedding))

    worker = threading.Thread(target=serve_the_old_version)
    worker.start()
    try:
        replies = [_get(gateway, newer.version_id, key) for key, _ in customers]
    finally:
        stop.set()
        worker.join()

    assert failures == []
    assert answered
    assert set(answered) == {WIDTH}
    expected = newer.expected([canonical for _, canonical in customers])
    for reply, row in zip(replies, expected, strict=True):
        assert reply.model_version == newer.version_id
        np.testing.assert_allclose(reply.embedding, row, rtol=1e-5, atol=1e-6)
