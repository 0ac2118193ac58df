"""The privacy boundary, proven on the wire: over the whole flow (alignment by PSI, federated
training through Flower and the data plane, model publication, gateway scoring and bulk
targeting), every message captured at the partner node's server and at both Flower apps is of a
type allowed where it was seen, and none carries a planted canary, a label string, a label
vector or an identifier of either party: only blinded points, join keys, positions, embeddings,
gradients and metadata cross.

Where the capture happens (`cobrand.wire_capture`): every call a bank process makes to the
partner arrives at the partner node's one server, so its capture is the bank-to-partner traffic
both ways; the Flower messages are captured as the bank's ServerApp sends and receives them and
as the partner's ClientApp receives and answers them. The bank's own gateway is captured too (in
this process): the application flow calling it is bank-internal, so its messages are checked
against the allow-list only (an application names its applicant by design).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.message_pb2 import Message as FlowerMessage
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.message_factory import GetMessageClass

from cobrand.alignment_store import JOIN_KEY_DTYPE
from cobrand.flower_rounds import RECORD, REQUEST, RESPONSE
from cobrand.v1 import embedding_pb2, training_pb2
from cobrand.wire_capture import (
    FLOWER_CLIENT_APP,
    FLOWER_SERVER_APP,
    GRPC_SERVER,
    RECEIVED,
    SENT,
    CapturedMessage,
    read_capture,
)
from tests.privacy_canaries import PARTNER_NUMBER, Needle, Needles, label_needles
from tests.privacy_flow import Flow, run_flow

_V1: Final = "cobrand.v1"


@dataclass(frozen=True)
class Allowed:
    """The request and response types of a call that may cross (the flow makes every one)."""

    request: str
    response: str


# At the partner node's server: what the bank's processes (and the partner's own ClientApp,
# relaying Flower messages) may send it and get back.
PARTNER_NODE: Final = {
    # PSI: set sizes and protocol metadata, blinded curve points, matched positions + join keys.
    "/cobrand.v1.AlignmentService/OpenAlignment": Allowed(
        f"{_V1}.OpenAlignmentRequest", f"{_V1}.OpenAlignmentResponse"
    ),
    "/cobrand.v1.AlignmentService/ReblindBankPoints": Allowed(
        f"{_V1}.PointChunk", f"{_V1}.PointChunk"
    ),
    "/cobrand.v1.AlignmentService/FetchPartnerPoints": Allowed(
        f"{_V1}.FetchPartnerPointsRequest", f"{_V1}.PointChunk"
    ),
    "/cobrand.v1.AlignmentService/CommitAlignment": Allowed(
        f"{_V1}.CommitAlignmentRequest", f"{_V1}.CommitAlignmentResponse"
    ),
    # Data plane: aligned positions and gradients in, embeddings and pass summaries out.
    "/cobrand.v1.TrainingDataPlane/Exchange": Allowed(
        f"{_V1}.ExchangeRequest", f"{_V1}.ExchangeResponse"
    ),
    # Round control relayed by the partner's ClientApp: the Flower messages' payloads.
    "/cobrand.v1.PartnerRounds/GetStatus": Allowed(
        f"{_V1}.GetStatusRequest", f"{_V1}.GetStatusResponse"
    ),
    "/cobrand.v1.PartnerRounds/PlanRound": Allowed(
        f"{_V1}.PlanRoundRequest", f"{_V1}.PlanRoundResponse"
    ),
    "/cobrand.v1.PartnerRounds/PublishModel": Allowed(
        f"{_V1}.PublishModelRequest", f"{_V1}.PublishModelResponse"
    ),
    # Serving: join keys in, embeddings out; the version check, digests only.
    "/cobrand.v1.PartnerEmbeddingService/GetEmbedding": Allowed(
        f"{_V1}.GetEmbeddingRequest", f"{_V1}.GetEmbeddingResponse"
    ),
    "/cobrand.v1.PartnerEmbeddingService/GetEmbeddings": Allowed(
        f"{_V1}.GetEmbeddingsRequest", f"{_V1}.GetEmbeddingsResponse"
    ),
    "/cobrand.v1.PartnerEmbeddingService/StreamEmbeddings": Allowed(
        f"{_V1}.EmbeddingBatchRequest", f"{_V1}.EmbeddingBatchResponse"
    ),
    "/cobrand.v1.PartnerEmbeddingService/DescribeVersion": Allowed(
        f"{_V1}.DescribeVersionRequest", f"{_V1}.DescribeVersionResponse"
    ),
    # An applicant outside the alignment, with consent: an OPRF blinded element and its output.
    "/cobrand.v1.ConsentedLookup/BlindEvaluate": Allowed(
        f"{_V1}.BlindEvaluateRequest", f"{_V1}.BlindEvaluateResponse"
    ),
    "/cobrand.v1.ConsentedLookup/GetConsentedEmbedding": Allowed(
        f"{_V1}.GetConsentedEmbeddingRequest",
        f"{_V1}.GetConsentedEmbeddingResponse",
    ),
}

# Flower messages, by message type: one ConfigRecord holding one serialized request or response.
FLOWER: Final = {
    "query.status": Allowed(f"{_V1}.GetStatusRequest", f"{_V1}.GetStatusResponse"),
    "train.round": Allowed(f"{_V1}.PlanRoundRequest", f"{_V1}.PlanRoundResponse"),
    "train.publish": Allowed(f"{_V1}.PublishModelRequest", f"{_V1}.PublishModelResponse"),
}

# The bank's gateway, called by the bank's own application flow: bank-internal.
BANK_GATEWAY: Final = {
    "/cobrand.v1.ScoringGateway/ScoreApplication": Allowed(
        f"{_V1}.ScoreApplicationRequest", f"{_V1}.ScoreApplicationResponse"
    ),
}

_PARTNER_PROCESS: Final = "partner_node"
_FLOWER_MESSAGE: Final = "flwr.proto.Message"
# Labels in runs of this many, in alignment order: a leaked slice of a batch shows too.
_LABEL_WINDOW: Final = 32


@dataclass(frozen=True)
class Seen:
    """A captured message placed: which allow-list applies and whether it crossed parties."""

    message: CapturedMessage
    where: str
    allowed: Allowed | None
    is_request: bool
    crossed: bool

    @property
    def expected_type(self) -> str | None:
        """The type allowed for this message (a Flower message's payload), None if none is."""
        if self.allowed is None:
            return None
        return self.allowed.request if self.is_request else self.allowed.response


def place(message: CapturedMessage, this_process: int) -> Seen:
    """Where `message` was captured, and what was allowed there."""
    if message.point == GRPC_SERVER and message.process == _PARTNER_PROCESS:
        allowed = PARTNER_NODE.get(message.call)
        return Seen(message, "partner node", allowed, message.direction == RECEIVED, True)
    if message.point == FLOWER_SERVER_APP:
        allowed = FLOWER.get(message.call)
        return Seen(message, "bank ServerApp", allowed, message.direction == SENT, True)
    if message.point == FLOWER_CLIENT_APP:
        allowed = FLOWER.get(message.call)
        return Seen(message, "partner ClientApp", allowed, message.direction == RECEIVED, True)
    if message.point == GRPC_SERVER and message.pid == this_process:
        allowed = BANK_GATEWAY.get(message.call)
        return Seen(message, "bank gateway", allowed, message.direction == RECEIVED, False)
    return Seen(message, f"{message.process} {message.point}", None, False, True)


def violations(seen: Sequence[Seen], needles: Needles) -> list[str]:
    """`off_allow_list` and `leaks` together."""
    return off_allow_list(seen) + leaks(seen, needles)


def off_allow_list(seen: Iterable[Seen]) -> list[str]:
    """Every message of a type not allowed where it was seen, or holding more than its type."""
    found: list[str] = []
    for entry in seen:
        expected = entry.expected_type
        if expected is None:
            problems = ["not allowed here"]
        elif entry.message.point in (FLOWER_SERVER_APP, FLOWER_CLIENT_APP):
            problems = _flower_problems(entry, expected)
        elif entry.message.type != expected:
            problems = ["not allowed here"]
        else:
            problems = _payload_problems(expected, entry.message.data)
        found.extend(f"{_label(entry)}: {problem}" for problem in problems)
    return found


def leaks(seen: Iterable[Seen], needles: Needles) -> list[str]:
    """Every pattern found in a message that crossed between the parties."""
    return [
        f"{_label(entry)}: carries {needle.what}"
        for entry in seen
        if entry.crossed
        for needle in needles.found_in(entry.message.data)
    ]


def _label(entry: Seen) -> str:
    message = entry.message
    return f"{entry.where} {message.direction} {message.call} ({message.type})"


def _flower_problems(entry: Seen, expected: str) -> list[str]:
    """What a Flower message holds beyond one serialized `expected` request or response."""
    if entry.message.type != _FLOWER_MESSAGE:
        return ["not allowed here"]
    message = FlowerMessage.FromString(entry.message.data)
    if message.HasField("error"):
        return ["a request carrying an error"] if entry.is_request else []
    content = recorddict_from_proto(message.content)
    if content.array_records or content.metric_records:
        return ["array or metric records"]
    if list(content.config_records) != [RECORD]:
        return [f"config records {list(content.config_records)}"]
    record = content.config_records[RECORD]
    key = REQUEST if entry.is_request else RESPONSE
    payload = record.get(key)
    if list(record) != [key] or not isinstance(payload, bytes):
        return [f"{RECORD} holds {list(record)}, not one {key!r} bytes value"]
    return _payload_problems(expected, payload)


def _payload_problems(type_name: str, data: bytes) -> list[str]:
    """What is wrong with `data` as a `type_name`: not one, or fields the type does not declare
    (bytes smuggled past the contract)."""
    message = GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(type_name))()
    try:
        message.ParseFromString(data)
    except DecodeError:
        return [f"not a {type_name}"]
    size = message.ByteSize()
    message.DiscardUnknownFields()
    return [] if message.ByteSize() == size else [f"fields {type_name} does not declare"]


def batch_label_needles(seen: Sequence[Seen], labels: dict[str, np.ndarray]) -> list[Needle]:
    """Each data-plane batch's labels in the batch's own order (its aligned positions)."""
    needles: list[Needle] = []
    for entry in seen:
        if entry.message.call != "/cobrand.v1.TrainingDataPlane/Exchange" or not entry.is_request:
            continue
        request = training_pb2.ExchangeRequest.FromString(entry.message.data)
        if not request.step.HasField("batch"):
            continue
        positions = np.frombuffer(request.step.batch.positions, dtype="<u4")
        for task, values in labels.items():
            what = f"{task} of batch {request.step.batch.step}"
            needles.extend(label_needles(what, values[positions]))
    return needles


def _streamed_keys(seen: Iterable[Seen]) -> int:
    """Join keys the bank's bulk targeting asked the partner for."""
    return sum(
        len(embedding_pb2.EmbeddingBatchRequest.FromString(s.message.data).join_keys)
        // JOIN_KEY_DTYPE.itemsize
        for s in seen
        if s.message.call == "/cobrand.v1.PartnerEmbeddingService/StreamEmbeddings" and s.is_request
    )


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Flow:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run_flow(tmp_path_factory.mktemp("privacy"), monkeypatch)


@pytest.fixture(scope="module")
def seen(flow: Flow) -> list[Seen]:
    return [place(message, os.getpid()) for message in read_capture(flow.capture)]


@pytest.fixture(scope="module")
def needles(flow: Flow, seen: list[Seen]) -> Needles:
    needles = Needles(dict(flow.needles.by_kind))
    for task, values in flow.aligned_labels.items():
        needles.add("label vector", label_needles(f"aligned {task}", values))
        needles.add("label vector", label_needles(f"aligned {task}", values, _LABEL_WINDOW))
    needles.add("label vector", batch_label_needles(seen, flow.aligned_labels))
    return needles


@pytest.mark.slow
def test_no_canary_label_or_identifier_crosses_and_every_message_is_allowed(
    flow: Flow, seen: list[Seen], needles: Needles
) -> None:
    assert flow.partner_slices[0] == "PARTNER_SLICE_STATUS_USED"
    aligned = len(flow.aligned_labels["risk"])
    assert _streamed_keys(seen) == aligned
    refused = off_allow_list(seen)
    crossings = leaks(seen, needles)

    counts = Counter((s.where, s.message.call, s.message.direction, s.message.type) for s in seen)
    print(f"\nprivacy boundary: {len(seen)} messages captured, by where, call, direction, type:")
    for (where, call, direction, type_name), count in sorted(counts.items()):
        print(f"  {count:5d}  {where:<17} {direction:<8} {call} ({type_name})")
    print(
        f"applications' partner slices: {', '.join(flow.partner_slices)}; bulk targeting "
        f"streamed {_streamed_keys(seen)} join keys for {aligned} aligned customers"
    )
    crossing = [s for s in seen if s.crossed]
    patterns = ", ".join(f"{needles.count(kind)} {kind}" for kind in needles.by_kind)
    print(
        f"{len(crossing)} messages crossed ({sum(len(s.message.data) for s in crossing):,} bytes); "
        f"patterns checked in each: {patterns}"
    )
    people = Counter(n.what for n in needles.by_kind["identifier"])
    bank, partner = (people[f"{party} canonical identifier"] for party in ("bank", "partner"))
    print(
        f"identifiers among them: {bank} bank and {partner} partner customers, "
        f"{bank + partner - 2 * aligned} of them outside the intersection"
    )
    print(
        f"off the allow-list: {len(refused)}; crossings (canary, label or identifier): "
        f"{len(crossings)}"
    )
    assert refused == []
    assert crossings == []


@pytest.mark.slow
def test_every_allowed_call_of_the_flow_was_captured_both_ways(seen: list[Seen]) -> None:
    captured = {(s.where, s.message.call, s.is_request) for s in seen}
    places = (
        ("partner node", PARTNER_NODE),
        ("bank ServerApp", FLOWER),
        ("partner ClientApp", FLOWER),
        ("bank gateway", BANK_GATEWAY),
    )
    missing = [
        (where, call, is_request)
        for where, allowed in places
        for call in allowed
        for is_request in (True, False)
        if (where, call, is_request) not in captured
    ]
    assert missing == []


@pytest.mark.slow
def test_flower_delivers_each_apps_messages_with_the_content_it_sent(seen: list[Seen]) -> None:
    # What the partner's ClientApp got is what the bank's ServerApp sent, and the other way:
    # Flower added nothing to the content on the way (its own metadata aside).
    def contents(where: str, direction: str) -> list[bytes]:
        return sorted(
            FlowerMessage.FromString(s.message.data).content.SerializeToString(deterministic=True)
            for s in seen
            if s.where == where and s.message.direction == direction
        )

    assert contents("bank ServerApp", SENT) == contents("partner ClientApp", RECEIVED)
    assert contents("partner ClientApp", SENT) == contents("bank ServerApp", RECEIVED)
    assert contents("bank ServerApp", SENT)


@pytest.mark.slow
def test_a_planted_leak_and_a_message_off_the_allow_list_are_caught(
    flow: Flow, needles: Needles
) -> None:
    # The control for the test above: the same checks, on messages that do leak.
    identifier = needles.by_kind["identifier"][0]
    risk = flow.aligned_labels["risk"]
    lookup = embedding_pb2.GetEmbeddingResponse(
        request_id=identifier.data.decode(), embedding=[0.5, PARTNER_NUMBER]
    )
    labelled = training_pb2.ExchangeResponse(
        embeddings=training_pb2.EmbeddingBatch(step=0, embeddings=risk.astype("<f4").tobytes())
    )
    with_metrics = RecordDict(
        {RECORD: ConfigRecord({REQUEST: b""}), "extra": MetricRecord({"default_rate": 0.08})}
    )
    flower = FlowerMessage(content=recorddict_to_proto(with_metrics))
    # Field 99 (length-delimited), which DescribeVersionResponse does not declare.
    undeclared = b"\x9a\x06\x05hello"

    found = violations(
        [
            _partner_node_sent("/cobrand.v1.PartnerEmbeddingService/GetEmbedding", lookup),
            _partner_node_sent("/cobrand.v1.TrainingDataPlane/Exchange", labelled),
            _partner_node_sent("/cobrand.v1.ScoringGateway/ScoreApplication", lookup),
            _partner_node_sent(
                "/cobrand.v1.PartnerEmbeddingService/DescribeVersion",
                embedding_pb2.DescribeVersionResponse(model_version="v1"),
                undeclared,
            ),
            place(
                CapturedMessage(
                    "flwr-serverapp",
                    1,
                    FLOWER_SERVER_APP,
                    "train.round",
                    SENT,
                    _FLOWER_MESSAGE,
                    flower.SerializeToString(),
                ),
                this_process=-1,
            ),
        ],
        needles,
    )

    print(f"\nself-check: {len(found)} planted violations detected:\n  " + "\n  ".join(found))
    joined = "\n".join(found)
    assert f"carries {identifier.what}" in joined
    assert "carries partner numeric canary as float32" in joined
    assert "carries aligned risk labels [0:" in joined
    assert "ScoreApplication (cobrand.v1.GetEmbeddingResponse): not allowed here" in joined
    assert "train.round (flwr.proto.Message): array or metric records" in joined
    assert "fields cobrand.v1.DescribeVersionResponse does not declare" in joined


def _partner_node_sent(call: str, message: ProtoMessage, smuggled: bytes = b"") -> Seen:
    """`message` (followed by `smuggled` bytes) as the partner node's capture would hold a
    response it sent on `call`."""
    captured = CapturedMessage(
        _PARTNER_PROCESS,
        1,
        GRPC_SERVER,
        call,
        SENT,
        message.DESCRIPTOR.full_name,
        message.SerializeToString() + smuggled,
    )
    return place(captured, this_process=-1)
