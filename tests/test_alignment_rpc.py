"""Private alignment over real gRPC servers on loopback with mutual TLS: who may call, what
crosses the wire, and every fault a peer can cause, each with its status and no result left
behind that looks complete.
"""

from __future__ import annotations

import hashlib
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from bank_node.alignment_client import AlignmentClient
from bank_node.psi_initiator import run_alignment
from cobrand import psi
from cobrand.alignment_protocol import PsiSettings
from cobrand.alignment_store import AlignmentStore
from cobrand.federation import Federation
from cobrand.rpc import REASON_METADATA_KEY, ServicerAdder, create_channel, create_server
from cobrand.v1 import alignment_pb2, alignment_pb2_grpc
from partner_node.alignment_service import ALIGNMENT_ROLES, AlignmentServicer, alignment_service
from partner_node.psi_responder import PsiResponder
from tests.alignment_data import FEDERATION, canonical_phones, messy
from tests.conftest import ThrowAwayPki

SETTINGS = PsiSettings(workers=0, chunk_points=64)
TIMEOUT = 10.0
P = 2**255 - 19
BANK_SIZE, PARTNER_SIZE, COMMON = 150, 200, 80


@dataclass(frozen=True)
class People:
    bank: npt.NDArray[np.object_]
    partner: npt.NDArray[np.object_]
    bank_spellings: list[str]


@pytest.fixture(scope="module")
def people() -> People:
    rng = random.Random(11)
    everyone = canonical_phones(rng, BANK_SIZE + PARTNER_SIZE - COMMON)
    rng.shuffle(everyone)
    bank = everyone[:BANK_SIZE]
    return People(
        bank=np.array(bank, dtype=object),
        partner=np.array(everyone[BANK_SIZE - COMMON :], dtype=object),
        bank_spellings=[messy(person, rng) for person in bank],
    )


@dataclass
class Partner:
    responder: PsiResponder
    data_dir: Path
    server: grpc.Server
    port: int


def _start_partner(
    pki: ThrowAwayPki,
    people: People,
    data_dir: Path,
    service: Callable[[PsiResponder], ServicerAdder] = alignment_service,
) -> Partner:
    responder = PsiResponder(FEDERATION, people.partner, data_dir, SETTINGS)
    server, port = create_server(
        service(responder), "127.0.0.1:0", pki.tls("partner"), allowed_roles=ALIGNMENT_ROLES
    )
    server.start()
    return Partner(responder, data_dir, server, port)


@pytest.fixture
def partner(throwaway_pki: ThrowAwayPki, people: People, tmp_path: Path) -> Iterator[Partner]:
    started = _start_partner(throwaway_pki, people, tmp_path / "partner-data")
    yield started
    started.server.stop(None)


@pytest.fixture
def bank_channel(throwaway_pki: ThrowAwayPki, partner: Partner) -> Iterator[grpc.Channel]:
    with create_channel(f"127.0.0.1:{partner.port}", throwaway_pki.tls("bank")) as channel:
        yield channel


def _align(
    channel: grpc.Channel, people: People, data_dir: Path, federation: Federation = FEDERATION
) -> None:
    client = AlignmentClient(channel, TIMEOUT, TIMEOUT)
    run_alignment(federation, people.bank, client, data_dir, SETTINGS)


def _stub(channel: grpc.Channel) -> Any:
    return alignment_pb2_grpc.AlignmentServiceStub(channel)  # type: ignore[no-untyped-call]


def _open_request(**changes: Any) -> alignment_pb2.OpenAlignmentRequest:
    fields: dict[str, Any] = {
        "run_id": str(uuid.uuid4()),
        "protocol_version": psi.PROTOCOL_VERSION,
        "federation_id": FEDERATION.federation_id,
        "federation_digest": FEDERATION.digest(),
        "bank_set_size": 4,
        **changes,
    }
    return alignment_pb2.OpenAlignmentRequest(**fields)


def _open(channel: grpc.Channel, bank_set_size: int = 4) -> str:
    request = _open_request(bank_set_size=bank_set_size)
    _stub(channel).OpenAlignment(request, timeout=TIMEOUT)
    return str(request.run_id)


def _blinded(count: int) -> bytes:
    return psi.blind(psi.hash_to_points([f"x{i}" for i in range(count)], b"dst"), psi.new_secret())


def _chunks(run_id: str, *parts: tuple[int, bytes, bool]) -> Iterator[alignment_pb2.PointChunk]:
    for sequence, points, last in parts:
        yield alignment_pb2.PointChunk(run_id=run_id, sequence=sequence, points=points, last=last)


def _refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _status(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), error.details() or ""


def _reason(error: grpc.RpcError) -> str | None:
    call: Any = error  # a failed call's error is also its grpc.Call
    return dict(call.trailing_metadata() or ()).get(REASON_METADATA_KEY)


def _assert_no_result(directory: Path) -> None:
    """No result, complete or partial, was left in `directory`."""
    assert not directory.exists() or list(directory.iterdir()) == []


# --- The happy path, and who may call ----------------------------------------------------------


def test_alignment_over_mutual_tls_gives_both_sides_the_same_intersection(
    bank_channel: grpc.Channel, partner: Partner, people: People, tmp_path: Path
) -> None:
    _align(bank_channel, people, tmp_path / "bank-data")

    with (
        AlignmentStore(tmp_path / "bank-data") as bank,
        AlignmentStore(partner.data_dir) as theirs,
    ):
        assert bank.summary.run_id == theirs.summary.run_id
        assert bank.summary.intersection_digest == theirs.summary.intersection_digest
        bank_members = [
            (k.tobytes(), i) for keys, ids in bank.members() for k, i in zip(keys, ids, strict=True)
        ]
        assert {i for _, i in bank_members} == set(people.bank) & set(people.partner)
        assert bank_members == [
            (k.tobytes(), i)
            for keys, ids in theirs.members()
            for k, i in zip(keys, ids, strict=True)
        ]


@pytest.mark.parametrize("holder", ["partner", "app", "partner-app", "gateway", "bank-trainer"])
def test_only_the_bank_node_may_call_the_alignment_service(
    throwaway_pki: ThrowAwayPki, partner: Partner, holder: str
) -> None:
    with create_channel(f"127.0.0.1:{partner.port}", throwaway_pki.tls(holder)) as channel:
        stub = _stub(channel)
        opening = _refusal(lambda: stub.OpenAlignment(_open_request()))
        fetching = _refusal(
            lambda: list(
                stub.FetchPartnerPoints(alignment_pb2.FetchPartnerPointsRequest(run_id="x"))
            )
        )

    for refused in (opening, fetching):
        code, details = _status(refused)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "may not call /cobrand.v1.AlignmentService/" in details


# --- Only blinded points reach the partner ------------------------------------------------------


def _recording_service(
    received: list[tuple[str, bytes]],
) -> Callable[[PsiResponder], ServicerAdder]:
    """The real servicer behind deserializers that keep every request's raw bytes and type."""

    def recorded(message_type: Any) -> Callable[[bytes], Any]:
        def deserialize(raw: bytes) -> Any:
            received.append((message_type.DESCRIPTOR.name, raw))
            return message_type.FromString(raw)

        return deserialize

    def service(responder: PsiResponder) -> ServicerAdder:
        servicer = AlignmentServicer(responder)
        pb = alignment_pb2
        handlers = {
            "OpenAlignment": grpc.unary_unary_rpc_method_handler(
                servicer.OpenAlignment,
                recorded(pb.OpenAlignmentRequest),
                pb.OpenAlignmentResponse.SerializeToString,
            ),
            "ReblindBankPoints": grpc.stream_stream_rpc_method_handler(
                servicer.ReblindBankPoints, recorded(pb.PointChunk), pb.PointChunk.SerializeToString
            ),
            "FetchPartnerPoints": grpc.unary_stream_rpc_method_handler(
                servicer.FetchPartnerPoints,
                recorded(pb.FetchPartnerPointsRequest),
                pb.PointChunk.SerializeToString,
            ),
            "CommitAlignment": grpc.stream_unary_rpc_method_handler(
                servicer.CommitAlignment,
                recorded(pb.CommitAlignmentRequest),
                pb.CommitAlignmentResponse.SerializeToString,
            ),
        }
        generic = grpc.method_handlers_generic_handler("cobrand.v1.AlignmentService", handlers)
        return lambda server: server.add_generic_rpc_handlers((generic,))

    return service


def test_the_partner_receives_only_blinded_points_never_an_identifier_or_its_hash(
    throwaway_pki: ThrowAwayPki, people: People, tmp_path: Path
) -> None:
    received: list[tuple[str, bytes]] = []
    partner = _start_partner(
        throwaway_pki, people, tmp_path / "partner-data", _recording_service(received)
    )
    try:
        with create_channel(f"127.0.0.1:{partner.port}", throwaway_pki.tls("bank")) as channel:
            _align(channel, people, tmp_path / "bank-data")
    finally:
        partner.server.stop(None)

    assert [name for name, _ in received] == [
        "OpenAlignmentRequest",
        *["PointChunk"] * 3,
        "FetchPartnerPointsRequest",
        *["CommitAlignmentRequest"] * 2,
    ]
    wire = b"".join(raw for _, raw in received)
    domain = psi.domain_tag(FEDERATION)
    for identifier, spelling in zip(people.bank, people.bank_spellings, strict=True):
        digits = identifier.removeprefix("+86")
        for plain in (identifier, spelling, digits, digits[3:]):
            assert plain.encode() not in wire
            assert plain.encode("utf-16-le") not in wire
        assert psi.hash_to_point(identifier, domain) not in wire
        assert hashlib.sha256(identifier.encode()).digest()[:16] not in wire
    # What did arrive: exactly one blinded point per bank identifier, each on the curve.
    chunks = [alignment_pb2.PointChunk.FromString(raw) for name, raw in received[1:4]]
    points = b"".join(chunk.points for chunk in chunks)
    assert len(points) == BANK_SIZE * psi.POINT_BYTES
    plain_points = {psi.hash_to_point(i, domain) for i in people.bank}
    for start in range(0, len(points), psi.POINT_BYTES):
        point = points[start : start + psi.POINT_BYTES]
        assert point not in plain_points
        assert _on_curve(int.from_bytes(point, "little"))


def _on_curve(u: int) -> bool:
    rhs = (u**3 + 486662 * u * u + u) % P
    return rhs == 0 or pow(rhs, (P - 1) // 2, P) == 1


# --- Faults: each a clear status, no result left looking complete, and a rerun works ------------


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (b"\x09" * 31, "chunk 0: points are 95 bytes, not a multiple of 32"),
        ((1).to_bytes(32, "little"), "chunk 0: point 2 has low order"),
        (bytes(32), "chunk 0: point 2 has low order"),
        ((P - 1).to_bytes(32, "little"), "chunk 0: point 2 has low order"),
        ((P + 3).to_bytes(32, "little"), "chunk 0: point 2 is not a canonical u-coordinate"),
    ],
    ids=["truncated", "low-order", "all-zero", "order-4", "non-canonical"],
)
def test_malformed_points_are_refused_and_the_run_abandoned(
    bank_channel: grpc.Channel,
    partner: Partner,
    people: People,
    tmp_path: Path,
    points: bytes,
    message: str,
) -> None:
    run_id = _open(bank_channel, bank_set_size=3)
    stub = _stub(bank_channel)
    good = _blinded(2)

    refused = _refusal(
        lambda: list(stub.ReblindBankPoints(_chunks(run_id, (0, good + points, True))))
    )

    code, details = _status(refused)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    assert _reason(refused) == "INVALID_POINT"
    _assert_run_is_gone(stub, run_id)
    _assert_no_result(partner.data_dir)
    _align(bank_channel, people, tmp_path / "bank-data")


def _assert_run_is_gone(stub: Any, run_id: str) -> None:
    gone = _refusal(
        lambda: list(
            stub.FetchPartnerPoints(alignment_pb2.FetchPartnerPointsRequest(run_id=run_id))
        )
    )
    assert _status(gone)[0] == grpc.StatusCode.NOT_FOUND


def test_duplicate_points_are_refused(bank_channel: grpc.Channel, partner: Partner) -> None:
    run_id = _open(bank_channel, bank_set_size=4)
    point = _blinded(1)
    stub = _stub(bank_channel)

    refused = _refusal(
        lambda: list(
            stub.ReblindBankPoints(_chunks(run_id, (0, _blinded(2), False), (1, point * 2, True)))
        )
    )

    assert _status(refused) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the bank's points: 1 points repeat an earlier point; each identifier must be sent once",
    )
    _assert_run_is_gone(stub, run_id)


@pytest.mark.parametrize(
    ("changes", "code", "message"),
    [
        (
            {"protocol_version": 2},
            "FAILED_PRECONDITION",
            "the bank speaks alignment protocol version 2; this side speaks version 1",
        ),
        (
            {"federation_id": "other-deal"},
            "FAILED_PRECONDITION",
            "the bank is in federation 'other-deal'; this side is in 'test-alignment'",
        ),
        (
            {"federation_digest": bytes(32)},
            "FAILED_PRECONDITION",
            f"digest {'00' * 32}; this side's has {FEDERATION.digest().hex()}",
        ),
        (
            {"bank_set_size": 0},
            "INVALID_ARGUMENT",
            "the bank announces an empty set; nothing to align",
        ),
        ({"run_id": "run-1"}, "INVALID_ARGUMENT", "run id 'run-1' is not a UUID"),
    ],
    ids=["protocol-version", "federation-id", "federation-file", "empty-set", "run-id"],
)
def test_a_bank_that_cannot_align_with_this_partner_is_refused_at_open(
    bank_channel: grpc.Channel, changes: dict[str, Any], code: str, message: str
) -> None:
    request = _open_request(**changes)

    refused = _refusal(lambda: _stub(bank_channel).OpenAlignment(request, timeout=TIMEOUT))

    assert _status(refused)[0] == grpc.StatusCode[code]
    assert message in _status(refused)[1]


def test_a_bank_with_another_federation_file_is_told_both_digests(
    bank_channel: grpc.Channel, people: People, tmp_path: Path
) -> None:
    other = FEDERATION.model_copy(update={"version": 2})

    refused = _refusal(lambda: _align(bank_channel, people, tmp_path / "bank-data", other))

    code, details = _status(refused)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert other.digest().hex() in details
    assert FEDERATION.digest().hex() in details
    _assert_no_result(tmp_path / "bank-data")


def test_an_unknown_run_id_is_not_found(bank_channel: grpc.Channel) -> None:
    _open(bank_channel)
    stub = _stub(bank_channel)
    stranger = str(uuid.uuid4())

    for call in (
        lambda: list(stub.ReblindBankPoints(_chunks(stranger, (0, _blinded(4), True)))),
        lambda: list(
            stub.FetchPartnerPoints(alignment_pb2.FetchPartnerPointsRequest(run_id=stranger))
        ),
    ):
        code, details = _status(_refusal(call))
        assert code == grpc.StatusCode.NOT_FOUND
        assert f"alignment run '{stranger}' is not open at the partner" in details


def test_chunks_out_of_sequence_are_refused(bank_channel: grpc.Channel, partner: Partner) -> None:
    run_id = _open(bank_channel, bank_set_size=4)
    stub = _stub(bank_channel)

    refused = _refusal(
        lambda: list(
            stub.ReblindBankPoints(_chunks(run_id, (0, _blinded(2), False), (2, _blinded(2), True)))
        )
    )

    assert _status(refused) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the bank's points: chunk 1 expected, chunk 2 arrived (chunks must come in order, "
        "from 0, without gaps or repeats)",
    )
    _assert_run_is_gone(stub, run_id)


def test_steps_out_of_order_are_refused(bank_channel: grpc.Channel) -> None:
    run_id = _open(bank_channel)

    refused = _refusal(
        lambda: list(
            _stub(bank_channel).FetchPartnerPoints(
                alignment_pb2.FetchPartnerPointsRequest(run_id=run_id)
            )
        )
    )

    code, details = _status(refused)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "the partner has opened; this step needs a run that has re-blinded" in details


def test_a_bank_that_disconnects_mid_stream_leaves_no_result_and_can_rerun(
    bank_channel: grpc.Channel, partner: Partner, people: People, tmp_path: Path
) -> None:
    run_id = _open(bank_channel, bank_set_size=64 * 3)
    stub = _stub(bank_channel)
    answered = threading.Event()

    def requests() -> Iterator[alignment_pb2.PointChunk]:
        yield from _chunks(run_id, (0, _blinded(64), False))
        answered.wait(TIMEOUT)
        yield from _chunks(run_id, (1, _blinded(64), False))

    call = stub.ReblindBankPoints(requests(), timeout=TIMEOUT)
    next(call)
    call.cancel()
    answered.set()

    _wait_until(lambda: partner.responder.open_run_id is None)
    _assert_no_result(partner.data_dir)
    _align(bank_channel, people, tmp_path / "bank-data")


def test_a_partner_that_goes_away_mid_run_leaves_no_result_and_a_rerun_works(
    throwaway_pki: ThrowAwayPki, partner: Partner, people: People, tmp_path: Path
) -> None:
    bank_dir = tmp_path / "bank-data"
    with create_channel(f"127.0.0.1:{partner.port}", throwaway_pki.tls("bank")) as channel:
        client = AlignmentClient(channel, TIMEOUT, TIMEOUT)
        original_fetch = client.fetch

        def fetch_then_partner_stops(run_id: str) -> Iterator[Any]:
            for number, chunk in enumerate(original_fetch(run_id)):
                if number == 1:
                    partner.server.stop(None).wait()
                yield chunk

        client.fetch = fetch_then_partner_stops  # type: ignore[method-assign]
        refused = _refusal(
            lambda: run_alignment(FEDERATION, people.bank, client, bank_dir, SETTINGS)
        )
    assert _status(refused)[0] in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    _assert_no_result(bank_dir)
    _assert_no_result(partner.data_dir)

    restarted = _start_partner(throwaway_pki, people, partner.data_dir)
    try:
        with create_channel(f"127.0.0.1:{restarted.port}", throwaway_pki.tls("bank")) as channel:
            _align(channel, people, bank_dir)
    finally:
        restarted.server.stop(None)
    with AlignmentStore(bank_dir) as bank, AlignmentStore(partner.data_dir) as theirs:
        assert bank.summary.intersection_digest == theirs.summary.intersection_digest


def _wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        threading.Event().wait(0.025)
    raise AssertionError("condition not met within 5 s")
