"""The gateway's consented lookup of an applicant outside the aligned set, by oblivious PRF.

For an applicant who consented and has no join key, `ConsentedLookupClient.embedding`

1. blinds the applicant's OPRF input x, the federation's lookup domain then the applicant's
   identifier kind and canonical identifier (``cobrand.oprf.blind``: B = r * H(x), r fresh),
   and sends ``BlindEvaluate(request id, consent reference, B)``;
2. checks the partner's answer Z is an element of the group and finalizes F_k(x), RFC 9497's
   OPRF(ristretto255, SHA-512) output, whose first 16 bytes are the lookup output y (an
   element outside the group is an unusable reply, as a bad embedding is);
3. asks ``GetConsentedEmbedding(model version, y)`` and checks the embedding as the aligned
   lookup does (`gateway.partner_client.checked_embedding`).

Both calls go over the partner channel of `PartnerClient`, under its circuit breaker, within
its one deadline (the second call gets what the first left), and their failures become the
same slice statuses (`PartnerClient.guarded`): the partner's lookup limit (RESOURCE_EXHAUSTED)
is an unknown applicant, scored bank-only. The consent reference is the application id, which
both sides' records carry. Logs name a lookup by its request id, never the identifier or y.

The partner builds its index of every user by lookup output on its first consented lookup, or
reads back the one it saved as it starts (``partner_node.oprf_index``);
`ConsentedLookupClient.warm_up` has it ready when the gateway starts, as `PartnerClient.warm_up`
has the version loaded.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from cobrand import oprf
from cobrand.errors import InvalidPoint
from cobrand.v1 import consented_lookup_pb2, consented_lookup_pb2_grpc
from gateway.partner_client import (
    PartnerClient,
    PartnerSlice,
    UnusableReplyError,
    checked_embedding,
)

__all__ = ["ConsentedLookupClient"]

_LOG = logging.getLogger(__name__)


class ConsentedLookupClient:
    """Calls the partner's ConsentedLookup over a `PartnerClient`'s channel and breaker.

    Parameters
    ----------
    channel : grpc.Channel
        The partner channel the `PartnerClient` uses.
    domain : bytes
        ``cobrand.oprf.lookup_domain`` of the federation.
    """

    def __init__(self, channel: grpc.Channel, domain: bytes) -> None:
        # The generated stubs come without type annotations.
        self._stub: Any = consented_lookup_pb2_grpc.ConsentedLookupStub(channel)  # type: ignore[no-untyped-call]
        self._domain = domain

    def embedding(
        self,
        partner: PartnerClient,
        request_id: str,
        consent_reference: str,
        model_version: str,
        lookup_input: bytes,
        width: int,
    ) -> PartnerSlice:
        """The partner's embedding of a consenting applicant, if the partner holds them.

        Parameters
        ----------
        partner : PartnerClient
            The client of the verified version: its breaker and deadline apply.
        request_id : str
        consent_reference : str
            The application id the consent was given in.
        model_version : str
        lookup_input : bytes
            ``cobrand.oprf.lookup_input`` of the applicant's canonical identifier.
        width : int
            The embedding width the version's head takes.

        Returns
        -------
        PartnerSlice
            ``USED`` with the embedding, ``UNKNOWN_APPLICANT`` when no partner user is this
            applicant (or the partner's lookup limit refused), ``TIMEOUT`` past the deadline,
            ``UNAVAILABLE`` otherwise.
        """

        def lookup(deadline_s: float) -> npt.NDArray[np.float32] | None:
            expires = time.monotonic() + deadline_s
            x = self._domain + lookup_input
            r, blinded = oprf.blind(x)
            evaluated = self._stub.BlindEvaluate(
                consented_lookup_pb2.BlindEvaluateRequest(
                    request_id=request_id,
                    consent_reference=consent_reference,
                    blinded_element=blinded,
                ),
                timeout=deadline_s,
            )
            try:
                output = oprf.lookup_output(oprf.finalize(x, r, evaluated.evaluated_element))
            except InvalidPoint as err:
                raise UnusableReplyError(str(err)) from None
            reply = self._stub.GetConsentedEmbedding(
                consented_lookup_pb2.GetConsentedEmbeddingRequest(
                    request_id=request_id,
                    consent_reference=consent_reference,
                    model_version=model_version,
                    oprf_output=output,
                ),
                # What the first call left; gRPC refuses a spent one as DEADLINE_EXCEEDED.
                timeout=max(expires - time.monotonic(), 0.0),
            )
            return checked_embedding(reply, model_version, width)

        found = partner.guarded(request_id, lookup)
        # The bank's side of the partner's consent audit: the same request id and reference.
        _LOG.info(
            "[ConsentedLookup] request %s consent %r version %s: %s",
            request_id,
            consent_reference,
            model_version,
            found.status.value,
        )
        return found

    def warm_up(self, model_version: str, timeout_s: float) -> None:
        """Have the partner build its index of users now, so the first consenting applicants
        need not wait: asks for an output no user has (all zeros), with a deadline long enough
        for the build. A failure is only logged (the partner goes on building)."""
        request = consented_lookup_pb2.GetConsentedEmbeddingRequest(
            request_id="warm-up",
            consent_reference="warm-up",
            model_version=model_version,
            oprf_output=bytes(oprf.OUTPUT_BYTES),
        )
        try:
            self._stub.GetConsentedEmbedding(request, timeout=timeout_s)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            _LOG.warning("[ConsentedLookup] warming the partner's lookup index up failed: %s", code)
