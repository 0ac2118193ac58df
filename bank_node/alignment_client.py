"""The partner's AlignmentService as the bank's initiator sees it (an ``AlignmentPeer``) over
gRPC, and `align_with_partner`, the bank's whole run from its settings.

Each method of `AlignmentClient` encodes, calls with a deadline, decodes; protocol rules are the
initiator's. A stream the bank stops reading (because it refused an answer) is cancelled at once,
so the partner abandons the run instead of waiting. An error raised while the bank produces its
own requests is re-raised as itself, not as the CANCELLED status gRPC reports for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from bank_node.config import BankNodeConfig
from bank_node.psi_initiator import AlignmentOutcome, run_alignment
from cobrand.alignment_protocol import (
    CommitReply,
    MatchChunk,
    OpenReply,
    OpenRequest,
    PointChunk,
    Progress,
)
from cobrand.alignment_serde import (
    commit_reply_from_proto,
    match_chunk_to_proto,
    open_reply_from_proto,
    open_request_to_proto,
    point_chunk_from_proto,
    point_chunk_to_proto,
)
from cobrand.party_files import load_own_table
from cobrand.pki import Party
from cobrand.rpc import create_channel
from cobrand.v1 import alignment_pb2, alignment_pb2_grpc

__all__ = ["AlignmentClient", "align_with_partner"]


class _Requests:
    """Iterates requests for gRPC and keeps the error that ended them, if any."""

    def __init__(self, requests: Iterable[Any]) -> None:
        self._requests = iter(requests)
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._requests
        except BaseException as exc:
            self.error = exc
            raise


class AlignmentClient:
    """Calls the partner's AlignmentService on `channel`.

    Parameters
    ----------
    channel : grpc.Channel
        A mutual-TLS channel to the partner node (``cobrand.rpc.create_channel``).
    call_timeout_s : float
        Deadline of OpenAlignment.
    stream_timeout_s : float
        Deadline of each streaming call.
    """

    def __init__(
        self, channel: grpc.Channel, call_timeout_s: float, stream_timeout_s: float
    ) -> None:
        # The generated *_pb2_grpc modules come without type annotations.
        self._stub: Any = alignment_pb2_grpc.AlignmentServiceStub(channel)  # type: ignore[no-untyped-call]
        self._call_timeout_s = call_timeout_s
        self._stream_timeout_s = stream_timeout_s

    def open(self, request: OpenRequest) -> OpenReply:
        """OpenAlignment."""
        reply = self._stub.OpenAlignment(
            open_request_to_proto(request), timeout=self._call_timeout_s
        )
        return open_reply_from_proto(reply)

    def reblind(self, chunks: Iterator[PointChunk]) -> Iterator[PointChunk]:
        """ReblindBankPoints: the partner's answer to each chunk, in order."""
        requests = _Requests(point_chunk_to_proto(chunk) for chunk in chunks)
        call = self._stub.ReblindBankPoints(iter(requests), timeout=self._stream_timeout_s)
        yield from _read(call, requests)

    def fetch(self, run_id: str) -> Iterator[PointChunk]:
        """FetchPartnerPoints."""
        call = self._stub.FetchPartnerPoints(
            alignment_pb2.FetchPartnerPointsRequest(run_id=run_id), timeout=self._stream_timeout_s
        )
        yield from _read(call, _Requests(()))

    def commit(self, chunks: Iterator[MatchChunk]) -> CommitReply:
        """CommitAlignment: returns once the partner has persisted its result."""
        requests = _Requests(match_chunk_to_proto(chunk) for chunk in chunks)
        try:
            reply = self._stub.CommitAlignment(iter(requests), timeout=self._stream_timeout_s)
        except grpc.RpcError:
            if requests.error is not None:
                raise requests.error from None
            raise
        return commit_reply_from_proto(reply)


def _read(call: Any, requests: _Requests) -> Iterator[PointChunk]:
    try:
        for message in call:
            yield point_chunk_from_proto(message)
    except grpc.RpcError:
        if requests.error is not None:
            raise requests.error from None
        raise
    finally:
        call.cancel()  # a no-op once the call has ended


def align_with_partner(
    config: BankNodeConfig, progress: Progress | None = None
) -> AlignmentOutcome:
    """Load the bank's table, align it with the partner node's, persist the bank's result.

    Raises
    ------
    ConfigError, CertificateError
        For bad settings, table or TLS files (before the partner is contacted).
    CobrandError, grpc.RpcError
        As `run_alignment` raises them.
    """
    federation, table = load_own_table(
        Party.BANK, config.federation, config.schema_file, config.table
    )
    partner = config.partner
    with create_channel(
        partner.address,
        config.tls,
        insecure=config.insecure,
        server_name=partner.server_name,
        server_party=Party.PARTNER,
    ) as channel:
        client = AlignmentClient(channel, partner.call_timeout_s, partner.stream_timeout_s)
        return run_alignment(federation, table.ids, client, config.data_dir, config.psi, progress)
