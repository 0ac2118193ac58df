"""`cobrand pki`: the commands a party's operator runs, their output and exit codes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cobrand import pki
from cobrand.commands.exits import EXIT_ERROR
from cobrand.commands.pki import app as pki_app
from tests.conftest import ThrowAwayPki

# Mounted as the composition root `cobrand.cli` does, so the commands read `pki init ...`.
root = typer.Typer()
root.add_typer(pki_app, name="pki")
runner = CliRunner()


def _run(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(root, ["pki", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_two_parties_set_up_mutual_trust_without_sharing_a_key(tmp_path: Path) -> None:
    bank, partner = tmp_path / "bank", tmp_path / "partner"
    code, out, _ = _run("init", "--dir", bank, "--party", "bank")
    assert code == 0
    assert f"created the bank CA: {bank / 'ca.crt'}" in out
    assert f"sha256 fingerprint: {pki.fingerprint(bank / 'ca.crt')}" in out
    assert _run("init", "--dir", partner, "--party", "partner")[0] == 0

    code, out, _ = _run("import-peer-ca", "--dir", bank, "--peer-ca", partner / "ca.crt")
    assert code == 0
    assert "now trusting the partner CA" in out
    assert f"sha256 fingerprint: {pki.fingerprint(partner / 'ca.crt')}" in out
    assert _run("import-peer-ca", "--dir", partner, "--peer-ca", bank / "ca.crt")[0] == 0

    code, out, _ = _run(
        "issue", "--dir", bank, "--role", "gateway", "--name", "gw1",
        "--host", "127.0.0.1", "--host", "localhost", "--days", "90", "--out", tmp_path / "tls",
    )  # fmt: skip
    assert code == 0
    assert f"issued gateway certificate {tmp_path / 'tls' / 'gw1.crt'}" in out
    key = tmp_path / "tls" / "gw1.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    material = pki.load_tls_material(partner / "trust.pem", tmp_path / "tls" / "gw1.crt", key)
    assert material.identity == pki.PeerIdentity(pki.Party.BANK, pki.Role.GATEWAY, "gw1")
    # Each directory holds its own CA key only.
    assert sorted(p.name for p in partner.iterdir()) == ["ca.crt", "ca.key", "trust.pem"]


def test_show_prints_identity_and_validity(throwaway_pki: ThrowAwayPki) -> None:
    code, out, _ = _run("show", throwaway_pki.tls("partner-app").cert)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "identity: party=partner role=app name=partner-app"
    assert any(line.startswith("valid: ") for line in lines)
    assert "san: urn:cobrand:partner:app:partner-app" in lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("issue", "--dir", "{partner}", "--role", "gateway", "--name", "gw9"),
            "error: party 'partner' cannot issue role 'gateway' (allowed: app, partner)",
        ),
        (("init", "--dir", "{partner}", "--party", "partner"), "ca.key already exists"),
        (
            ("import-peer-ca", "--dir", "{bank}", "--peer-ca", "{foreign}/ca.crt"),
            "is a CA for party 'bank', this party's own name",
        ),
        (("show", "{bank}/ca.key"), "ca.key holds no valid PEM certificate"),
        (("show", "{bank}/absent.crt"), "error: cannot read certificate file"),
    ],
)
def test_bad_request_is_one_line_on_stderr_and_exit_code_2(
    throwaway_pki: ThrowAwayPki, args: tuple[str, ...], message: str
) -> None:
    dirs = {name: throwaway_pki.ca_dir(name) for name in ("bank", "partner", "foreign")}
    code, out, err = _run(*(arg.format(**dirs) for arg in args))
    assert code == EXIT_ERROR
    assert message in err
    assert err.count("\n") == 1
    assert err.startswith("error: ")
    assert out == ""


def test_unknown_role_is_a_usage_error_listing_the_roles(throwaway_pki: ThrowAwayPki) -> None:
    code, _, err = _run(
        "issue", "--dir", throwaway_pki.ca_dir("bank"), "--role", "admin", "--name", "x"
    )
    assert code == 2
    assert "bank-trainer" in err
