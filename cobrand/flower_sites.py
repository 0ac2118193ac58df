"""Flower's two processes as each site runs them: the bank's SuperLink, the partner's SuperNode.

The command lines are built here once, for ``cobrand bank superlink`` and ``cobrand partner
supernode`` at two sites and for `cobrand.flower_local.LocalFederation` on one machine, so what
the tests run is what the sites run: the SuperLink with TLS, SuperNode authentication and no
installing of app dependencies at run time, on loopback behind the Fleet-only front
(`superlink_site_command`, `cobrand.fleet_front`); the SuperNode trusting the SuperLink's CA and
authenticated by its own key, and, where its ClientApp is pinned, in process isolation so that it
never runs the code of a bundle it received: the partner's own runner executes its tasks, and
only it, as it holds the secret the SuperNode demands for taking one (`write_runner_secret`).
Every Flower process gets the same offline environment (`flower_environment`):
telemetry and the update check off, a local ``FLWR_HOME``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cobrand.durable import write_new

__all__ = [
    "PARTNER_CLIENT_APP_RUNNER",
    "SuperLinkTls",
    "flower_environment",
    "flower_program",
    "superlink_command",
    "superlink_site_command",
    "supernode_command",
    "toml_string",
    "write_runner_secret",
]


PARTNER_CLIENT_APP_RUNNER = (sys.executable, "-m", "partner_node.flower_client.runner")
"""The partner's own ClientApp runner (a module path: this package imports no party's code)."""


@dataclass(frozen=True)
class SuperLinkTls:
    """The SuperLink's server certificate and key, and the CA certificate that signed it.

    The certificate needs a SAN for the address SuperNodes and the ``flwr`` CLI dial. The
    SuperNode and the CLI trust the CA.
    """

    ca_cert: Path
    cert: Path
    key: Path


def flower_environment(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Flower process and ``flwr`` command started from here."""
    env = dict(os.environ)
    env.update(extra or {})
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_HOME"] = str(flwr_home)
    # The SuperLink and SuperNode start `flower-superexec` and the app processes by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def toml_string(value: str) -> str:
    """`value` as a TOML basic string (Flower's config files and ``--node-config``)."""
    # A TOML basic string accepts JSON's escapes.
    return json.dumps(value)


def flower_program(name: str) -> str:
    """A Flower executable installed beside this interpreter."""
    return str(Path(sys.executable).parent / name)


def superlink_command(tls: SuperLinkTls, host: str, port: int) -> list[str]:
    """The bank's SuperLink: TLS, SuperNode authentication, all its APIs on `host`:`port`.

    Flower 1.41 serves its Fleet, Control and Runtime APIs on this one address, so the site runs
    it on loopback behind the Fleet-only front (`superlink_site_command`).
    """
    return [
        flower_program("flower-superlink"),
        "--ssl-ca-certfile",
        str(tls.ca_cert),
        "--ssl-certfile",
        str(tls.cert),
        "--ssl-keyfile",
        str(tls.key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]


def superlink_site_command(
    tls: SuperLinkTls,
    fleet_host: str,
    fleet_port: int,
    control_port: int,
    log_file: Path | None = None,
) -> list[str]:
    """The SuperLink on 127.0.0.1:`control_port` behind its Fleet-only front on `fleet_host`.

    See `cobrand.fleet_front`; the process takes the caller's environment.
    """
    command = [
        sys.executable,
        "-m",
        "cobrand.fleet_front",
        "--ca-cert",
        str(tls.ca_cert),
        "--cert",
        str(tls.cert),
        "--key",
        str(tls.key),
        "--fleet-host",
        fleet_host,
        "--fleet-port",
        str(fleet_port),
        "--control-port",
        str(control_port),
    ]
    return command if log_file is None else [*command, "--log-file", str(log_file)]


def supernode_command(
    superlink: str,
    root_certificates: Path,
    auth_key: Path,
    port: int,
    node_config: Mapping[str, str],
    *,
    runner_secret: Path | None = None,
) -> list[str]:
    """The partner's SuperNode, dialling `superlink` (host:port of its Fleet API).

    Parameters
    ----------
    superlink : str
    root_certificates : Path
        The CA certificate the SuperLink's certificate chains to.
    auth_key : Path
        The SuperNode's private key (OpenSSH); its public key is registered at the SuperLink
        (``flwr supernode register``).
    port : int
        The SuperNode's own ClientAppIo port on loopback.
    node_config : mapping of str to str
        What the partner's ClientApp reads (``partner_node.flower_client``).
    runner_secret : Path, optional
        Given, ``--isolation process``: the SuperNode starts no ClientApp (so never loads a
        received bundle's code), and hands its tasks on its runtime API (loopback `port`) only
        to a runner holding the secret in this file (Flower's SuperExec authentication).
    """
    config = " ".join(f"{key}={toml_string(value)}" for key, value in node_config.items())
    return [
        flower_program("flower-supernode"),
        "--root-certificates",
        str(root_certificates),
        "--auth-supernode-private-key",
        str(auth_key),
        "--superlink",
        superlink,
        "--port",
        str(port),
        "--node-config",
        config,
        *(
            ["--isolation", "process", "--superexec-auth-secret-file", str(runner_secret)]
            if runner_secret is not None
            else []
        ),
    ]


def write_runner_secret(path: Path) -> bytes:
    """A new secret shared by a SuperNode and its ClientApp runner, in `path` (mode 0600).

    A secret of an earlier start at `path` is replaced: each start has its own.
    """
    secret = secrets.token_bytes(32)
    path.unlink(missing_ok=True)
    write_new(path, secret, mode=0o600)
    return secret
