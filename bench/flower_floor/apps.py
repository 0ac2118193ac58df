"""The floor app's two components: empty messages out, empty replies back.

The ServerApp uses the bank's own `FlowerPartner.exchange` (push, then pull every 0.1 s), so a
message of the floor costs what a ``query.status`` or ``train.round`` message of a training run
costs in Flower, without the partner node's work.
"""

from __future__ import annotations

from typing import Final

from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from bank_node.flower_app.partner import FlowerPartner
from cobrand.flower_rounds import RESPONSE, with_payload

__all__ = ["client", "server"]

_ACTION: Final = "ping"
_TIMEOUT_S: Final = 120.0

server = ServerApp()
client = ClientApp()


@server.main()
def exchange_empty_messages(grid: Grid, context: Context) -> None:
    """Send the run config's ``num-messages`` empty messages, each after the last's reply."""
    partner = FlowerPartner(grid, timeout=_TIMEOUT_S)
    for number in range(int(context.run_config["num-messages"])):
        partner.exchange(f"{MessageType.QUERY}.{_ACTION}", b"", group=str(number))


@client.query(_ACTION)
def answer(message: Message, context: Context) -> Message:
    """Reply at once, with an empty payload."""
    return Message(with_payload(RESPONSE, b""), reply_to=message)
