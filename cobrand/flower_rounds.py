"""What the bank's ServerApp and the partner's ClientApp agree on: the Flower messages of a run.

Three message types, verb.noun at the round level (per-batch tensors travel on the data plane):

- ``query.status``: a ``rounds.proto`` GetStatusRequest out, GetStatusResponse back;
- ``train.round``: a PlanRoundRequest out, PlanRoundResponse back;
- ``train.publish``: a PublishModelRequest out, PublishModelResponse back (the run's last step).

Each message's content is one ConfigRecord, `RECORD`, holding the serialized request under
`REQUEST` (the reply: the response under `RESPONSE`). The ClientApp relays the bytes to
partner_node's PartnerRounds method for the message type (`HAND_OFF_METHODS`) without decoding
them, so ``rounds.proto`` is the one contract on both hops. When the hand-off call fails the
reply is a Flower error whose code says whether partner_node could not be reached
(`PARTNER_UNAVAILABLE`) or refused the request (`PARTNER_REFUSED`), and whose reason is the
partner's status and message.

Import this module only after ``cobrand.offline.configure_offline_flower`` (it imports flwr).
"""

from __future__ import annotations

from typing import Final

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from cobrand.errors import FailedPrecondition, InvalidRequest, Unavailable
from cobrand.rpc import full_method_name
from cobrand.v1 import rounds_pb2

__all__ = [
    "HAND_OFF_METHODS",
    "PARTNER_REFUSED",
    "PARTNER_UNAVAILABLE",
    "PUBLISH_ACTION",
    "PUBLISH_MESSAGE",
    "RECORD",
    "REQUEST",
    "RESPONSE",
    "ROUND_ACTION",
    "ROUND_MESSAGE",
    "STATUS_ACTION",
    "STATUS_MESSAGE",
    "error_from_reply",
    "payload",
    "with_payload",
]

STATUS_ACTION: Final = "status"
ROUND_ACTION: Final = "round"
PUBLISH_ACTION: Final = "publish"
STATUS_MESSAGE: Final = f"{MessageType.QUERY}.{STATUS_ACTION}"
ROUND_MESSAGE: Final = f"{MessageType.TRAIN}.{ROUND_ACTION}"
PUBLISH_MESSAGE: Final = f"{MessageType.TRAIN}.{PUBLISH_ACTION}"

RECORD: Final = "cobrand.rounds"
REQUEST: Final = "request"
RESPONSE: Final = "response"

_SERVICE = rounds_pb2.DESCRIPTOR.services_by_name["PartnerRounds"]
HAND_OFF_METHODS: Final = {
    STATUS_MESSAGE: full_method_name(_SERVICE, "GetStatus"),
    ROUND_MESSAGE: full_method_name(_SERVICE, "PlanRound"),
    PUBLISH_MESSAGE: full_method_name(_SERVICE, "PublishModel"),
}
"""The PartnerRounds method each message type is handed to."""

# Flower's own error codes are small integers (flwr.app's ErrorCode); ours stay clear of them.
PARTNER_UNAVAILABLE: Final = 7001
PARTNER_REFUSED: Final = 7002


def with_payload(key: str, payload_bytes: bytes) -> RecordDict:
    """Message content carrying one serialized ``rounds.proto`` message under `key`."""
    return RecordDict({RECORD: ConfigRecord({key: payload_bytes})})


def payload(message: Message, key: str) -> bytes:
    """The serialized ``rounds.proto`` message `message` carries under `key`.

    Raises
    ------
    InvalidRequest
        The message does not carry one.
    """
    record = message.content.config_records.get(RECORD) if message.has_content() else None
    value = record.get(key) if record is not None else None
    if not isinstance(value, bytes):
        raise InvalidRequest(
            f"{message.metadata.message_type} message carries no {RECORD}.{key} bytes"
        )
    return value


def error_from_reply(message: Message, what: str) -> FailedPrecondition | Unavailable:
    """The error a failed reply stands for: `Unavailable` if the partner could not be reached."""
    error = message.error
    if error.code == PARTNER_UNAVAILABLE:
        return Unavailable(f"{what}: partner_node is unavailable: {error.reason}")
    if error.code == PARTNER_REFUSED:
        return FailedPrecondition(f"{what}: partner_node refused: {error.reason}")
    return FailedPrecondition(
        f"{what}: the partner's ClientApp failed (code {error.code}): {error.reason}"
    )
