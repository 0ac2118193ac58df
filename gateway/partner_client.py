"""The gateway's call to the partner's embedding service: a tight deadline and a circuit breaker.

An application is always decided: when the partner is slow, down, or does not know the
applicant, the gateway scores the bank's slice alone and says why (`PartnerSliceStatus`).
So `PartnerClient.embedding` never raises for the partner's sake; it returns a `PartnerSlice`.

- Each lookup gets the configured deadline (default 50 ms), past which the slice is
  ``TIMEOUT``. Lookups of concurrent applications go to the partner together
  (`gateway.lookup_batcher`): a lone one at once, as one GetEmbedding; those that arrive while
  the calls in flight are under way, as one GetEmbeddings call when a call returns, each
  keeping its own deadline and counted by the breaker as a call of its own.
- A `CircuitBreaker` per gateway process stops calling a partner that fails too large a share
  of its calls (`gateway.partner_breaker`): open, every call is ``UNAVAILABLE`` at once,
  costing the application nothing. Deadlines, transport failures, unusable replies and the
  partner's internal errors count against it; a lookup the partner's own handler refuses
  (a reasoned status, or its lookup limit) counts for it. A partner whose connection
  dropped is reconnected to at once and, once it has loaded the versions in use again, its
  breaker is closed without waiting for the cool-down (`gateway.partner_reconnect`).
- A reply is used only if it is for the version asked (a gateway never combines two versions'
  embeddings), has the version's embedding width and holds finite values; anything else
  counts as a failure of the partner.

Logs name a call by its request id, never by the join key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from cobrand.errors import Unavailable
from cobrand.psi import JOIN_KEY_BYTES
from cobrand.rpc import REASON_METADATA_KEY
from cobrand.v1 import consented_lookup_pb2, embedding_pb2, embedding_pb2_grpc
from gateway.audit_record import PartnerSliceStatus
from gateway.lookup_batcher import LookupBatcher, LookupTimeoutError
from gateway.partner_breaker import CircuitBreaker
from gateway.partner_reconnect import Reconnector

__all__ = [
    "LookupLimitedError",
    "PartnerClient",
    "PartnerSlice",
    "UnusableReplyError",
    "checked_embedding",
]

_LOG = logging.getLogger(__name__)

# Time for a partner to come back and load a version (it loads on first use).
_REWARM_TIMEOUT_S = 10.0
# Lookup calls under way at once per gateway process (`LookupBatcher`'s slots). One: the
# machine is CPU-bound, and the larger batches of one slot save more than a second slot's
# shorter waits (bench.gateway_load, 32 clients, 2 cores: one slot, about 4 lookups a batch,
# 46% of the floor's throughput with partner 0.22 and gateway 1.28 CPU ms a call; two slots
# 42%, 0.29 and 1.34 ms; no batching 38%, 0.41 and 1.47 ms). A lone lookup goes as
# GetEmbedding: as cheap as a GetEmbeddings of one (2.68 against 2.64 ms p50 at 1 client).
_LOOKUP_CALLS_IN_FLIGHT = 1


@dataclass(frozen=True)
class PartnerSlice:
    """The partner's part of one decision: the embedding when used, and why (or why not)."""

    status: PartnerSliceStatus
    embedding: npt.NDArray[np.float32] | None = None


class UnusableReplyError(Exception):
    """A reply the gateway must not use (another version or width, a value not finite, an
    element outside the group)."""


class LookupLimitedError(Exception):
    """The partner's limit on lookups of keys it does not hold refused this one: an answer
    about the applicant, not a failure of the partner."""


class PartnerClient:
    """Calls PartnerEmbeddingService over one channel, under a deadline and a breaker.

    Parameters
    ----------
    channel : grpc.Channel
        To the partner node, made with the gateway's certificate (role ``gateway``).
    deadline_s : float
        The deadline of each lookup, from its start (a wait for a call to take it included).
    breaker : CircuitBreaker
    """

    def __init__(self, channel: grpc.Channel, deadline_s: float, breaker: CircuitBreaker) -> None:
        # The generated stubs come without type annotations.
        self._stub: Any = embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel)  # type: ignore[no-untyped-call]
        self._deadline_s = deadline_s
        self._batcher = LookupBatcher(self._send, _LOOKUP_CALLS_IN_FLIGHT)
        self.breaker = breaker
        # The versions asked for, which a restarted partner is made to load before use.
        self._versions: set[str] = set()
        self._reconnector = Reconnector(channel, self._rewarm, breaker.close)

    def embedding(
        self, request_id: str, model_version: str, join_key: bytes, width: int
    ) -> PartnerSlice:
        """The partner's embedding of the customer with `join_key` under `model_version`.

        Parameters
        ----------
        request_id : str
            The gateway's id of the decision, echoed in both sides' logs.
        model_version : str
        join_key : bytes
            From the last alignment.
        width : int
            The embedding width the version's head takes.

        Returns
        -------
        PartnerSlice
            ``USED`` with the embedding, ``UNKNOWN_APPLICANT`` when the partner does not hold
            the key (or refuses it under its unknown-key limit), ``TIMEOUT`` past the deadline,
            ``UNAVAILABLE`` otherwise (unreachable, an error, an unusable reply, or the breaker
            open).
        """
        self._versions.add(model_version)
        request = embedding_pb2.GetEmbeddingRequest(
            request_id=request_id, model_version=model_version, join_key=join_key
        )
        return self.guarded(
            request_id,
            lambda deadline_s: checked_embedding(
                self._batcher.lookup(request, deadline_s), model_version, width
            ),
        )

    def _send(
        self, requests: Sequence[embedding_pb2.GetEmbeddingRequest], timeout_s: float
    ) -> Sequence[embedding_pb2.GetEmbeddingResponse]:
        """One call for `requests` (the `LookupBatcher`'s `Send`)."""
        if len(requests) == 1:
            return [self._stub.GetEmbedding(requests[0], timeout=timeout_s)]
        reply = self._stub.GetEmbeddings(
            embedding_pb2.GetEmbeddingsRequest(lookups=requests), timeout=timeout_s
        )
        answers: Sequence[embedding_pb2.GetEmbeddingResponse] = reply.lookups
        if [a.request_id for a in answers] != [r.request_id for r in requests]:
            raise UnusableReplyError("the partner's answers are not to the lookups asked, in order")
        return answers

    def guarded(
        self,
        request_id: str,
        lookup: Callable[[float], npt.NDArray[np.float32] | None],
    ) -> PartnerSlice:
        """Run one lookup at the partner under the breaker and map its outcome to a slice.

        Parameters
        ----------
        request_id : str
        lookup : callable
            Given the deadline in seconds, calls the partner (over this client's channel) and
            returns the embedding, or None when the partner does not hold the applicant; may
            raise `grpc.RpcError`, `UnusableReplyError`, `LookupLimitedError` or
            `LookupTimeoutError`.

        Returns
        -------
        PartnerSlice
            As `embedding` describes.
        """
        if not self.breaker.allow():
            return PartnerSlice(PartnerSliceStatus.UNAVAILABLE)
        try:
            found = lookup(self._deadline_s)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                return self._limited(request_id)
            if _refused_by_partner(err):
                # A healthy partner refusing this one lookup (e.g. its consented-lookup index
                # still building): no reason to stop asking it about everyone else.
                self.breaker.succeeded()
            else:
                self.breaker.failed()
            _LOG.warning(
                "[PartnerClient] request %s: the partner call failed: %s", request_id, code
            )
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return PartnerSlice(PartnerSliceStatus.TIMEOUT)
            return PartnerSlice(PartnerSliceStatus.UNAVAILABLE)
        except LookupLimitedError:
            return self._limited(request_id)
        except LookupTimeoutError:
            # Queued behind calls that did not return in time: the partner is slow.
            self.breaker.failed()
            _LOG.warning(
                "[PartnerClient] request %s: no call took the lookup within its deadline",
                request_id,
            )
            return PartnerSlice(PartnerSliceStatus.TIMEOUT)
        except UnusableReplyError as err:
            self.breaker.failed()
            _LOG.error("[PartnerClient] request %s: reply not used: %s", request_id, err)
            return PartnerSlice(PartnerSliceStatus.UNAVAILABLE)
        self.breaker.succeeded()
        if found is None:
            return PartnerSlice(PartnerSliceStatus.UNKNOWN_APPLICANT)
        return PartnerSlice(PartnerSliceStatus.USED, found)

    def _limited(self, request_id: str) -> PartnerSlice:
        """The partner answers and limits lookups of people outside its alignment, by key or by
        consented lookup: that says nothing about its health."""
        self.breaker.succeeded()
        _LOG.warning(
            "[PartnerClient] request %s: the partner's lookup limit refused it", request_id
        )
        return PartnerSlice(PartnerSliceStatus.UNKNOWN_APPLICANT)

    def warm_up(
        self, model_version: str, timeout_s: float, *, wait_for_ready: bool = False
    ) -> bool:
        """Have the partner load `model_version` now, so the first applications need not wait.

        The partner loads a version on its first lookup; this one asks for a key no alignment
        holds (all zeros) with a deadline long enough for the load. A failure is only logged.
        With `wait_for_ready`, the call waits (within its deadline) for a connection to the
        partner instead of failing at once while there is none.

        Returns
        -------
        bool
            Whether the partner answered.
        """
        self._versions.add(model_version)
        request = embedding_pb2.GetEmbeddingRequest(
            request_id="warm-up", model_version=model_version, join_key=bytes(JOIN_KEY_BYTES)
        )
        try:
            self._stub.GetEmbedding(request, timeout=timeout_s, wait_for_ready=wait_for_ready)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            _LOG.warning(
                "[PartnerClient] warming model version %s up failed: %s", model_version, code
            )
            return False
        return True

    def _rewarm(self) -> bool:
        """Once reconnected, warm every version asked for up again; False with none asked, as
        nothing then shows the partner is back."""
        versions = sorted(self._versions)
        warmed = [self.warm_up(v, _REWARM_TIMEOUT_S, wait_for_ready=True) for v in versions]
        return bool(warmed) and all(warmed)

    def describe(self, model_version: str, timeout_s: float) -> tuple[str, bytes]:
        """The version the partner answers for and its manifest digest (for `verify_peer`).

        Raises
        ------
        Unavailable
            The partner could not be asked or refused (its status and details named).
        """
        try:
            reply = self._stub.DescribeVersion(
                embedding_pb2.DescribeVersionRequest(model_version=model_version),
                timeout=timeout_s,
            )
        except grpc.RpcError as err:
            detail = (
                f"{err.code().name}: {err.details()}" if isinstance(err, grpc.Call) else str(err)
            )
            raise Unavailable(
                f"the partner could not describe model version {model_version}: {detail}"
            ) from None
        return str(reply.model_version), bytes(reply.manifest_sha256)


def _refused_by_partner(err: grpc.RpcError) -> bool:
    """Whether the partner's own handler answered `err` (not transport, deadline or a crash).

    Its interceptor marks every refusal with a reason (``cobrand.rpc.REASON_METADATA_KEY``);
    a failure on the way, or an internal error at the partner, is not a reasoned refusal.
    """
    if not isinstance(err, grpc.Call):
        return False
    reasons = [v for k, v in err.trailing_metadata() or () if k == REASON_METADATA_KEY]
    return bool(reasons) and reasons[0] != "INTERNAL"


def checked_embedding(
    reply: embedding_pb2.GetEmbeddingResponse | consented_lookup_pb2.GetConsentedEmbeddingResponse,
    model_version: str,
    width: int,
) -> npt.NDArray[np.float32] | None:
    """The reply's embedding (None for an unknown key), if the gateway may use it.

    Raises
    ------
    UnusableReplyError
        Another version, an unknown status, another width or a value not finite.
    LookupLimitedError
        The partner's unknown-key limit refused the lookup (a GetEmbeddings answer).
    """
    if reply.model_version != model_version:
        raise UnusableReplyError(f"the partner answered for version {reply.model_version}")
    if reply.status == embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY:
        return None
    if reply.status == embedding_pb2.LOOKUP_STATUS_OVER_LIMIT:
        raise LookupLimitedError
    if reply.status != embedding_pb2.LOOKUP_STATUS_FOUND:
        raise UnusableReplyError(f"lookup status {reply.status} is not one the gateway knows")
    values = np.asarray(reply.embedding, dtype=np.float32)
    if values.shape != (width,):
        raise UnusableReplyError(f"an embedding of {values.size} values; the version takes {width}")
    if not np.isfinite(values).all():
        raise UnusableReplyError("an embedding value is not finite")
    return values
