"""The gateway service's parts: the partner client against a scripted partner over loopback mTLS
(slow, wrong version, wrong width, unknown key), the in-memory join-key index and the applicant
directory's refusals."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from cobrand.alignment_store import (
    JOIN_KEY_DTYPE,
    AlignmentSummary,
    intersection_digest,
    write_alignment,
)
from cobrand.errors import ConfigError, InvalidRequest, ResourceExhausted
from cobrand.pki import Party
from cobrand.rpc import create_channel, create_server
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from gateway.applicants import ApplicantDirectory, JoinKeyIndex
from gateway.audit_record import PartnerSliceStatus
from gateway.partner_breaker import BreakerState, CircuitBreaker
from gateway.partner_client import PartnerClient
from gateway.pseudonyms import PseudonymKey
from gateway.settings import BreakerSettings
from tests.conftest import ThrowAwayPki

VERSION = "0123456789abcdef"
WIDTH = 3


Reply = Callable[[embedding_pb2.GetEmbeddingRequest], embedding_pb2.GetEmbeddingResponse]


class ScriptedPartner(embedding_pb2_grpc.PartnerEmbeddingServiceServicer):
    """Answers GetEmbedding as the test says, counting calls."""

    def __init__(self) -> None:
        self.reply: Reply = _found
        self.calls = 0

    def GetEmbedding(  # noqa: N802
        self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.GetEmbeddingResponse:
        self.calls += 1
        return self.reply(request)


def _found(request: embedding_pb2.GetEmbeddingRequest) -> embedding_pb2.GetEmbeddingResponse:
    return embedding_pb2.GetEmbeddingResponse(
        request_id=request.request_id,
        model_version=request.model_version,
        status=embedding_pb2.LOOKUP_STATUS_FOUND,
        embedding=[0.5, -1.0, 2.0],
    )


@pytest.fixture(scope="module")
def scripted(throwaway_pki: ThrowAwayPki) -> Iterator[tuple[ScriptedPartner, int]]:
    partner = ScriptedPartner()
    server, port = create_server(
        lambda s: embedding_pb2_grpc.add_PartnerEmbeddingServiceServicer_to_server(partner, s),  # type: ignore[no-untyped-call]
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
    )
    server.start()
    yield partner, port
    server.stop(None).wait()


@pytest.fixture
def client(
    throwaway_pki: ThrowAwayPki, scripted: tuple[ScriptedPartner, int]
) -> Iterator[tuple[PartnerClient, ScriptedPartner]]:
    partner, port = scripted
    partner.reply, partner.calls = _found, 0
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("gateway")) as channel:
        # Two failed calls of two open it.
        breaker = CircuitBreaker(BreakerSettings(min_calls=2, cool_down_s=60.0))
        yield PartnerClient(channel, 0.2, breaker), partner


def test_an_embedding_of_the_version_asked_is_used(
    client: tuple[PartnerClient, ScriptedPartner],
) -> None:
    partner_client, _ = client

    got = partner_client.embedding("req-1", VERSION, bytes(16), WIDTH)

    assert got.status is PartnerSliceStatus.USED
    assert got.embedding is not None
    assert got.embedding.tolist() == [0.5, -1.0, 2.0]


def _other_version(request: embedding_pb2.GetEmbeddingRequest) -> Any:
    reply = _found(request)
    reply.model_version = "fedcba9876543210"
    return reply


def _too_wide(request: embedding_pb2.GetEmbeddingRequest) -> Any:
    reply = _found(request)
    reply.embedding.append(1.0)
    return reply


def _not_finite(request: embedding_pb2.GetEmbeddingRequest) -> Any:
    reply = _found(request)
    reply.embedding[0] = float("nan")
    return reply


def _slow(request: embedding_pb2.GetEmbeddingRequest) -> Any:
    time.sleep(0.5)
    return _found(request)


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (_other_version, PartnerSliceStatus.UNAVAILABLE),
        (_too_wide, PartnerSliceStatus.UNAVAILABLE),
        (_not_finite, PartnerSliceStatus.UNAVAILABLE),
        (_slow, PartnerSliceStatus.TIMEOUT),
    ],
)
def test_an_unusable_or_late_reply_is_never_used_and_counts_as_a_failure(
    client: tuple[PartnerClient, ScriptedPartner], reply: Reply, status: PartnerSliceStatus
) -> None:
    partner_client, partner = client
    partner.reply = reply

    started = time.perf_counter()
    first = partner_client.embedding("req-1", VERSION, bytes(16), WIDTH)
    second = partner_client.embedding("req-2", VERSION, bytes(16), WIDTH)
    elapsed = time.perf_counter() - started
    third = partner_client.embedding("req-3", VERSION, bytes(16), WIDTH)

    assert (first.status, second.status) == (status, status)
    assert first.embedding is None
    assert elapsed < 2 * 0.2 + 0.3
    # Two failures opened the breaker: the third is not sent.
    assert third.status is PartnerSliceStatus.UNAVAILABLE
    assert partner.calls == 2
    assert partner_client.breaker.state is BreakerState.OPEN


def test_an_unknown_key_is_an_unknown_applicant_and_not_a_failure(
    client: tuple[PartnerClient, ScriptedPartner],
) -> None:
    partner_client, partner = client
    partner.reply = lambda request: embedding_pb2.GetEmbeddingResponse(
        request_id=request.request_id,
        model_version=request.model_version,
        status=embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY,
    )

    answers = [partner_client.embedding(f"r{i}", VERSION, bytes(16), WIDTH) for i in range(3)]

    assert {a.status for a in answers} == {PartnerSliceStatus.UNKNOWN_APPLICANT}
    assert partner.calls == 3
    assert partner_client.breaker.state is BreakerState.CLOSED


def test_the_partners_unknown_key_limit_is_an_unknown_applicant_and_not_a_failure(
    client: tuple[PartnerClient, ScriptedPartner],
) -> None:
    partner_client, partner = client

    def limited(request: embedding_pb2.GetEmbeddingRequest) -> embedding_pb2.GetEmbeddingResponse:
        raise ResourceExhausted("unknown-key lookups over 600 per minute")

    partner.reply = limited

    answers = [partner_client.embedding(f"r{i}", VERSION, bytes(16), WIDTH) for i in range(8)]

    assert {a.status for a in answers} == {PartnerSliceStatus.UNKNOWN_APPLICANT}
    assert partner_client.breaker.state is BreakerState.CLOSED


def _write_bank_alignment(directory: Path, keys: list[bytes], ids: list[str]) -> None:
    order = np.argsort(np.array(keys, dtype=object))
    join_keys = np.frombuffer(b"".join(keys[i] for i in order), dtype=JOIN_KEY_DTYPE)
    summary = AlignmentSummary(
        run_id="alignment-test",
        party=Party.BANK,
        federation_id="test",
        federation_digest=bytes(32),
        protocol_version=1,
        committed_at=dt.datetime.now(dt.UTC),
        own_rows=len(ids),
        peer_rows=len(ids),
        intersection_size=len(ids),
        intersection_digest=intersection_digest(join_keys),
    )
    write_alignment(directory, summary, join_keys, np.array([ids[i] for i in order], dtype=object))


def test_the_join_key_index_keeps_keys_whole_even_ending_in_zero_bytes(tmp_path: Path) -> None:
    keys = [b"\x07" * 15 + b"\x00", b"\x00" * 16, b"\x01" * 8 + b"\x00" * 8]
    ids = ["+8613800000001", "+8613800000002", "+8613800000003"]
    _write_bank_alignment(tmp_path, keys, ids)

    index = JoinKeyIndex.read(tmp_path)

    assert [index.join_key(i) for i in ids] == keys
    assert index.join_key("+8613800000004") is None
    assert index.run_id == "alignment-test"


def test_without_an_alignment_every_applicant_is_outside_it(tmp_path: Path) -> None:
    index = JoinKeyIndex.read(tmp_path)

    assert index.join_key("+8613800000001") is None


def test_the_directory_refuses_an_unknown_kind_or_unreadable_identifier_without_echoing_it(
    tmp_path: Path,
) -> None:
    directory = ApplicantDirectory(
        frozenset({"mobile_cn", "email"}),
        "mobile_cn",
        JoinKeyIndex.read(tmp_path),
        PseudonymKey(bytes(range(32))),
        None,
    )

    with pytest.raises(InvalidRequest, match="'identifier_kind'"):
        directory.resolve("passport", "E1234567")
    with pytest.raises(InvalidRequest, match="'identifier'") as raised:
        directory.resolve("mobile_cn", "0123-99")
    assert "0123-99" not in str(raised.value)
    by_email = directory.resolve("email", " Ann@Example.com ")
    assert by_email.join_key is None
    assert by_email.stored is None
    assert by_email.pseudonym == directory.resolve("email", "ann@example.com").pseudonym
    assert by_email.pseudonym != directory.resolve("mobile_cn", "13800138000").pseudonym


def test_a_pseudonym_key_file_too_short_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(b"short")

    with pytest.raises(ConfigError, match=r"pseudonym\.key"):
        PseudonymKey.from_file(path)
    other = PseudonymKey(b"\x01" * 32).pseudonym("mobile_cn", "+8613800138000")
    assert PseudonymKey(b"\x02" * 32).pseudonym("mobile_cn", "+8613800138000") != other
