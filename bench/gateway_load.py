"""Load benchmark of the scoring gateway as deployed, beside a do-nothing two-hop echo chain.

    python -m bench.gateway_load [--customers 20000] [--calls 2000] [--clients 32]
                                 [--seconds 20] [--deadline-ms 50]

As deployed, each its own process, all over mutual TLS on loopback: the partner node
(``python -m partner_node serve --config partner.yaml``), the gateway (``cobrand gateway serve
--config gateway.yaml``, its audit log SQLite on disk, each decision durable before its reply)
and this process, the client, holding the bank's application-flow certificate (role ``app``).
The data: a synthetic co-brand set aligned at both parties (keys assigned directly) and one
model version published at both sides (the gateway tests' seeded networks,
`tests.gateway.gateway_sites.publish_both_sides`: the cost does not depend on the weights).
Every application is an aligned customer the partner knows, cycling over them, each with a
unique application id, so each call is a new decision: an encode, a partner lookup, a score
and a durable audit record.

The floor, in the same run: client -> echo -> echo (`bench.echo_chain`, two processes on the
same stack, ``cobrand.rpc.create_server`` with mutual TLS and the role check, the first hop
calling the second with the gateway's certificate), with requests and replies the size of
ScoreApplication's. Both closed loops:

- 1 client: ``--calls`` calls of each after a tenth as warm-up, the chain and the gateway in
  turn call by call so both see the same load from the rest of the machine; p50 and p99.
- ``--clients`` threads, each with a channel (a connection) of its own, as separate
  application-flow instances would: ``--seconds`` of the chain, then of the gateway;
  throughput and p99.

Beside every gateway figure, the share of replies that fell back to the bank slice
(``slices.partner_status`` not USED), and each goal of issue 11 as met or NOT met. The
partner deadline is the gateway's default, 50 ms, unless ``--deadline-ms`` says otherwise.
The processes' logs are kept in ``--keep`` when given. The bench builds its sites with the
tests' helpers (``tests.training_sites``, ``tests.gateway.gateway_sites``): run it from the
repository root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.echo_chain import ECHO_METHOD
from cobrand.commands.align import write_settings
from cobrand.pki import Party, Role, import_peer_ca, init_ca, issue
from cobrand.rpc import TlsFiles, create_channel
from cobrand.v1 import scoring_pb2, scoring_pb2_grpc
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import applicants_of, gateway_settings, publish_both_sides
from tests.training_sites import write_training_sites

USED = scoring_pb2.PARTNER_SLICE_STATUS_USED
_START_TIMEOUT_S = 600.0
_STOP_TIMEOUT_S = 30.0
_CALL_TIMEOUT_S = 10.0
_P99_GOAL_MS = 10.0
_FALLBACK_GOAL = 0.01

# A caller's outcome: None for the echo chain, the reply's partner slice status for the gateway.
Call = Callable[[int], int | None]


def _pki(root: Path) -> ThrowAwayPki:
    """Both parties' CAs and the certificates the processes hold, laid out as the tests' PKI."""
    pki = ThrowAwayPki(root)
    init_ca(pki.ca_dir("bank"), Party.BANK)
    init_ca(pki.ca_dir("partner"), Party.PARTNER)
    import_peer_ca(pki.ca_dir("bank"), pki.ca_dir("partner") / "ca.crt")
    import_peer_ca(pki.ca_dir("partner"), pki.ca_dir("bank") / "ca.crt")
    loopback = ("127.0.0.1", "localhost")
    holders = (
        ("bank", Role.GATEWAY, "gateway", loopback),
        ("bank", Role.BANK, "bank", loopback),
        ("bank", Role.APP, "app", ()),
        ("partner", Role.PARTNER, "partner", loopback),
    )
    for ca, role, holder, hosts in holders:
        issue(pki.ca_dir(ca), role, holder, hosts, out_dir=pki.ca_dir(ca) / "issued")
    return pki


@contextmanager
def _process(name: str, command: list[str], work: Path) -> Iterator[int]:
    """`command` as a child process logging to ``work/<name>.log``, from serving (yielding the
    port it writes to ``work/<name>.port``) to a graceful stop."""
    port_file, log_path = work / f"{name}.port", work / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield _port(name, process, port_file, log_path)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _port(name: str, process: subprocess.Popen[bytes], port_file: Path, log: Path) -> int:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        # The gateway writes its port file in place: a whole line is a whole port number.
        text = port_file.read_text(encoding="ascii") if port_file.exists() else ""
        if text.endswith("\n"):
            return int(text)
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not serve within {_START_TIMEOUT_S:.0f} s; see {log}")
        time.sleep(0.05)


def _echo_command(tls: TlsFiles, allow: Role, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.echo_chain",
        *("--ca-bundle", str(tls.ca_bundle), "--cert", str(tls.cert), "--key", str(tls.key)),
        *("--allow", allow.value, *options),
    ]


@dataclass(frozen=True)
class Deployment:
    """The served processes' ports and the client's certificate.

    Attributes
    ----------
    gateway_port : int
    echo_port : int
        The echo chain's first hop.
    app : TlsFiles
        The bank's application flow's certificate (role ``app``).
    """

    gateway_port: int
    echo_port: int
    app: TlsFiles


@contextmanager
def _deployment(work: Path, args: argparse.Namespace) -> Iterator[tuple[Deployment, list[str]]]:
    """Sites, version, partner node, gateway and echo chain, each served by its own process;
    yields them with the aligned applicants."""
    pki = _pki(work / "pki")
    started = time.perf_counter()
    sites = write_training_sites(work, customers=args.customers, seed=7)
    version_id = publish_both_sides(sites)
    aligned = applicants_of(sites).aligned
    print(
        f"{len(aligned):,} aligned customers of {args.customers:,}, model version {version_id} "
        f"at both sides (built in {time.perf_counter() - started:.1f} s)"
    )
    partner_config = write_settings(
        work / "partner.yaml", sites.partner_node_config(pki.tls("partner"))
    )
    with ExitStack() as stack:
        started = time.perf_counter()
        partner_port = stack.enter_context(
            _process(
                "partner",
                [sys.executable, "-m", "partner_node", "serve", "--config", str(partner_config)],
                work,
            )
        )
        settings = gateway_settings(
            work / "gateway", sites, pki, version_id, partner_port, deadline_ms=args.deadline_ms
        )
        gateway_config = write_settings(work / "gateway.yaml", settings)
        cobrand = str(Path(sys.executable).with_name("cobrand"))
        gateway_port = stack.enter_context(
            _process(
                "gateway", [cobrand, "gateway", "serve", "--config", str(gateway_config)], work
            )
        )
        print(
            f"partner node and gateway serving in {time.perf_counter() - started:.1f} s "
            "(the gateway's start has the partner load the version)"
        )
        reply_bytes = _reply_bytes(gateway_port, pki.tls("app"), aligned[0])
        # The last hop stands for the partner node (its certificate, its default 10 handler
        # threads), the first for the gateway (its certificate and handler threads).
        second = stack.enter_context(
            _process(
                "echo-second",
                _echo_command(pki.tls("partner"), Role.GATEWAY, "--reply-bytes", str(reply_bytes)),
                work,
            )
        )
        first = stack.enter_context(
            _process(
                "echo-first",
                _echo_command(
                    pki.tls("gateway"),
                    Role.APP,
                    *("--forward", f"127.0.0.1:{second}"),
                    *("--max-workers", str(settings.max_workers)),
                ),
                work,
            )
        )
        yield Deployment(gateway_port, first, pki.tls("app")), aligned


def _reply_bytes(port: int, app: TlsFiles, applicant: str) -> int:
    """The size of a ScoreApplication reply, from one call (also the gateway's first)."""
    with create_channel(f"127.0.0.1:{port}", app) as channel:
        stub: Any = scoring_pb2_grpc.ScoringGatewayStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.ScoreApplication(
            application(f"size-probe-{uuid.uuid4().hex}", applicant), timeout=_START_TIMEOUT_S
        )
    return int(reply.ByteSize())


def application(application_id: str, applicant: str) -> scoring_pb2.ScoreApplicationRequest:
    """A new application of `applicant` on the bank's channel, one bank field given (the
    gateway adds the customer's stored features)."""
    message = scoring_pb2.ScoreApplicationRequest(
        application_id=application_id,
        channel=scoring_pb2.APPLICATION_CHANNEL_BANK,
        identifier_kind="mobile_cn",
        identifier=applicant,
    )
    message.fields["monthly_income"].number = 12000.0
    return message


class Callers:
    """Calls of the gateway and of the echo chain, each caller on a channel of its own.

    Every gateway call is a new application (a unique id) of an aligned customer, cycling.
    """

    def __init__(self, deployment: Deployment, aligned: list[str], request_bytes: int) -> None:
        self._deployment = deployment
        self._aligned = aligned
        self._request = b"\x01" * request_bytes
        self._run = uuid.uuid4().hex[:8]
        self._stack = ExitStack()

    def __enter__(self) -> Callers:
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()

    def gateway(self, caller: int) -> Call:
        """Score caller `caller`'s `n`-th application; return its partner slice status."""
        channel = self._stack.enter_context(
            create_channel(f"127.0.0.1:{self._deployment.gateway_port}", self._deployment.app)
        )
        stub: Any = scoring_pb2_grpc.ScoringGatewayStub(channel)  # type: ignore[no-untyped-call]
        # Callers start at different applicants, so concurrent calls are not all one person.
        offset = caller * len(self._aligned) // 64

        def score(n: int) -> int:
            applicant = self._aligned[(offset + n) % len(self._aligned)]
            reply = stub.ScoreApplication(
                application(f"{self._run}-{caller}-{n}", applicant), timeout=_CALL_TIMEOUT_S
            )
            return int(reply.slices.partner_status)

        return score

    def echo(self) -> Call:
        """One call through the echo chain."""
        channel = self._stack.enter_context(
            create_channel(f"127.0.0.1:{self._deployment.echo_port}", self._deployment.app)
        )
        call = channel.unary_unary(ECHO_METHOD, request_serializer=None, response_deserializer=None)

        def echo(_: int) -> None:
            call(self._request, timeout=_CALL_TIMEOUT_S)

        return echo


@dataclass
class Sample:
    """Latencies in seconds and the partner slice statuses of the gateway's replies."""

    latencies: list[float]
    statuses: list[int]
    seconds: float = 0.0

    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1e3

    def p99_ms(self) -> float:
        return float(np.quantile(self.latencies, 0.99)) * 1e3

    def fallback_share(self) -> float:
        return sum(s != USED for s in self.statuses) / max(1, len(self.statuses))

    def fallback(self) -> str:
        """The fallback share and, when any, the counts by status."""
        if not self.statuses:
            return ""
        counts = Counter(scoring_pb2.PartnerSliceStatus.Name(s) for s in self.statuses if s != USED)
        detail = ", ".join(
            f"{n} {s.removeprefix('PARTNER_SLICE_STATUS_')}" for s, n in counts.items()
        )
        return f"   fallback {self.fallback_share():6.2%}" + (f" ({detail})" if detail else "")


def _interleaved(first: Call, second: Call, calls: int) -> tuple[Sample, Sample]:
    """Each called `calls` times, in turn call by call, after a tenth as warm-up."""
    samples = (Sample([], []), Sample([], []))
    for i in range(-max(1, calls // 10), calls):
        for call, sample in zip((first, second), samples, strict=True):
            started = time.perf_counter()
            status = call(i + max(1, calls // 10))
            if i >= 0:
                sample.latencies.append(time.perf_counter() - started)
                if status is not None:
                    sample.statuses.append(status)
    return samples


def _concurrent(callers: list[Call], seconds: float) -> Sample:
    """Every caller on a thread of its own, calling back to back for `seconds`."""
    per_thread = [Sample([], []) for _ in callers]
    begin = threading.Barrier(len(callers) + 1)
    stop_at = [0.0]

    def loop(call: Call, sample: Sample) -> None:
        begin.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            started = time.perf_counter()
            status = call(n)
            sample.latencies.append(time.perf_counter() - started)
            if status is not None:
                sample.statuses.append(status)
            n += 1

    threads = [
        threading.Thread(target=loop, args=pair) for pair in zip(callers, per_thread, strict=True)
    ]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    begin.wait()
    for thread in threads:
        thread.join()
    return Sample(
        [t for s in per_thread for t in s.latencies],
        [c for s in per_thread for c in s.statuses],
        time.perf_counter() - started,
    )


def _goal(text: str, met: bool) -> str:
    return f"  goal {text}: {'met' if met else 'NOT met'}"


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        with _deployment(work, args) as (deployment, aligned):
            request_bytes = application(f"{uuid.uuid4().hex}-0-0", aligned[0]).ByteSize()
            _measure(deployment, aligned, request_bytes, args)
    finally:
        if args.keep is not None:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def _measure(
    deployment: Deployment, aligned: list[str], request_bytes: int, args: argparse.Namespace
) -> None:
    print(
        f"partner deadline {args.deadline_ms:g} ms; ScoreApplication requests of about "
        f"{request_bytes} B (the echo chain's the same, its replies the gateway's size); "
        f"{os.cpu_count()} cores shared with other work"
    )
    with Callers(deployment, aligned, request_bytes) as callers:
        floor, scored = _interleaved(callers.echo(), callers.gateway(0), args.calls)
        print(f"1 client, closed loop, {args.calls:,} calls each, in turn call by call:")
        print(
            f"  {'echo chain (floor)':<22} p50 {floor.p50_ms():6.2f} ms   "
            f"p99 {floor.p99_ms():6.2f} ms"
        )
        print(
            f"  {'ScoreApplication':<22} p50 {scored.p50_ms():6.2f} ms   "
            f"p99 {scored.p99_ms():6.2f} ms{scored.fallback()}"
        )
        ratio = scored.p50_ms() / floor.p50_ms()
        print(_goal(f"p50 <= 2 x floor p50 ({ratio:.2f} x)", ratio <= 2.0))
        print(_goal(f"p99 <= {_P99_GOAL_MS:g} ms", scored.p99_ms() <= _P99_GOAL_MS))

    with Callers(deployment, aligned, request_bytes) as callers:
        echoes = _concurrent([callers.echo() for _ in range(args.clients)], args.seconds)
    with Callers(deployment, aligned, request_bytes) as callers:
        loaded = _concurrent([callers.gateway(i) for i in range(args.clients)], args.seconds)
    print(
        f"{args.clients} clients, closed loop, {args.seconds:g} s each, one channel per "
        "client thread:"
    )
    for name, sample in (("echo chain (floor)", echoes), ("ScoreApplication", loaded)):
        print(
            f"  {name:<22} {len(sample.latencies) / sample.seconds:7.0f} calls/s   "
            f"p99 {sample.p99_ms():6.2f} ms{sample.fallback()}"
        )
    share = (len(loaded.latencies) / loaded.seconds) / (len(echoes.latencies) / echoes.seconds)
    print(_goal(f"throughput >= 50% of the floor's ({share:.0%})", share >= 0.5))
    print(
        _goal(
            f"under {_FALLBACK_GOAL:.0%} falling back ({loaded.fallback_share():.2%})",
            loaded.fallback_share() < _FALLBACK_GOAL,
        )
    )


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    parser.add_argument("--keep", type=Path, help="Copy the processes' logs and files here.")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
