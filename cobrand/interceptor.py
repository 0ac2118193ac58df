"""The one interceptor every cobrand server runs (``cobrand.rpc.create_server`` installs it).

It wraps each handler's behaviour, not just the call: a gRPC server interceptor sees only the
method name and metadata, and the peer certificate is on the ServicerContext
(grpc/grpc#18459). For every call it

1. authenticates: reads the peer certificate (parsed once per certificate) and refuses one
   whose serial a CRL of the trust bundle revokes (``UNAUTHENTICATED``), or that carries no
   cobrand identity; handlers read the identity with ``caller(context)``;
2. authorizes: with an allow-list, a method is open only to the roles listed for it, and a
   method not listed is open to nobody (``PERMISSION_DENIED``), before the handler runs;
3. refuses a request whose bytes do not parse as the method's message with
   ``INVALID_ARGUMENT`` naming the method and the message type (gRPC alone would answer
   ``INTERNAL``), for single requests and for each message of a request stream, checked after
   authorization so a refused caller learns nothing about the contract;
4. translates errors: a ``CobrandError`` becomes its status with its message and the trailing
   metadata ``cobrand-reason: <REASON>``; anything else becomes ``INTERNAL`` with
   ``internal error, incident <id>`` to the caller and the traceback under that id in the log;
5. audits refusals: every call it ends with ``PERMISSION_DENIED`` or ``UNAUTHENTICATED`` (its
   own checks' and the handlers', such as the gateway's channel binding) is logged at WARNING
   and, with a denial log, appended durably before the caller is answered
   (``cobrand.denials``). Allowed calls write nothing.

Without authentication (an insecure development server) steps 1, 2 and 5 do nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from cryptography import x509
from google.protobuf.message import DecodeError

from cobrand import wire_capture
from cobrand.denials import Denial, DenialLog
from cobrand.errors import CertificateError, CobrandError, InvalidRequest, PermissionDenied
from cobrand.pki import PeerIdentity, Role, WatchedRevocations, identity_from_pem
from cobrand.pki.identity import describe_subject

__all__ = [
    "INCIDENT_METADATA_KEY",
    "MAX_DETAILS_BYTES",
    "REASON_METADATA_KEY",
    "Interceptor",
    "PresentedCertificate",
    "caller",
]

_LOG = logging.getLogger(__name__)

REASON_METADATA_KEY = "cobrand-reason"
INCIDENT_METADATA_KEY = "cobrand-incident"
MAX_DETAILS_BYTES = 2048
"""The longest error message (UTF-8) sent to a caller; longer ones are cut to fit gRPC's header
limits."""
_AUDITED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})

Behavior = Callable[..., Any]
Deserializer = Callable[[bytes], Any]

# grpc-stubs makes these generic; grpc itself does not, so subscript them for mypy only.
if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler
    _ServerInterceptor = grpc.ServerInterceptor


@dataclass(frozen=True, slots=True)
class PresentedCertificate:
    """What a caller's certificate says: who it names, which CA issued it under what serial.

    Attributes
    ----------
    subject : str
    issuer : x509.Name
    serial : int
    identity : PeerIdentity or None
        None when the certificate carries no consistent cobrand identity; `problem` says why.
    problem : str
    """

    subject: str
    issuer: x509.Name
    serial: int
    identity: PeerIdentity | None
    problem: str = ""


def caller(context: grpc.ServicerContext) -> PeerIdentity:
    """The authenticated identity of the peer making this call.

    Raises
    ------
    CertificateError
        If the call carries no client certificate (an insecure server) or one without a
        cobrand identity.
    """
    presented = _presented(context)
    if presented is None:
        raise CertificateError("the caller presented no client certificate")
    if presented.identity is None:
        raise CertificateError(presented.problem)
    return presented.identity


def _presented(context: grpc.ServicerContext) -> PresentedCertificate | None:
    pems = context.auth_context().get("x509_pem_cert")
    return _parse(bytes(pems[0])) if pems else None


@functools.lru_cache(maxsize=1024)
def _parse(pem: bytes) -> PresentedCertificate:
    # Peers reuse one certificate for every call; parsing it once per certificate is enough.
    cert = x509.load_pem_x509_certificate(pem)  # TLS has accepted it: it is well formed
    try:
        identity, problem = identity_from_pem(pem), ""
    except CertificateError as exc:
        identity, problem = None, str(exc)
    return PresentedCertificate(
        describe_subject(cert), cert.issuer, cert.serial_number, identity, problem
    )


class Interceptor(_ServerInterceptor):
    """Authenticates, authorizes, checks request bytes, translates and audits refusals.

    Parameters
    ----------
    allowed_roles : mapping of full method name to roles, or None
        None admits every authenticated caller to every method.
    authenticated : bool
        Whether the server requires client certificates (False only for insecure servers).
    revocations : WatchedRevocations, optional
        Certificates refused although TLS accepted them; none without.
    denials : DenialLog, optional
        Where refusals are recorded durably.
    """

    def __init__(
        self,
        allowed_roles: Mapping[str, frozenset[Role]] | None,
        *,
        authenticated: bool,
        revocations: WatchedRevocations | None = None,
        denials: DenialLog | None = None,
    ) -> None:
        self._allowed_roles = dict(allowed_roles) if allowed_roles is not None else None
        self._authenticated = authenticated
        self._revocations = revocations
        self._denials = denials if authenticated else None

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        call = _Call(method, self)
        codec = wire_capture.recording_codec(
            method,
            {
                "request_deserializer": handler.request_deserializer,
                "response_serializer": handler.response_serializer,
            },
        )
        codec["request_deserializer"] = _tolerant(
            codec["request_deserializer"], _message_type(handler.request_deserializer)
        )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(call.unary(handler.unary_unary), **codec)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(call.stream(handler.unary_stream), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary, streamed=True), **codec
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                call.stream(handler.stream_stream, streamed=True), **codec
            )
        return handler

    def authorize(self, method: str, context: grpc.ServicerContext) -> None:
        """Refuse the call unless its certificate is current and its role may call `method`."""
        if not self._authenticated:
            return
        presented = _presented(context)
        if (
            presented is not None
            and self._revocations is not None
            and self._revocations.is_revoked(presented.issuer, presented.serial)
        ):
            raise CertificateError(
                f"certificate {presented.subject} (serial {presented.serial:x}) is revoked"
            )
        identity = caller(context)
        if self._allowed_roles is None:
            return
        if identity.role not in self._allowed_roles.get(method, frozenset()):
            raise PermissionDenied(f"role '{identity.role}' may not call {method}")

    def abort(self, exc: Exception, method: str, context: grpc.ServicerContext) -> NoReturn:
        """End the call with the status `exc` stands for; the one translation point."""
        if isinstance(exc, CobrandError):
            if exc.status in _AUDITED:
                self._audit(exc, method, context)
            else:
                _LOG.info("[%s] refused %s: %s", method, exc.reason, _details(exc))
            context.set_trailing_metadata(((REASON_METADATA_KEY, exc.reason),))
            context.abort(exc.status, _details(exc))
        if _is_abort(exc, context):
            raise exc
        incident = secrets.token_hex(6)
        _LOG.error("[%s] internal error, incident %s", method, incident, exc_info=exc)
        context.set_trailing_metadata(
            ((REASON_METADATA_KEY, "INTERNAL"), (INCIDENT_METADATA_KEY, incident))
        )
        context.abort(grpc.StatusCode.INTERNAL, f"internal error, incident {incident}")

    def _audit(self, exc: CobrandError, method: str, context: grpc.ServicerContext) -> None:
        presented = _presented(context) if self._authenticated else None
        identity = presented.identity if presented is not None else None
        _LOG.warning(
            "[%s] %s denied to %s (serial %s) from %s: %s",
            method,
            exc.status.name,
            presented.subject if presented is not None else "a caller without certificate",
            f"{presented.serial:x}" if presented is not None else "none",
            context.peer(),
            _details(exc),
        )
        if self._denials is None:
            return
        denial = Denial(
            at=dt.datetime.now(dt.UTC),
            method=method,
            status=exc.status.name,
            reason=exc.reason,
            peer=context.peer(),
            subject=presented.subject if presented is not None else None,
            serial=f"{presented.serial:x}" if presented is not None else None,
            party=identity.party.value if identity is not None else None,
            role=identity.role.value if identity is not None else None,
            name=identity.name if identity is not None else None,
            message=_details(exc),
        )
        try:
            self._denials.record(denial)
        except OSError:
            # The caller is refused all the same; the operator must learn the record is lost.
            _LOG.exception("[%s] denial NOT recorded in %s", method, self._denials.path)


@dataclass(frozen=True, slots=True)
class _Malformed:
    """Stands for request bytes that did not parse, so the call can refuse them in its status."""

    message_type: str


def _message_type(deserializer: Deserializer | None) -> str:
    """The full name of the message `deserializer` parses (a generated ``FromString``)."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def _tolerant(deserializer: Deserializer | None, message_type: str) -> Deserializer | None:
    """`deserializer`, answering `_Malformed` instead of raising on bytes that do not parse.

    gRPC turns any deserializer exception into ``INTERNAL`` before the handler runs; a value
    lets the wrapped behaviour refuse the bytes as ``INVALID_ARGUMENT`` after authorization.
    """
    if deserializer is None:
        return None
    malformed = _Malformed(message_type)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return malformed

    return deserialize


def _check_parsed(request: Any, method: str) -> Any:
    if isinstance(request, _Malformed):
        raise InvalidRequest(f"{method}: request is not a valid {request.message_type} message")
    return request


class _CheckedRequests:
    """A request stream that raises ``InvalidRequest`` at a message that did not parse."""

    def __init__(self, requests: Iterator[Any], method: str) -> None:
        self._requests = requests
        self._method = method

    def __iter__(self) -> _CheckedRequests:
        return self

    def __next__(self) -> Any:
        return _check_parsed(next(self._requests), self._method)


@dataclass(frozen=True, slots=True)
class _Call:
    """Wraps one method's behaviour in the interceptor's steps."""

    method: str
    interceptor: Interceptor

    def _admit(self, request: Any, context: grpc.ServicerContext, *, streamed: bool) -> Any:
        self.interceptor.authorize(self.method, context)
        if streamed:
            return _CheckedRequests(request, self.method)
        return _check_parsed(request, self.method)

    def unary(self, behavior: Behavior, *, streamed: bool = False) -> Behavior:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(self._admit(request, context, streamed=streamed), context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status, see abort
                self.interceptor.abort(exc, self.method, context)

        return wrapped

    def stream(self, behavior: Behavior, *, streamed: bool = False) -> Behavior:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # A generator, so errors raised while responses are produced are translated too.
            try:
                yield from behavior(self._admit(request, context, streamed=streamed), context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status, see abort
                self.interceptor.abort(exc, self.method, context)

        return wrapped


def _details(exc: CobrandError) -> str:
    """The message of `exc`, cut to fit the status details gRPC carries in a header."""
    # A message quoting a hostile input whole (a megabyte "version") would exceed the peer's
    # header limit (8 KiB soft, 16 KiB hard; non-ASCII bytes are sent percent-encoded, three
    # characters each), and the caller would see RESOURCE_EXHAUSTED instead of the status.
    message = str(exc)
    encoded = message.encode("utf-8")
    if len(encoded) <= MAX_DETAILS_BYTES:
        return message
    kept = encoded[:MAX_DETAILS_BYTES].decode("utf-8", errors="ignore")
    return f"{kept}... ({len(message) - len(kept)} more characters)"


def _is_abort(exc: Exception, context: grpc.ServicerContext) -> bool:
    """Whether `exc` is the bare Exception that ``context.abort`` raises to end the call."""
    # grpc's sync server signals abort() with a plain `Exception()` after recording the status;
    # it must pass through so the handler's own status reaches the caller. (grpc-stubs 1.53
    # predates ServicerContext.code().)
    code = cast(Any, context).code()
    return type(exc) is Exception and not exc.args and code is not None
