"""`cobrand partner supernode`: the SuperNode the partner's site runs, and what it is told."""

from __future__ import annotations

import shlex
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cobrand.cli import app
from tests.conftest import ThrowAwayPki


def _partner_yaml(tmp_path: Path, pki: ThrowAwayPki | None, listen: str) -> Path:
    document: dict[str, Any] = {
        "federation": str(tmp_path / "federation.yaml"),
        "schema": str(tmp_path / "partner.schema.yaml"),
        "table": str(tmp_path / "partner.csv"),
        "listen": listen,
        "data_dir": str(tmp_path / "partner-data"),
    }
    if pki is not None:
        tls = pki.tls("partner")
        document["tls"] = {k: str(v) for k, v in vars(tls).items()}
    path = tmp_path / "partner.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _run(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[Any, list[str], dict[str, str]]:
    """Invoke the command with the SuperNode and its ClientApp runner captured instead of run:
    the SuperNode's command line, with the runner's address appended as ``--runner HOST:PORT``."""
    executed: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(
        "partner_node.flower_client.runner.run_supernode_with_runner",
        lambda argv, env, runtime, _: executed.append(([*argv, "--runner", runtime], dict(env))),
    )
    result = CliRunner().invoke(app, ["partner", "supernode", *args])
    argv, env = executed[0] if executed else ([], {})
    return result, argv, env


def _node_config(argv: list[str]) -> dict[str, str]:
    pairs = shlex.split(argv[argv.index("--node-config") + 1])
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_isolated_supernode_tells_its_clientapp_to_reach_this_node_with_its_certificate(
    tmp_path: Path, throwaway_pki: ThrowAwayPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _partner_yaml(tmp_path, throwaway_pki, listen="0.0.0.0:7443")
    tls = throwaway_pki.tls("partner")

    result, argv, env = _run(
        monkeypatch,
        *("--config", str(settings), "--superlink", "bank.example:9092"),
        *("--root-certificates", "/srv/bank-ca.crt", "--auth-key", "/srv/supernode.key"),
    )

    assert result.exit_code == 0, result.output
    assert Path(argv[0]).name == "flower-supernode"
    assert argv[argv.index("--superlink") + 1] == "bank.example:9092"
    assert argv[argv.index("--root-certificates") + 1] == "/srv/bank-ca.crt"
    assert argv[argv.index("--auth-supernode-private-key") + 1] == "/srv/supernode.key"
    # It starts no ClientApp of a bundle's: its tasks go to the partner's runner on loopback.
    assert argv[argv.index("--isolation") + 1] == "process"
    assert argv[argv.index("--runner") + 1] == f"127.0.0.1:{argv[argv.index('--port') + 1]}"
    # Only the runner holds the secret the SuperNode demands for a task.
    secret = Path(argv[argv.index("--superexec-auth-secret-file") + 1])
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_bytes()) == 32
    assert _node_config(argv) == {
        "partner-node": "127.0.0.1:7443",
        "ca-bundle": str(tls.ca_bundle),
        "cert": str(tls.cert),
        "key": str(tls.key),
    }
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"


def test_an_explicit_node_address_wins_over_the_listen_address(
    tmp_path: Path, throwaway_pki: ThrowAwayPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _partner_yaml(tmp_path, throwaway_pki, listen="10.0.0.5:7443")

    result, argv, _ = _run(
        monkeypatch,
        *("--config", str(settings), "--superlink", "bank:9092", "--node", "node.partner:7443"),
        *("--root-certificates", "ca.crt", "--auth-key", "k"),
    )

    assert result.exit_code == 0, result.output
    assert _node_config(argv)["partner-node"] == "node.partner:7443"


def test_settings_without_tls_files_are_refused_before_flower_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _partner_yaml(tmp_path, None, listen="127.0.0.1:7443")

    result, argv, _ = _run(
        monkeypatch,
        *("--config", str(settings), "--superlink", "bank:9092"),
        *("--root-certificates", "ca.crt", "--auth-key", "k"),
    )

    assert result.exit_code == 2
    assert "no 'tls' files" in result.output
    assert argv == []
