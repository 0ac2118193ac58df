"""`cobrand bank align`: what the bank's operator sees when something is wrong."""

from __future__ import annotations

import random
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cobrand.cli import app
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
