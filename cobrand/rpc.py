"""gRPC server and channel builders with mutual TLS, and the one interceptor every server runs.

``create_server`` and ``create_channel`` are the only places TLS credentials are made. Servers
require a client certificate from a CA in their trust bundle (``cobrand.pki``); the caller's
``PeerIdentity`` comes from that certificate and handlers read it with ``caller(context)``.

The interceptor wraps each handler's behaviour, not just the call: a gRPC server interceptor
sees only the method name and metadata, and the peer certificate is on the ServicerContext
(grpc/grpc#18459). For every call it

1. authenticates: parses the peer certificate into a ``PeerIdentity`` (cached per certificate);
2. authorizes: with ``allowed_roles``, a method is open only to the roles listed for it, and a
   method not listed is open to nobody (``PERMISSION_DENIED``);
3. translates errors: a ``CobrandError`` becomes its status with its message and the trailing
   metadata ``cobrand-reason: <REASON>``; anything else becomes ``INTERNAL`` with
   ``internal error, incident <id>`` to the caller and the traceback under that id in the log.

Insecure mode (plain TCP) exists only for local development, only when ``insecure=True`` is
passed, and logs a warning every time: it authenticates nobody, so ``caller`` raises and the
allow-list is not applied.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from cobrand.errors import CertificateError, CobrandError, ConfigError, PermissionDenied
from cobrand.pki import PeerIdentity, Role, identity_from_pem, load_tls_material
from cobrand.settings import Section

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "INCIDENT_METADATA_KEY",
    "REASON_METADATA_KEY",
    "ServicerAdder",
    "TlsFiles",
    "caller",
    "create_channel",
    "create_server",
    "full_method_name",
    "service_roles",
]

_LOG = logging.getLogger(__name__)

REASON_METADATA_KEY = "cobrand-reason"
INCIDENT_METADATA_KEY = "cobrand-incident"
# Large enough for a data-plane batch of embeddings or gradients; the gRPC default is 4 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_FULL_METHOD_RE = re.compile(r"^/[A-Za-z_][\w.]*/[A-Za-z_]\w*$")

ServicerAdder = Callable[[grpc.Server], None]
Behavior = Callable[..., Any]
Authorize = Callable[[grpc.ServicerContext], None]

# grpc-stubs makes these generic; grpc itself does not, so subscript them for mypy only.
if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler
    _ServerInterceptor = grpc.ServerInterceptor


class TlsFiles(Section):
    """The three files a process needs for mutual TLS (made with ``cobrand pki``)."""

    ca_bundle: Path
    cert: Path
    key: Path


def caller(context: grpc.ServicerContext) -> PeerIdentity:
    """The authenticated identity of the peer making this call.

    Raises
    ------
    CertificateError
        If the call carries no client certificate (an insecure server) or one without a
        cobrand identity.
    """
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        raise CertificateError("the caller presented no client certificate")
    return _identity(bytes(pems[0]))


@functools.lru_cache(maxsize=1024)
def _identity(pem: bytes) -> PeerIdentity:
    # Peers reuse one certificate for every call; parsing it once per certificate is enough.
    return identity_from_pem(pem)


def full_method_name(service: ServiceDescriptor, method: str) -> str:
    """The path gRPC names a method by, ``/<package>.<Service>/<Method>``, from the contract."""
    return f"/{service.full_name}/{service.methods_by_name[method].name}"


def service_roles(service: ServiceDescriptor, roles: frozenset[Role]) -> dict[str, frozenset[Role]]:
    """An allow-list (for ``create_server``) admitting `roles` to every method of `service`."""
    return {full_method_name(service, method.name): roles for method in service.methods}


def create_server(
    add_servicers: ServicerAdder | Sequence[ServicerAdder],
    address: str,
    tls: TlsFiles | None,
    *,
    insecure: bool = False,
    allowed_roles: Mapping[str, frozenset[Role]] | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_workers: int = 10,
) -> tuple[grpc.Server, int]:
    """Build a gRPC server (not yet started) bound to `address`, with mutual TLS.

    Parameters
    ----------
    add_servicers : callable or sequence of callables
        Each registers services on the server, e.g. ``lambda s: add_FooServicer_to_server(x, s)``.
    address : str
        ``host:port``; port 0 picks a free port (tests bind ``127.0.0.1:0``).
    tls : TlsFiles or None
        Trust bundle, certificate and key; checked by ``pki.load_tls_material`` before use.
        ``None`` only together with ``insecure=True``.
    insecure : bool
        Serve plain TCP without TLS. For local development only; logs a warning.
    allowed_roles : mapping of full method name to roles, optional
        ``{"/cobrand.v1.Scoring/Score": frozenset({Role.APP})}``; when given, every method not
        listed is refused with ``PERMISSION_DENIED``.
    max_message_bytes : int
        Largest message accepted or sent.
    max_workers : int
        Handler threads; each open stream holds one for its whole life.

    Returns
    -------
    tuple of (grpc.Server, int)
        The server and the port it is bound to.

    Raises
    ------
    ConfigError
        If TLS is missing without ``insecure=True`` (or given with it), an allow-list key is
        not a full method name, or the address cannot be bound.
    CertificateError
        If a TLS file is missing, expired, mismatched or untrusted.
    """
    if allowed_roles is not None:
        _check_method_names(allowed_roles)
    credentials = _server_credentials(tls, insecure=insecure, address=address)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cobrand-rpc"),
        interceptors=[_Interceptor(allowed_roles, authenticated=credentials is not None)],
        options=_message_options(max_message_bytes),
    )
    adders = [add_servicers] if callable(add_servicers) else list(add_servicers)
    for add in adders:
        add(server)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot bind server address {address!r}: {exc}") from exc
    if port == 0:
        raise ConfigError(f"cannot bind server address {address!r}")
    return server, port


def create_channel(
    target: str,
    tls: TlsFiles | None,
    *,
    insecure: bool = False,
    server_name: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    """Open a channel to `target` presenting this process's certificate (mutual TLS).

    Parameters
    ----------
    target : str
        ``host:port`` of the server.
    tls : TlsFiles or None
        As for ``create_server``; ``None`` only together with ``insecure=True``.
    insecure : bool
        Plain TCP, for local development only; logs a warning.
    server_name : str, optional
        The DNS name or IP to expect in the server certificate when it differs from the host
        in `target` (e.g. connecting through a tunnel).
    max_message_bytes : int
        Largest message accepted or sent.

    Raises
    ------
    ConfigError
        If TLS is missing without ``insecure=True``, or given with it.
    CertificateError
        If a TLS file is missing, expired, mismatched or untrusted.
    """
    options = _message_options(max_message_bytes)
    tls = _tls_unless_insecure(tls, insecure, f"channel to {target}")
    if tls is None:
        _LOG.warning("INSECURE channel to %s: no TLS, the server is not authenticated", target)
        return grpc.insecure_channel(target, options=options)
    material = load_tls_material(tls.ca_bundle, tls.cert, tls.key)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=material.trust_bundle,
        private_key=material.private_key,
        certificate_chain=material.cert_chain,
    )
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, credentials, options=options)


def _server_credentials(
    tls: TlsFiles | None, *, insecure: bool, address: str
) -> grpc.ServerCredentials | None:
    tls = _tls_unless_insecure(tls, insecure, f"server on {address}")
    if tls is None:
        _LOG.warning(
            "INSECURE server on %s: no TLS, no client authentication, no per-method "
            "authorization; for local development only",
            address,
        )
        return None
    material = load_tls_material(tls.ca_bundle, tls.cert, tls.key)
    return grpc.ssl_server_credentials(
        [(material.private_key, material.cert_chain)],
        root_certificates=material.trust_bundle,
        require_client_auth=True,
    )


def _tls_unless_insecure(tls: TlsFiles | None, insecure: bool, what: str) -> TlsFiles | None:
    """`tls`, or None for plain TCP: only when asked explicitly, never with TLS files too."""
    if tls is None and not insecure:
        raise ConfigError(
            f"{what} has no TLS files; give a tls section (ca_bundle, cert, key) or pass "
            "--insecure explicitly for local development"
        )
    if tls is not None and insecure:
        raise ConfigError(f"{what} was given both TLS files and --insecure; choose one")
    return tls


def _message_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def _check_method_names(allowed_roles: Mapping[str, frozenset[Role]]) -> None:
    for method, roles in allowed_roles.items():
        if not _FULL_METHOD_RE.match(method):
            raise ConfigError(
                f"allow-list key {method!r} is not a full method name like "
                "'/cobrand.v1.Scoring/Score'"
            )
        if not all(isinstance(role, Role) for role in roles):
            raise ConfigError(f"allow-list for {method} holds a value that is not a Role")


class _Interceptor(_ServerInterceptor):
    """Authenticates, authorizes and translates errors around every handler."""

    def __init__(
        self, allowed_roles: Mapping[str, frozenset[Role]] | None, *, authenticated: bool
    ) -> None:
        self._allowed_roles = dict(allowed_roles) if allowed_roles is not None else None
        self._authenticated = authenticated

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        authorize = functools.partial(self._authorize, method)
        codec: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, authorize), **codec
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, authorize), **codec
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, authorize), **codec
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method, authorize), **codec
            )
        return handler

    def _authorize(self, method: str, context: grpc.ServicerContext) -> None:
        if not self._authenticated:
            return
        identity = caller(context)
        if self._allowed_roles is None:
            return
        if identity.role not in self._allowed_roles.get(method, frozenset()):
            raise PermissionDenied(f"role '{identity.role}' may not call {method}")


def _wrap_unary(behavior: Behavior, method: str, authorize: Authorize) -> Behavior:
    def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
            authorize(context)
            return behavior(request_or_iterator, context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, see _abort_for
            _abort_for(exc, method, context)

    return wrapped


def _wrap_stream(behavior: Behavior, method: str, authorize: Authorize) -> Behavior:
    def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # A generator, so errors raised while responses are produced are translated too.
        try:
            authorize(context)
            yield from behavior(request_or_iterator, context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, see _abort_for
            _abort_for(exc, method, context)

    return wrapped


def _abort_for(exc: Exception, method: str, context: grpc.ServicerContext) -> NoReturn:
    """End the call with the status `exc` stands for; the one translation point."""
    if isinstance(exc, CobrandError):
        _LOG.info("[%s] refused %s: %s", method, exc.reason, exc)
        context.set_trailing_metadata(((REASON_METADATA_KEY, exc.reason),))
        context.abort(exc.status, str(exc))
    if _is_abort(exc, context):
        raise exc
    incident = secrets.token_hex(6)
    _LOG.error("[%s] internal error, incident %s", method, incident, exc_info=exc)
    context.set_trailing_metadata(
        ((REASON_METADATA_KEY, "INTERNAL"), (INCIDENT_METADATA_KEY, incident))
    )
    context.abort(grpc.StatusCode.INTERNAL, f"internal error, incident {incident}")


def _is_abort(exc: Exception, context: grpc.ServicerContext) -> bool:
    """Whether `exc` is the bare Exception that ``context.abort`` raises to end the call."""
    # grpc's sync server signals abort() with a plain `Exception()` after recording the status;
    # it must pass through so the handler's own status reaches the caller. (grpc-stubs 1.53
    # predates ServicerContext.code().)
    code = cast(Any, context).code()
    return type(exc) is Exception and not exc.args and code is not None
