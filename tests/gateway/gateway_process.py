"""``cobrand gateway serve`` in a process of its own, for the tests of the command itself.

`ServedGateway` starts the command on a settings file, reads its output (stdout and stderr
together) line by line on a thread, so a test can wait for a log line, and kills the process
on leaving its ``with`` block if the test did not stop it. Tests of faults under load use
``tests.robustness.processes`` instead, whose output goes to files nobody reads meanwhile.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Final

import yaml

from gateway.settings import GatewaySettings

__all__ = ["ServedGateway", "write_config"]

_REPO: Final = Path(__file__).resolve().parents[2]
_WAIT_S: Final = 60.0


def write_config(config: Path, settings: GatewaySettings, version_id: str) -> None:
    """Write `settings`, serving `version_id`, to the settings file `config`."""
    update = {"model_version": version_id}
    config.write_text(yaml.safe_dump(settings.model_copy(update=update).model_dump(mode="json")))


class ServedGateway:
    """A ``cobrand gateway serve --workers N`` process and its output, line by line."""

    def __init__(self, config: Path, port_file: Path, workers: int = 1) -> None:
        self._port_file = port_file
        port_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-c", "from gateway.cli import app; app()", "serve"),
                *("--config", str(config), "--port-file", str(port_file)),
                *("--workers", str(workers)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(_REPO)},
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> ServedGateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=_WAIT_S)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def port(self) -> int:
        """The port it serves on, once its port file is written (the command is serving)."""
        deadline = time.monotonic() + _WAIT_S
        while not self._port_file.exists():
            assert self.process.poll() is None, f"the gateway exited: {self.output()}"
            assert time.monotonic() < deadline, f"no port file in {_WAIT_S:g} s: {self.seen}"
            time.sleep(0.05)
        return int(self._port_file.read_text())

    def logged(self, text: str, times: int = 1) -> list[str]:
        """The next `times` lines of its output holding `text` (waiting up to a minute each)."""
        found: list[str] = []
        while len(found) < times:
            line = self._lines.get(timeout=_WAIT_S)
            self.seen.append(line)
            if text in line:
                found.append(line)
        return found

    def stop(self, signum: int) -> int:
        """Send `signum` (SIGTERM to stop it) and wait for its exit code."""
        self.process.send_signal(signum)
        return self.process.wait(timeout=_WAIT_S)

    def output(self) -> str:
        """All it wrote, once it has exited."""
        self.process.wait(timeout=_WAIT_S)
        self._reader.join(timeout=_WAIT_S)
        while not self._lines.empty():
            self.seen.append(self._lines.get())
        return "".join(self.seen)
