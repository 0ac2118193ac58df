"""A party's own certificate authority: creating it, issuing leaves, trusting the peer's CA.

Keys are ECDSA P-256 (what gRPC's BoringSSL accepts everywhere for TLS 1.2 and 1.3), signed
with SHA-256. Private keys are created owner-only (0600) and never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cobrand.durable import write_new
from cobrand.errors import AlreadyExists, CertificateError, ConfigError
from cobrand.pki.identity import PARTY_ROLES, URN_PREFIX, Party, Role, ca_party
from cobrand.pki.material import (
    check_validity,
    is_ca,
    read_certificates,
    read_private_key,
    utcnow,
)

CA_DAYS = 1826
MAX_LEAF_DAYS = 825
# Certificates start slightly in the past so a peer whose clock lags a little accepts them.
_BACKDATE = dt.timedelta(minutes=5)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TRUST_BUNDLE = "trust.pem"


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    """Where ``issue`` wrote a leaf certificate and its private key."""

    cert: Path
    key: Path


def init_ca(directory: Path, party: Party, *, days: int = CA_DAYS) -> Path:
    """Create a party's own CA in `directory` and start its trust bundle with it.

    Parameters
    ----------
    directory : Path
        The party's PKI directory; created if missing. Must not already hold a CA.
    party : Party
        The party this CA speaks for; written as the CA subject's ``O``.
    days : int
        Lifetime of the CA certificate.

    Returns
    -------
    Path
        The CA certificate, ``directory / "ca.crt"``.

    Raises
    ------
    AlreadyExists
        If `directory` already holds ``ca.key`` or ``ca.crt``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for existing in (CA_KEY, CA_CERT, TRUST_BUNDLE):
        if (directory / existing).exists():
            raise AlreadyExists(f"{directory / existing} already exists; this party has a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, party.value),
            x509.NameAttribute(NameOID.COMMON_NAME, f"cobrand {party.value} CA"),
        ]
    )
    now = utcnow()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_private_key(directory / CA_KEY, key)
    write_new(directory / CA_CERT, cert_pem, mode=0o644)
    write_new(directory / TRUST_BUNDLE, cert_pem, mode=0o644)
    return directory / CA_CERT


def issue(
    ca_dir: Path,
    role: Role,
    name: str,
    hosts: Sequence[str] = (),
    *,
    days: int = 365,
    out_dir: Path | None = None,
    now: dt.datetime | None = None,
) -> IssuedFiles:
    """Issue a leaf certificate for `role`/`name` from the party's own CA in `ca_dir`.

    Parameters
    ----------
    ca_dir : Path
        The party's PKI directory (made by ``init_ca``).
    role : Role
        Must be one of the CA's party's roles (``PARTY_ROLES``).
    name : str
        The holder's name, e.g. ``gw1``: letters, digits, ``.``, ``_``, ``-``.
    hosts : sequence of str
        DNS names or IP addresses the holder serves on (SAN); empty for a client-only holder.
    days : int
        Validity, 1 to ``MAX_LEAF_DAYS``.
    out_dir : Path, optional
        Where ``<name>.crt`` and ``<name>.key`` go; defaults to `ca_dir`.
    now : datetime, optional
        Issuing time (UTC); defaults to the current time. Tests pass a past time.

    Returns
    -------
    IssuedFiles
        The certificate and key paths.

    Raises
    ------
    ConfigError
        On a role the party may not hold, a bad name or host, or a lifetime out of range.
    CertificateError
        If the CA files are missing, unreadable or expired.
    AlreadyExists
        If the certificate or key file already exists.
    """
    ca_cert, ca_key = load_ca(ca_dir)
    party = ca_party(ca_cert, source=ca_dir / CA_CERT)
    if role not in PARTY_ROLES[party]:
        allowed = ", ".join(sorted(PARTY_ROLES[party]))
        raise ConfigError(f"party '{party}' cannot issue role '{role}' (allowed: {allowed})")
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"certificate name {name!r} must be 1-63 letters, digits, '.', '_' or '-'"
        )
    if not 1 <= days <= MAX_LEAF_DAYS:
        raise ConfigError(f"certificate lifetime {days} days is outside 1..{MAX_LEAF_DAYS}")
    issued_at = now or utcnow()
    if issued_at + dt.timedelta(days=days) > ca_cert.not_valid_after_utc:
        raise ConfigError(
            f"a {days}-day certificate would outlive the CA in {ca_dir / CA_CERT}, "
            f"which expires on {ca_cert.not_valid_after_utc.date()}"
        )
    san: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(f"{URN_PREFIX}{party}:{role}:{name}")
    ]
    san.extend(_host_name(host) for host in hosts)

    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, party.value),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued_at - _BACKDATE)
        .not_valid_after(issued_at + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    target = out_dir or ca_dir
    target.mkdir(parents=True, exist_ok=True)
    files = IssuedFiles(cert=target / f"{name}.crt", key=target / f"{name}.key")
    for path in (files.cert, files.key):
        if path.exists():
            raise AlreadyExists(f"{path} already exists; remove it to issue a new one")
    _write_private_key(files.key, key)
    write_new(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def import_peer_ca(ca_dir: Path, peer_ca: Path) -> Party:
    """Add the other party's CA certificate (only the certificate) to this party's trust bundle.

    Parameters
    ----------
    ca_dir : Path
        This party's PKI directory.
    peer_ca : Path
        The other party's ``ca.crt``, received out of band.

    Returns
    -------
    Party
        The party the imported CA speaks for.

    Raises
    ------
    CertificateError
        If `peer_ca` is not a valid, current CA certificate, or claims this party's own name.
    AlreadyExists
        If a CA for that party is already trusted.
    """
    own_party = ca_party(read_certificates(ca_dir / CA_CERT)[0], source=ca_dir / CA_CERT)
    certs = read_certificates(peer_ca)
    if len(certs) != 1:
        raise CertificateError(f"{peer_ca} must hold exactly one CA certificate, not {len(certs)}")
    (cert,) = certs
    if not is_ca(cert):
        raise CertificateError(f"{peer_ca} is not a CA certificate (basicConstraints CA=false)")
    check_validity(cert, peer_ca)
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateError(f"{peer_ca} is not a self-signed CA certificate") from exc
    peer_party = ca_party(cert, source=peer_ca)
    # Two CAs speaking for one party would let either mint the other's identities.
    if peer_party == own_party:
        raise CertificateError(
            f"{peer_ca} is a CA for party '{peer_party}', this party's own name; "
            "import only the other party's CA"
        )
    bundle_path = ca_dir / TRUST_BUNDLE
    trusted = read_certificates(bundle_path)
    if any(ca_party(c, source=bundle_path) == peer_party for c in trusted):
        raise AlreadyExists(f"{bundle_path} already trusts a CA for party '{peer_party}'")
    bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [*trusted, cert])
    staging = bundle_path.with_suffix(".pem.tmp")
    staging.write_bytes(bundle)
    # Replace atomically: a crash mid-write must not leave a half bundle that trusts nobody.
    staging.replace(bundle_path)
    return peer_party


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    # ECDSA keys only sign: TLS handshakes, and for a CA also certificates and CRLs.
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The party's CA certificate and key from `ca_dir`, checked current and matching."""
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    cert = read_certificates(cert_path)[0]
    check_validity(cert, cert_path)
    key = read_private_key(key_path)
    if key.public_key() != cert.public_key():
        raise CertificateError(f"CA key {key_path} does not match CA certificate {cert_path}")
    return cert, key


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or not all(
        re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", x) for x in labels
    ):
        raise ConfigError(f"host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new(path, pem, mode=0o600)
