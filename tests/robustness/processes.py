"""Test helper: the partner node and the gateway as processes of their own, and a load of
applications from client threads that records every answer.

`Served` starts ``python -m partner_node serve`` or ``cobrand gateway serve`` from a settings
file, waits for the port file each writes once it serves, and can be killed with SIGKILL or
stopped with SIGTERM. `Load` sends ScoreApplication from a few threads until stopped; each call
is an `Answer` (its request id, decision and partner slice status) or a `Failure` (its status).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import yaml

from cobrand.rpc import TlsFiles, create_channel
from cobrand.v1 import scoring_pb2, scoring_pb2_grpc
from gateway.settings import GatewaySettings
from partner_node.config import PartnerNodeConfig

__all__ = ["Answer", "Failure", "Load", "Served", "serve_gateway", "serve_partner"]

_REPO: Final = Path(__file__).resolve().parents[2]
_START_S: Final = 60.0


@dataclass
class Served:
    """A serving process and the port it serves on."""

    process: subprocess.Popen[bytes]
    port: int
    ready_at: float
    """`time.monotonic()` when its port file appeared: it serves from then on."""

    def kill(self) -> None:
        """SIGKILL: no cleanup, no grace, as a crash or an OOM kill."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def serve_partner(config: PartnerNodeConfig, directory: Path, name: str) -> Served:
    """``python -m partner_node serve`` with `config`, files named `name` under `directory`."""
    settings = directory / f"{name}.yaml"
    settings.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    return _serve([sys.executable, "-m", "partner_node", "serve"], settings, directory, name)


def serve_gateway(settings: GatewaySettings, directory: Path, name: str) -> Served:
    """``cobrand gateway serve`` with `settings`, files named `name` under `directory`."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    command = [sys.executable, "-c", "from gateway.cli import app; app()", "serve"]
    return _serve(command, path, directory, name)


def _serve(command: Sequence[str], settings: Path, directory: Path, name: str) -> Served:
    port_file = directory / f"{name}.port"
    port_file.unlink(missing_ok=True)
    # Output to files, never pipes: nobody reads them while the process runs.
    with (directory / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [*command, "--config", str(settings), "--port-file", str(port_file)],
            cwd=_REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(_REPO)},
        )
    give_up = time.monotonic() + _START_S
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > give_up:
            process.kill()
            log_text = (directory / f"{name}.log").read_text(errors="replace")
            raise AssertionError(f"{name} did not start:\n{log_text[-3000:]}")
        time.sleep(0.02)
    return Served(process, int(port_file.read_text()), time.monotonic())


@dataclass(frozen=True)
class Answer:
    """A decision received."""

    sent_at: float
    received_at: float
    request_id: str
    decision: int
    partner_status: int


@dataclass(frozen=True)
class Failure:
    """A call that ended without a decision."""

    sent_at: float
    code: grpc.StatusCode


@dataclass
class Load:
    """ScoreApplication from `clients` threads, each with its own channel, until `stop`.

    Parameters
    ----------
    port : int
        The gateway's.
    tls : TlsFiles
        The application flow's certificate (role ``app``).
    identifiers : sequence of str
        Applicants, taken in turn.
    clients : int
    timeout_s : float
        Each call's deadline.
    """

    port: int
    tls: TlsFiles
    identifiers: Sequence[str]
    clients: int = 3
    timeout_s: float = 5.0
    answers: list[Answer] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        """Start the client threads."""
        for client in range(self.clients):
            thread = threading.Thread(target=self._send, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop sending; calls in flight finish first."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)

    @property
    def sent(self) -> int:
        """Calls made so far."""
        with self._lock:
            return len(self.answers) + len(self.failures)

    def answers_since(self, moment: float) -> list[Answer]:
        """The answers to calls sent at or after `moment`."""
        with self._lock:
            return [answer for answer in self.answers if answer.sent_at >= moment]

    def _send(self, client: int) -> None:
        with create_channel(f"127.0.0.1:{self.port}", self.tls) as channel:
            stub: Any = scoring_pb2_grpc.ScoringGatewayStub(channel)  # type: ignore[no-untyped-call]
            number = 0
            while not self._stopping.is_set():
                request = scoring_pb2.ScoreApplicationRequest(
                    application_id=f"LOAD-{os.getpid()}-{client}-{number}-{time.monotonic_ns()}",
                    channel=scoring_pb2.APPLICATION_CHANNEL_BANK,
                    identifier_kind="mobile_cn",
                    identifier=self.identifiers[
                        (client + number * self.clients) % len(self.identifiers)
                    ],
                    partner_lookup_consent=True,
                )
                number += 1
                sent_at = time.monotonic()
                try:
                    reply = stub.ScoreApplication(request, timeout=self.timeout_s)
                except grpc.RpcError as err:
                    with self._lock:
                        self.failures.append(Failure(sent_at, err.code()))
                    # A gateway that is gone refuses at once; do not spin.
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.answers.append(
                        Answer(
                            sent_at,
                            time.monotonic(),
                            reply.request_id,
                            reply.decision,
                            reply.slices.partner_status,
                        )
                    )
