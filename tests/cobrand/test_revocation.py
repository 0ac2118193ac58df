"""Revoking certificates: each party's CA signs its CRL, servers load the CRLs of their trust
bundle's CAs, read them again when they change, and refuse a revoked certificate
(UNAUTHENTICATED, audited), over real servers.
And channels that expect a server of one party refuse the other party's."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from typer.testing import CliRunner

from cobrand import pki
from cobrand.commands.pki import app as pki_app
from cobrand.errors import ConfigError
from cobrand.pki import Party, Role, revocation
from cobrand.rpc import TlsFiles, create_channel, create_server
from tests.cobrand.guarded_server import RAW, guarded_server, method, reason, request_bytes

TIMEOUT = 5.0


@dataclass(frozen=True)
class Pki:
    """Two parties' CAs trusting each other, and a few leaves; made afresh for each test."""

    root: Path

    def ca_dir(self, party: Party) -> Path:
        return self.root / party.value

    def leaf(self, party: Party, role: Role, name: str, *hosts: str) -> TlsFiles:
        issued = pki.issue(self.ca_dir(party), role, name, hosts, days=2)
        return TlsFiles(
            ca_bundle=self.ca_dir(party) / pki.TRUST_BUNDLE, cert=issued.cert, key=issued.key
        )


@pytest.fixture
def parties(tmp_path: Path) -> Pki:
    made = Pki(tmp_path / "pki")
    for party in Party:
        pki.init_ca(made.ca_dir(party), party)
    pki.import_peer_ca(made.ca_dir(Party.BANK), made.ca_dir(Party.PARTNER) / pki.CA_CERT)
    pki.import_peer_ca(made.ca_dir(Party.PARTNER), made.ca_dir(Party.BANK) / pki.CA_CERT)
    return made


def _serial(files: TlsFiles) -> int:
    return x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number


def _crl_bundle(path: Path, *crls: Path) -> Path:
    path.write_bytes(b"".join(crl.read_bytes() for crl in crls))
    return path


def _call(port: int, files: TlsFiles) -> bytes:
    with create_channel(f"127.0.0.1:{port}", files) as channel:
        reply: bytes = channel.unary_unary(method("Unary"), **RAW)(
            request_bytes("a-1"), timeout=TIMEOUT
        )
        return reply


def _refusal(port: int, files: TlsFiles) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _call(port, files)
    return caught.value


@pytest.fixture
def revoked_setup(parties: Pki, tmp_path: Path) -> Iterator[tuple[int, TlsFiles, TlsFiles, Path]]:
    """A bank server loading both parties' CRLs; the partner's app revoked, the bank's not."""
    server = parties.leaf(Party.BANK, Role.GATEWAY, "gw1", "127.0.0.1")
    bank_app = parties.leaf(Party.BANK, Role.APP, "bank-app")
    partner_app = parties.leaf(Party.PARTNER, Role.APP, "partner-app")
    pki.revoke(parties.ca_dir(Party.BANK), 12345)  # the bank's list exists, bank-app not on it
    partner_crl = pki.revoke(parties.ca_dir(Party.PARTNER), _serial(partner_app))
    crls = _crl_bundle(tmp_path / "crls.pem", parties.ca_dir(Party.BANK) / pki.CA_CRL, partner_crl)
    denials = tmp_path / "denials.jsonl"
    with guarded_server(server.model_copy(update={"crl": crls}), denials) as port:
        yield port, bank_app, partner_app, denials


def test_a_revoked_client_certificate_is_refused_unauthenticated_and_audited(
    revoked_setup: tuple[int, TlsFiles, TlsFiles, Path],
) -> None:
    port, _, partner_app, denials = revoked_setup

    error = _refusal(port, partner_app)

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(error) == "CERTIFICATE_ERROR"
    serial = f"{_serial(partner_app):x}"
    assert error.details() == (
        f"certificate CN=partner-app,OU=app,O=partner (serial {serial}) is revoked"
    )
    (denial,) = [json.loads(line) for line in denials.read_text().splitlines()]
    assert (denial["status"], denial["serial"], denial["party"], denial["name"]) == (
        "UNAUTHENTICATED",
        serial,
        "partner",
        "partner-app",
    )


def test_a_certificate_not_on_any_list_is_still_served(
    revoked_setup: tuple[int, TlsFiles, TlsFiles, Path],
) -> None:
    port, bank_app, _, denials = revoked_setup

    assert _call(port, bank_app) == request_bytes("a-1")
    assert denials.read_bytes() == b""


def test_a_serial_revoked_by_the_other_partys_ca_does_not_revoke_this_partys_certificate(
    parties: Pki, tmp_path: Path
) -> None:
    server = parties.leaf(Party.BANK, Role.GATEWAY, "gw1", "127.0.0.1")
    bank_app = parties.leaf(Party.BANK, Role.APP, "bank-app")
    # The partner's CA lists the bank app's serial: it cannot revoke what it did not issue.
    partner_crl = pki.revoke(parties.ca_dir(Party.PARTNER), _serial(bank_app))
    with guarded_server(server.model_copy(update={"crl": partner_crl})) as port:
        assert _call(port, bank_app) == request_bytes("a-1")


def test_an_expired_client_certificate_is_refused(parties: Pki, tmp_path: Path) -> None:
    server = parties.leaf(Party.BANK, Role.GATEWAY, "gw1", "127.0.0.1")
    issued = pki.issue(
        parties.ca_dir(Party.BANK),
        Role.APP,
        "old-app",
        days=1,
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
    )
    expired = server.model_copy(update={"cert": issued.cert, "key": issued.key})
    credentials = grpc.ssl_channel_credentials(
        root_certificates=expired.ca_bundle.read_bytes(),
        private_key=expired.key.read_bytes(),
        certificate_chain=expired.cert.read_bytes(),
    )
    with (
        guarded_server(server) as port,
        grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        channel.unary_unary(method("Unary"), **RAW)(request_bytes("a"), timeout=TIMEOUT)
    # Refused in the TLS handshake, before any call reaches the interceptor.
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_certificate_revoked_while_the_server_runs_is_refused_from_the_next_look(
    parties: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(revocation, "RECHECK_S", 0.0)  # look at the file on every call
    server = parties.leaf(Party.BANK, Role.GATEWAY, "gw1", "127.0.0.1")
    app = parties.leaf(Party.BANK, Role.APP, "app1")
    ca_dir = parties.ca_dir(Party.BANK)
    crl = pki.revoke(ca_dir, 12345)
    with guarded_server(server.model_copy(update={"crl": crl})) as port:
        assert _call(port, app) == request_bytes("a-1")

        pki.revoke(ca_dir, _serial(app))

        assert _refusal(port, app).code() is grpc.StatusCode.UNAUTHENTICATED


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_changed_crl_file_is_read_again_only_after_the_recheck_interval(parties: Pki) -> None:
    ca_dir = parties.ca_dir(Party.BANK)
    crl = pki.revoke(ca_dir, 0xA1)
    clock = _Clock()
    watched = pki.WatchedRevocations(ca_dir / pki.TRUST_BUNDLE, crl, recheck_s=10.0, clock=clock)
    issuer = x509.load_pem_x509_certificate((ca_dir / pki.CA_CERT).read_bytes()).subject

    pki.revoke(ca_dir, 0xB2)
    clock.now = 9.0
    assert watched.is_revoked(issuer, 0xA1)
    assert not watched.is_revoked(issuer, 0xB2)

    clock.now = 10.0
    assert watched.is_revoked(issuer, 0xB2)


def test_a_crl_file_replaced_by_a_bad_one_leaves_the_previous_revocations_in_force(
    parties: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    ca_dir = parties.ca_dir(Party.BANK)
    crl = pki.revoke(ca_dir, 0xA1)
    clock = _Clock()
    watched = pki.WatchedRevocations(ca_dir / pki.TRUST_BUNDLE, crl, recheck_s=1.0, clock=clock)
    issuer = x509.load_pem_x509_certificate((ca_dir / pki.CA_CERT).read_bytes()).subject

    crl.write_text("half a copied file")
    clock.now = 5.0

    assert watched.is_revoked(issuer, 0xA1)
    assert f"CRL file {crl} holds no PEM CRL" in caplog.text
    assert "the lists read before stay in force" in caplog.text


def test_revoking_again_keeps_every_serial_revoked_before(parties: Pki) -> None:
    ca_dir = parties.ca_dir(Party.BANK)
    pki.revoke(ca_dir, 0xA1)
    pki.revoke(ca_dir, 0xB2)
    pki.revoke(ca_dir, 0xA1)

    revocations = pki.load_revocations(ca_dir / pki.TRUST_BUNDLE, ca_dir / pki.CA_CRL)
    issuer = x509.load_pem_x509_certificate((ca_dir / pki.CA_CERT).read_bytes()).subject
    assert sorted(serial for _, serial in revocations.revoked) == [0xA1, 0xB2]
    assert revocations.is_revoked(issuer, 0xB2)


def test_a_crl_not_signed_by_the_ca_it_names_is_a_config_error_naming_the_file(
    parties: Pki, tmp_path: Path
) -> None:
    # An impostor CA with the bank CA's very subject signs a list in its name.
    impostor = tmp_path / "impostor"
    pki.init_ca(impostor, Party.BANK)
    forged = pki.revoke(impostor, 77)

    with pytest.raises(ConfigError, match=rf"CRL file {forged}: CRL 1 is not signed by the CA"):
        pki.load_revocations(parties.ca_dir(Party.BANK) / pki.TRUST_BUNDLE, forged)


def test_a_crl_of_a_ca_outside_the_trust_bundle_is_a_config_error(
    parties: Pki, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    pki.init_ca(stranger, Party.PARTNER)
    # Same subject as the partner CA, so the signature check is what refuses it.
    crl = pki.revoke(stranger, 5)
    with pytest.raises(ConfigError, match="is not signed by the CA"):
        pki.load_revocations(parties.ca_dir(Party.BANK) / pki.TRUST_BUNDLE, crl)


def test_a_crl_file_holding_no_crl_stops_a_server_at_start(parties: Pki, tmp_path: Path) -> None:
    server = parties.leaf(Party.BANK, Role.GATEWAY, "gw1", "127.0.0.1")
    bad = tmp_path / "crls.pem"
    bad.write_text("not a CRL")

    with pytest.raises(ConfigError, match=rf"CRL file {bad} holds no PEM CRL"):
        create_server(lambda _: None, "127.0.0.1:0", server.model_copy(update={"crl": bad}))


def test_pki_revoke_by_certificate_file_writes_the_crl_the_server_then_refuses(
    parties: Pki, tmp_path: Path
) -> None:
    app = parties.leaf(Party.BANK, Role.APP, "app1")
    ca_dir = parties.ca_dir(Party.BANK)

    result = CliRunner().invoke(pki_app, ["revoke", "--dir", str(ca_dir), "--cert", str(app.cert)])

    assert result.exit_code == 0, result.output
    assert f"revoked serial {_serial(app):x}" in result.output
    shown = CliRunner().invoke(pki_app, ["show", str(app.cert)])
    assert f"serial: {_serial(app):x}" in shown.output
    revocations = pki.load_revocations(ca_dir / pki.TRUST_BUNDLE, ca_dir / pki.CA_CRL)
    assert {serial for _, serial in revocations.revoked} == {_serial(app)}


def test_pki_revoke_by_serial_reads_the_hex_pki_show_prints(parties: Pki) -> None:
    ca_dir = parties.ca_dir(Party.BANK)

    result = CliRunner().invoke(pki_app, ["revoke", "--dir", str(ca_dir), "--serial", "0a:ff"])

    assert result.exit_code == 0, result.output
    revocations = pki.load_revocations(ca_dir / pki.TRUST_BUNDLE, ca_dir / pki.CA_CRL)
    assert {serial for _, serial in revocations.revoked} == {0x0AFF}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give the certificate to revoke: --serial or --cert"),
        (["--serial", "xyz"], "--serial 'xyz' is not a hexadecimal serial number"),
        (["--serial", "0"], "serial number 0 is not a certificate serial"),
    ],
)
def test_pki_revoke_refuses_a_missing_or_bad_serial(
    parties: Pki, arguments: list[str], message: str
) -> None:
    ca_dir = parties.ca_dir(Party.BANK)

    result = CliRunner().invoke(pki_app, ["revoke", "--dir", str(ca_dir), *arguments])

    assert result.exit_code == 2
    assert message in result.output
    assert not (ca_dir / pki.CA_CRL).exists()


def test_pki_revoke_refuses_a_certificate_of_the_other_partys_ca(parties: Pki) -> None:
    partner_app = parties.leaf(Party.PARTNER, Role.APP, "partner-app")
    ca_dir = parties.ca_dir(Party.BANK)

    result = CliRunner().invoke(
        pki_app, ["revoke", "--dir", str(ca_dir), "--cert", str(partner_app.cert)]
    )

    assert result.exit_code == 2
    assert "was not issued by the CA in" in result.output


def test_a_channel_expecting_the_partner_refuses_a_bank_server(parties: Pki) -> None:
    bank_server = parties.leaf(Party.BANK, Role.GATEWAY, "gw1", "127.0.0.1")
    client = parties.leaf(Party.BANK, Role.GATEWAY, "gw2")
    with guarded_server(bank_server) as port:
        with create_channel(f"127.0.0.1:{port}", client, server_party=Party.PARTNER) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(method("Secret"), **RAW)(request_bytes("a"), timeout=TIMEOUT)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        with create_channel(f"127.0.0.1:{port}", client, server_party=Party.BANK) as channel:
            reply = channel.unary_unary(method("Secret"), **RAW)(
                request_bytes("a"), timeout=TIMEOUT
            )
            assert reply == request_bytes("a")
