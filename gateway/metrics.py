"""The gateway's Prometheus metrics and the local HTTP endpoint that exposes them.

`GatewayMetrics` holds, in a registry of its own (so two gateways in one process never share
counts):

- ``cobrand_gateway_score_application_seconds{code}``: a histogram of ScoreApplication's time
  in the handler, by the gRPC status it ended with (``OK``, ``INVALID_ARGUMENT``...), with
  buckets around the 10 ms goal;
- ``cobrand_gateway_decisions_total{decision}``: new decisions by outcome (``approve``,
  ``refer``, ``decline``); an idempotent retry answered from the audit log is not a new one;
- ``cobrand_gateway_partner_fallbacks_total{status}``: applications scored from the bank's slice
  alone, by why the partner's slice was not used (``no_consent``, ``unknown_applicant``,
  ``timeout``, ``unavailable``); with the decisions total it gives the fallback share.

`MeasuredScoringServicer` is the scoring servicer that records them: the latency around each
call, the counts from each new decision the servicer reports once it is durable. Labels are
closed sets (status names, decisions, slice statuses): never an identifier, a request id or a
version.
`serve_metrics` exposes the registry over plain HTTP at ``/metrics``; bind it to a local or
internal address only (the counts are operational, but not for the open network).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from cobrand.errors import CobrandError, ConfigError
from cobrand.v1 import scoring_pb2
from gateway.applicants import ApplicantDirectory
from gateway.audit_log import AuditLog
from gateway.audit_record import AuditRecord, PartnerSliceStatus
from gateway.config import Decision
from gateway.consented_lookup import ConsentedLookupClient
from gateway.service import PartnerSource, ScoringServicer, ServedVersions

__all__ = [
    "LATENCY_BUCKETS_S",
    "GatewayMetrics",
    "MeasuredScoringServicer",
    "MetricsEndpoint",
    "serve_metrics",
]

LATENCY_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Histogram bounds in seconds: fine below the 10 ms p99 goal, coarse above it."""


class GatewayMetrics:
    """The gateway's metrics in their own registry; see the module docstring."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "cobrand_gateway_score_application_seconds",
            "ScoreApplication time in the handler, by the gRPC status it ended with.",
            ["code"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS_S,
        )
        self.decisions = Counter(
            "cobrand_gateway_decisions",
            "New decisions by outcome (idempotent retries answered from the log excluded).",
            ["decision"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "cobrand_gateway_partner_fallbacks",
            "Applications scored from the bank's slice alone, by why the partner's was not used.",
            ["status"],
            registry=self.registry,
        )
        # Every series from the start, at 0: a rate over a series that appears late is wrong.
        # Each labelled series is kept, so a call counts without looking its labels up.
        self._decided = {decision: self.decisions.labels(decision.value) for decision in Decision}
        self._fell_back = {
            status: self.fallbacks.labels(status.value)
            for status in PartnerSliceStatus
            if status is not PartnerSliceStatus.USED
        }
        # A status code's series appears with its first call (no call ended with most codes).
        self._latency: dict[grpc.StatusCode, Histogram] = {}

    def observe(self, code: grpc.StatusCode, seconds: float) -> None:
        """Record one call's time in the handler, by the status it ended with."""
        series = self._latency.get(code)
        if series is None:
            series = self._latency.setdefault(code, self.latency.labels(code.name))
        series.observe(seconds)

    def decided(self, record: AuditRecord) -> None:
        """Count a new decision, durable in the audit log, and why the partner's slice was not
        used if it was not (the partner's channel never sees that status in its reply)."""
        self._decided[record.result.decision].inc()
        if record.partner_status is not PartnerSliceStatus.USED:
            self._fell_back[record.partner_status].inc()


class MeasuredScoringServicer(ScoringServicer):
    """`ScoringServicer` recording `GatewayMetrics` for every call.

    Parameters
    ----------
    versions, applicants, partner, audit, consented_lookup
        As for `ScoringServicer`.
    metrics : GatewayMetrics
    """

    def __init__(
        self,
        versions: ServedVersions,
        applicants: ApplicantDirectory,
        partner: PartnerSource,
        audit: AuditLog,
        *,
        metrics: GatewayMetrics,
        consented_lookup: ConsentedLookupClient | None = None,
    ) -> None:
        super().__init__(
            versions,
            applicants,
            partner,
            audit,
            on_decided=metrics.decided,
            consented_lookup=consented_lookup,
        )
        self._metrics = metrics

    def ScoreApplication(  # noqa: N802 -- the generated servicer's method name
        self, request: scoring_pb2.ScoreApplicationRequest, context: grpc.ServicerContext
    ) -> scoring_pb2.ScoreApplicationResponse:
        started = time.perf_counter()
        code = grpc.StatusCode.INTERNAL
        try:
            reply = super().ScoreApplication(request, context)
            code = grpc.StatusCode.OK
        except CobrandError as err:
            code = err.status
            raise
        finally:
            self._metrics.observe(code, time.perf_counter() - started)
        return reply


@dataclass(frozen=True)
class MetricsEndpoint:
    """A running ``/metrics`` HTTP endpoint; `close` stops it."""

    port: int
    server: WSGIServer
    thread: threading.Thread

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve_metrics(metrics: GatewayMetrics, address: str) -> MetricsEndpoint:
    """Serve `metrics` over HTTP at ``http://<address>/metrics`` from a background thread.

    Parameters
    ----------
    address : str
        ``host:port`` (checked by the settings); port 0 picks a free port.

    Raises
    ------
    ConfigError
        Naming ``metrics_listen`` when the address cannot be bound.
    """
    host, _, port = address.rpartition(":")
    try:
        server, thread = start_http_server(int(port), host.strip("[]"), metrics.registry)
    except OSError as exc:
        raise ConfigError(f"setting 'metrics_listen': cannot bind {address!r}: {exc}") from exc
    return MetricsEndpoint(server.server_port, server, thread)
