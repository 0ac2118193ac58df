"""The gateway's one settings model, `GatewaySettings`, read from ``gateway.yaml``.

Example::

    listen: 0.0.0.0:8443
    tls:
      ca_bundle: /srv/cobrand/pki/trust.pem  # the bank's CA and the partner's (its app calls)
      cert: /srv/cobrand/pki/gateway.crt     # role "gateway"
      key: /srv/cobrand/pki/gateway.key
    bank: /srv/cobrand/bank.yaml             # the bank node's settings: table, data_dir...
    model_version: 3f9c0a1b2d4e5f60          # in <bank data_dir>/models, held by the partner too
    decision_config: /srv/cobrand/decision.yaml
    pseudonym_key: /srv/cobrand/pseudonym.key  # >= 32 random bytes, kept secret
    partner:
      address: partner.example.com:7443
      deadline_ms: 50
      breaker: {window_s: 10, min_calls: 20, failure_ratio: 0.5, cool_down_s: 5}
    audit: {backend: sqlite, path: /srv/cobrand/audit.db}
    metrics_listen: 127.0.0.1:9464           # Prometheus /metrics over HTTP; off when left out

Relative paths are relative to the working directory. Every key can also come from the
environment, ``COBRAND_GATEWAY_<KEY>`` (nested with ``__``, e.g.
``COBRAND_GATEWAY_PARTNER__DEADLINE_MS``), where the file leaves it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from cobrand.rpc import TlsFiles
from cobrand.settings import ProcessSettings, Section
from gateway.audit_log import AuditSettings

__all__ = ["BreakerSettings", "GatewaySettings", "PartnerSettings"]


class BreakerSettings(Section):
    """The partner call's circuit breaker (`gateway.partner_breaker.CircuitBreaker`).

    It opens when, over the last `window_s`, at least `min_calls` calls were made and at least
    `failure_ratio` of them failed. A rate, not failures in a row: one slow moment at the
    partner fails every call in flight at once (32 with ``max_workers: 32``), which is no
    outage (opening after 5 in a row, under load, about 1% of lookups timing out opened it
    again and again: 40% of applications scored bank-only).

    Attributes
    ----------
    window_s : float
        The sliding window the calls are counted over (to within a tenth of it).
    min_calls : int
        Calls within the window below which it never opens: a few failures of a quiet
        gateway are no evidence. A partner that is down opens it after this many calls, each
        decided bank-only within the deadline.
    failure_ratio : float
        The share of failed calls in the window, in (0, 1], that opens it.
    cool_down_s : float
        How long it stays open before one trial call.
    """

    window_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    min_calls: Annotated[int, Field(ge=1, le=1_000_000)] = 20
    failure_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    cool_down_s: Annotated[float, Field(ge=0, le=3600)] = 5.0


class PartnerSettings(Section):
    """Where the partner's embedding service answers, and how long an application waits for it.

    Attributes
    ----------
    address : str
        ``host:port`` of the partner node.
    server_name : str, optional
        The name to expect in the partner's certificate when it differs from the host.
    deadline_ms : float
        Deadline of each embedding lookup; past it the application is scored bank-only.
    breaker : BreakerSettings
    verify_timeout_s : float
        Deadline of the check, at start, that the partner holds the version served.
    verify_retry_s : float
        While that check cannot reach the partner, how often it is tried again.
    """

    address: str
    server_name: str | None = None
    deadline_ms: Annotated[float, Field(gt=0, le=10_000)] = 50.0
    breaker: BreakerSettings = BreakerSettings()
    verify_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    verify_retry_s: Annotated[float, Field(gt=0, le=3600)] = 10.0


class GatewaySettings(ProcessSettings):
    """Settings of the bank's scoring gateway.

    Attributes
    ----------
    listen : str
        ``host:port`` to serve ScoringGateway on.
    tls : TlsFiles, optional
        The gateway's certificate (role ``gateway``), key and trust bundle (the bank's CA and
        the partner's). Required unless `insecure`.
    insecure : bool
        Serve and call without TLS, for local development only.
    bank : Path
        The bank node's settings file: its federation, schema and table (the stored features
        of existing customers) and ``data_dir`` (the model registry and the alignment result).
    model_version : str
        The version served; published at both sides. Read again on SIGHUP, when the gateway
        swaps to it without stopping (`gateway.server.VersionSwitch`).
    decision_config : Path
        The decision configuration (`gateway.config`).
    pseudonym_key : Path
        The key file of applicants' keyed pseudonyms (`gateway.pseudonyms`).
    partner : PartnerSettings
    audit : AuditSettings
    workers : int
        Gateway processes serving `listen` side by side (`gateway.workers`: one port, shared
        with ``SO_REUSEPORT``); 1 serves from the process started. Up to one per core: one
        process runs Python on one core at a time. Each worker serves its own ``/metrics`` on
        `metrics_listen`'s port plus its index (a scrape target each).
    max_workers : int
        Handler threads of each process (concurrent calls in progress).
    max_message_bytes : int
        Largest request accepted; a larger one is refused before it is read.
    shutdown_grace_s : float
        On stop, how long calls in progress get to finish.
    metrics_listen : str, optional
        ``host:port`` of the Prometheus ``/metrics`` HTTP endpoint (`gateway.metrics`): plain
        HTTP, so a loopback or internal address; none, the default, serves no metrics.
    denial_log : Path, optional
        Where every refused call is recorded (`cobrand.denials`); by default
        ``gateway-denials.jsonl`` in the bank node's ``data_dir``.
    torch_threads : int
        Torch's intra-op threads. One by default: calls run side by side on the handler
        threads, and splitting one application's pass of a dozen rows over several threads
        costs more than it saves (on a shared 2-core machine, 0.45 ms a pass on one thread
        against 6.8 ms on two).
    """

    model_config = SettingsConfigDict(env_prefix="COBRAND_GATEWAY_")

    listen: str
    tls: TlsFiles | None = None
    insecure: bool = False
    bank: Path
    model_version: str
    decision_config: Path
    pseudonym_key: Path
    partner: PartnerSettings
    audit: AuditSettings
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    max_workers: Annotated[int, Field(ge=1, le=1024)] = 32
    max_message_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    shutdown_grace_s: Annotated[float, Field(ge=0, le=600)] = 10.0
    torch_threads: Annotated[int, Field(ge=1, le=256)] = 1
    metrics_listen: str | None = None
    denial_log: Path | None = None

    @field_validator("metrics_listen")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9464)")
        return value
