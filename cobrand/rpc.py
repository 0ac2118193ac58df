"""gRPC server and channel builders with mutual TLS, behind the one interceptor.

``create_server`` and ``create_channel`` are the only places TLS credentials are made. Servers
require a client certificate from a CA in their trust bundle (``cobrand.pki``) and run every
call through ``cobrand.interceptor``: authentication (a revoked certificate is refused), the
per-method role allow-list, refusal of request bytes that do not parse, error translation, and
the durable record of refused callers (`cobrand.denials`). The caller's ``PeerIdentity`` comes
from its certificate and handlers read it with ``caller(context)``.

Long-lived channels (the gateway's to the partner, the trainer's data plane) send a keepalive
ping every ``KEEPALIVE_TIME_MS`` even while idle, so a peer that vanished without closing its
connection (a crashed host, a dropped NAT entry) is noticed within
``KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS`` and the channel reconnects, rather than the next
call waiting out its deadline on a dead connection. Servers accept such pings (at most one per
``MIN_PING_INTERVAL_MS``, below the clients' interval) instead of answering GOAWAY
``too_many_pings``, and ping their idle clients the same way.

Insecure mode (plain TCP) exists only for local development, only when ``insecure=True`` is
passed, and logs a warning every time: it authenticates nobody, so ``caller`` raises and the
allow-list is not applied.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from cobrand.denials import DenialLog
from cobrand.errors import ConfigError
from cobrand.interceptor import INCIDENT_METADATA_KEY, REASON_METADATA_KEY, Interceptor, caller
from cobrand.pki import (
    Party,
    Role,
    WatchedRevocations,
    load_tls_material,
    party_trust_bundle,
)
from cobrand.settings import Section

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "INCIDENT_METADATA_KEY",
    "KEEPALIVE_TIMEOUT_MS",
    "KEEPALIVE_TIME_MS",
    "MIN_PING_INTERVAL_MS",
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

# Large enough for a data-plane batch of embeddings or gradients; the gRPC default is 4 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
KEEPALIVE_TIME_MS: Final = 30_000
"""How often an idle connection is pinged, by channels and servers alike."""
KEEPALIVE_TIMEOUT_MS: Final = 10_000
"""How long a ping may go unanswered before the connection is closed as dead."""
MIN_PING_INTERVAL_MS: Final = 20_000
"""The shortest interval between a client's pings that a server tolerates."""
_FULL_METHOD_RE = re.compile(r"^/[A-Za-z_][\w.]*/[A-Za-z_]\w*$")

ServicerAdder = Callable[[grpc.Server], None]


class TlsFiles(Section):
    """The files a process needs for mutual TLS (made with ``cobrand pki``).

    Attributes
    ----------
    ca_bundle, cert, key : Path
        The trust bundle, this process's certificate and its key.
    crl : Path, optional
        The revocation lists of the bundle's CAs, PEM, one after the other (the party's own
        ``ca.crl`` and the one the other party sent); a server refuses the certificates they
        list. Checked against the bundle when loaded (`cobrand.pki.load_revocations`), and
        read again when it changes (`cobrand.pki.WatchedRevocations`).
    """

    ca_bundle: Path
    cert: Path
    key: Path
    crl: Path | None = None


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
    denial_log: Path | None = None,
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
    denial_log : Path, optional
        The file every refused call (``PERMISSION_DENIED``, ``UNAUTHENTICATED``) is appended
        to (`cobrand.denials.DenialLog`); without it refusals are only logged.
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
        not a full method name, the CRL file is bad or not signed by a CA of the bundle, the
        denial log cannot be written, or the address cannot be bound.
    CertificateError
        If a TLS file is missing, expired, mismatched or untrusted.
    """
    if allowed_roles is not None:
        _check_method_names(allowed_roles)
    tls = _tls_unless_insecure(tls, insecure, f"server on {address}")
    if tls is None:
        _LOG.warning(
            "INSECURE server on %s: no TLS, no client authentication, no per-method "
            "authorization; for local development only",
            address,
        )
        credentials, interceptor = None, Interceptor(allowed_roles, authenticated=False)
    else:
        material = load_tls_material(tls.ca_bundle, tls.cert, tls.key)
        credentials = grpc.ssl_server_credentials(
            [(material.private_key, material.cert_chain)],
            root_certificates=material.trust_bundle,
            require_client_auth=True,
        )
        interceptor = Interceptor(
            allowed_roles,
            authenticated=True,
            revocations=None if tls.crl is None else WatchedRevocations(tls.ca_bundle, tls.crl),
            denials=DenialLog(denial_log) if denial_log is not None else None,
        )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cobrand-rpc"),
        interceptors=[interceptor],
        options=[*_message_options(max_message_bytes), *_SERVER_KEEPALIVE],
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
    server_party: Party | None = None,
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
    server_party : Party, optional
        The party the server must belong to: the channel then trusts only that party's CA
        from the bundle, so a server certificate of the other party is refused in the TLS
        handshake (the gateway expects the partner's node, never a bank certificate).
    max_message_bytes : int
        Largest message accepted or sent.

    Raises
    ------
    ConfigError
        If TLS is missing without ``insecure=True``, or given with it.
    CertificateError
        If a TLS file is missing, expired, mismatched or untrusted, or the bundle holds no
        CA of `server_party`.
    """
    options = [*_message_options(max_message_bytes), *_CHANNEL_KEEPALIVE, *_CHANNEL_RECONNECT]
    tls = _tls_unless_insecure(tls, insecure, f"channel to {target}")
    if tls is None:
        _LOG.warning("INSECURE channel to %s: no TLS, the server is not authenticated", target)
        return grpc.insecure_channel(target, options=options)
    material = load_tls_material(tls.ca_bundle, tls.cert, tls.key)
    trusted = (
        material.trust_bundle
        if server_party is None
        else party_trust_bundle(tls.ca_bundle, server_party)
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trusted,
        private_key=material.private_key,
        certificate_chain=material.cert_chain,
    )
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, credentials, options=options)


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


_CHANNEL_KEEPALIVE: Final = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Idle channels too: the gateway's channel to the partner may sit idle between calls.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
# A peer that comes back is reconnected to within about a second: gRPC's default backoff grows
# to 120 s, so a partner restarted after a minute's outage would go unused for minutes.
_CHANNEL_RECONNECT: Final = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
_SERVER_KEEPALIVE: Final = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ("grpc.http2.max_ping_strikes", 2),
)


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
