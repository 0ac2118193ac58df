"""The partner's AlignmentService over gRPC: decode, call the responder, encode.

Every method is open to the bank's node only (`ALIGNMENT_ROLES`, enforced by the interceptor
of ``cobrand.rpc.create_server``); errors from the responder become their gRPC status there.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from cobrand.alignment_serde import (
    commit_reply_to_proto,
    match_chunk_from_proto,
    open_reply_to_proto,
    open_request_from_proto,
    point_chunk_from_proto,
    point_chunk_to_proto,
)
from cobrand.pki import Role
from cobrand.rpc import ServicerAdder, service_roles
from cobrand.v1 import alignment_pb2, alignment_pb2_grpc
from partner_node.psi_responder import PsiResponder

__all__ = ["ALIGNMENT_ROLES", "AlignmentServicer", "alignment_service"]

ALIGNMENT_ROLES = service_roles(
    alignment_pb2.DESCRIPTOR.services_by_name["AlignmentService"], frozenset({Role.BANK})
)
"""Who may call each AlignmentService method: the bank's node (role ``bank``) alone."""


class AlignmentServicer(alignment_pb2_grpc.AlignmentServiceServicer):
    """Serves one `PsiResponder`."""

    def __init__(self, responder: PsiResponder) -> None:
        self._responder = responder

    def OpenAlignment(  # noqa: N802 -- the generated servicer's method name
        self, request: alignment_pb2.OpenAlignmentRequest, context: grpc.ServicerContext
    ) -> alignment_pb2.OpenAlignmentResponse:
        return open_reply_to_proto(self._responder.open(open_request_from_proto(request)))

    def ReblindBankPoints(  # noqa: N802
        self, request_iterator: Iterator[alignment_pb2.PointChunk], context: grpc.ServicerContext
    ) -> Iterator[alignment_pb2.PointChunk]:
        chunks = (point_chunk_from_proto(message) for message in request_iterator)
        for answer in self._responder.reblind(chunks):
            yield point_chunk_to_proto(answer)

    def FetchPartnerPoints(  # noqa: N802
        self, request: alignment_pb2.FetchPartnerPointsRequest, context: grpc.ServicerContext
    ) -> Iterator[alignment_pb2.PointChunk]:
        for chunk in self._responder.fetch(request.run_id):
            yield point_chunk_to_proto(chunk)

    def CommitAlignment(  # noqa: N802
        self,
        request_iterator: Iterator[alignment_pb2.CommitAlignmentRequest],
        context: grpc.ServicerContext,
    ) -> alignment_pb2.CommitAlignmentResponse:
        chunks = (match_chunk_from_proto(message) for message in request_iterator)
        return commit_reply_to_proto(self._responder.commit(chunks))


def alignment_service(responder: PsiResponder) -> ServicerAdder:
    """Register the AlignmentService for `responder` on a server (for ``create_server``)."""
    servicer = AlignmentServicer(responder)

    def add(server: grpc.Server) -> None:
        # The generated *_pb2_grpc modules come without type annotations.
        alignment_pb2_grpc.add_AlignmentServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

    return add
