"""The durable record of refused callers: one JSON object a line, appended and fsynced.

The server interceptor (``cobrand.interceptor``) appends a `Denial` for every call it ends with
``PERMISSION_DENIED`` or ``UNAUTHENTICATED``: who (the certificate's subject, serial and, when it
carries one, its cobrand identity), which method, when, from which peer address, and why. The
record is on disk before the refusal is answered, so a denial the caller saw is never missing
from the file. Allowed calls write nothing.

A line looks like::

    {"at": "2026-11-23T16:40:02.113+00:00", "method": "/cobrand.v1.ScoringGateway/Score...",
     "status": "PERMISSION_DENIED", "reason": "PERMISSION_DENIED", "peer": "ipv4:10.0.0.7:51234",
     "subject": "CN=gw1,OU=gateway,O=bank", "serial": "5f0c...", "party": "bank",
     "role": "gateway", "name": "gw1", "message": "role 'gateway' may not call ..."}
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cobrand.durable import append_line, fsync_path
from cobrand.errors import ConfigError

__all__ = ["DENIAL_LOG", "GATEWAY_DENIAL_LOG", "Denial", "DenialLog"]

DENIAL_LOG = "denials.jsonl"
"""A node's denial log, under its ``data_dir``."""
GATEWAY_DENIAL_LOG = "gateway-denials.jsonl"
"""The gateway's denial log by default, under the bank node's ``data_dir``."""


@dataclass(frozen=True, slots=True)
class Denial:
    """One refused call.

    Attributes
    ----------
    at : datetime
        When it was refused (UTC).
    method : str
        The full gRPC method name.
    status : str
        ``PERMISSION_DENIED`` or ``UNAUTHENTICATED``.
    reason : str
        The machine-readable reason sent to the caller (``cobrand-reason``).
    peer : str
        The caller's address as gRPC reports it (``ipv4:127.0.0.1:40112``).
    subject : str or None
        The certificate's subject; None when the caller presented none.
    serial : str or None
        The certificate's serial number in hex.
    party, role, name : str or None
        The cobrand identity the certificate carries; None when it carries none.
    message : str
        What the caller was told.
    """

    at: datetime
    method: str
    status: str
    reason: str
    peer: str
    subject: str | None
    serial: str | None
    party: str | None
    role: str | None
    name: str | None
    message: str

    def to_json(self) -> str:
        """The record as one line of JSON (no newline)."""
        fields = dataclasses.asdict(self)
        fields["at"] = self.at.isoformat(timespec="milliseconds")
        return json.dumps(fields, sort_keys=True, ensure_ascii=True)


class DenialLog:
    """An append-only file of `Denial` records; safe to share between handler threads.

    Parameters
    ----------
    path : Path
        The file; it and its folder are created at once, so a path the process cannot write
        stops it at start-up rather than at the first denial.

    Raises
    ------
    ConfigError
        If the file cannot be created or opened for appending, naming it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # Denials of concurrent calls are written whole, one line after the other.
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            path.touch(mode=0o600)  # owner-only: the file names callers and their addresses
            if not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, "permission denied")
            if created:
                fsync_path(path.parent)
        except OSError as exc:
            raise ConfigError(f"denial log {path}: cannot append to it: {exc.strerror}") from exc

    def record(self, denial: Denial) -> None:
        """Append `denial` and flush it to disk before returning.

        Raises
        ------
        OSError
            If the write or the flush fails (the caller is refused all the same).
        """
        with self._lock:
            # Opened per record: denials are rare, and a rotated file is picked up at once.
            append_line(self.path, denial.to_json())
