"""Keyed pseudonyms of applicants: what the gateway writes to logs and audit records instead of
an identifier.

A pseudonym is HMAC-SHA256 under the gateway's secret key of the identifier kind and the
canonical identifier, cut to 16 bytes (an `audit_record.Pseudonym`). Without the key nobody
can test a guessed phone number against it, which a plain hash of an 11-digit number would
allow in seconds; with it, the same applicant always gets the same pseudonym, so the risk
team can follow one applicant's decisions. The key is a file of at least 32 random bytes
(``head -c 32 /dev/urandom > pseudonym.key``), kept by the bank like a private key.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Final

from cobrand.errors import ConfigError
from gateway.audit_record import Pseudonym

__all__ = ["MIN_KEY_BYTES", "PseudonymKey"]

MIN_KEY_BYTES: Final = 32
_PSEUDONYM_BYTES = 16


class PseudonymKey:
    """The gateway's secret key for keyed pseudonyms.

    Parameters
    ----------
    key : bytes
        At least `MIN_KEY_BYTES` random bytes.

    Raises
    ------
    ConfigError
        The key is too short.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"a pseudonym key needs at least {MIN_KEY_BYTES} random bytes, got {len(key)}"
            )
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> PseudonymKey:
        """Read the key file.

        Raises
        ------
        ConfigError
            Naming the file: unreadable or too short.
        """
        try:
            key = path.read_bytes()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the pseudonym key: {err.strerror}") from err
        try:
            return cls(key)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    def pseudonym(self, kind: str, canonical_id: str) -> Pseudonym:
        """The applicant's pseudonym for a canonical identifier of identifier kind `kind`."""
        # The kind is part of the message, so one string read as two kinds gives two pseudonyms.
        message = f"{kind}\x00{canonical_id}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return Pseudonym(digest[:_PSEUDONYM_BYTES].hex())

    def __repr__(self) -> str:
        return "PseudonymKey(<secret>)"
