"""The partner as the bank's ServerApp reaches it: Flower messages to the partner's SuperNode.

`FlowerPartner` is the ServerApp's `PartnerControl`: each call is one message pushed to the
partner's one SuperNode and its reply pulled back (with our own short poll, not
``send_and_receive``'s 3 s sleep). `RunWatch` notices a run stopped with ``flwr stop`` within
about a second, even in the middle of a data-plane pass, and interrupts the ServerApp so the
bank's stream closes and the partner rolls back the unfinished round.
"""

from __future__ import annotations

import _thread
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from flwr.app import Message
from flwr.serverapp import Grid
from google.protobuf.message import DecodeError

from cobrand.errors import FailedPrecondition, InvalidRequest, Unavailable
from cobrand.flower_rounds import (
    PUBLISH_MESSAGE,
    REQUEST,
    RESPONSE,
    ROUND_MESSAGE,
    STATUS_MESSAGE,
    error_from_reply,
    payload,
    with_payload,
)
from cobrand.rounds_protocol import ModelPublication, PartnerStatus, RoundPlan, RunProgress
from cobrand.rounds_serde import (
    partner_manifest_from_proto,
    plan_to_proto,
    progress_from_proto,
    publication_to_proto,
    status_from_proto,
)
from cobrand.v1 import rounds_pb2
from cobrand.wire_capture import FLOWER_SERVER_APP, RECEIVED, SENT, capture_flower_message

__all__ = ["FlowerPartner", "RunWatch"]

_LOG = logging.getLogger(__name__)
_Reply = TypeVar("_Reply")


class FlowerPartner:
    """The partner's control plane over Flower.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid.
    timeout : float
        Seconds to wait for the partner's SuperNode to be connected and for each reply; also
        each message's time to live, so a message never reaches the partner after the bank
        gave up on it.
    poll_interval : float
        Seconds between pulls for a reply.
    """

    def __init__(self, grid: Grid, *, timeout: float, poll_interval: float = 0.1) -> None:
        self._grid = grid
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._node_id: int | None = None

    def status(self, run_id: str) -> PartnerStatus:
        """The partner's alignment, bottom width and progress of `run_id` (``query.status``)."""
        request = rounds_pb2.GetStatusRequest(run_id=run_id).SerializeToString()
        reply = self.exchange(STATUS_MESSAGE, request, group="status")
        return status_from_proto(_parse(rounds_pb2.GetStatusResponse.FromString, reply))

    def plan_round(self, plan: RoundPlan) -> RunProgress:
        """Plan a round at the partner (``train.round``)."""
        request = plan_to_proto(plan).SerializeToString()
        reply = self.exchange(ROUND_MESSAGE, request, group=str(plan.round))
        return progress_from_proto(_parse(rounds_pb2.PlanRoundResponse.FromString, reply).run)

    def publish(self, publication: ModelPublication) -> bytes:
        """Have the partner save its half of a model version (``train.publish``).

        Returns the partner's manifest digest of the version (32 bytes).
        """
        request = publication_to_proto(publication).SerializeToString()
        reply = self.exchange(PUBLISH_MESSAGE, request, group="publish")
        return partner_manifest_from_proto(
            _parse(rounds_pb2.PublishModelResponse.FromString, reply), publication
        )

    def exchange(self, message_type: str, request: bytes, group: str) -> bytes:
        """One message round trip: `request` to the partner's SuperNode, its reply's payload.

        Raises
        ------
        Unavailable
            The SuperLink refused the message, or no reply came within the timeout.
        CobrandError
            The partner answered with an error (`error_from_reply`).
        """
        deadline = time.monotonic() + self._timeout
        message = Message(
            with_payload(REQUEST, request),
            dst_node_id=self._partner_node(deadline),
            message_type=message_type,
            group_id=group,
            ttl=self._timeout,
        )
        capture_flower_message(FLOWER_SERVER_APP, SENT, message)
        ids = [i for i in self._grid.push_messages([message]) if i]
        if not ids:
            raise Unavailable(f"{message_type}: the SuperLink did not accept the message")
        while True:
            replies = list(self._grid.pull_messages(ids))
            if replies:
                break
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"{message_type}: the partner did not answer within {self._timeout:g} s"
                )
            time.sleep(self._poll_interval)
        reply = replies[0]
        capture_flower_message(FLOWER_SERVER_APP, RECEIVED, reply)
        if reply.has_error():
            raise error_from_reply(reply, message_type)
        return payload(reply, RESPONSE)

    def _partner_node(self, deadline: float) -> int:
        """The partner's SuperNode, once connected: the federation has exactly one."""
        while self._node_id is None:
            nodes = list(self._grid.get_node_ids())
            if len(nodes) > 1:
                raise FailedPrecondition(
                    f"{len(nodes)} SuperNodes are connected; a co-brand federation has one, "
                    "the partner's"
                )
            if nodes:
                self._node_id = nodes[0]
            elif time.monotonic() > deadline:
                raise Unavailable(
                    f"the partner's SuperNode did not connect within {self._timeout:g} s"
                )
            else:
                time.sleep(self._poll_interval)
        return self._node_id


def _parse(parse: Callable[[bytes], _Reply], data: bytes) -> _Reply:
    try:
        return parse(data)
    except DecodeError as exc:
        raise InvalidRequest(f"the partner's reply is not a valid {parse.__qualname__}") from exc


class RunWatch:
    """While entered, checks every `interval` seconds that the run still runs.

    Flower revokes a stopped run's access to the SuperLink, but a ServerApp only notices at its
    next call, and a long data-plane pass makes none. This thread makes one (a node listing):
    when it fails, Flower's own client signals the ServerApp to exit, and should the failure be
    of another kind the thread interrupts the main thread itself.
    """

    def __init__(self, grid: Grid, *, interval: float = 1.0) -> None:
        self._grid = grid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="run-watch", daemon=True)

    def __enter__(self) -> RunWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval)

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._grid.get_node_ids()
            except BaseException:  # noqa: BLE001 - Flower signals a stopped run with BaseException
                if not self._stop.is_set():
                    _LOG.warning("[RunWatch] the run no longer runs at the SuperLink; stopping")
                    _thread.interrupt_main()
                return
