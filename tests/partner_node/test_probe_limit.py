"""The per-caller limit on lookups of keys outside the alignment: over the real partner node on
mutual TLS on loopback (refusal, audit, separate budgets, aligned keys never slowed, a refused
stream batch), and the token bucket itself on a clock the tests drive."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from cobrand import pki
from cobrand.errors import ResourceExhausted
from cobrand.rpc import REASON_METADATA_KEY, TlsFiles, create_channel
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from partner_node.config import EmbeddingSettings
from partner_node.probe_limit import PROBE_AUDIT_FILE, ProbeLimiter
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.partner_node.embedding_sites import (
    PublishedVersion,
    aligned_customers,
    publish_version,
)
from tests.training_sites import TrainingSites, running_partner, write_training_sites

TIMEOUT = 30.0
LIMIT = 5
GATEWAY_URN = "urn:cobrand:bank:gateway:gateway"


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=600, seed=33)


@pytest.fixture(scope="module")
def version(sites: TrainingSites) -> PublishedVersion:
    return publish_version(sites, seed=5, width=4)


@pytest.fixture
def node(
    throwaway_pki: ThrowAwayPki, sites: TrainingSites, version: PublishedVersion
) -> Iterator[PartnerNode]:
    """A fresh node per test, so every test starts with full budgets and an empty audit file."""
    (sites.partner_data / PROBE_AUDIT_FILE).unlink(missing_ok=True)
    limit = EmbeddingSettings(unknown_key_lookups_per_minute=LIMIT)
    with running_partner(throwaway_pki, sites, embedding=limit) as started:
        yield started


@pytest.fixture(scope="module")
def second_gateway(throwaway_pki: ThrowAwayPki) -> TlsFiles:
    """Another certificate of role ``gateway`` (name ``gateway-b``) from the bank's CA."""
    bank_ca = throwaway_pki.ca_dir("bank")
    issued = pki.issue(bank_ca, pki.Role.GATEWAY, "gateway-b", days=30, out_dir=bank_ca / "b")
    return TlsFiles(ca_bundle=bank_ca / "trust.pem", cert=issued.cert, key=issued.key)


@contextmanager
def _stub(node: PartnerNode, tls: TlsFiles) -> Iterator[Any]:
    with create_channel(f"127.0.0.1:{node.port}", tls) as channel:
        yield embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]


def _get(stub: Any, version: PublishedVersion, key: bytes, request_id: str = "req") -> Any:
    return stub.GetEmbedding(
        embedding_pb2.GetEmbeddingRequest(
            request_id=request_id, model_version=version.version_id, join_key=key
        ),
        timeout=TIMEOUT,
    )


def _batch(batch_id: str, version: PublishedVersion, keys: list[bytes]) -> Any:
    return embedding_pb2.EmbeddingBatchRequest(
        batch_id=batch_id, model_version=version.version_id, join_keys=b"".join(keys)
    )


def _spend_the_budget(stub: Any, version: PublishedVersion) -> list[Any]:
    return [_get(stub, version, os.urandom(16), f"probe-{i}") for i in range(LIMIT)]


def _refusal(call: Any) -> Any:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def test_unknown_key_lookups_over_the_limit_are_resource_exhausted_logged_and_audited(
    throwaway_pki: ThrowAwayPki,
    node: PartnerNode,
    sites: TrainingSites,
    version: PublishedVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _stub(node, throwaway_pki.tls("gateway")) as gateway:
        within = _spend_the_budget(gateway, version)
        with caplog.at_level(logging.WARNING, logger="partner_node"):
            refused = _refusal(lambda: _get(gateway, version, os.urandom(16), "probe-over"))

    assert [r.status for r in within] == [embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY] * LIMIT
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.details() == f"unknown-key lookups over {LIMIT} per minute for {GATEWAY_URN}"
    assert (REASON_METADATA_KEY, "RESOURCE_EXHAUSTED") in refused.trailing_metadata()
    assert node.probes.denials(GATEWAY_URN) == 1
    assert node.probes.total_denials() == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "partner_node.probe_limit"]
    assert warnings == [
        f"[ProbeLimit] GetEmbedding request probe-over refused to {GATEWAY_URN}: "
        f"1 unknown keys over {LIMIT} per minute (refusal 1)"
    ]
    lines = (sites.partner_data / PROBE_AUDIT_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert {k: v for k, v in record.items() if k != "at"} == {
        "caller": GATEWAY_URN,
        "call": "GetEmbedding request probe-over",
        "unknown_keys": 1,
        "per_minute": LIMIT,
        "caller_refusals": 1,
    }


def test_another_certificate_has_a_budget_of_its_own(
    throwaway_pki: ThrowAwayPki,
    node: PartnerNode,
    version: PublishedVersion,
    second_gateway: TlsFiles,
) -> None:
    with _stub(node, throwaway_pki.tls("gateway")) as gateway:
        _spend_the_budget(gateway, version)
        refused = _refusal(lambda: _get(gateway, version, os.urandom(16)))
    with _stub(node, second_gateway) as other:
        answered = _spend_the_budget(other, version)
        other_refused = _refusal(lambda: _get(other, version, os.urandom(16)))

    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [r.status for r in answered] == [embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY] * LIMIT
    assert other_refused.details() == (
        f"unknown-key lookups over {LIMIT} per minute for urn:cobrand:bank:gateway:gateway-b"
    )
    assert node.probes.denials(GATEWAY_URN) == 1
    assert node.probes.denials("urn:cobrand:bank:gateway:gateway-b") == 1


def test_aligned_keys_are_answered_in_full_after_the_budget_is_spent(
    throwaway_pki: ThrowAwayPki, node: PartnerNode, sites: TrainingSites, version: PublishedVersion
) -> None:
    customers = aligned_customers(sites, 200)
    keys = [key for key, _ in customers]
    # 10,000 aligned keys (the aligned customers over and over) in five batches of 2,000.
    bulk = [keys[i % len(keys)] for i in range(10_000)]
    batches = [_batch(f"bulk-{b}", version, bulk[b * 2000 : (b + 1) * 2000]) for b in range(5)]

    with _stub(node, throwaway_pki.tls("gateway")) as gateway:
        _spend_the_budget(gateway, version)
        _refusal(lambda: _get(gateway, version, os.urandom(16)))
        single = [_get(gateway, version, key, f"aligned-{i}") for i, key in enumerate(keys[:20])]
        replies = list(gateway.StreamEmbeddings(iter(batches), timeout=TIMEOUT))

    assert [r.status for r in single] == [embedding_pb2.LOOKUP_STATUS_FOUND] * 20
    assert [r.batch_id for r in replies] == [f"bulk-{b}" for b in range(5)]
    assert all(all(r.found) and len(r.found) == 2000 for r in replies)
    expected = version.expected([canonical for _, canonical in customers])
    first = np.frombuffer(replies[0].embeddings, dtype="<f4").reshape(-1, 4)
    np.testing.assert_allclose(first[:200], expected, rtol=1e-5, atol=1e-6)
    assert node.probes.denials(GATEWAY_URN) == 1


def test_a_batch_with_more_unknown_keys_than_tokens_left_is_refused_and_ends_the_stream(
    throwaway_pki: ThrowAwayPki, node: PartnerNode, sites: TrainingSites, version: PublishedVersion
) -> None:
    key = aligned_customers(sites, 1)[0][0]
    strangers = [os.urandom(16) for _ in range(LIMIT + 1)]
    batches = [
        _batch("fits", version, [key, *strangers[:2]]),
        _batch("over", version, [key, *strangers[2:]]),
        _batch("after", version, [key]),
    ]
    answered: list[Any] = []

    with _stub(node, throwaway_pki.tls("gateway")) as gateway:
        refused = _refusal(
            lambda: answered.extend(gateway.StreamEmbeddings(iter(batches), timeout=TIMEOUT))
        )
        again = list(gateway.StreamEmbeddings(iter([_batch("again", version, [key])])))
        left = [_get(gateway, version, stranger) for stranger in strangers[2:5]]

    assert [r.batch_id for r in answered] == ["fits"]
    assert list(answered[0].found) == [True, False, False]
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.details() == f"unknown-key lookups over {LIMIT} per minute for {GATEWAY_URN}"
    assert [list(r.found) for r in again] == [[True]]
    # The refused batch took no tokens: the three left still answer.
    assert [r.status for r in left] == [embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY] * 3
    assert node.probes.denials(GATEWAY_URN) == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(limiter: ProbeLimiter, caller: str, unknown: int = 1) -> bool:
    try:
        limiter.charge(caller, unknown, "GetEmbedding request r")
    except ResourceExhausted:
        return True
    return False


def test_tokens_refill_evenly_over_the_minute_up_to_the_limit(tmp_path: Path) -> None:
    clock = _Clock()
    limiter = ProbeLimiter(60, tmp_path / PROBE_AUDIT_FILE, clock)

    spent = [_refused(limiter, "c") for _ in range(60)]
    over = _refused(limiter, "c")
    clock.now += 1.0
    after_a_second = [_refused(limiter, "c") for _ in range(2)]
    clock.now += 3600.0
    after_an_hour = [_refused(limiter, "c") for _ in range(61)]

    assert spent == [False] * 60
    assert over
    assert after_a_second == [False, True]
    assert after_an_hour == [False] * 60 + [True]
    assert limiter.denials("c") == 3


def test_found_keys_never_touch_the_bucket_even_when_it_is_empty(tmp_path: Path) -> None:
    limiter = ProbeLimiter(2, tmp_path / PROBE_AUDIT_FILE, _Clock())

    assert not _refused(limiter, "c", unknown=2)
    assert [_refused(limiter, "c", unknown=0) for _ in range(1000)] == [False] * 1000
    assert _refused(limiter, "c")
    assert limiter.denials("c") == 1


def test_a_batch_larger_than_the_tokens_left_is_refused_whole_and_takes_none(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "deep" / PROBE_AUDIT_FILE
    limiter = ProbeLimiter(10, audit, _Clock())

    assert not _refused(limiter, "c", unknown=7)
    assert _refused(limiter, "c", unknown=4)
    assert not _refused(limiter, "c", unknown=3)
    assert _refused(limiter, "c", unknown=1)
    records = [json.loads(line) for line in audit.read_text(encoding="utf-8").splitlines()]
    assert [(r["unknown_keys"], r["caller_refusals"]) for r in records] == [(4, 1), (1, 2)]


def test_concurrent_callers_never_get_more_than_the_limit(tmp_path: Path) -> None:
    limiter = ProbeLimiter(50, tmp_path / PROBE_AUDIT_FILE, _Clock())
    passed: list[int] = []
    lock = threading.Lock()

    def probe() -> None:
        mine = sum(not _refused(limiter, "c") for _ in range(40))
        with lock:
            passed.append(mine)

    workers = [threading.Thread(target=probe) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert sum(passed) == 50
    assert limiter.denials("c") == 4 * 40 - 50


def test_the_default_budget_is_600_a_minute_and_zero_is_not_a_budget() -> None:
    assert EmbeddingSettings().unknown_key_lookups_per_minute == 600
    with pytest.raises(ValueError, match="unknown_key_lookups_per_minute"):
        EmbeddingSettings(unknown_key_lookups_per_minute=0)
