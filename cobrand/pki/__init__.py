"""Each party's own certificate authority, the identities in its certificates, and the checks
on loading them.

Layout of a party's PKI directory (``cobrand pki init``/``issue``/``import-peer-ca``)::

    ca.crt      the party's own CA certificate (public; its subject O names the party)
    ca.key      its private key, owner-only (0600); never leaves the party
    trust.pem   the trust bundle servers and channels load: ca.crt, then the other party's CA
                certificate imported with ``import_peer_ca`` (certificates only, one per party)
    <name>.crt  leaf certificates and their owner-only keys (``issue``; or under ``--out``)
    <name>.key
    ca.crl      the party's revocation list (``revoke``), signed by its CA; sent to the other
                party like ca.crt

A party's CA lives ``CA_DAYS`` (about five years), a leaf at most ``MAX_LEAF_DAYS``. The
identity scheme is described in ``cobrand.pki.identity``; ``authority`` makes certificates,
``material`` reads and checks them, ``revocation`` revokes them.
"""

from cobrand.pki.authority import (
    CA_CERT,
    CA_DAYS,
    CA_KEY,
    MAX_LEAF_DAYS,
    TRUST_BUNDLE,
    IssuedFiles,
    import_peer_ca,
    init_ca,
    issue,
)
from cobrand.pki.identity import PARTY_ROLES, Party, PeerIdentity, Role, ca_party, identity_from_pem
from cobrand.pki.material import (
    TlsMaterial,
    describe_certificate,
    fingerprint,
    load_tls_material,
    party_trust_bundle,
)
from cobrand.pki.revocation import (
    CA_CRL,
    Revocations,
    WatchedRevocations,
    issued_serial,
    load_revocations,
    revoke,
)

__all__ = [
    "CA_CERT",
    "CA_CRL",
    "CA_DAYS",
    "CA_KEY",
    "MAX_LEAF_DAYS",
    "PARTY_ROLES",
    "TRUST_BUNDLE",
    "IssuedFiles",
    "Party",
    "PeerIdentity",
    "Revocations",
    "Role",
    "TlsMaterial",
    "WatchedRevocations",
    "ca_party",
    "describe_certificate",
    "fingerprint",
    "identity_from_pem",
    "import_peer_ca",
    "init_ca",
    "issue",
    "issued_serial",
    "load_revocations",
    "load_tls_material",
    "party_trust_bundle",
    "revoke",
]
