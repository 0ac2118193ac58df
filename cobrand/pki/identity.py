"""Who a certificate speaks for: parties, roles, and the identity carried in a leaf.

A leaf's identity is its subject ``O=<party>, OU=<role>, CN=<name>`` and, authoritative, one
SAN URI ``urn:cobrand:<party>:<role>:<name>``. ``identity_from_pem`` reads it back and checks it
agrees with the subject and with the issuer's ``O``: TLS has already proven the issuer is one of
the trusted CAs, and a trust bundle holds at most one CA per party (``import_peer_ca``), so the
party is bound to the CA that signed it. Each party may hold only its own roles
(``PARTY_ROLES``): a partner CA that mints a ``gateway`` certificate is refused here, so trusting
the partner's CA never lets it speak as a bank service.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from cobrand.errors import CertificateError

URN_PREFIX = "urn:cobrand:"


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
    subject = describe_subject(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError(f"certificate {subject} has no subjectAltName") from exc
    urns = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(URN_PREFIX)
    ]
    if len(urns) != 1:
        raise CertificateError(
            f"certificate {subject} must carry exactly one {URN_PREFIX}... URI, found {len(urns)}"
        )
    parts = urns[0].removeprefix(URN_PREFIX).split(":")
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
        if name_values(cert.subject, oid) != [value]:
            raise CertificateError(f"certificate {subject}: subject disagrees with {urns[0]!r}")
    if name_values(cert.issuer, NameOID.ORGANIZATION_NAME) != [party.value]:
        raise CertificateError(
            f"certificate {subject} claims party '{party}' but was issued by another party's CA"
        )
    return PeerIdentity(party=party, role=role, name=name)


def ca_party(cert: x509.Certificate, *, source: Path) -> Party:
    """The party a CA certificate speaks for (its subject ``O``), or a CertificateError."""
    values = name_values(cert.subject, NameOID.ORGANIZATION_NAME)
    try:
        (value,) = values
        return Party(value)
    except ValueError as exc:
        known = ", ".join(Party)
        raise CertificateError(
            f"{source}: CA subject O={values} is not one cobrand party ({known})"
        ) from exc


def name_values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(attr.value) for attr in name.get_attributes_for_oid(oid)]


def describe_subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"
