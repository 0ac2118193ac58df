"""`cobrand bank align` and `cobrand bank superlink`: what the bank's operator runs and sees."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from cobrand.cli import app
from cobrand.flower_sites import SuperLinkTls, superlink_command
from tests.alignment_data import canonical_phones, write_federation, write_party
from tests.conftest import ThrowAwayPki


def _settings(tmp_path: Path, pki: ThrowAwayPki, **changes: object) -> Path:
    files = write_party(tmp_path / "files", "bank", canonical_phones(random.Random(2), 20))
    tls = pki.tls("bank")
    document: dict[str, object] = {
        "federation": str(write_federation(tmp_path / "files")),
        "schema": str(files.schema),
        "table": str(files.table),
        "data_dir": str(tmp_path / "bank-data"),
        "partner": {"address": "127.0.0.1:1", "call_timeout_s": 2},
        "tls": {"ca_bundle": str(tls.ca_bundle), "cert": str(tls.cert), "key": str(tls.key)},
        "psi": {"workers": 0},
        **changes,
    }
    path = tmp_path / "bank.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_a_partner_that_does_not_answer_is_one_line_and_exit_code_2(
    tmp_path: Path, throwaway_pki: ThrowAwayPki
) -> None:
    result = CliRunner().invoke(
        app, ["bank", "align", "--config", str(_settings(tmp_path, throwaway_pki))]
    )

    assert result.exit_code == 2
    assert result.output.startswith("error: RPC failed with UNAVAILABLE")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "bank-data").exists()


def test_a_misspelt_settings_key_is_named(tmp_path: Path, throwaway_pki: ThrowAwayPki) -> None:
    settings = _settings(tmp_path, throwaway_pki, data_dri="x")

    result = CliRunner().invoke(app, ["bank", "align", "--config", str(settings)])

    assert result.exit_code == 2
    assert "unknown key 'data_dri'" in result.output


def _run_superlink(
    monkeypatch: pytest.MonkeyPatch, trainer: Path
) -> tuple[Result, list[str], dict[str, str]]:
    """`cobrand bank superlink` with the SuperLink and its front captured instead of run: the
    SuperLink's command line, with its front's address appended as ``--front HOST:PORT``."""
    executed: list[tuple[list[str], dict[str, str]]] = []

    def captured(
        tls: SuperLinkTls, host: str, port: int, control_port: int, env: dict[str, str]
    ) -> None:
        argv = superlink_command(tls, "127.0.0.1", control_port)
        executed.append(([*argv, "--front", f"{host}:{port}"], env))

    monkeypatch.setattr("cobrand.fleet_front.run_superlink_behind_front", captured)
    result = CliRunner().invoke(
        app,
        [
            *("bank", "superlink", "--trainer-config", str(trainer)),
            *("--ca-cert", "/srv/ca.crt", "--cert", "/srv/sl.crt", "--key", "/srv/sl.key"),
            *("--host", "10.1.2.3", "--port", "9192", "--control-port", "9193"),
        ],
    )
    argv, env = executed[0] if executed else ([], {})
    return result, argv, env


def test_the_superlink_runs_on_loopback_with_tls_and_node_auth_behind_the_fleet_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = tmp_path / "trainer.yaml"
    trainer.write_text(yaml.safe_dump({"bank": "bank.yaml", "runs_dir": "runs"}), encoding="utf-8")

    result, argv, env = _run_superlink(monkeypatch, trainer)

    assert result.exit_code == 0, result.output
    assert Path(argv[0]).name == "flower-superlink"
    for flag, value in (
        ("--ssl-ca-certfile", "/srv/ca.crt"),
        ("--ssl-certfile", "/srv/sl.crt"),
        ("--ssl-keyfile", "/srv/sl.key"),
        # The SuperLink on loopback only; the partner's address is the Fleet-only front's.
        ("--host", "127.0.0.1"),
        ("--port", "9193"),
        ("--front", "10.1.2.3:9192"),
    ):
        assert argv[argv.index(flag) + 1] == value
    assert "--enable-supernode-auth" in argv
    assert "--disable-runtime-dependency-installation" in argv
    assert env["COBRAND_TRAINER_CONFIG"] == str(trainer.resolve())
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"


def test_a_mistaken_trainer_settings_file_is_refused_before_the_superlink_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = tmp_path / "trainer.yaml"
    trainer.write_text(yaml.safe_dump({"bank": "bank.yaml", "run_dir": "runs"}), encoding="utf-8")

    result, argv, _ = _run_superlink(monkeypatch, trainer)

    assert result.exit_code == 2
    assert "run_dir" in result.output
    assert argv == []


def test_the_fleet_fronts_port_and_the_superlinks_own_port_must_differ(tmp_path: Path) -> None:
    trainer = tmp_path / "trainer.yaml"
    trainer.write_text(yaml.safe_dump({"bank": "bank.yaml", "runs_dir": "runs"}), encoding="utf-8")

    result = CliRunner().invoke(
        app,
        [
            *("bank", "superlink", "--trainer-config", str(trainer)),
            *("--ca-cert", "/srv/ca.crt", "--cert", "/srv/sl.crt", "--key", "/srv/sl.key"),
            *("--port", "9192", "--control-port", "9192"),
        ],
    )

    assert result.exit_code == 2
    assert "port and the SuperLink's own port are both 9192" in result.output
