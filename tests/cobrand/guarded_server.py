"""Test helper: a real mutual-TLS server of protobuf methods of every arity behind the
interceptor, and raw-bytes calls to it.

The service ``cobrand.test.Guarded`` takes ``ScoreApplicationRequest`` messages: ``Unary``
echoes the application id, ``Collect`` counts a request stream, ``Echo`` echoes each message
of one, ``Listen`` streams the id back twice, ``Refuse`` raises ``PermissionDenied`` as a handler
would (the gateway's channel binding), ``Quote`` refuses the application id quoting it. All
are open to role ``app``; ``Secret`` only to ``gateway``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from cobrand.errors import InvalidRequest, PermissionDenied
from cobrand.pki import Role
from cobrand.rpc import REASON_METADATA_KEY, TlsFiles, create_server
from cobrand.v1 import scoring_pb2

__all__ = [
    "RAW",
    "SERVICE",
    "Request",
    "guarded_server",
    "method",
    "reason",
    "request_bytes",
]

SERVICE = "cobrand.test.Guarded"
Request = scoring_pb2.ScoreApplicationRequest
_APP, _GATEWAY = frozenset({Role.APP}), frozenset({Role.GATEWAY})
RAW: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
"""Client-side options of a call whose requests and replies are raw bytes."""


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _unary(request: Request, context: grpc.ServicerContext) -> Request:
    return Request(application_id=request.application_id)


def _collect(requests: Iterator[Request], context: grpc.ServicerContext) -> Request:
    return Request(application_id=str(sum(1 for _ in requests)))


def _echo(requests: Iterator[Request], context: grpc.ServicerContext) -> Iterator[Request]:
    for request in requests:
        yield Request(application_id=request.application_id)


def _listen(request: Request, context: grpc.ServicerContext) -> Iterator[Request]:
    yield Request(application_id=request.application_id)
    yield Request(application_id=request.application_id)


def _quote(request: Request, context: grpc.ServicerContext) -> Request:
    raise InvalidRequest(f"field 'application_id': {request.application_id!r} is not known")


def _refuse(request: Request, context: grpc.ServicerContext) -> Request:
    raise PermissionDenied("field 'channel': the bank's application flow may not submit here")


def _add(server: grpc.Server) -> None:
    codec: dict[str, Any] = {
        "request_deserializer": Request.FromString,
        "response_serializer": Request.SerializeToString,
    }
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, **codec),
        "Collect": grpc.stream_unary_rpc_method_handler(_collect, **codec),
        "Echo": grpc.stream_stream_rpc_method_handler(_echo, **codec),
        "Listen": grpc.unary_stream_rpc_method_handler(_listen, **codec),
        "Refuse": grpc.unary_unary_rpc_method_handler(_refuse, **codec),
        "Quote": grpc.unary_unary_rpc_method_handler(_quote, **codec),
        "Secret": grpc.unary_unary_rpc_method_handler(_unary, **codec),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@contextmanager
def guarded_server(tls: TlsFiles, denial_log: Path | None = None) -> Iterator[int]:
    """Serve ``cobrand.test.Guarded`` on a loopback port (yielded) until the block ends."""
    allowed = {
        method(name): _APP for name in ("Unary", "Collect", "Echo", "Listen", "Refuse", "Quote")
    }
    server, port = create_server(
        _add,
        "127.0.0.1:0",
        tls,
        allowed_roles={**allowed, method("Secret"): _GATEWAY},
        denial_log=denial_log,
    )
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def request_bytes(application_id: str) -> bytes:
    return bytes(Request(application_id=application_id).SerializeToString())


def reason(error: grpc.RpcError) -> str | None:
    """The ``cobrand-reason`` trailing metadata of a failed call."""
    call: Any = error  # a failed call's error is also its grpc.Call
    return dict(call.trailing_metadata() or ()).get(REASON_METADATA_KEY)
