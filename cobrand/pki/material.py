"""Reading and checking certificate, key and trust-bundle files before TLS uses them.

Every check names the file and what is wrong with it ("certificate tls/gw.crt expired on
2026-01-02"), so a misconfigured process stops at start-up with a clear message instead of
failing TLS handshakes later with an opaque UNAVAILABLE.
"""

from __future__ import annotations

import datetime as dt
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cobrand.errors import CertificateError
from cobrand.pki.identity import (
    Party,
    PeerIdentity,
    ca_party,
    describe_subject,
    identity_from_pem,
)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Checked PEM bytes ready for ``grpc.ssl_server_credentials`` / ``ssl_channel_credentials``."""

    trust_bundle: bytes
    cert_chain: bytes
    private_key: bytes
    identity: PeerIdentity


def load_tls_material(trust_bundle: Path, cert: Path, key: Path) -> TlsMaterial:
    """Read and check a certificate/key pair and the trust bundle it is used with.

    Checks, each failing with a ``CertificateError`` that names the file: every file is
    readable PEM; the bundle holds only current CA certificates; the key matches the
    certificate; the certificate is valid now and issued by one of the bundle's CAs; it
    carries a cobrand identity.
    """
    trusted = read_certificates(trust_bundle)
    for ca in trusted:
        if not is_ca(ca):
            raise CertificateError(
                f"{trust_bundle} holds {describe_subject(ca)}, which is not a CA"
            )
        check_validity(ca, trust_bundle)
    leaf = read_certificates(cert)[0]
    check_validity(leaf, cert)
    private_key = read_private_key(key)
    if private_key.public_key() != leaf.public_key():
        raise CertificateError(f"private key {key} does not match certificate {cert}")
    if not any(_issued_by(leaf, ca) for ca in trusted):
        raise CertificateError(
            f"certificate {cert} ({describe_subject(leaf)}) "
            f"is not issued by any CA in {trust_bundle}"
        )
    try:
        identity = identity_from_pem(leaf.public_bytes(serialization.Encoding.PEM))
    except CertificateError as exc:
        raise CertificateError(f"{cert}: {exc}") from exc
    return TlsMaterial(
        trust_bundle=trust_bundle.read_bytes(),
        cert_chain=cert.read_bytes(),
        private_key=key.read_bytes(),
        identity=identity,
    )


def party_trust_bundle(trust_bundle: Path, party: Party) -> bytes:
    """The PEM of the CA certificates in `trust_bundle` that speak for `party`.

    A channel that trusts only these accepts a server certificate of that party alone.

    Raises
    ------
    CertificateError
        If the bundle holds no CA of `party`.
    """
    chosen = [
        ca.public_bytes(serialization.Encoding.PEM)
        for ca in read_certificates(trust_bundle)
        if ca_party(ca, source=trust_bundle) == party
    ]
    if not chosen:
        raise CertificateError(f"{trust_bundle} holds no CA of party '{party}'")
    return b"".join(chosen)


def describe_certificate(path: Path) -> list[str]:
    """Human-readable lines about each certificate in `path`: identity, issuer, validity, SAN."""
    lines: list[str] = []
    for cert in read_certificates(path):
        if is_ca(cert):
            lines.append(f"CA for party: {ca_party(cert, source=path)}")
        else:
            identity = identity_from_pem(cert.public_bytes(serialization.Encoding.PEM))
            lines.append(
                f"identity: party={identity.party} role={identity.role} name={identity.name}"
            )
        lines.append(f"subject: {cert.subject.rfc4514_string()}")
        lines.append(f"serial: {cert.serial_number:x}")
        lines.append(f"issuer: {cert.issuer.rfc4514_string()}")
        lines.append(
            f"valid: {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()}"
        )
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            lines.append("san: " + ", ".join(str(n.value) for n in san))
        except x509.ExtensionNotFound:
            pass
        lines.append(f"sha256: {_fingerprint(cert)}")
    return lines


def fingerprint(path: Path) -> str:
    """SHA-256 fingerprint of the (first) certificate in `path`, as colon-separated hex.

    Parties read it to each other out of band before ``import_peer_ca`` trusts a CA file.
    """
    return _fingerprint(read_certificates(path)[0])


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read certificate file {path}: {exc.strerror}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"{path} holds no valid PEM certificate") from exc
    return certs


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise CertificateError(f"cannot read private key {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CertificateError(
            f"private key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path} holds no unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path} holds a {type(key).__name__}, not an EC private key")
    return key


def check_validity(cert: x509.Certificate, path: Path) -> None:
    now = utcnow()
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            f"certificate {path} expired on {cert.not_valid_after_utc.date().isoformat()}"
        )
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"certificate {path} is not valid before "
            f"{cert.not_valid_before_utc.isoformat(timespec='seconds')}"
        )


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
