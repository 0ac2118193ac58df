"""Each party's own certificate authority, its leaf certificates, and the checks on loading them.

Keys are ECDSA P-256 (what gRPC's BoringSSL accepts everywhere for TLS 1.2 and 1.3), signed
with SHA-256. A party's CA lives for ``CA_DAYS`` (about five years); leaves for at most
``MAX_LEAF_DAYS``.

Layout of a party's PKI directory::

    ca.crt      the party's own CA certificate (public)
    ca.key      its private key, owner-only (0600); never leaves the party
    trust.pem   the trust bundle servers and channels load: ca.crt, then every peer CA
                certificate imported with ``import_peer_ca`` (certificates only)

Identity in a leaf certificate. Subject ``O=<party>, OU=<role>, CN=<name>`` and, authoritative,
one SAN URI ``urn:cobrand:<party>:<role>:<name>``; ``identity_from_pem`` reads it back and checks
it agrees with the subject and with the issuing CA's ``O`` (which TLS has proven to be one of the
trusted CAs). Each party may hold only its own roles (``PARTY_ROLES``): a partner CA that mints a
``gateway`` certificate is refused on parse, so trusting the partner's CA never lets it speak as
a bank service.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cobrand.errors import AlreadyExists, CertificateError, ConfigError

__all__ = [
    "CA_DAYS",
    "MAX_LEAF_DAYS",
    "PARTY_ROLES",
    "IssuedFiles",
    "Party",
    "PeerIdentity",
    "Role",
    "TlsMaterial",
    "ca_party",
    "describe_certificate",
    "identity_from_pem",
    "import_peer_ca",
    "init_ca",
    "issue",
    "load_tls_material",
]

CA_DAYS = 1826
MAX_LEAF_DAYS = 825
# Certificates start slightly in the past so a peer whose clock lags a little accepts them.
_BACKDATE = dt.timedelta(minutes=5)
_URN_PREFIX = "urn:cobrand:"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TRUST_BUNDLE = "trust.pem"


class Party(StrEnum):
    """The two parties of a co-brand federation; each runs its own CA."""

    BANK = "bank"
    PARTNER = "partner"


class Role(StrEnum):
    """What a certificate's holder is; servers allow each call to a set of roles."""

    BANK = "bank"
    PARTNER = "partner"
    GATEWAY = "gateway"
    APP = "app"
    BANK_TRAINER = "bank-trainer"


PARTY_ROLES: dict[Party, frozenset[Role]] = {
    Party.BANK: frozenset({Role.BANK, Role.GATEWAY, Role.APP, Role.BANK_TRAINER}),
    # The partner's app channel submits applications to the gateway as role `app`.
    Party.PARTNER: frozenset({Role.PARTNER, Role.APP}),
}


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of a mutually authenticated connection."""

    party: Party
    role: Role
    name: str

    def __str__(self) -> str:
        return f"{self.party}:{self.role}:{self.name}"


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    """Where ``issue`` wrote a leaf certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Checked PEM bytes ready for ``grpc.ssl_server_credentials`` / ``ssl_channel_credentials``."""

    trust_bundle: bytes
    cert_chain: bytes
    private_key: bytes
    identity: PeerIdentity


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
    now = _utcnow()
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
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_private_key(directory / CA_KEY, key)
    _write_new(directory / CA_CERT, cert_pem, mode=0o644)
    _write_new(directory / TRUST_BUNDLE, cert_pem, mode=0o644)
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
    ca_cert, ca_key = _load_ca(ca_dir)
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
    issued_at = now or _utcnow()
    if issued_at + dt.timedelta(days=days) > ca_cert.not_valid_after_utc:
        raise ConfigError(
            f"a {days}-day certificate would outlive the CA in {ca_dir / CA_CERT}, "
            f"which expires on {ca_cert.not_valid_after_utc.date()}"
        )
    san: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(f"{_URN_PREFIX}{party}:{role}:{name}")
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
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
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
    _write_new(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
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
    own_party = ca_party(_read_certs(ca_dir / CA_CERT)[0], source=ca_dir / CA_CERT)
    certs = _read_certs(peer_ca)
    if len(certs) != 1:
        raise CertificateError(f"{peer_ca} must hold exactly one CA certificate, not {len(certs)}")
    (cert,) = certs
    if not _is_ca(cert):
        raise CertificateError(f"{peer_ca} is not a CA certificate (basicConstraints CA=false)")
    _check_validity(cert, peer_ca)
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
    trusted = _read_certs(bundle_path)
    if any(ca_party(c, source=bundle_path) == peer_party for c in trusted):
        raise AlreadyExists(f"{bundle_path} already trusts a CA for party '{peer_party}'")
    bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [*trusted, cert])
    staging = bundle_path.with_suffix(".pem.tmp")
    staging.write_bytes(bundle)
    # Replace atomically: a crash mid-write must not leave a half bundle that trusts nobody.
    staging.replace(bundle_path)
    return peer_party


def identity_from_pem(pem: bytes) -> PeerIdentity:
    """Read the cobrand identity from a leaf certificate's PEM.

    The SAN URI ``urn:cobrand:<party>:<role>:<name>`` is authoritative; the subject and the
    issuer's ``O`` must agree with it, and the role must belong to the party.

    Raises
    ------
    CertificateError
        If the certificate does not carry exactly one consistent cobrand identity.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError("peer certificate is not a valid PEM certificate") from exc
    subject = _describe(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError(f"certificate {subject} has no subjectAltName") from exc
    urns = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(_URN_PREFIX)
    ]
    if len(urns) != 1:
        raise CertificateError(
            f"certificate {subject} must carry exactly one {_URN_PREFIX}... URI, found {len(urns)}"
        )
    parts = urns[0].removeprefix(_URN_PREFIX).split(":")
    try:
        party_text, role_text, name = parts
        party, role = Party(party_text), Role(role_text)
    except ValueError as exc:
        raise CertificateError(
            f"certificate {subject} has a malformed identity {urns[0]!r}"
        ) from exc
    if role not in PARTY_ROLES[party]:
        raise CertificateError(f"certificate {subject}: party '{party}' cannot hold role '{role}'")
    expected = {
        NameOID.ORGANIZATION_NAME: party.value,
        NameOID.ORGANIZATIONAL_UNIT_NAME: role.value,
        NameOID.COMMON_NAME: name,
    }
    for oid, value in expected.items():
        if _name_values(cert.subject, oid) != [value]:
            raise CertificateError(f"certificate {subject}: subject disagrees with {urns[0]!r}")
    if _name_values(cert.issuer, NameOID.ORGANIZATION_NAME) != [party.value]:
        raise CertificateError(
            f"certificate {subject} claims party '{party}' but was issued by another party's CA"
        )
    return PeerIdentity(party=party, role=role, name=name)


def ca_party(cert: x509.Certificate, *, source: Path) -> Party:
    """The party a CA certificate speaks for (its subject ``O``), or a CertificateError."""
    values = _name_values(cert.subject, NameOID.ORGANIZATION_NAME)
    try:
        (value,) = values
        return Party(value)
    except ValueError as exc:
        known = ", ".join(Party)
        raise CertificateError(
            f"{source}: CA subject O={values} is not one cobrand party ({known})"
        ) from exc


def load_tls_material(trust_bundle: Path, cert: Path, key: Path) -> TlsMaterial:
    """Read and check a certificate/key pair and the trust bundle it is used with.

    Checks, each failing with a ``CertificateError`` that names the file: every file is
    readable PEM; the bundle holds only current CA certificates; the key matches the
    certificate; the certificate is valid now and issued by one of the bundle's CAs; it
    carries a cobrand identity.
    """
    trusted = _read_certs(trust_bundle)
    for ca in trusted:
        if not _is_ca(ca):
            raise CertificateError(f"{trust_bundle} holds {_describe(ca)}, which is not a CA")
        _check_validity(ca, trust_bundle)
    leaves = _read_certs(cert)
    leaf = leaves[0]
    _check_validity(leaf, cert)
    private_key = _read_private_key(key)
    if private_key.public_key() != leaf.public_key():
        raise CertificateError(f"private key {key} does not match certificate {cert}")
    if not any(_issued_by(leaf, ca) for ca in trusted):
        raise CertificateError(
            f"certificate {cert} ({_describe(leaf)}) is not issued by any CA in {trust_bundle}"
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


def describe_certificate(path: Path) -> list[str]:
    """Human-readable lines about each certificate in `path`: identity, issuer, validity, SAN."""
    lines: list[str] = []
    for cert in _read_certs(path):
        if _is_ca(cert):
            lines.append(f"CA for party: {ca_party(cert, source=path)}")
        else:
            identity = identity_from_pem(cert.public_bytes(serialization.Encoding.PEM))
            lines.append(
                f"identity: party={identity.party} role={identity.role} name={identity.name}"
            )
        lines.append(f"subject: {cert.subject.rfc4514_string()}")
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
        lines.append(f"sha256: {cert.fingerprint(hashes.SHA256()).hex(':')}")
    return lines


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    cert = _read_certs(cert_path)[0]
    _check_validity(cert, cert_path)
    key = _read_private_key(key_path)
    if key.public_key() != cert.public_key():
        raise CertificateError(f"CA key {key_path} does not match CA certificate {cert_path}")
    return cert, key


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read certificate file {path}: {exc.strerror}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"{path} holds no valid PEM certificate") from exc
    return certs


def _read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
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


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    now = _utcnow()
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


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


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


def _name_values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(attr.value) for attr in name.get_attributes_for_oid(oid)]


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(path, pem, mode=0o600)


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    # O_EXCL with the mode at creation: the key is never readable by others, not even briefly,
    # and an existing file (perhaps a key in use) is never overwritten.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise AlreadyExists(f"{path} already exists; refusing to overwrite it") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
