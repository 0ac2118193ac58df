"""Load benchmark of the scoring gateway as deployed, beside a do-nothing two-hop echo chain.

    python -m bench.gateway_load [--customers 20000] [--calls 2000] [--clients 32]
                                 [--seconds 20] [--rounds 4] [--deadline-ms 50] [--workers 2]
                                 [--threads 8] [--py-spy PATH]

As deployed, each its own process, all over mutual TLS on loopback: the partner node (``python
-m partner_node serve --config partner.yaml``), the gateway (``cobrand gateway serve --config
gateway.yaml --workers 2``: two processes on one port, 8 handler threads each, as deployed on a
2-core machine; its audit log SQLite on disk, each decision durable before its reply, its
breaker the settings' default) and this process, the client, holding the bank's
application-flow certificate (role ``app``). The data: a synthetic co-brand set aligned at both
parties (keys assigned directly) and one model version published at both sides (the gateway
tests' seeded networks, `tests.gateway.gateway_sites.publish_both_sides`: the cost does not
depend on the weights). Every application is an aligned customer the partner knows, cycling
over them, each with a unique application id, so each call is a new decision: an encode, a
partner lookup, a score and a durable audit record.

The floor, in the same run: client -> echo -> echo (`bench.echo_chain` on the same stack,
``cobrand.rpc.create_server`` with mutual TLS and the role check, the first hop calling the
second with the gateway's certificate; the first hop as many processes on one port as the
gateway has, with as many threads each), with requests and replies the size of
ScoreApplication's. Both closed loops:

- 1 client: ``--calls`` calls of each after a tenth as warm-up, the chain and the gateway in
  turn call by call so both see the same load from the rest of the machine; p50 and p99.
- ``--clients`` threads, each with a channel (a connection) of its own, as separate
  application-flow instances would: ``--seconds`` of the chain and as many of the gateway, in
  ``--rounds`` turns (chain, gateway, chain...) so both see the same load from the rest of the
  machine; throughput and p99.

Beside every gateway figure, the share of replies that fell back to the bank slice
(``slices.partner_status`` not USED), and each goal of issue 11 as met or NOT met. The partner
deadline is the gateway's default, 50 ms, unless ``--deadline-ms`` says otherwise. What bounds
a figure: each process's CPU milliseconds per call over the same stretch
(`bench.closed_loop.CpuMeter`; a hop's or the gateway's processes summed), and with
``--py-spy`` a further run of the many clients, not counted in the figures (sampling slows the
gateway), during which py-spy samples the gateway's threads holding the GIL (its workers' too):
each stage's share of those samples (resolving the applicant, encoding, the partner call,
scoring, the audit record...). The processes' logs are kept in ``--keep`` when given. The bench
builds its sites with the tests' helpers (``tests.training_sites``,
``tests.gateway.gateway_sites``): run it from the repository root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.closed_loop import (
    Call,
    CpuMeter,
    Sample,
    Served,
    concurrent,
    cpu_per_call,
    interleaved,
    serving,
    with_children,
)
from bench.echo_chain import ECHO_METHOD
from cobrand.commands.align import write_settings
from cobrand.pki import Party, Role, import_peer_ca, init_ca, issue
from cobrand.rpc import TlsFiles, create_channel
from cobrand.v1 import scoring_pb2, scoring_pb2_grpc
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import applicants_of, gateway_settings, publish_both_sides
from tests.training_sites import write_training_sites

USED = scoring_pb2.PARTNER_SLICE_STATUS_USED
_PROBE_TIMEOUT_S = 600.0
_CALL_TIMEOUT_S = 10.0
_P99_GOAL_MS = 10.0
_FALLBACK_GOAL = 0.01
_PROFILE_S = 10.0
# As deployed on the benchmark's machine (2 cores): gateway processes (`cobrand gateway serve
# --workers`) and handler threads in each (``max_workers``); fewer threads contend less for
# each process's interpreter lock (about 1.65 against 2.05 ms of gateway CPU per call with 32
# clients, 8 threads against 32), and 8 are more than a process keeps busy.
WORKERS = 2
THREADS = 8
# A call's stages by the frame that runs each (py-spy's names), in the order a call runs them.
_STAGES = {
    "ScoreApplication in all": "ScoringServicer.ScoreApplication",
    "resolve applicant": "ApplicantDirectory.resolve",
    "find recorded": "AuditLog.find_application",
    "encode": "ApplicationEncoder.encode",
    "partner call": "PartnerClient.embedding",
    "score": "Scorer.score",
    "audit record": "AuditLog.record",
    "log line": "Logger.info",
    "audit flush": "AuditLog._flush",
}


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
    """The served processes and the client's certificate.

    Attributes
    ----------
    gateway_port : int
    echo_port : int
        The echo chain's first hop.
    app : TlsFiles
        The bank's application flow's certificate (role ``app``).
    pids : dict of str to tuple of int
        Each process by name, this one (the client) included, the gateway with its workers:
        whose CPU time is metered.
    """

    gateway_port: int
    echo_port: int
    app: TlsFiles
    pids: dict[str, tuple[int, ...]]


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
        partner = stack.enter_context(
            serving(
                "partner",
                [sys.executable, "-m", "partner_node", "serve", "--config", str(partner_config)],
                work,
            )
        )
        settings = gateway_settings(
            work / "gateway",
            sites,
            pki,
            version_id,
            partner.port,
            deadline_ms=args.deadline_ms,
        ).model_copy(update={"max_workers": args.threads})
        gateway_config = write_settings(work / "gateway.yaml", settings)
        cobrand = str(Path(sys.executable).with_name("cobrand"))
        gateway = stack.enter_context(
            serving(
                "gateway",
                [
                    *(cobrand, "gateway", "serve", "--config", str(gateway_config)),
                    *("--workers", str(args.workers)),
                ],
                work,
            )
        )
        print(
            f"partner node and gateway serving in {time.perf_counter() - started:.1f} s "
            "(the gateway's start has the partner load the version)"
        )
        reply_bytes = _reply_bytes(gateway.port, pki.tls("app"), aligned[0])
        # The last hop stands for the partner node (its certificate, its default 10 handler
        # threads), the first for the gateway (its certificate and handler threads).
        second = stack.enter_context(
            serving(
                "echo-second",
                _echo_command(pki.tls("partner"), Role.GATEWAY, "--reply-bytes", str(reply_bytes)),
                work,
            )
        )
        # As many processes on one port as the gateway has workers, as many threads each.
        first: list[Served] = []
        for index in range(args.workers):
            command = _echo_command(
                pki.tls("gateway"),
                Role.APP,
                *("--forward", f"127.0.0.1:{second.port}"),
                *("--max-workers", str(settings.max_workers)),
                *("--port", str(first[0].port if first else 0)),
            )
            first.append(stack.enter_context(serving(f"echo-first-{index}", command, work)))
        pids = {
            "client": (os.getpid(),),
            "gateway": with_children(gateway.pid),
            "partner": (partner.pid,),
            "echo-first": tuple(hop.pid for hop in first),
            "echo-second": (second.pid,),
        }
        yield Deployment(gateway.port, first[0].port, pki.tls("app"), pids), aligned


def _reply_bytes(port: int, app: TlsFiles, applicant: str) -> int:
    """The size of a ScoreApplication reply, from one call (also the gateway's first)."""
    with create_channel(f"127.0.0.1:{port}", app) as channel:
        stub: Any = scoring_pb2_grpc.ScoringGatewayStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.ScoreApplication(
            application(f"size-probe-{uuid.uuid4().hex}", applicant), timeout=_PROBE_TIMEOUT_S
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


def _fallback(sample: Sample) -> str:
    """The share of replies that fell back to the bank slice and, when any, their statuses."""
    fallen = Counter(
        scoring_pb2.PartnerSliceStatus.Name(s).removeprefix("PARTNER_SLICE_STATUS_")
        for s in sample.outcomes
        if s != USED
    )
    share = fallen.total() / len(sample.outcomes)
    detail = ", ".join(f"{n} {status}" for status, n in fallen.items())
    return f"   fallback {share:6.2%}" + (f" ({detail})" if detail else "")


def _fallback_share(sample: Sample) -> float:
    return sum(s != USED for s in sample.outcomes) / len(sample.outcomes)


@contextmanager
def _profiled(py_spy: Path | None, pid: int, seconds: float, out: Path) -> Iterator[None]:
    """With `py_spy`, sample which of `pid`'s threads holds the GIL for the block's `seconds`."""
    if py_spy is None:
        yield
        return
    command = [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    # The gateway's workers are child processes of the one started.
    command += ["--subprocesses"]
    command += ["--rate", "250", "--gil", "--nonblocking", "--format", "raw", "--output", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.wait()


def _gil_split(raw: Path) -> str:
    """Each stage's share of the samples py-spy took while a gateway thread held the GIL."""
    stacks = [line.rpartition(" ") for line in raw.read_text().splitlines()]
    total = sum(int(n) for _, _, n in stacks)
    shares = []
    for stage, frame in _STAGES.items():
        held = sum(int(n) for stack, _, n in stacks if f";{frame} (" in stack)
        shares.append(f"{stage} {held / total:.0%}")
    return f"gateway GIL-holding samples ({total:,}): " + ", ".join(shares)


def _goal(text: str, met: bool) -> str:
    return f"  goal {text}: {'met' if met else 'NOT met'}"


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        with _deployment(work, args) as (deployment, aligned):
            request_bytes = application(f"{uuid.uuid4().hex}-0-0", aligned[0]).ByteSize()
            print(
                f"gateway: {args.workers} processes x {args.threads} handler threads (the echo "
                "chain's first hop the same); "
                f"partner deadline {args.deadline_ms:g} ms; ScoreApplication requests of about "
                f"{request_bytes} B (the echo chain's the same, its replies the gateway's size); "
                f"{os.cpu_count()} cores shared with other work"
            )
            with Callers(deployment, aligned, request_bytes) as callers:
                _one_client(callers, deployment.pids, args)
            _many_clients(deployment, aligned, request_bytes, work / "gateway.gil", args)
    finally:
        if args.keep is not None:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def _one_client(
    callers: Callers, pids: dict[str, tuple[int, ...]], args: argparse.Namespace
) -> None:
    warm_up = max(1, args.calls // 10)
    echo_cpu = CpuMeter(pids, ("echo-first", "echo-second"))
    gateway_cpu = CpuMeter(pids, ("gateway", "partner"))
    floor, scored = interleaved(callers.echo(), callers.gateway(0), args.calls, warm_up)
    print(f"1 client, closed loop, {args.calls:,} calls each, in turn call by call:")
    print(
        f"  {'echo chain (floor)':<22} p50 {floor.p50_ms():6.2f} ms   "
        f"p99 {floor.p99_ms():6.2f} ms   ({echo_cpu.per_call(args.calls + warm_up)})"
    )
    print(
        f"  {'ScoreApplication':<22} p50 {scored.p50_ms():6.2f} ms   "
        f"p99 {scored.p99_ms():6.2f} ms{_fallback(scored)}   "
        f"({gateway_cpu.per_call(args.calls + warm_up)})"
    )
    ratio = scored.p50_ms() / floor.p50_ms()
    print(_goal(f"p50 <= 2 x floor p50 ({ratio:.2f} x)", ratio <= 2.0))
    print(_goal(f"p99 <= {_P99_GOAL_MS:g} ms", scored.p99_ms() <= _P99_GOAL_MS))


def _many_clients(
    deployment: Deployment,
    aligned: list[str],
    request_bytes: int,
    profile: Path,
    args: argparse.Namespace,
) -> None:
    pids = deployment.pids
    stretch = args.seconds / args.rounds
    sides: dict[str, tuple[tuple[str, ...], Callable[[Callers, int], Call]]] = {
        "echo": (("client", "echo-first", "echo-second"), lambda callers, _: callers.echo()),
        "gateway": (("client", "gateway", "partner"), lambda callers, i: callers.gateway(i)),
    }
    samples: dict[str, list[Sample]] = {side: [] for side in sides}
    spent: dict[str, Counter[str]] = {side: Counter() for side in sides}
    # In turns, so a change in the rest of the machine's load weighs on both alike.
    for _ in range(args.rounds):
        for side, (names, caller) in sides.items():
            with Callers(deployment, aligned, request_bytes) as callers:
                cpu = CpuMeter(pids, names)
                calls = [caller(callers, i) for i in range(args.clients)]
                samples[side].append(concurrent(calls, stretch))
                spent[side].update(cpu.spent())
    echoes, loaded = Sample.merge(samples["echo"]), Sample.merge(samples["gateway"])
    echo_spent = cpu_per_call(dict(spent["echo"]), len(echoes.latencies))
    gateway_spent = cpu_per_call(dict(spent["gateway"]), len(loaded.latencies))
    print(
        f"{args.clients} clients, closed loop, {args.seconds:g} s each in {args.rounds} turns, "
        "one channel per client thread:"
    )
    print(
        f"  {'echo chain (floor)':<22} {echoes.per_second():7.0f} calls/s   "
        f"p99 {echoes.p99_ms():6.2f} ms\n  {'':<22} {echo_spent}"
    )
    print(
        f"  {'ScoreApplication':<22} {loaded.per_second():7.0f} calls/s   "
        f"p99 {loaded.p99_ms():6.2f} ms{_fallback(loaded)}\n  {'':<22} {gateway_spent}"
    )
    share = loaded.per_second() / echoes.per_second()
    print(_goal(f"throughput >= 50% of the floor's ({share:.0%})", share >= 0.5))
    fallen = _fallback_share(loaded)
    print(_goal(f"under {_FALLBACK_GOAL:.0%} falling back ({fallen:.2%})", fallen < _FALLBACK_GOAL))
    if args.py_spy is not None:
        # Apart from the figures above: sampling slows the gateway down.
        seconds = min(args.seconds, _PROFILE_S)
        with (
            Callers(deployment, aligned, request_bytes) as callers,
            _profiled(args.py_spy, pids["gateway"][0], seconds, profile),
        ):
            concurrent([callers.gateway(i) for i in range(args.clients)], seconds)
        print(f"  {args.clients} clients again for {seconds:g} s, under py-spy, not counted above:")
        print(f"  {_gil_split(profile)}")


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--rounds", type=int, default=4, help="Turns the many-client seconds are split into."
    )
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    parser.add_argument(
        "--workers", type=int, default=WORKERS, help="Gateway processes (cobrand gateway serve)."
    )
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="Handler threads in each gateway process."
    )
    parser.add_argument(
        "--py-spy", type=Path, help="py-spy executable: split the gateway's GIL time by stage."
    )
    parser.add_argument("--keep", type=Path, help="Copy the processes' logs and files here.")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
