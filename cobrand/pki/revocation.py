"""Revoking leaf certificates: each party's certificate revocation list, and reading CRLs back.

``revoke`` adds a serial number to the party's own CRL, ``<pki dir>/ca.crl``, signed by its CA
and rewritten whole (atomically) with every serial revoked so far. A party sends its ``ca.crl``
to the other party as it sent its ``ca.crt``; each process names, in its TLS settings (``crl``),
one PEM file holding the CRLs of its trust bundle's CAs (concatenate them: its own and the
peer's). ``load_revocations`` reads that file: every CRL must be signed by a CA of the trust
bundle, or the process stops at start with a `ConfigError` naming the file. The server
interceptor (``cobrand.interceptor``) refuses a call whose certificate is listed.

A running server picks a new file up without restarting: `WatchedRevocations` looks at the
file at most every ``RECHECK_S`` seconds and reads it again when it changed. A new file that
does not read or check is logged and the previous lists stay in force: a botched copy never
un-revokes a certificate.

A CRL's ``nextUpdate`` is set to its CA's expiry: the list is issued when something is revoked,
not on a schedule, so it never goes stale on its own; a newer list replaces it when it is
re-issued.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cobrand.durable import write_atomically
from cobrand.errors import CertificateError, ConfigError
from cobrand.pki.authority import CA_CERT, load_ca
from cobrand.pki.identity import describe_subject
from cobrand.pki.material import read_certificates, utcnow

__all__ = [
    "CA_CRL",
    "RECHECK_S",
    "Revocations",
    "WatchedRevocations",
    "issued_serial",
    "load_revocations",
    "revoke",
]

_LOG = logging.getLogger(__name__)

CA_CRL = "ca.crl"
RECHECK_S = 10.0
"""How often, at most, a server looks whether its CRL file changed."""
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.+?\r?\n-----END X509 CRL-----", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Revocations:
    """The revoked certificates a process refuses: ``(issuer name, serial number)`` pairs."""

    revoked: frozenset[tuple[x509.Name, int]] = frozenset()

    def is_revoked(self, issuer: x509.Name, serial: int) -> bool:
        """Whether the certificate `serial` issued by `issuer` is revoked."""
        # Hashing a Name costs microseconds; most servers revoke nothing.
        return bool(self.revoked) and (issuer, serial) in self.revoked


class WatchedRevocations:
    """The revocations of a CRL file, read again when the file changes; thread-safe.

    Parameters
    ----------
    trust_bundle : Path
        The bundle each CRL is checked against (`load_revocations`).
    crl_file : Path
    recheck_s : float, optional
        How often, at most, the file's modification time, size and inode are looked at;
        ``RECHECK_S`` by default.
    clock : callable
        Monotonic seconds; tests drive their own.

    Raises
    ------
    ConfigError, CertificateError
        As `load_revocations`, at construction: a server does not start with a bad file.
    """

    def __init__(
        self,
        trust_bundle: Path,
        crl_file: Path,
        *,
        recheck_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bundle = trust_bundle
        self._file = crl_file
        self._recheck_s = RECHECK_S if recheck_s is None else recheck_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen = _file_state(crl_file)
        self._current = load_revocations(trust_bundle, crl_file)
        self._next_look = clock() + self._recheck_s

    def is_revoked(self, issuer: x509.Name, serial: int) -> bool:
        """Whether the certificate `serial` issued by `issuer` is revoked now."""
        if self._clock() >= self._next_look:
            self._look_again()
        return self._current.is_revoked(issuer, serial)

    def _look_again(self) -> None:
        with self._lock:
            now = self._clock()
            if now < self._next_look:
                return  # another call looked meanwhile
            self._next_look = now + self._recheck_s
            state = _file_state(self._file)
            if state == self._seen:
                return
            self._seen = state
            try:
                self._current = load_revocations(self._bundle, self._file)
            except (ConfigError, CertificateError) as err:
                _LOG.error("[Revocation] %s; the lists read before stay in force", err)
                return
        _LOG.info(
            "[Revocation] %s read again: %d certificates revoked",
            self._file,
            len(self._current.revoked),
        )


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten file from the one read before (an atomic rewrite is a new inode)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size, found.st_ino


def issued_serial(ca_dir: Path, certificate: Path) -> int:
    """The serial number of `certificate`, a leaf the CA in `ca_dir` issued.

    Raises
    ------
    ConfigError
        If another CA issued it: its serial means nothing on this CA's list.
    CertificateError
        If a file cannot be read.
    """
    cert = read_certificates(certificate)[0]
    ca_cert = read_certificates(ca_dir / CA_CERT)[0]
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(
            f"certificate {certificate} was not issued by the CA in {ca_dir}; "
            "only that CA's own certificates can be revoked there"
        ) from exc
    return cert.serial_number


def revoke(ca_dir: Path, serial: int, *, now: dt.datetime | None = None) -> Path:
    """Add `serial` to the party's CRL, ``ca_dir / "ca.crl"``, and sign it again with its CA.

    Parameters
    ----------
    ca_dir : Path
        The party's PKI directory (made by ``init_ca``).
    serial : int
        The serial number of a leaf this CA issued (``cobrand pki show`` prints it).
    now : datetime, optional
        The revocation time (UTC); the current time by default.

    Returns
    -------
    Path
        The CRL file.

    Raises
    ------
    CertificateError
        If the CA files are missing, unreadable or expired.
    ConfigError
        If the existing CRL is not this CA's, or `serial` is not a positive number.
    """
    if serial <= 0:
        raise ConfigError(f"serial number {serial} is not a certificate serial (positive)")
    ca_cert, ca_key = load_ca(ca_dir)
    path = ca_dir / CA_CRL
    entries: list[x509.RevokedCertificate] = []
    if path.exists():
        entries = [
            entry
            for previous in _read_crls(path, [ca_cert])
            for entry in previous
            if entry.serial_number != serial
        ]
    at = now or utcnow()
    entries.append(
        x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
    )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(at)
        .next_update(ca_cert.not_valid_after_utc)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    write_atomically(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


def load_revocations(trust_bundle: Path, crl_file: Path | None) -> Revocations:
    """The certificates revoked by the CRLs in `crl_file`, each checked against `trust_bundle`.

    Parameters
    ----------
    trust_bundle : Path
        The process's trust bundle: every CRL must be signed by one of its CAs.
    crl_file : Path or None
        One or more PEM CRLs, at most one per CA; None revokes nothing.

    Raises
    ------
    ConfigError
        Naming `crl_file`: unreadable, holding no PEM CRL, a CRL whose issuer is not a CA of
        the bundle or whose signature that CA did not make, or two CRLs of one CA.
    CertificateError
        If the trust bundle cannot be read.
    """
    if crl_file is None:
        return Revocations()
    crls = _read_crls(crl_file, read_certificates(trust_bundle))
    issuers = [crl.issuer for crl in crls]
    if len(set(issuers)) != len(issuers):
        raise ConfigError(f"CRL file {crl_file} holds two CRLs of one CA; keep the newest")
    return Revocations(
        frozenset((crl.issuer, entry.serial_number) for crl in crls for entry in crl)
    )


def _read_crls(path: Path, cas: list[x509.Certificate]) -> list[x509.CertificateRevocationList]:
    """The CRLs in `path`, each signed by the CA of `cas` that its issuer names."""
    try:
        blocks = _PEM_CRL.findall(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read CRL file {path}: {exc.strerror}") from exc
    if not blocks:
        raise ConfigError(f"CRL file {path} holds no PEM CRL (-----BEGIN X509 CRL-----)")
    crls: list[x509.CertificateRevocationList] = []
    for number, block in enumerate(blocks, start=1):
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError as exc:
            raise ConfigError(f"CRL file {path}: CRL {number} is not a valid CRL") from exc
        issuer = next((ca for ca in cas if ca.subject == crl.issuer), None)
        if issuer is None:
            raise ConfigError(
                f"CRL file {path}: CRL {number} is issued by {crl.issuer.rfc4514_string()}, "
                "not by a CA of the trust bundle"
            )
        public_key = issuer.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(
            public_key
        ):
            raise ConfigError(
                f"CRL file {path}: CRL {number} is not signed by the CA "
                f"{describe_subject(issuer)} it names as issuer"
            )
        crls.append(crl)
    return crls
