"""The partner node's GetEmbeddings over mutual TLS on loopback: many lookups in one call, each
answered as GetEmbedding answers it, in order; unknown keys charged to the caller's limit one by
one; a malformed call refused naming the lookup, before any key is charged; one log line a
call, naming request ids and never a key."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cobrand.embedding_contract import MAX_LOOKUPS
from cobrand.rpc import create_channel
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from partner_node.config import EmbeddingSettings
from partner_node.probe_limit import PROBE_AUDIT_FILE
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.partner_node.embedding_sites import (
    PublishedVersion,
    aligned_customers,
    publish_version,
)
from tests.training_sites import TrainingSites, running_partner, write_training_sites

TIMEOUT = 30.0
LIMIT = 3
GATEWAY_URN = "urn:cobrand:bank:gateway:gateway"
FOUND = embedding_pb2.LOOKUP_STATUS_FOUND
UNKNOWN_KEY = embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY
OVER_LIMIT = embedding_pb2.LOOKUP_STATUS_OVER_LIMIT


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=400, seed=57)


@pytest.fixture(scope="module")
def version(sites: TrainingSites) -> PublishedVersion:
    return publish_version(sites, seed=6, width=4)


@pytest.fixture
def node(
    throwaway_pki: ThrowAwayPki, sites: TrainingSites, version: PublishedVersion
) -> Iterator[PartnerNode]:
    """A fresh node per test: full budgets of `LIMIT` unknown keys and no audit file."""
    (sites.partner_data / PROBE_AUDIT_FILE).unlink(missing_ok=True)
    limit = EmbeddingSettings(unknown_key_lookups_per_minute=LIMIT)
    with running_partner(throwaway_pki, sites, embedding=limit) as started:
        yield started


@pytest.fixture
def gateway(throwaway_pki: ThrowAwayPki, node: PartnerNode) -> Iterator[Any]:
    with create_channel(f"127.0.0.1:{node.port}", throwaway_pki.tls("gateway")) as channel:
        yield embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]


def _lookup(request_id: str, version_id: str, key: bytes) -> embedding_pb2.GetEmbeddingRequest:
    return embedding_pb2.GetEmbeddingRequest(
        request_id=request_id, model_version=version_id, join_key=key
    )


def _get_many(stub: Any, lookups: list[embedding_pb2.GetEmbeddingRequest]) -> Any:
    return stub.GetEmbeddings(embedding_pb2.GetEmbeddingsRequest(lookups=lookups), timeout=TIMEOUT)


def _refusal(stub: Any, lookups: list[embedding_pb2.GetEmbeddingRequest]) -> Any:
    with pytest.raises(grpc.RpcError) as raised:
        _get_many(stub, lookups)
    return raised.value


def test_each_lookup_is_answered_as_get_embedding_answers_it_in_request_order(
    gateway: Any, sites: TrainingSites, version: PublishedVersion
) -> None:
    keys = [key for key, _ in aligned_customers(sites, 3)]
    keys.insert(1, os.urandom(16))
    lookups = [_lookup(f"req-{i}", version.version_id, key) for i, key in enumerate(keys)]

    answers = list(_get_many(gateway, lookups).lookups)

    singles = [gateway.GetEmbedding(lookup, timeout=TIMEOUT) for lookup in lookups]
    assert [a.request_id for a in answers] == ["req-0", "req-1", "req-2", "req-3"]
    assert [a.status for a in answers] == [FOUND, UNKNOWN_KEY, FOUND, FOUND]
    assert answers == singles
    assert len(answers[0].embedding) == 4


def test_unknown_keys_are_charged_one_by_one_and_those_over_the_limit_answered_over_limit(
    gateway: Any, node: PartnerNode, sites: TrainingSites, version: PublishedVersion
) -> None:
    aligned = aligned_customers(sites, 1)[0][0]
    keys = [os.urandom(16) for _ in range(LIMIT + 2)]
    keys.insert(LIMIT, aligned)
    lookups = [_lookup(f"probe-{i}", version.version_id, key) for i, key in enumerate(keys)]

    answers = list(_get_many(gateway, lookups).lookups)

    assert [a.status for a in answers] == [
        *([UNKNOWN_KEY] * LIMIT),
        FOUND,
        OVER_LIMIT,
        OVER_LIMIT,
    ]
    assert [list(a.embedding) for a in answers[LIMIT + 1 :]] == [[], []]
    assert node.probes.denials(GATEWAY_URN) == 2
    audit = (sites.partner_data / PROBE_AUDIT_FILE).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["call"] for line in audit] == [
        f"GetEmbeddings request probe-{LIMIT + 1}",
        f"GetEmbeddings request probe-{LIMIT + 2}",
    ]
    # As single lookups: over the limit, GetEmbedding refuses the call.
    with pytest.raises(grpc.RpcError) as raised:
        gateway.GetEmbedding(_lookup("single", version.version_id, keys[0]), timeout=TIMEOUT)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def _short_key(request: embedding_pb2.GetEmbeddingRequest) -> None:
    request.join_key = request.join_key[:15]


def _bad_request_id(request: embedding_pb2.GetEmbeddingRequest) -> None:
    request.request_id = "no spaces allowed"


def _unknown_version(request: embedding_pb2.GetEmbeddingRequest) -> None:
    request.model_version = "0123456789abcdef"


@pytest.mark.parametrize(
    ("spoil", "code", "named"),
    [
        (_short_key, grpc.StatusCode.INVALID_ARGUMENT, "lookups[2]: join_key must be 16 bytes"),
        (_bad_request_id, grpc.StatusCode.INVALID_ARGUMENT, "lookups[2]: request_id must be"),
        (_unknown_version, grpc.StatusCode.NOT_FOUND, "lookups[2]: model_version 0123456789abcdef"),
    ],
)
def test_a_bad_lookup_refuses_the_call_naming_it_before_any_key_is_charged(
    gateway: Any,
    node: PartnerNode,
    version: PublishedVersion,
    spoil: Any,
    code: grpc.StatusCode,
    named: str,
) -> None:
    lookups = [_lookup(f"req-{i}", version.version_id, os.urandom(16)) for i in range(4)]
    spoil(lookups[2])

    refused = _refusal(gateway, lookups)

    assert refused.code() is code
    assert named in refused.details()
    # Nothing was charged: the whole budget is left.
    statuses = [a.status for a in _get_many(gateway, lookups[:2] + lookups[3:]).lookups]
    assert statuses == [UNKNOWN_KEY] * LIMIT


@pytest.mark.parametrize("count", [0, MAX_LOOKUPS + 1])
def test_a_call_of_no_lookups_or_of_too_many_is_refused_naming_lookups(
    gateway: Any, version: PublishedVersion, count: int
) -> None:
    lookups = [_lookup(f"req-{i}", version.version_id, bytes(16)) for i in range(count)]

    refused = _refusal(gateway, lookups)

    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details() == f"lookups: {count} lookups; from 1 to {MAX_LOOKUPS} per call"


def test_a_call_is_logged_once_by_its_request_ids_never_by_a_key(
    gateway: Any,
    sites: TrainingSites,
    version: PublishedVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = [key for key, _ in aligned_customers(sites, 2)] + [os.urandom(16)]
    lookups = [_lookup(f"req-{i}", version.version_id, key) for i, key in enumerate(keys)]

    with caplog.at_level(logging.DEBUG, logger="partner_node.embedding_service"):
        _get_many(gateway, lookups)

    lines = [r.getMessage() for r in caplog.records if r.name == "partner_node.embedding_service"]
    assert lines == [
        "[Embedding.GetMany] requests req-0,req-1,req-2: 2 found, 1 unknown keys, 0 over the limit"
    ]
    for key in keys:
        assert key.hex() not in lines[0]
