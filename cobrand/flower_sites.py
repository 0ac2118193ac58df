"""Flower's two processes as each site runs them: the bank's SuperLink, the partner's SuperNode.

The command lines are built here once, for ``cobrand bank superlink`` and ``cobrand partner
supernode`` at two sites and for `cobrand.flower_local.LocalFederation` on one machine, so what
the tests run is what the sites run: the SuperLink with TLS, SuperNode authentication and no
installing of app dependencies at run time; the SuperNode trusting the SuperLink's CA and
authenticated by its own key. Every Flower process gets the same offline environment
(`flower_environment`): telemetry and the update check off, a local ``FLWR_HOME``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SuperLinkTls",
    "flower_environment",
    "flower_program",
    "superlink_command",
    "supernode_command",
    "toml_string",
]


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
    """The bank's SuperLink: TLS, SuperNode authentication, its Fleet API on `host`:`port`.

    Flower serves its other APIs (control, ServerAppIo) on its default ports beside it.
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


def supernode_command(
    superlink: str,
    root_certificates: Path,
    auth_key: Path,
    port: int,
    node_config: Mapping[str, str],
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
    ]
