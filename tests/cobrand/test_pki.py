"""PKI: each party's own CA, leaf certificates carrying the role, and the checks on loading them."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from cobrand import pki
from cobrand.errors import AlreadyExists, CertificateError, ConfigError
from cobrand.pki import Party, PeerIdentity, Role
from tests.conftest import ThrowAwayPki, forge_leaf


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Run with umask 000, so only the mode given at creation can keep a key private."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_init_ca_makes_a_p256_ca_for_about_five_years(tmp_path: Path) -> None:
    ca_path = pki.init_ca(tmp_path / "bank", Party.BANK)
    ca = _cert(ca_path)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert 4 * 365 < lifetime.days <= 5 * 366
    assert pki.ca_party(ca, source=ca_path) is Party.BANK
    assert (tmp_path / "bank" / "trust.pem").read_bytes() == ca_path.read_bytes()


def test_private_keys_are_created_owner_only(tmp_path: Path, permissive_umask: None) -> None:
    pki.init_ca(tmp_path / "bank", Party.BANK)
    issued = pki.issue(tmp_path / "bank", Role.GATEWAY, "gw1", ["127.0.0.1"])
    for key in (tmp_path / "bank" / "ca.key", issued.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_second_ca_in_one_directory_is_refused(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "bank", Party.BANK)
    with pytest.raises(AlreadyExists, match=r"ca\.key already exists"):
        pki.init_ca(tmp_path / "bank", Party.BANK)


def test_issued_leaf_carries_role_party_name_hosts_and_both_auth_usages(
    throwaway_pki: ThrowAwayPki,
) -> None:
    files = throwaway_pki.tls("gateway")
    leaf = _cert(files.cert)
    ca = _cert(throwaway_pki.ca_dir("bank") / "ca.crt")
    assert pki.identity_from_pem(files.cert.read_bytes()) == PeerIdentity(
        Party.BANK, Role.GATEWAY, "gateway"
    )
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:cobrand:bank:gateway:gateway"
    ]
    assert leaf.subject.rfc4514_string() == "CN=gateway,OU=gateway,O=bank"
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    leaf.verify_directly_issued_by(ca)


def test_party_cannot_issue_the_other_partys_roles(throwaway_pki: ThrowAwayPki) -> None:
    with pytest.raises(ConfigError, match="party 'partner' cannot issue role 'gateway'"):
        pki.issue(throwaway_pki.ca_dir("partner"), Role.GATEWAY, "gw9")


@pytest.mark.parametrize(
    ("name", "hosts", "days", "message"),
    [
        ("gw:1", (), 30, "certificate name 'gw:1' must be"),
        ("gw1", ("bad host!",), 30, "host 'bad host!' is neither an IP address nor a DNS name"),
        ("gw1", (), 0, "lifetime 0 days is outside 1..825"),
        ("gw1", (), 4000, "lifetime 4000 days is outside 1..825"),
    ],
)
def test_bad_issue_request_is_a_config_error(
    throwaway_pki: ThrowAwayPki, name: str, hosts: tuple[str, ...], days: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        pki.issue(throwaway_pki.ca_dir("bank"), Role.GATEWAY, name, hosts, days=days)


def test_issuing_over_an_existing_certificate_is_refused(throwaway_pki: ThrowAwayPki) -> None:
    bank = throwaway_pki.ca_dir("bank")
    with pytest.raises(AlreadyExists, match=r"gateway\.crt already exists"):
        pki.issue(bank, Role.GATEWAY, "gateway", out_dir=bank / "issued")


def test_importing_peer_ca_adds_only_its_certificate_to_the_trust_bundle(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "bank", Party.BANK)
    partner_ca = pki.init_ca(tmp_path / "partner", Party.PARTNER)
    assert pki.import_peer_ca(tmp_path / "bank", partner_ca) is Party.PARTNER
    bundle = x509.load_pem_x509_certificates((tmp_path / "bank" / "trust.pem").read_bytes())
    assert [pki.ca_party(c, source=tmp_path) for c in bundle] == [Party.BANK, Party.PARTNER]
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == [
        "ca.crt",
        "ca.key",
        "trust.pem",
    ]


def test_importing_a_ca_for_ones_own_party_is_refused(throwaway_pki: ThrowAwayPki) -> None:
    with pytest.raises(CertificateError, match="this party's own name"):
        pki.import_peer_ca(throwaway_pki.ca_dir("bank"), throwaway_pki.ca_dir("foreign") / "ca.crt")


def test_importing_a_second_ca_for_the_same_peer_is_refused(throwaway_pki: ThrowAwayPki) -> None:
    with pytest.raises(AlreadyExists, match="already trusts a CA for party 'partner'"):
        pki.import_peer_ca(throwaway_pki.ca_dir("bank"), throwaway_pki.ca_dir("partner") / "ca.crt")


def test_importing_a_leaf_as_peer_ca_is_refused(throwaway_pki: ThrowAwayPki) -> None:
    leaf = throwaway_pki.tls("partner").cert
    with pytest.raises(CertificateError, match=r"partner\.crt is not a CA certificate"):
        pki.import_peer_ca(throwaway_pki.ca_dir("bank"), leaf)


@pytest.mark.parametrize(
    ("subject", "uris", "message"),
    [
        (
            {"O": "partner", "OU": "gateway", "CN": "x"},
            ("urn:cobrand:partner:gateway:x",),
            "party 'partner' cannot hold role 'gateway'",
        ),
        ({"O": "partner", "OU": "partner", "CN": "x"}, (), r"exactly one urn:cobrand:\.\.\. URI"),
        (
            {"O": "partner", "OU": "partner", "CN": "x"},
            ("urn:cobrand:partner:partner:x", "urn:cobrand:partner:partner:y"),
            "found 2",
        ),
        (
            {"O": "partner", "OU": "partner", "CN": "x"},
            ("urn:cobrand:partner:partner:y",),
            "subject disagrees",
        ),
        (
            {"O": "partner", "OU": "partner", "CN": "x"},
            ("urn:cobrand:partner:chief:x",),
            "malformed identity",
        ),
    ],
)
def test_inconsistent_identity_is_refused(
    throwaway_pki: ThrowAwayPki,
    tmp_path: Path,
    subject: dict[str, str],
    uris: tuple[str, ...],
    message: str,
) -> None:
    forged = forge_leaf(throwaway_pki.ca_dir("partner"), tmp_path, subject=subject, uris=uris)
    with pytest.raises(CertificateError, match=message):
        pki.identity_from_pem(forged.cert.read_bytes())


def test_identity_claiming_the_other_party_is_refused(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    # The bank's CA signs a certificate that claims to be the partner.
    forged = forge_leaf(
        throwaway_pki.ca_dir("bank"),
        tmp_path,
        subject={"O": "partner", "OU": "partner", "CN": "x"},
        uris=("urn:cobrand:partner:partner:x",),
    )
    with pytest.raises(CertificateError, match="issued by another party's CA"):
        pki.identity_from_pem(forged.cert.read_bytes())


def test_loading_a_good_pair_returns_material_and_identity(throwaway_pki: ThrowAwayPki) -> None:
    files = throwaway_pki.tls("partner")
    material = pki.load_tls_material(files.ca_bundle, files.cert, files.key)
    assert material.identity == PeerIdentity(Party.PARTNER, Role.PARTNER, "partner")
    assert material.private_key == files.key.read_bytes()


def test_expired_certificate_is_named_with_its_expiry_date(throwaway_pki: ThrowAwayPki) -> None:
    files = throwaway_pki.tls("expired-app")
    expiry = _cert(files.cert).not_valid_after_utc.date()
    with pytest.raises(CertificateError) as caught:
        pki.load_tls_material(files.ca_bundle, files.cert, files.key)
    assert str(caught.value) == f"certificate {files.cert} expired on {expiry.isoformat()}"


def test_not_yet_valid_certificate_is_refused(throwaway_pki: ThrowAwayPki, tmp_path: Path) -> None:
    bank = throwaway_pki.ca_dir("bank")
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    issued = pki.issue(bank, Role.APP, "later", days=5, out_dir=tmp_path, now=future)
    with pytest.raises(CertificateError, match=r"later\.crt is not valid before"):
        pki.load_tls_material(bank / "trust.pem", issued.cert, issued.key)


def test_key_not_matching_certificate_is_refused(throwaway_pki: ThrowAwayPki) -> None:
    app, gateway = throwaway_pki.tls("app"), throwaway_pki.tls("gateway")
    with pytest.raises(CertificateError, match=r"gateway\.key does not match certificate .*app"):
        pki.load_tls_material(app.ca_bundle, app.cert, gateway.key)


def test_certificate_from_an_untrusted_ca_is_refused(throwaway_pki: ThrowAwayPki) -> None:
    foreign = throwaway_pki.tls("foreign-app")
    bank_bundle = throwaway_pki.tls("app").ca_bundle
    with pytest.raises(CertificateError, match=r"foreign-app\.crt .* is not issued by any CA in"):
        pki.load_tls_material(bank_bundle, foreign.cert, foreign.key)


def test_key_readable_by_others_is_refused(throwaway_pki: ThrowAwayPki, tmp_path: Path) -> None:
    files = pki.issue(throwaway_pki.ca_dir("bank"), Role.APP, "leaky", out_dir=tmp_path)
    files.key.chmod(0o644)
    with pytest.raises(CertificateError, match=r"leaky\.key is accessible by group or others"):
        pki.load_tls_material(throwaway_pki.ca_dir("bank") / "trust.pem", files.cert, files.key)


def test_missing_and_garbage_files_are_named(throwaway_pki: ThrowAwayPki, tmp_path: Path) -> None:
    files = throwaway_pki.tls("app")
    with pytest.raises(CertificateError, match=r"cannot read certificate file .*absent\.crt"):
        pki.load_tls_material(files.ca_bundle, tmp_path / "absent.crt", files.key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(CertificateError, match=r"garbage\.pem holds no valid PEM certificate"):
        pki.load_tls_material(garbage, files.cert, files.key)


def test_describe_certificate_shows_identity_and_validity(throwaway_pki: ThrowAwayPki) -> None:
    lines = pki.describe_certificate(throwaway_pki.tls("gateway").cert)
    assert lines[0] == "identity: party=bank role=gateway name=gateway"
    assert any(line.startswith("valid: ") and " to " in line for line in lines)
    ca_lines = pki.describe_certificate(throwaway_pki.ca_dir("partner") / "ca.crt")
    assert ca_lines[0] == "CA for party: partner"
