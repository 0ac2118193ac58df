"""The partner's ClientApp: relays ``query.status``, ``train.round`` and ``train.publish`` to
partner_node.

At the partner's site it runs in the partner's ClientApp runner (`partner_node.flower_client.
runner`, imported from the partner's installation, never from the bundle); a stock SuperNode
would start it in a new process for every message (``notes/flower-1.41.md``). Either way it
holds no state and loads nothing heavy: it opens a mutual-TLS channel to the partner's own node with
the partner's ClientApp certificate (role ``partner``, the only role PartnerRounds admits),
hands over the message's request bytes (``cobrand.flower_rounds``) and returns the node's reply
bytes. The node decodes, checks and acts; a refusal comes back as a Flower error naming the
node's status.

The SuperNode tells it where the node is and which certificate to present, in its node config::

    flower-supernode ... --node-config 'partner-node="127.0.0.1:7443"
        ca-bundle="/srv/cobrand/pki/trust.pem" cert="/srv/cobrand/pki/partner-flower.crt"
        key="/srv/cobrand/pki/partner-flower.key"'

Optional keys: ``server-name`` (the name in the node's certificate, when it differs from the
host) and ``call-timeout-s`` (default 300: a status call may encode a new alignment's rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import grpc
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from pydantic import Field, ValidationError

from cobrand.errors import ConfigError
from cobrand.flower_rounds import (
    HAND_OFF_METHODS,
    PARTNER_REFUSED,
    PARTNER_UNAVAILABLE,
    PUBLISH_ACTION,
    REQUEST,
    RESPONSE,
    ROUND_ACTION,
    STATUS_ACTION,
    payload,
    with_payload,
)
from cobrand.pki import Party
from cobrand.rpc import TlsFiles, create_channel
from cobrand.settings import Section
from cobrand.wire_capture import FLOWER_CLIENT_APP, captured_flower_handler
from cobrand.yamlfile import format_validation_error

__all__ = ["HandOffSettings", "app"]

# The node could not be reached, or went away mid-call: the bank may retry the message later.
_UNREACHABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


class HandOffSettings(Section):
    """Where partner_node answers and how the ClientApp authenticates, from the node config."""

    partner_node: str = Field(alias="partner-node")
    ca_bundle: Path = Field(alias="ca-bundle")
    cert: Path
    key: Path
    server_name: str | None = Field(default=None, alias="server-name")
    call_timeout_s: Annotated[float, Field(gt=0, alias="call-timeout-s")] = 300.0

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> HandOffSettings:
        """Read the SuperNode's node config.

        Raises
        ------
        ConfigError
            Naming each missing, unknown or invalid key.
        """
        try:
            return cls.model_validate(node_config)
        except ValidationError as exc:
            raise ConfigError(f"SuperNode --node-config: {format_validation_error(exc)}") from exc

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(ca_bundle=self.ca_bundle, cert=self.cert, key=self.key)

    def node_config(self) -> dict[str, str]:
        """These settings as the SuperNode's ``--node-config`` pairs (the keys set only)."""
        values = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return {key: str(value) for key, value in values.items()}


app = ClientApp()


@app.query(STATUS_ACTION)
def query_status(message: Message, context: Context) -> Message:
    """Relay the bank's status query to partner_node."""
    return _hand_off(message, context)


@app.train(ROUND_ACTION)
def train_round(message: Message, context: Context) -> Message:
    """Relay the bank's round plan to partner_node."""
    return _hand_off(message, context)


@app.train(PUBLISH_ACTION)
def train_publish(message: Message, context: Context) -> Message:
    """Relay the bank's request to publish the model version it saved to partner_node."""
    return _hand_off(message, context)


@captured_flower_handler(FLOWER_CLIENT_APP)
def _hand_off(message: Message, context: Context) -> Message:
    settings = HandOffSettings.from_node_config(dict(context.node_config))
    method = HAND_OFF_METHODS[message.metadata.message_type]
    request = payload(message, REQUEST)
    with create_channel(
        settings.partner_node,
        settings.tls,
        server_name=settings.server_name,
        server_party=Party.PARTNER,
    ) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            response = call(request, timeout=settings.call_timeout_s)
        except grpc.RpcError as err:
            failed: Any = err
            code = PARTNER_UNAVAILABLE if failed.code() in _UNREACHABLE else PARTNER_REFUSED
            reason = f"{failed.code().name}: {failed.details()}"
            return Message(Error(code=code, reason=reason), reply_to=message)
    return Message(with_payload(RESPONSE, response), reply_to=message)
