"""Hostile input to the partner's AlignmentService over mutual TLS on loopback, from the bank's
node certificate: every call ends with a clear status naming what it refuses, never a crash, a
stack trace or a hung call, and a whole alignment still runs afterwards.

The service runs on a responder of its own (as in ``tests/test_alignment_rpc.py``), so a fuzzed
commit that happens to be well formed replaces nobody else's alignment.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bank_node.alignment_client import AlignmentClient
from bank_node.psi_initiator import run_alignment
from cobrand import psi
from cobrand.alignment_protocol import PsiSettings
from cobrand.alignment_store import AlignmentStore
from cobrand.rpc import create_server
from cobrand.v1 import alignment_pb2, alignment_pb2_grpc
from partner_node.alignment_service import ALIGNMENT_ROLES, alignment_service
from partner_node.psi_responder import PsiResponder
from tests.alignment_data import FEDERATION, canonical_phones
from tests.conftest import ThrowAwayPki
from tests.robustness.conftest import Figures
from tests.robustness.hostile import (
    CALL_TIMEOUT_S,
    Tally,
    binary,
    fuzz,
    hostile_channel,
    mutated,
    raw_bytes,
    send_raw,
    texts,
    uint32s,
    uint64s,
)

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

Code = grpc.StatusCode
FUZZ: Final = fuzz(50)
_SETTINGS: Final = PsiSettings(workers=0, chunk_points=64)
_CODES: Final = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.FAILED_PRECONDITION,
    Code.NOT_FOUND,
}
_BANK_POINTS: Final = 4
# How the refusals name the fields: the points and matches by what they hold.
_SAID: Final = {
    "points": ("points", "point"),
    "matched_positions": ("positions", "position"),
    "matched_join_keys": ("join key",),
    "run_id": ("run",),
    "sequence": ("chunk", "sequence"),
    "last": ("last", "chunk"),
}


@dataclass(frozen=True)
class Partner:
    port: int
    bank_ids: list[str]


@pytest.fixture(scope="module")
def partner(
    throwaway_pki: ThrowAwayPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Partner]:
    everyone = canonical_phones(random.Random(5), 160)
    responder = PsiResponder(
        FEDERATION,
        np.array(everyone[40:], dtype=object),
        tmp_path_factory.mktemp("partner-data"),
        _SETTINGS,
    )
    server, port = create_server(
        alignment_service(responder),
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
        allowed_roles=ALIGNMENT_ROLES,
    )
    server.start()
    yield Partner(port, everyone[:80])
    server.stop(None)


@pytest.fixture(scope="module")
def channel(throwaway_pki: ThrowAwayPki, partner: Partner) -> Iterator[grpc.Channel]:
    with hostile_channel(partner.port, throwaway_pki.tls("bank")) as made:
        yield made


def _stub(channel: grpc.Channel) -> Any:
    return alignment_pb2_grpc.AlignmentServiceStub(channel)  # type: ignore[no-untyped-call]


def _open(stub: Any) -> str:
    run_id = str(uuid.uuid4())
    stub.OpenAlignment(
        alignment_pb2.OpenAlignmentRequest(
            run_id=run_id,
            protocol_version=psi.PROTOCOL_VERSION,
            federation_id=FEDERATION.federation_id,
            federation_digest=FEDERATION.digest(),
            bank_set_size=_BANK_POINTS,
        ),
        timeout=CALL_TIMEOUT_S,
    )
    return run_id


def _blinded(count: int) -> bytes:
    return psi.blind(psi.hash_to_points([f"x{i}" for i in range(count)], b"dst"), psi.new_secret())


def _said(drawn: list[tuple[frozenset[str], dict[str, Any]]]) -> set[str]:
    """What a refusal of a stream of `drawn` messages may name: a hostile field, or the
    stream itself when it holds no message."""
    if not drawn:
        return {"stream"}
    # None made hostile: the drawn values still break a rule between fields (a join key never
    # re-blinded), which may name any of them.
    hostile = frozenset().union(*(fields for fields, _ in drawn)) or frozenset(drawn[0][1])
    return {form for name in hostile for form in (name, *_SAID.get(name, ()))}


def _aligns_afterwards(channel: grpc.Channel, partner: Partner, directory: Path) -> None:
    client = AlignmentClient(channel, CALL_TIMEOUT_S, CALL_TIMEOUT_S)
    run_alignment(
        FEDERATION, np.array(partner.bank_ids, dtype=object), client, directory, _SETTINGS
    )
    with AlignmentStore(directory) as store:
        assert store.summary.intersection_size == 40


def test_open_alignment_answers_hostile_requests_with_a_clear_status(
    channel: grpc.Channel, partner: Partner, tmp_path: Path, figures: Figures
) -> None:
    fields = ("run_id", "protocol_version", "federation_id", "federation_digest", "bank_set_size")
    tally = Tally("AlignmentService.OpenAlignment", fields)
    requests = mutated(
        {
            "run_id": st.uuids().map(str),
            "protocol_version": st.just(psi.PROTOCOL_VERSION),
            "federation_id": st.just(FEDERATION.federation_id),
            "federation_digest": st.just(FEDERATION.digest()),
            "bank_set_size": st.integers(1, 10**6),
        },
        {
            "run_id": texts(),
            "protocol_version": uint32s(),
            "federation_id": texts(),
            "federation_digest": binary(32),
            "bank_set_size": uint64s(),
        },
    )

    @FUZZ
    @given(drawn=requests)
    def call(drawn: tuple[frozenset[str], dict[str, Any]]) -> None:
        _, values = drawn
        request = alignment_pb2.OpenAlignmentRequest(**values)
        tally.check(
            lambda: _stub(channel).OpenAlignment(request, timeout=CALL_TIMEOUT_S),
            _CODES,
            _said([drawn]),
        )

    call()
    _aligns_afterwards(channel, partner, tmp_path / "bank-data")
    figures.add(tally.figure())


def _point_chunks() -> st.SearchStrategy[tuple[frozenset[str], dict[str, Any]]]:
    return mutated(
        {
            "run_id": st.none(),  # the run opened for the call
            "sequence": st.just(0),
            "points": st.just(_blinded(_BANK_POINTS)),
            "last": st.just(True),
        },
        {
            "run_id": texts(),
            "sequence": uint64s(),
            "points": binary(32, 32 * _BANK_POINTS),
            "last": st.booleans(),
        },
    )


def test_reblind_bank_points_answers_hostile_chunks_with_a_clear_status(
    channel: grpc.Channel, partner: Partner, tmp_path: Path, figures: Figures
) -> None:
    tally = Tally("AlignmentService.ReblindBankPoints", ("run_id", "sequence", "points", "last"))

    @FUZZ
    @given(drawn=st.lists(_point_chunks(), max_size=3))
    def call(drawn: list[tuple[frozenset[str], dict[str, Any]]]) -> None:
        stub = _stub(channel)
        run_id = _open(stub)
        chunks = [
            alignment_pb2.PointChunk(**{**values, "run_id": values["run_id"] or run_id})
            for _, values in drawn
        ]
        tally.check(
            lambda: list(stub.ReblindBankPoints(iter(chunks), timeout=CALL_TIMEOUT_S)),
            _CODES,
            _said(drawn),
        )

    call()
    _aligns_afterwards(channel, partner, tmp_path / "bank-data")
    figures.add(tally.figure())


def test_fetch_partner_points_answers_hostile_run_ids_with_a_clear_status(
    channel: grpc.Channel, partner: Partner, tmp_path: Path, figures: Figures
) -> None:
    tally = Tally("AlignmentService.FetchPartnerPoints", ("run_id",))

    @FUZZ
    @given(run_id=st.none() | texts(), reblinded=st.booleans())
    def call(run_id: str | None, reblinded: bool) -> None:
        stub = _stub(channel)
        opened = _open(stub)
        if reblinded:
            chunk = alignment_pb2.PointChunk(
                run_id=opened, sequence=0, points=_blinded(_BANK_POINTS), last=True
            )
            list(stub.ReblindBankPoints(iter([chunk]), timeout=CALL_TIMEOUT_S))
        request = alignment_pb2.FetchPartnerPointsRequest(run_id=run_id or opened)
        tally.check(lambda: list(stub.FetchPartnerPoints(request, timeout=CALL_TIMEOUT_S)), _CODES)

    call()
    _aligns_afterwards(channel, partner, tmp_path / "bank-data")
    figures.add(tally.figure())


def test_commit_alignment_answers_hostile_matches_with_a_clear_status(
    channel: grpc.Channel, partner: Partner, tmp_path: Path, figures: Figures
) -> None:
    fields = ("run_id", "sequence", "matched_positions", "matched_join_keys", "last")
    tally = Tally("AlignmentService.CommitAlignment", fields)
    matches = mutated(
        {
            "run_id": st.none(),  # the run opened for the call
            "sequence": st.just(0),
            "matched_positions": st.just([0, 1]),
            "matched_join_keys": st.just(bytes(range(32))),
            "last": st.just(True),
        },
        {
            "run_id": texts(),
            "sequence": uint64s(),
            "matched_positions": st.lists(uint64s(), max_size=6),
            "matched_join_keys": binary(16, 32, 96),
            "last": st.booleans(),
        },
    )

    @FUZZ
    @given(drawn=st.lists(matches, max_size=3))
    def call(drawn: list[tuple[frozenset[str], dict[str, Any]]]) -> None:
        stub = _stub(channel)
        run_id = _open(stub)
        chunk = alignment_pb2.PointChunk(
            run_id=run_id, sequence=0, points=_blinded(_BANK_POINTS), last=True
        )
        list(stub.ReblindBankPoints(iter([chunk]), timeout=CALL_TIMEOUT_S))
        fetch = alignment_pb2.FetchPartnerPointsRequest(run_id=run_id)
        list(stub.FetchPartnerPoints(fetch, timeout=CALL_TIMEOUT_S))
        requests = [
            alignment_pb2.CommitAlignmentRequest(**{**values, "run_id": values["run_id"] or run_id})
            for _, values in drawn
        ]
        tally.check(
            lambda: stub.CommitAlignment(iter(requests), timeout=CALL_TIMEOUT_S),
            _CODES,
            _said(drawn),
        )

    call()
    _aligns_afterwards(channel, partner, tmp_path / "bank-data")
    figures.add(tally.figure())


_METHODS: Final = (
    ("/cobrand.v1.AlignmentService/OpenAlignment", False, False),
    ("/cobrand.v1.AlignmentService/ReblindBankPoints", True, True),
    ("/cobrand.v1.AlignmentService/FetchPartnerPoints", False, True),
    ("/cobrand.v1.AlignmentService/CommitAlignment", True, False),
)


def test_random_bytes_as_an_alignment_request_are_refused_and_it_serves_on(
    channel: grpc.Channel, partner: Partner, tmp_path: Path, figures: Figures
) -> None:
    fields = ("request", "run_id", "protocol_version", "federation", "bank_set_size", "points")
    tally = Tally("AlignmentService, random bytes as a request", (*fields, "matches", "chunk"))

    @FUZZ
    @given(method=st.sampled_from(_METHODS), body=raw_bytes())
    def call(method: tuple[str, bool, bool], body: bytes) -> None:
        path, streamed_in, streamed_out = method
        tally.check(
            lambda: send_raw(
                channel, path, body, streamed_in=streamed_in, streamed_out=streamed_out
            ),
            _CODES,
        )

    call()
    _aligns_afterwards(channel, partner, tmp_path / "bank-data")
    figures.add(tally.figure())
