"""Closed-loop load on services run as child processes, for `bench.gateway_load`.

`serving` runs a command as a child process until it writes the port it serves on; `interleaved`
times two kinds of call made in turn by one client, `concurrent` many clients (threads) calling
back to back for a while; `CpuMeter` reads the CPU time processes spent meanwhile (Linux,
``/proc``; a process's workers counted with it, `with_children`), so a figure comes with what
each process paid for it.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Call",
    "CpuMeter",
    "Sample",
    "Served",
    "concurrent",
    "cpu_per_call",
    "interleaved",
    "serving",
    "with_children",
]

_START_TIMEOUT_S = 600.0
_STOP_TIMEOUT_S = 30.0

# One call, given its number in the caller's sequence; returns an outcome worth counting (the
# gateway's partner slice status) or None.
Call = Callable[[int], int | None]


@dataclass(frozen=True)
class Served:
    """A child process serving on a loopback port."""

    port: int
    pid: int


@contextmanager
def serving(name: str, command: list[str], work: Path) -> Iterator[Served]:
    """`command` (given ``--port-file``) as a child process logging to ``work/<name>.log``,
    from serving, the port read from ``work/<name>.port``, to a graceful stop (SIGTERM).

    Raises
    ------
    RuntimeError
        If the process exits, or does not serve within ten minutes, naming its log.
    """
    port_file, log_path = work / f"{name}.port", work / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield Served(_port(name, process, port_file, log_path), process.pid)
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


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    # The fields after the command name in parentheses, from the state (field 3) on.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_children(pid: int) -> tuple[int, ...]:
    """Process `pid` and its child processes now (a gateway and its workers)."""
    children = (
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    )
    return (pid, *children)


class CpuMeter:
    """CPU time the named processes spend from the meter's creation on, per call.

    Parameters
    ----------
    pids : dict of str to tuple of int
        The processes of each name (one, or a process and its workers: their sum is counted).
    names : tuple of str
        The names to meter.
    """

    def __init__(self, pids: dict[str, tuple[int, ...]], names: tuple[str, ...]) -> None:
        self._pids = {name: pids[name] for name in names}
        self._before = {name: self._seconds(name) for name in names}

    def _seconds(self, name: str) -> float:
        return sum(_cpu_seconds(pid) for pid in self._pids[name])

    def spent(self) -> dict[str, float]:
        """Each name's CPU seconds since the meter's creation."""
        return {name: self._seconds(name) - before for name, before in self._before.items()}

    def per_call(self, calls: int) -> str:
        """Each process's CPU milliseconds per call, for `calls` calls since the start."""
        return cpu_per_call(self.spent(), calls)


def cpu_per_call(spent: dict[str, float], calls: int) -> str:
    """CPU seconds by process name as milliseconds per call, for `calls` calls."""
    shown = (f"{name} {seconds * 1e3 / calls:.2f}" for name, seconds in spent.items())
    return "CPU ms per call: " + ", ".join(shown)


@dataclass
class Sample:
    """Latencies in seconds, the outcomes calls returned (if any), and the wall time."""

    latencies: list[float] = field(default_factory=list)
    outcomes: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1e3

    def p99_ms(self) -> float:
        return float(np.quantile(self.latencies, 0.99)) * 1e3

    def per_second(self) -> float:
        return len(self.latencies) / self.seconds

    @staticmethod
    def merge(samples: list[Sample]) -> Sample:
        """Several stretches of the same load as one: their calls and their wall times."""
        return Sample(
            [t for s in samples for t in s.latencies],
            [o for s in samples for o in s.outcomes],
            sum(s.seconds for s in samples),
        )

    def add(self, call: Call, n: int) -> None:
        """Make call `n`, keeping its latency and outcome."""
        started = time.perf_counter()
        outcome = call(n)
        self.latencies.append(time.perf_counter() - started)
        if outcome is not None:
            self.outcomes.append(outcome)


def interleaved(first: Call, second: Call, calls: int, warm_up: int) -> tuple[Sample, Sample]:
    """Each called `calls` times after `warm_up` times, in turn call by call, so both see the
    same load from whatever else the machine runs."""
    for n in range(warm_up):
        first(n)
        second(n)
    samples = (Sample(), Sample())
    for n in range(warm_up, warm_up + calls):
        samples[0].add(first, n)
        samples[1].add(second, n)
    return samples


def concurrent(callers: list[Call], seconds: float) -> Sample:
    """Every caller on a thread of its own, calling back to back for `seconds`; the wall time
    runs until the last call started in time returns."""
    per_thread = [Sample() for _ in callers]
    begin = threading.Barrier(len(callers) + 1)
    stop_at = time.perf_counter() + 3600.0

    def loop(call: Call, sample: Sample) -> None:
        begin.wait()
        n = 0
        while time.perf_counter() < stop_at:
            sample.add(call, n)
            n += 1

    threads = [
        threading.Thread(target=loop, args=pair) for pair in zip(callers, per_thread, strict=True)
    ]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    stop_at = started + seconds
    begin.wait()
    for thread in threads:
        thread.join()
    return Sample(
        [t for s in per_thread for t in s.latencies],
        [o for s in per_thread for o in s.outcomes],
        time.perf_counter() - started,
    )
