"""Coalescing of the gateway's concurrent embedding lookups into fewer calls to the partner.

Most of what a lookup costs both sides is the gRPC call around it, not the dict lookup at the
partner. `LookupBatcher` sends the lookups of applications in flight together, by leader and
follower as the audit log's group commit does (`gateway.audit_log`), with no thread of its own
and no added wait: a lookup that finds a call slot free is sent at once, alone, by its own
caller; lookups arriving while every slot is taken queue, and when a call returns its slot
goes to the oldest queued lookup's caller, which sends every lookup queued (up to
`MAX_LOOKUPS`) as one call. An idle gateway so pays nothing; under load the batches grow by
themselves.

Each lookup keeps its own deadline: a call's deadline is the earliest of its lookups', and a
lookup whose deadline passes while queued is dropped unsent (`LookupTimeoutError`). Each
model version has call slots and a queue of its own: one call holds one version's lookups, so a
version the partner is slow on or refuses (during a swap, say) delays or fails no lookup of
another.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from cobrand.embedding_contract import MAX_LOOKUPS
from cobrand.v1 import embedding_pb2

__all__ = ["LookupBatcher", "LookupTimeoutError", "Send"]

Send = Callable[
    [Sequence[embedding_pb2.GetEmbeddingRequest], float],
    Sequence[embedding_pb2.GetEmbeddingResponse],
]
"""Sends lookups to the partner as one call with the deadline given in seconds, and returns
their answers in order; raises what the call raised."""


class LookupTimeoutError(Exception):
    """The lookup's deadline passed while it waited for a call to take it; it was not sent."""


class _Pending:
    """A lookup waiting for its answer, and the wake-up of its caller.

    As in the audit log (`gateway.audit_log._Pending`), a lock held from creation stands for the
    wake-up: whoever settles the lookup or hands its caller a call slot releases it. ``queued``
    and ``lead`` change only under the batcher's lock.
    """

    __slots__ = ("_ready", "deadline", "error", "lead", "queued", "reply", "request")

    def __init__(self, request: embedding_pb2.GetEmbeddingRequest, deadline: float) -> None:
        self.request = request
        self.deadline = deadline
        self.reply: embedding_pb2.GetEmbeddingResponse | None = None
        self.error: BaseException | None = None
        self.queued = False
        self.lead = False
        self._ready = threading.Lock()
        self._ready.acquire()

    def settle(
        self, reply: embedding_pb2.GetEmbeddingResponse | None, error: BaseException | None
    ) -> None:
        """Set the outcome (once) and wake the caller."""
        self.reply, self.error = reply, error
        self._ready.release()

    def promote(self) -> None:
        """Hand the caller a call slot to send the queue with (under the batcher's lock)."""
        self.queued = False
        self.lead = True
        self._ready.release()

    def wait(self, timeout_s: float | None) -> bool:
        """Whether the caller was woken (settled or promoted) within `timeout_s`."""
        return self._ready.acquire(timeout=-1 if timeout_s is None else max(0.0, timeout_s))

    def outcome(self) -> embedding_pb2.GetEmbeddingResponse:
        """The partner's answer; raises what the call raised, or `LookupTimeoutError`."""
        if self.error is not None:
            raise self.error
        assert self.reply is not None  # settled without an error
        return self.reply


class _Lane:
    """One model version's lookups: those queued, and the calls under way."""

    __slots__ = ("in_flight", "queue")

    def __init__(self) -> None:
        self.queue: deque[_Pending] = deque()
        self.in_flight = 0


class LookupBatcher:
    """Sends concurrent lookups together, at most `max_in_flight` calls at once per model
    version; thread-safe.

    Each model version has its own call slots and queue (a lane): a call holds one version's
    lookups only, and a version slow at the partner (one still loading, say) holds up no
    lookup of another.

    Parameters
    ----------
    send : Send
        Makes one call to the partner for a list of lookups.
    max_in_flight : int
        Calls to the partner under way at once, per version. 1 is the pure leader and
        follower: under load every lookup but the first waits for the call before it, and the
        batches are the largest. More slots shorten that wait, at the cost of smaller batches.
    """

    def __init__(self, send: Send, max_in_flight: int) -> None:
        self._send = send
        self._max_in_flight = max_in_flight
        self._lock = threading.Lock()
        # The versions with lookups under way or queued; a lane goes once it is idle.
        self._lanes: dict[str, _Lane] = {}

    def lookup(
        self, request: embedding_pb2.GetEmbeddingRequest, timeout_s: float
    ) -> embedding_pb2.GetEmbeddingResponse:
        """The partner's answer to `request`, sent alone or with other callers' lookups.

        Parameters
        ----------
        request : GetEmbeddingRequest
        timeout_s : float
            The lookup's deadline from now, queueing included.

        Raises
        ------
        LookupTimeoutError
            If `timeout_s` passed before a call took the lookup.
        grpc.RpcError, Exception
            Whatever the call that took it raised.
        """
        pending = _Pending(request, time.monotonic() + timeout_s)
        with self._lock:
            lane = self._lanes.get(request.model_version)
            if lane is None:
                lane = self._lanes[request.model_version] = _Lane()
            if lane.in_flight < self._max_in_flight:
                lane.in_flight += 1
                pending.lead = True
            else:
                pending.queued = True
                lane.queue.append(pending)
        if not pending.lead and not pending.wait(pending.deadline - time.monotonic()):
            with self._lock:
                if pending.queued:
                    lane.queue.remove(pending)
                    pending.queued = False
                    raise LookupTimeoutError("the lookup's deadline passed before a call took it")
            # A call took it, or its caller was just handed a slot, as the wait ended.
            pending.wait(None)
        if pending.lead:
            self._lead(lane, pending)
        return pending.outcome()

    def _lead(self, lane: _Lane, first: _Pending) -> None:
        """With a call slot of `lane`: send `first` and the lookups queued there as one call,
        then hand the slot to the oldest lookup queued since, if any."""
        try:
            with self._lock:
                batch = [first]
                while lane.queue and len(batch) < MAX_LOOKUPS:
                    taken = lane.queue.popleft()
                    taken.queued = False
                    batch.append(taken)
                now = time.monotonic()
            live = [p for p in batch if p.deadline > now]
            for p in batch:
                if p.deadline <= now:
                    p.settle(None, LookupTimeoutError("the lookup's deadline passed while queued"))
            if live:
                self._call(live, min(p.deadline for p in live) - now)
        finally:
            with self._lock:
                if lane.queue:
                    lane.queue.popleft().promote()
                else:
                    lane.in_flight -= 1
                    if not lane.in_flight:
                        del self._lanes[first.request.model_version]

    def _call(self, batch: list[_Pending], timeout_s: float) -> None:
        """Make the call and settle every lookup in it with its answer or the call's error."""
        try:
            replies = self._send([p.request for p in batch], timeout_s)
            answered = list(zip(batch, replies, strict=True))
        except BaseException as err:  # every caller in the batch gets the call's failure
            for p in batch:
                p.settle(None, err)
            if not isinstance(err, Exception):
                raise
            return
        for p, reply in answered:
            p.settle(reply, None)
