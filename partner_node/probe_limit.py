"""Per-caller limit on embedding lookups of keys outside the alignment, and its audit trail.

A key the partner does not hold is answered ``UNKNOWN_KEY``; a caller asking for many such keys
is probing which customers the partner holds. `ProbeLimiter` gives each caller (by the identity
URN of its certificate) a token bucket of ``per_minute`` unknown-key lookups, refilled evenly
over the minute. Aligned keys never take a token, so bulk scoring of the aligned base is never
slowed. A lookup or batch whose unknown keys exceed the tokens left is refused with
RESOURCE_EXHAUSTED and takes none; every refusal is logged at WARNING, counted per caller, and
appended to an audit file (one JSON object a line, fsynced before the refusal is answered).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc

from cobrand.durable import append_line
from cobrand.errors import CertificateError, ConfigError, ResourceExhausted
from cobrand.pki.identity import URN_PREFIX
from cobrand.rpc import caller

__all__ = ["PROBE_AUDIT_FILE", "ProbeLimiter", "caller_urn"]

_LOG = logging.getLogger(__name__)

PROBE_AUDIT_FILE = "probe_audit.jsonl"
"""The audit file of refusals, under a node's ``data_dir``."""

# Named in place of a certificate identity on an insecure (local development) server.
_NO_CERTIFICATE = "unauthenticated-caller"


def caller_urn(context: grpc.ServicerContext) -> str:
    """The identity URN of the caller's certificate (``urn:cobrand:<party>:<role>:<name>``)."""
    try:
        return f"{URN_PREFIX}{caller(context)}"
    except CertificateError:
        return _NO_CERTIFICATE


@dataclass
class _Bucket:
    tokens: float
    at: float


class ProbeLimiter:
    """Token buckets of unknown-key lookups, one per caller; safe to share between threads.

    Parameters
    ----------
    per_minute : int
        Unknown-key lookups each caller may make per minute (also the most it may save up).
    audit_file : Path
        Where refusals are appended as JSON lines; its folder is created when needed.
    clock : callable, optional
        Monotonic seconds; `time.monotonic` unless a test drives time itself.
    limited : str, optional
        What a token pays for, as refusals name it.
    setting : str, optional
        The setting `per_minute` comes from, as a bad value's error names it.
    """

    def __init__(
        self,
        per_minute: int,
        audit_file: Path,
        clock: Callable[[], float] = time.monotonic,
        *,
        limited: str = "unknown-key lookups",
        setting: str = "embedding.unknown_key_lookups_per_minute",
    ) -> None:
        if per_minute < 1:
            raise ConfigError(f"{setting} must be at least 1, it is {per_minute}")
        self.per_minute = per_minute
        self._limited = limited
        self.audit_file = audit_file
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._denials: dict[str, int] = {}

    def charge(self, caller: str, unknown_keys: int, what: str) -> None:
        """Take `unknown_keys` tokens from `caller`'s bucket, or refuse and take none.

        Parameters
        ----------
        caller : str
            The caller's identity URN.
        unknown_keys : int
            Keys of this lookup or batch outside the alignment; 0 never touches the bucket.
        what : str
            The call, for the audit trail (``GetEmbedding request r-1``); no key in it.

        Raises
        ------
        ResourceExhausted
            If `caller` has fewer tokens left than `unknown_keys`.
        """
        if unknown_keys <= 0:
            return
        with self._lock:
            now = self._clock()
            bucket = self._buckets.setdefault(caller, _Bucket(float(self.per_minute), now))
            refill = (now - bucket.at) * self.per_minute / 60.0
            bucket.tokens = min(float(self.per_minute), bucket.tokens + refill)
            bucket.at = now
            if unknown_keys <= bucket.tokens:
                bucket.tokens -= unknown_keys
                return
            denials = self._denials.get(caller, 0) + 1
            self._denials[caller] = denials
            # Under the lock, so audit lines of one caller keep their order and count.
            self._audit(caller, unknown_keys, what, denials)
        _LOG.warning(
            "[ProbeLimit] %s refused to %s: %d unknown keys over %d per minute (refusal %d)",
            what,
            caller,
            unknown_keys,
            self.per_minute,
            denials,
        )
        raise ResourceExhausted(f"{self._limited} over {self.per_minute} per minute for {caller}")

    def denials(self, caller: str) -> int:
        """How many lookups or batches of `caller` were refused since the node started."""
        with self._lock:
            return self._denials.get(caller, 0)

    def total_denials(self) -> int:
        """How many lookups or batches were refused since the node started, all callers."""
        with self._lock:
            return sum(self._denials.values())

    def _audit(self, caller: str, unknown_keys: int, what: str, denials: int) -> None:
        record = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "caller": caller,
            "call": what,
            "unknown_keys": unknown_keys,
            "per_minute": self.per_minute,
            "caller_refusals": denials,
        }
        self.audit_file.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.audit_file, json.dumps(record, sort_keys=True))
