"""Several gateway processes on one port: ``cobrand gateway serve --workers N``.

A gateway process runs Python on one core at a time (the interpreter's lock), so one process
leaves the machine's other cores idle and its handler threads queue for the lock under load.
`serve_workers` starts N worker processes, each a whole gateway (`gateway.server.serve`: its own
copy of the version, partner channel and circuit breaker, audit writer and metrics), all bound
to the same address with ``SO_REUSEPORT`` (gRPC sets it by default on Linux), so the kernel
spreads the callers' connections over them.

The parent serves nothing. It

- reserves the port first when ``listen`` asks for port 0 (a socket of its own bound with
  ``SO_REUSEPORT``, held until every worker has bound the same port), so all serve one port;
- spawns the workers (fresh interpreters: gRPC does not survive a fork) and waits until each
  serves; a worker that fails to start stops the others, and its error is the parent's;
- forwards SIGTERM and SIGINT (a graceful stop: calls in progress finish and are recorded) and
  SIGHUP (each worker reads ``model_version`` again and swaps, `gateway.server.serve`) to every
  worker; a worker that exits on its own stops the others, and the parent fails naming it.

Each worker records its own decisions: with SQLite, several processes on one host share the
file (WAL serialises their transactions; `gateway.audit_sqlite`), gateways on several hosts
need PostgreSQL. Each worker serves its own ``/metrics`` when ``metrics_listen`` is set, on
that port plus its index (every one on a free port when the port is 0): a scrape target each.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from contextlib import ExitStack, suppress
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from cobrand.errors import CobrandError, Unavailable
from cobrand.settings import load_settings
from gateway.request_log import log_json_lines
from gateway.server import Gateway, serve
from gateway.settings import GatewaySettings

__all__ = ["serve_workers"]

_LOG = logging.getLogger(__name__)
# Beyond the settings' grace, how long stopped workers get before they are killed.
_STOP_MARGIN_S = 10.0
# What a worker tells the parent once it serves (or else its start error).
_SERVING = "serving"


def serve_workers(
    config: Path,
    settings: GatewaySettings,
    workers: int,
    on_started: Callable[[int], None] | None = None,
) -> None:
    """Serve `settings` from `workers` processes on one port until SIGTERM or SIGINT.

    Parameters
    ----------
    config : Path
        The settings file, which each worker reads (again on SIGHUP, for ``model_version``).
    settings : GatewaySettings
        As read from `config`.
    workers : int
        Worker processes, at least 1.
    on_started : callable, optional
        Called with the port once every worker serves.

    Raises
    ------
    CobrandError
        A worker's start failed (its error), or a worker exited while serving (`Unavailable`).
    """
    context = multiprocessing.get_context("spawn")
    started: list[BaseProcess] = []
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
            signum = signal.SIGTERM
        for process in started:
            if process.exitcode is None:
                _send(process, signum)

    previous = {
        s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        with ExitStack() as reserved:
            listen = _reserve_port(settings.listen, reserved)
            for index in range(workers):
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_worker,
                    args=(config, listen, _metrics_listen(settings.metrics_listen, index), send),
                    name=f"gateway-worker-{index}",
                )
                process.start()
                send.close()
                started.append(process)
                _await_start(index, process, receive)
        port = int(listen.rpartition(":")[2])
        _LOG.info("[Gateway] %d workers serving on port %d", workers, port)
        if on_started is not None:
            on_started(port)
        _supervise(started, settings.shutdown_grace_s, lambda: stopping)
    except BaseException:
        _stop_all(started, settings.shutdown_grace_s)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _send(process: BaseProcess, signum: int) -> None:
    if process.pid is None:
        return
    with suppress(ProcessLookupError):  # exited meanwhile
        os.kill(process.pid, signum)


def _reserve_port(listen: str, reserved: ExitStack) -> str:
    """`listen` with its port fixed: a port 0 replaced by a free one, held in `reserved`."""
    host, _, port = listen.rpartition(":")
    if int(port) != 0:
        return listen
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    holder = reserved.enter_context(socket.socket(family, socket.SOCK_STREAM))
    # Bound, never listening: it takes no connections, only keeps the port for the workers.
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((bare, 0))
    return f"{host}:{holder.getsockname()[1]}"


def _metrics_listen(metrics_listen: str | None, index: int) -> str | None:
    if metrics_listen is None:
        return None
    host, _, port = metrics_listen.rpartition(":")
    return metrics_listen if int(port) == 0 else f"{host}:{int(port) + index}"


def _await_start(index: int, process: BaseProcess, receive: Connection) -> None:
    """Wait until worker `index` serves; raise its error if it failed to start."""
    wait([receive, process.sentinel])
    message = receive.recv() if receive.poll() else None
    receive.close()
    if isinstance(message, CobrandError):
        raise message
    if message != _SERVING:
        process.join()
        raise Unavailable(f"gateway worker {index} exited with code {process.exitcode} on start")


def _supervise(started: list[BaseProcess], grace_s: float, stopping: Callable[[], bool]) -> None:
    """Wait until the workers exit: all of them once stopped, or one on its own (an error)."""
    while True:
        wait([process.sentinel for process in started])
        if stopping():
            _stop_all(started, grace_s)
            return
        gone = [p for p in started if p.exitcode is not None]
        if gone:
            _stop_all(started, grace_s)
            raise Unavailable(
                f"gateway worker {gone[0].name} exited with code {gone[0].exitcode}; "
                "the other workers were stopped"
            )


def _stop_all(started: list[BaseProcess], grace_s: float) -> None:
    """SIGTERM every worker still running, wait for them, kill those that outstay the grace."""
    for process in started:
        if process.exitcode is None:
            _send(process, signal.SIGTERM)
    for process in started:
        process.join(grace_s + _STOP_MARGIN_S)
        if process.exitcode is None:
            _LOG.error("[Gateway] worker %s did not stop in time: killed", process.name)
            process.kill()
            process.join()


def _worker(config: Path, listen: str, metrics_listen: str | None, ready: Connection) -> None:
    """One worker process: a whole gateway on `listen`; tells `ready` once serving, or why not."""
    logging.getLogger("gateway").setLevel(logging.INFO)
    log_json_lines()
    settings = load_settings(GatewaySettings, config).model_copy(
        update={"listen": listen, "metrics_listen": metrics_listen}
    )

    def started(_: Gateway) -> None:
        ready.send(_SERVING)
        ready.close()

    try:
        serve(
            settings,
            on_started=started,
            reread_version=lambda: load_settings(GatewaySettings, config).model_version,
        )
    except CobrandError as err:
        if not ready.closed:
            ready.send(err)
            ready.close()
        raise SystemExit(2) from err
