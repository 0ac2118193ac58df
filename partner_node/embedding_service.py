"""The partner's PartnerEmbeddingService over gRPC: check the request, look the keys up in the
loaded model version (``partner_node.serving_models``), answer with embeddings only.

Only the bank's gateway (role ``gateway``) may call it (`EMBEDDING_ROLES`, enforced by the
interceptor of ``cobrand.rpc.create_server``): the application flow, the bank's node and its
trainer are refused. A key outside the current alignment is an answer (``UNKNOWN_KEY``, or a
``found`` flag that is false), not an error; a malformed field is ``INVALID_ARGUMENT`` naming
it, and an unknown model version ``NOT_FOUND`` naming it. ``GetEmbeddings`` answers up to
`MAX_LOOKUPS` lookups in one call, each as ``GetEmbedding`` would: the gateway sends the
lookups of its applications in flight together, which saves the partner a call's overhead per
lookup; one bad lookup refuses the whole call, naming its index, before any is answered.
``DescribeVersion`` gives the partner's manifest digest of a published version, which the
gateway checks against the one the bank recorded before it uses the version. No raw partner
feature ever leaves: the replies hold the bottom model's output alone. Logs name a call by its
request id and a key by a short hash prefix, never by the key itself.

Lookups of keys outside the alignment are limited per caller (``partner_node.probe_limit``):
beyond the configured number per minute, such a lookup, or a streamed batch holding such keys,
is refused with RESOURCE_EXHAUSTED (a batch ends its stream) and audited; aligned keys are
never counted. ``GetEmbeddings`` charges each unknown key as the single lookup it stands for;
one the limit refuses (audited likewise) is answered ``OVER_LIMIT`` and the rest are answered.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from typing import Final

import grpc
import numpy as np
import numpy.typing as npt

from cobrand.embedding_contract import MAX_LOOKUPS
from cobrand.errors import CobrandError, InvalidRequest, ResourceExhausted
from cobrand.model_manifest import manifest_digest
from cobrand.pki import Role
from cobrand.psi import JOIN_KEY_BYTES
from cobrand.rpc import DEFAULT_MAX_MESSAGE_BYTES, ServicerAdder, service_roles
from cobrand.tensor_wire import pack_matrix
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from partner_node.probe_limit import ProbeLimiter, caller_urn
from partner_node.serving_models import ServingModels, ServingVersion

__all__ = [
    "EMBEDDING_ROLES",
    "MAX_BATCH_KEYS",
    "EmbeddingServicer",
    "check_call_id",
    "embedding_service",
    "load_wait_s",
    "max_batch_keys",
]

_LOG = logging.getLogger(__name__)

EMBEDDING_ROLES = service_roles(
    embedding_pb2.DESCRIPTOR.services_by_name["PartnerEmbeddingService"],
    frozenset({Role.GATEWAY}),
)
"""Who may call each PartnerEmbeddingService method: the bank's gateway (role ``gateway``)."""

MAX_BATCH_KEYS: Final = 65_536
"""Most join keys one StreamEmbeddings request may carry (fewer for very wide embeddings)."""

# Request and batch ids go to both sides' logs: short and of safe characters (a UUID fits).
_CALL_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Without a deadline, a caller waits this long for a version still loading.
_LOAD_WAIT_S = 30.0
# Room in a reply for everything but the embedding matrix and the found flags.
_REPLY_OVERHEAD_BYTES = 64 * 1024


def max_batch_keys(width: int, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> int:
    """Most keys per batch whose reply (float32 row and a flag per key) fits in one message."""
    return min(MAX_BATCH_KEYS, (max_message_bytes - _REPLY_OVERHEAD_BYTES) // (4 * width + 1))


def check_call_id(value: str, field: str) -> None:
    """Refuse a request or batch id that is not 1 to 128 safe characters, naming `field`."""
    if not _CALL_ID.fullmatch(value):
        shown = f"{len(value)} characters" if value else "empty"
        raise InvalidRequest(
            f"{field} must be 1 to 128 letters, digits or '._:-' (a UUID fits); it is {shown}"
        )


def _key_tag(join_key: bytes) -> str:
    """A short hash prefix of a join key, to tell calls apart in logs without the key."""
    return hashlib.blake2b(join_key, digest_size=4).hexdigest()


def load_wait_s(context: grpc.ServicerContext) -> float:
    """How long a call may wait for a version still loading: its deadline, at most 30 s."""
    remaining = context.time_remaining()
    return _LOAD_WAIT_S if remaining is None else max(0.0, min(remaining, _LOAD_WAIT_S))


class EmbeddingServicer(embedding_pb2_grpc.PartnerEmbeddingServiceServicer):
    """Serves the model versions of one `ServingModels`, unknown keys limited by `probes`."""

    def __init__(self, models: ServingModels, probes: ProbeLimiter) -> None:
        self._models = models
        self._probes = probes

    def GetEmbedding(  # noqa: N802 -- the generated servicer's method name
        self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.GetEmbeddingResponse:
        _check_lookup(request)
        version = self._models.version(request.model_version, load_wait_s(context))
        embedding = version.embedding(request.join_key)
        if embedding is None:
            self._probes.charge(
                caller_urn(context), 1, f"GetEmbedding request {request.request_id}"
            )
        if _LOG.isEnabledFor(logging.DEBUG):
            _LOG.debug(
                "[Embedding.Get] request %s key %s version %s: %s",
                request.request_id,
                _key_tag(request.join_key),
                version.version_id,
                "found" if embedding is not None else "unknown key",
            )
        reply = embedding_pb2.GetEmbeddingResponse()
        _answer(reply, request, version, embedding)
        return reply

    def GetEmbeddings(  # noqa: N802
        self, request: embedding_pb2.GetEmbeddingsRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.GetEmbeddingsResponse:
        lookups = request.lookups
        if not 1 <= len(lookups) <= MAX_LOOKUPS:
            raise InvalidRequest(
                f"lookups: {len(lookups)} lookups; from 1 to {MAX_LOOKUPS} per call"
            )
        # Every lookup is checked, and its version loaded, before any key is looked up or
        # charged: a refused call has cost its caller nothing.
        versions: dict[str, ServingVersion] = {}
        wait_s = load_wait_s(context)
        for index, lookup in enumerate(lookups):
            try:
                _check_lookup(lookup)
                if lookup.model_version not in versions:
                    versions[lookup.model_version] = self._models.version(
                        lookup.model_version, wait_s
                    )
            except CobrandError as err:
                raise type(err)(f"lookups[{index}]: {err}") from None
        who = caller_urn(context)
        reply = embedding_pb2.GetEmbeddingsResponse()
        for lookup in lookups:
            version = versions[lookup.model_version]
            embedding = version.embedding(lookup.join_key)
            answer = reply.lookups.add()
            _answer(answer, lookup, version, embedding)
            if embedding is None:
                try:
                    self._probes.charge(who, 1, f"GetEmbeddings request {lookup.request_id}")
                except ResourceExhausted:
                    answer.status = embedding_pb2.LOOKUP_STATUS_OVER_LIMIT
        if _LOG.isEnabledFor(logging.DEBUG):
            statuses = [answer.status for answer in reply.lookups]
            _LOG.debug(
                "[Embedding.GetMany] requests %s: %d found, %d unknown keys, %d over the limit",
                ",".join(lookup.request_id for lookup in lookups),
                statuses.count(embedding_pb2.LOOKUP_STATUS_FOUND),
                statuses.count(embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY),
                statuses.count(embedding_pb2.LOOKUP_STATUS_OVER_LIMIT),
            )
        return reply

    def DescribeVersion(  # noqa: N802
        self, request: embedding_pb2.DescribeVersionRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.DescribeVersionResponse:
        manifest = self._models.manifest(request.model_version)
        return embedding_pb2.DescribeVersionResponse(
            model_version=manifest.version_id, manifest_sha256=manifest_digest(manifest)
        )

    def StreamEmbeddings(  # noqa: N802
        self,
        request_iterator: Iterator[embedding_pb2.EmbeddingBatchRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[embedding_pb2.EmbeddingBatchResponse]:
        who = caller_urn(context)
        for request in request_iterator:
            check_call_id(request.batch_id, "batch_id")
            keys = _join_keys(request)
            version = self._models.version(request.model_version, load_wait_s(context))
            limit = max_batch_keys(version.width)
            if len(keys) > limit:
                raise InvalidRequest(
                    f"join_keys of batch {request.batch_id}: {len(keys)} keys; at most {limit} "
                    f"per batch for embeddings of width {version.width}"
                )
            matrix, found = version.lookup(keys)
            self._probes.charge(
                who, len(keys) - int(found.sum()), f"StreamEmbeddings batch {request.batch_id}"
            )
            _LOG.debug(
                "[Embedding.Stream] batch %s version %s: %d keys, %d found",
                request.batch_id,
                version.version_id,
                len(keys),
                int(found.sum()),
            )
            yield embedding_pb2.EmbeddingBatchResponse(
                batch_id=request.batch_id,
                model_version=version.version_id,
                embedding_width=version.width,
                embeddings=pack_matrix(matrix),
                found=found.tolist(),
            )


def _check_lookup(request: embedding_pb2.GetEmbeddingRequest) -> None:
    """Refuse a malformed request id or join key, naming the field."""
    check_call_id(request.request_id, "request_id")
    if len(request.join_key) != JOIN_KEY_BYTES:
        raise InvalidRequest(
            f"join_key must be {JOIN_KEY_BYTES} bytes, it is {len(request.join_key)}"
        )


def _answer(
    reply: embedding_pb2.GetEmbeddingResponse,
    request: embedding_pb2.GetEmbeddingRequest,
    version: ServingVersion,
    embedding: npt.NDArray[np.float32] | None,
) -> None:
    """Fill `reply` to `request`: the embedding found, or the key unknown."""
    reply.request_id = request.request_id
    reply.model_version = version.version_id
    if embedding is None:
        reply.status = embedding_pb2.LOOKUP_STATUS_UNKNOWN_KEY
    else:
        reply.status = embedding_pb2.LOOKUP_STATUS_FOUND
        reply.embedding.extend(embedding.tolist())


def _join_keys(request: embedding_pb2.EmbeddingBatchRequest) -> npt.NDArray[np.bytes_]:
    data = request.join_keys
    where = f"join_keys of batch {request.batch_id}"
    if not data or len(data) % JOIN_KEY_BYTES:
        raise InvalidRequest(
            f"{where}: {len(data)} bytes is not a whole, non-zero number of "
            f"{JOIN_KEY_BYTES}-byte keys"
        )
    count = len(data) // JOIN_KEY_BYTES
    if count > MAX_BATCH_KEYS:
        raise InvalidRequest(f"{where}: {count} keys; at most {MAX_BATCH_KEYS} per batch")
    return np.frombuffer(data, dtype=f"S{JOIN_KEY_BYTES}")


def embedding_service(models: ServingModels, probes: ProbeLimiter) -> ServicerAdder:
    """Register PartnerEmbeddingService for `models` on a server (for ``create_server``)."""
    servicer = EmbeddingServicer(models, probes)

    def add(server: grpc.Server) -> None:
        # The generated *_pb2_grpc modules come without type annotations.
        embedding_pb2_grpc.add_PartnerEmbeddingServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

    return add
