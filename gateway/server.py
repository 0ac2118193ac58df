"""Starting the gateway: load the served version and everything it scores with, check the
partner holds the same version, serve ScoringGateway over mutual TLS.

At start, `start_gateway`

1. reads the bank node's settings for its table (stored features of existing customers), its
   schema and its ``data_dir`` (the model registry and the alignment result, indexed in memory
   by `gateway.applicants`);
2. loads the served version (`bank_node.model_registry.load_bank_version`, every file checked
   against its manifest; the rights-package classes are the version's own) and the decision
   configuration (`gateway.scoring.Scorer`);
3. asks the partner for its manifest digest of the version (``DescribeVersion``), checks it
   is the one the bank recorded when both sides published it (`verify_peer`) and has the
   partner load the version (`PartnerClient.warm_up`, `gateway.partner_check`); a partner that
   holds other files stops the start, while an unreachable one is only logged: the gateway
   serves from the bank's slice alone (``UNAVAILABLE``) and keeps asking in the background,
   using the partner from the moment the check passes; consenting applicants outside the
   alignment are looked up over the same channel (`gateway.consented_lookup`), whose index
   at the partner a reachable partner is asked to build at once;
4. opens the audit log and starts serving ScoringGateway (with Prometheus metrics,
   `gateway.metrics`, when ``metrics_listen`` is set), the standard gRPC health service
   (``grpc.health.v1.Health``: SERVING from the moment it serves, for the whole server and for
   ``cobrand.v1.ScoringGateway``) and server reflection.

Health and reflection sit behind the same mutual TLS and allow-list as scoring
(`OPERATIONS_ROLES`): ``Check`` is open to the application flows (role ``app``, the bank's and
the partner's) and to the bank's own services (``bank``, ``gateway``); a ``Watch`` stream holds
a handler thread for its whole life, so only the bank's own services may open one; reflection
describes every service served, so it too is for the bank's services only. ``bank`` and
``gateway`` are roles only the bank's CA can issue (`cobrand.pki.identity.PARTY_ROLES`).

`Gateway.swap` (``SIGHUP`` under `serve`, re-reading ``model_version``) swaps a newly published
version in without stopping: it loads the version from the bank's registry, has the partner's
copy verified and warmed the same way, and only then serves it; a partner that does not hold it
yet refuses the swap (``FAILED_PRECONDITION``) and the gateway keeps serving the version it had.
Each call takes the versions served once at its start (`ScoringServicer.serve`), so a call in
progress finishes on its version and none combines two. The version swapped out stays served
for callers that name it, and verified at the partner, which keeps two versions loaded.

`Gateway.stop` first turns health to NOT_SERVING, so load balancers and watchers stop sending,
then lets the calls in progress finish (each one's decision recorded) before the
audit log closes.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from bank_node.config import BankNodeConfig
from bank_node.model_registry import load_bank_version
from cobrand import oprf
from cobrand.denials import GATEWAY_DENIAL_LOG
from cobrand.errors import CobrandError, FailedPrecondition
from cobrand.model_store import ModelStore
from cobrand.party_files import load_own_table
from cobrand.pki import Party, Role
from cobrand.rpc import (
    ServicerAdder,
    create_channel,
    create_server,
    full_method_name,
)
from cobrand.schema import load_party_schema
from cobrand.settings import load_settings
from cobrand.v1 import scoring_pb2
from gateway.applicants import ApplicantDirectory, JoinKeyIndex
from gateway.application import stored_features_of
from gateway.audit_log import AuditLog, open_audit_log
from gateway.config import load_decision_config
from gateway.consented_lookup import ConsentedLookupClient
from gateway.metrics import GatewayMetrics, MeasuredScoringServicer, serve_metrics
from gateway.partner_breaker import CircuitBreaker
from gateway.partner_check import PartnerCheck
from gateway.partner_client import PartnerClient
from gateway.pseudonyms import PseudonymKey
from gateway.scoring import Scorer
from gateway.service import SCORING_ROLES, ScoringServicer, ServedVersions, scoring_service
from gateway.settings import GatewaySettings

__all__ = [
    "OPERATIONS_ROLES",
    "SERVED_SERVICES",
    "Gateway",
    "VersionSwitch",
    "load_scorer",
    "serve",
    "start_gateway",
]

_LOG = logging.getLogger(__name__)

_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
_REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
_BANK_SERVICES = frozenset({Role.BANK, Role.GATEWAY})

SERVED_SERVICES = (
    scoring_pb2.DESCRIPTOR.services_by_name["ScoringGateway"].full_name,
    _HEALTH.full_name,
    _REFLECTION.full_name,
)
"""The services a gateway serves, as health checking and reflection name them."""

OPERATIONS_ROLES: Mapping[str, frozenset[Role]] = {
    full_method_name(_HEALTH, "Check"): frozenset({Role.APP, *_BANK_SERVICES}),
    full_method_name(_HEALTH, "Watch"): _BANK_SERVICES,
    full_method_name(_REFLECTION, "ServerReflectionInfo"): _BANK_SERVICES,
}
"""Who may call health checking and reflection (see the module docstring)."""


class VersionSwitch:
    """Swaps the model version a running gateway serves; one swap at a time.

    Parameters
    ----------
    servicer : ScoringServicer
    partner : PartnerCheck
    load : callable
        The scorer of a version id from the bank's registry (`load_scorer`).
    """

    def __init__(
        self, servicer: ScoringServicer, partner: PartnerCheck, load: Callable[[str], Scorer]
    ) -> None:
        self._servicer = servicer
        self._partner = partner
        self._load = load
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        """The version an application naming none is scored with."""
        return self._servicer.versions.current

    def swap(self, version_id: str) -> None:
        """Serve `version_id` from the next call on, once the partner's copy is verified.

        Raises
        ------
        UnknownModelVersion
            The version is not in the bank's registry.
        FailedPrecondition
            A file of the version differs from its manifest, its bank features are not those
            the gateway's stored rows hold, or the partner does not hold it as published
            (or cannot be asked): the gateway keeps serving the version it had.
        ConfigError
            The decision file does not fit the version.
        """
        with self._lock:
            served = self._servicer.versions
            if version_id == served.current:
                _LOG.info("[Gateway] model version %s is already served", version_id)
                return
            previous = served.scorers[served.current]
            scorer = self._load(version_id)
            _check_same_bank_features(previous, scorer)
            self._partner.adopt(scorer.version.manifest)
            # The version swapped out stays served for calls in progress and callers naming it.
            self._servicer.serve(
                ServedVersions({version_id: scorer, served.current: previous}, version_id)
            )
            _LOG.info(
                "[Gateway] serving model version %s in place of %s", version_id, served.current
            )


def _check_same_bank_features(served: Scorer, new: Scorer) -> None:
    """Refuse a version whose bank features differ: the stored rows were read for the served
    one's (a new feature set needs a new schema, hence a restart)."""

    def features(scorer: Scorer) -> tuple[list[str], list[str]]:
        pre = scorer.version.preprocessor
        return [s.name for s in pre.numeric], [s.name for s in pre.categorical]

    if features(served) != features(new):
        raise FailedPrecondition(
            f"model version {new.version.manifest.version_id} has other bank features than "
            f"version {served.version.manifest.version_id}: restart the gateway to serve it"
        )


@dataclass(frozen=True)
class Gateway:
    """A started gateway."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    partner: PartnerCheck
    versions: VersionSwitch
    audit: AuditLog
    resources: ExitStack
    grace_s: float
    metrics_port: int | None

    def swap(self, version_id: str) -> None:
        """Serve `version_id` without stopping (`VersionSwitch.swap`)."""
        self.versions.swap(version_id)

    def stop(self, grace: float | None = None) -> None:
        """Stop serving; calls in progress get `grace` seconds (the settings' by default) to
        finish and be recorded, then the audit log and the partner channel close. Health turns
        NOT_SERVING first and stays so."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace_s if grace is None else grace).wait()
        self.resources.close()


def load_scorer(bank: BankNodeConfig, decision_config: Path, version_id: str) -> Scorer:
    """The scorer of version `version_id` from the bank's registry with `decision_config`.

    Raises
    ------
    UnknownModelVersion
        The version is not in the bank's registry.
    FailedPrecondition
        A file of the version differs from its manifest.
    ConfigError
        A bad decision file, or one that does not fit the version.
    """
    version = load_bank_version(ModelStore(bank.data_dir / "models"), version_id)
    return Scorer(version, load_decision_config(decision_config))


def start_gateway(settings: GatewaySettings) -> Gateway:
    """Load the served version and its inputs, check the partner, start serving.

    Raises
    ------
    ConfigError
        A bad settings, federation, schema, table or decision file, a bad key file, or an
        address that cannot be bound.
    UnknownModelVersion
        The version is not in the bank's registry.
    FailedPrecondition
        A file of the version differs from its manifest, or the partner holds another copy.
    CertificateError
        Missing, expired or mismatched TLS files.
    """
    torch.set_num_threads(settings.torch_threads)
    bank = load_settings(BankNodeConfig, settings.bank)
    federation, table = load_own_table(Party.BANK, bank.federation, bank.schema_file, bank.table)
    schema = load_party_schema(bank.schema_file, federation)
    scorer = load_scorer(bank, settings.decision_config, settings.model_version)
    version = scorer.version
    applicants = ApplicantDirectory(
        frozenset(federation.identifier_kinds),
        schema.identifier.kind,
        JoinKeyIndex.read(bank.data_dir),
        PseudonymKey.from_file(settings.pseudonym_key),
        stored_features_of(table, version.preprocessor),
    )
    resources = ExitStack()
    try:
        channel = resources.enter_context(
            create_channel(
                settings.partner.address,
                settings.tls,
                insecure=settings.insecure,
                server_name=settings.partner.server_name,
                server_party=Party.PARTNER,
            )
        )
        partner = PartnerCheck(
            PartnerClient(
                channel,
                settings.partner.deadline_ms / 1000,
                CircuitBreaker(settings.partner.breaker),
            ),
            version.manifest,
            settings.partner.verify_timeout_s,
            settings.partner.verify_retry_s,
        )
        consented = ConsentedLookupClient(channel, oprf.lookup_domain(federation))
        if partner.check():
            consented.warm_up(version.manifest.version_id, settings.partner.verify_timeout_s)
        else:
            partner.keep_checking()
        resources.callback(partner.stop)
        audit = resources.enter_context(open_audit_log(settings.audit))
        metrics = GatewayMetrics()
        servicer = MeasuredScoringServicer(
            ServedVersions({version.manifest.version_id: scorer}, version.manifest.version_id),
            applicants,
            partner,
            audit,
            metrics=metrics,
            consented_lookup=consented,
        )
        metrics_port = None
        if settings.metrics_listen is not None:
            endpoint = serve_metrics(metrics, settings.metrics_listen)
            resources.callback(endpoint.close)
            metrics_port = endpoint.port
        checks = health.HealthServicer()
        server, port = create_server(
            [scoring_service(servicer), _health_service(checks), _reflection_service],
            settings.listen,
            settings.tls,
            insecure=settings.insecure,
            allowed_roles={**SCORING_ROLES, **OPERATIONS_ROLES},
            denial_log=settings.denial_log or bank.data_dir / GATEWAY_DENIAL_LOG,
            max_message_bytes=settings.max_message_bytes,
            max_workers=settings.max_workers,
        )
        server.start()
        # The version is loaded and the audit log open: scoring is served from now on.
        for service in ("", SERVED_SERVICES[0]):
            checks.set(service, health_pb2.HealthCheckResponse.SERVING)
        _LOG.info(
            "[Gateway] serving model version %s on port %d (partner %s; metrics %s)",
            version.manifest.version_id,
            port,
            "verified" if partner.verified else "not verified: bank slice only",
            "off" if metrics_port is None else f"on port {metrics_port}",
        )
    except BaseException:
        resources.close()
        raise
    versions = VersionSwitch(
        servicer,
        partner,
        lambda version_id: load_scorer(bank, settings.decision_config, version_id),
    )
    return Gateway(
        server,
        port,
        checks,
        partner,
        versions,
        audit,
        resources,
        settings.shutdown_grace_s,
        metrics_port,
    )


def _health_service(checks: health.HealthServicer) -> ServicerAdder:
    def add(server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)

    return add


def _reflection_service(server: grpc.Server) -> None:
    reflection.enable_server_reflection(SERVED_SERVICES, server)


def serve(
    settings: GatewaySettings,
    on_started: Callable[[Gateway], None] | None = None,
    reread_version: Callable[[], str] | None = None,
) -> None:
    """Run the gateway until SIGTERM or SIGINT, then stop it gracefully.

    On SIGHUP, swap in the version `reread_version` names (the settings file's
    ``model_version`` read again); a refused swap is logged and the gateway serves on.
    """
    stop = threading.Event()
    hangup = threading.Event()
    woken = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        (hangup if signum == signal.SIGHUP else stop).set()
        woken.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    gateway = start_gateway(settings)
    # What the start loaded (libraries, the version, the bank's stored rows) lives as long as
    # the process: out of the collector's full passes, which walked it all and stopped a
    # serving process for up to 190 ms at a time under load (partner lookups timed out).
    gc.freeze()
    try:
        if on_started is not None:
            on_started(gateway)
        while not stop.is_set():
            woken.wait()
            woken.clear()
            if hangup.is_set() and not stop.is_set():
                hangup.clear()
                _swap_on_hangup(gateway, reread_version)
    finally:
        gateway.stop()


def _swap_on_hangup(gateway: Gateway, reread_version: Callable[[], str] | None) -> None:
    if reread_version is None:
        _LOG.warning("[Gateway] SIGHUP ignored: no settings file to read the version from")
        return
    try:
        gateway.swap(reread_version())
    except CobrandError as err:
        _LOG.error(
            "[Gateway] swap refused, still serving model version %s: %s",
            gateway.versions.current,
            err,
        )
