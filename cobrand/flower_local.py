"""A Flower federation on loopback: the bank's SuperLink, the partner's SuperNode, the ``flwr`` CLI.

`LocalFederation` starts both Flower processes on one machine, as ``cobrand train`` and the
integration tests run a training: the SuperLink with TLS, SuperNode authentication and
``--disable-runtime-dependency-installation`` on loopback behind its Fleet-only front
(`cobrand.fleet_front`), which the SuperNode dials (`fleet_port`) while the ``flwr`` CLI dials the
SuperLink itself (`control_port`); the SuperNode trusting the SuperLink's CA and registered with
its own key (``flwr supernode register``) before it connects, and given a ClientApp runner, in
process isolation with that runner executing its tasks (`start_supernode`). Each process runs
in its own process group with its output in ``<work>/<name>.log``, and every Flower process and
``flwr`` command gets the same offline environment: telemetry and the update check off and a
``FLWR_HOME`` under the work directory, where the CLI's connection (`CONNECTION`) is written.

It imports no party package: the caller passes the app directory, the TLS files and each
process's extra environment and node config.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cobrand.child_process import wait_listening
from cobrand.durable import write_new
from cobrand.errors import FailedPrecondition, Unavailable
from cobrand.flower_sites import (
    SuperLinkTls,
    flower_environment,
    flower_program,
    superlink_site_command,
    supernode_command,
    toml_string,
    write_runner_secret,
)

__all__ = ["CONNECTION", "LocalFederation"]

CONNECTION: Final = "cobrand-local"
"""The name of the SuperLink connection in ``$FLWR_HOME/config.toml``."""

_LOOPBACK = "127.0.0.1"
_STOP_GRACE_S = 10.0
_CLI_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((_LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class LocalFederation:
    """A SuperLink and one SuperNode on loopback; a context manager that stops both.

    Parameters
    ----------
    work : Path
        Holds ``flwr-home/``, the SuperNode's key and each process's log.
    tls : SuperLinkTls
    superlink_env : mapping of str to str, optional
        Extra environment of the SuperLink and so of each ServerApp it starts.
    fleet_host : str
        The interface of the Fleet-only front (another loopback address stands for the
        partner-facing interface); the SuperLink's certificate needs a SAN for it.
    """

    def __init__(
        self,
        work: Path,
        tls: SuperLinkTls,
        superlink_env: Mapping[str, str] | None = None,
        fleet_host: str = _LOOPBACK,
    ) -> None:
        self.work = work
        self.flwr_home = work / "flwr-home"
        self.tls = tls
        self.fleet_host = fleet_host
        self.fleet_port = _free_port()
        self.control_port = _free_port()
        self._superlink_env = dict(superlink_env or {})
        self.supernode_runtime_port: int | None = None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self.startup_seconds: dict[str, float] = {}

    # --- processes --------------------------------------------------------------------------

    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start the SuperLink behind its Fleet-only front; wait until the front listens."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f"[superlink]\ndefault = {toml_string(CONNECTION)}\n\n"
            f"[superlink.{CONNECTION}]\n"
            f"address = {toml_string(f'{_LOOPBACK}:{self.control_port}')}\n"
            f"root-certificates = {toml_string(str(self.tls.ca_cert))}\n",
            encoding="utf-8",
        )
        started = time.perf_counter()
        self._spawn(
            "superlink",
            superlink_site_command(
                self.tls,
                self.fleet_host,
                self.fleet_port,
                self.control_port,
                log_file=self.work / "superlink-flower.log",
            ),
            self._superlink_env,
        )
        wait_listening(
            self._processes["superlink"],
            (self.fleet_host, self.fleet_port),
            what="superlink",
            timeout=timeout,
            see=str(self.work / "superlink.log"),
        )
        self.startup_seconds["superlink"] = time.perf_counter() - started

    def start_supernode(
        self,
        node_config: Mapping[str, str],
        timeout: float = 60.0,
        *,
        client_app_runner: Sequence[str] | None = None,
    ) -> int:
        """Register a new SuperNode key, start the SuperNode and wait until it is online.

        Parameters
        ----------
        node_config : mapping of str to str
        timeout : float
        client_app_runner : sequence of str, optional
            A command executing the SuperNode's ClientApp tasks, given ``--supernode
            127.0.0.1:PORT`` (its runtime API) and ``--auth-secret-file PATH`` (the secret the
            SuperNode demands for a task): the SuperNode then runs in process isolation and
            loads no bundle's code itself. Without it the SuperNode runs each bundle's ClientApp.

        Returns
        -------
        int
            The SuperNode's node id.
        """
        started = time.perf_counter()
        key_file = self.work / "supernode-key"
        _write_ssh_key(key_file)
        node_id = int(
            self.flwr("supernode", "register", str(key_file.with_suffix(".pub")))["node-id"]
        )
        self.supernode_runtime_port = _free_port()
        runner_secret = None
        if client_app_runner is not None:
            runner_secret = self.work / "clientapp-runner.secret"
            write_runner_secret(runner_secret)
        self._spawn(
            "supernode",
            supernode_command(
                f"{self.fleet_host}:{self.fleet_port}",
                self.tls.ca_cert,
                key_file,
                self.supernode_runtime_port,
                node_config,
                runner_secret=runner_secret,
            ),
        )
        if client_app_runner is not None:
            self._spawn(
                "clientapp-runner",
                [
                    *client_app_runner,
                    *("--supernode", f"{_LOOPBACK}:{self.supernode_runtime_port}"),
                    *("--auth-secret-file", str(runner_secret)),
                ],
            )
        deadline = time.monotonic() + timeout
        while not self._node_online(node_id):
            self._check_alive("supernode")
            if time.monotonic() > deadline:
                raise Unavailable(f"the SuperNode did not come online within {timeout:g} s")
            time.sleep(0.2)
        self.startup_seconds["supernode"] = time.perf_counter() - started
        return node_id

    def close(self) -> None:
        """Stop every process started, SuperNode first; each gets a grace period."""
        for name in reversed(list(self._processes)):
            process = self._processes.pop(name)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=_STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- the flwr CLI -----------------------------------------------------------------------

    def flwr(self, *args: str) -> dict[str, Any]:
        """Run ``flwr ARGS... cobrand-local --format json`` and return its JSON answer.

        Raises
        ------
        FailedPrecondition
            The command failed; the message holds its error.
        """
        command = [flower_program("flwr"), *args, CONNECTION, "--format", "json"]
        done = subprocess.run(  # noqa: S603 -- a Flower program, arguments built here, no shell
            command,
            env=flower_environment(self.flwr_home),
            cwd=self.work,
            capture_output=True,
            timeout=_CLI_TIMEOUT_S,
            check=False,
        )
        try:
            answer: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            answer = {"success": False, "error-message": done.stderr.decode(errors="replace")}
        if done.returncode != 0 or not answer.get("success", False):
            raise FailedPrecondition(
                f"`flwr {' '.join(args)}` failed: {answer.get('error-message', answer)}"
            )
        return answer

    def run(self, app: Path, run_config: Mapping[str, Any] | None = None) -> int:
        """Submit a run of the Flower app in `app`; its run id."""
        args = ["run", str(app)]
        if run_config:
            overrides = " ".join(f"{key}={json.dumps(value)}" for key, value in run_config.items())
            args += ["--run-config", overrides]
        return int(self.flwr(*args)["run-id"])

    def run_status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` shows it, e.g. ``running`` or ``finished:completed``."""
        runs = self.flwr("ls", "--run-id", str(run_id))["runs"]
        return str(runs[0]["status"])

    def wait_finished(self, run_id: int, timeout: float) -> str:
        """Wait until the run has finished; its final status (``finished:...``)."""
        deadline = time.monotonic() + timeout
        while not (status := self.run_status(run_id)).startswith("finished"):
            if time.monotonic() > deadline:
                raise Unavailable(f"run {run_id} is still {status} after {timeout:g} s")
            time.sleep(0.5)
        return status

    def stop(self, run_id: int) -> None:
        """``flwr stop``: the SuperLink stops the run."""
        self.flwr("stop", str(run_id))

    def log(self, run_id: int) -> str:
        """The run's log so far (``flwr log --show``)."""
        done = subprocess.run(  # noqa: S603 -- a Flower program, arguments built here, no shell
            [flower_program("flwr"), "log", str(run_id), CONNECTION, "--show"],
            env=flower_environment(self.flwr_home),
            cwd=self.work,
            capture_output=True,
            timeout=_CLI_TIMEOUT_S,
            check=False,
        )
        return done.stdout.decode(errors="replace")

    # --- helpers ----------------------------------------------------------------------------

    def _spawn(
        self, name: str, command: list[str], extra_env: Mapping[str, str] | None = None
    ) -> None:
        log = (self.work / f"{name}.log").open("ab")
        try:
            self._processes[name] = subprocess.Popen(  # noqa: S603 -- as in `flwr`
                command,
                env=flower_environment(self.flwr_home, extra_env),
                cwd=self.work,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own group, so stopping it also stops the processes it started.
                start_new_session=True,
            )
        finally:
            log.close()

    def _check_alive(self, name: str) -> None:
        code = self._processes[name].poll()
        if code is not None:
            raise FailedPrecondition(
                f"the {name} exited with code {code}; see {self.work / f'{name}.log'}"
            )

    def _node_online(self, node_id: int) -> bool:
        nodes = self.flwr("supernode", "ls")["nodes"]
        return any(int(n["node-id"]) == node_id and n["status"] == "online" for n in nodes)


def _write_ssh_key(path: Path) -> None:
    """A new OpenSSH EC key pair for SuperNode authentication: `path` and `path`.pub.

    The key of an earlier start in the same directory is replaced: each start registers its own.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    path.unlink(missing_ok=True)
    write_new(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    path.with_suffix(".pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
