"""Test helper (no tests): a Flower message as a SuperNode hands it to a ClientApp.

``flwr.app.Message(...)`` itself wants a running ServerApp's identity, so tests that call a
ClientApp directly build the message from its metadata, as the SuperNode does.
"""

from __future__ import annotations

import time

from flwr.app import Message, Metadata, RecordDict
from flwr.app.message import make_message

__all__ = ["incoming_message"]


def incoming_message(message_type: str, content: RecordDict, group_id: str = "1") -> Message:
    """A message of `message_type` with `content`, from the ServerApp (node 0) to node 7."""
    return make_message(
        Metadata(
            run_id=1,
            message_id="m-1",
            src_node_id=0,
            dst_node_id=7,
            reply_to_message_id="",
            group_id=group_id,
            created_at=time.time(),
            ttl=60.0,
            message_type=message_type,
        ),
        content,
    )
