"""Throw-away certificates for a bench: both parties' CAs, each trusting the other's.

Made in the bench's temporary directory at run time, never kept: the partner node's server
certificate (``partner``, for 127.0.0.1) and one bank-side certificate of the role the bench
calls the partner with (named after the role, e.g. ``bank-trainer`` or ``gateway``).
"""

from __future__ import annotations

from pathlib import Path

from cobrand.pki import Party, Role, import_peer_ca, init_ca, issue
from cobrand.rpc import TlsFiles

__all__ = ["make_pki", "tls"]


def make_pki(root: Path, bank_role: Role) -> None:
    """Both CAs under `root`, the partner's server certificate and the bank's `bank_role` one."""
    bank, partner = root / "bank", root / "partner"
    init_ca(bank, Party.BANK)
    init_ca(partner, Party.PARTNER)
    import_peer_ca(bank, partner / "ca.crt")
    import_peer_ca(partner, bank / "ca.crt")
    issue(partner, Role.PARTNER, "partner", ("127.0.0.1",))
    issue(bank, bank_role, bank_role.value, ("127.0.0.1",))


def tls(root: Path, party: str, holder: str) -> TlsFiles:
    """The TLS files of `holder`'s certificate issued by `party`'s CA under `root`."""
    return TlsFiles(
        ca_bundle=root / party / "trust.pem",
        cert=root / party / f"{holder}.crt",
        key=root / party / f"{holder}.key",
    )
