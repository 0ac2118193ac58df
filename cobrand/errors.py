"""The one error tree of cobrand: every error a caller can see, each with its gRPC status.

Our exception hierarchy::

    CobrandError
    ├── InvalidRequest ............ INVALID_ARGUMENT
    │   └── InvalidPoint
    ├── ConfigError ............... INVALID_ARGUMENT
    │   ├── SchemaError
    │   ├── FederationError
    │   └── TableError
    ├── CertificateError .......... UNAUTHENTICATED
    ├── PermissionDenied .......... PERMISSION_DENIED
    ├── NotFound .................. NOT_FOUND
    │   └── UnknownModelVersion
    ├── FailedPrecondition ........ FAILED_PRECONDITION
    ├── ResourceExhausted ......... RESOURCE_EXHAUSTED
    ├── Unavailable ............... UNAVAILABLE
    └── AlreadyExists ............. ALREADY_EXISTS

Every class declares ``status: grpc.StatusCode``; a class that does not is refused when it is
defined, so the one server interceptor (``cobrand.rpc``) can always map an error to its status.
Each class also has a machine-readable ``reason``, the UPPER_SNAKE form of its name
(``UnknownModelVersion`` -> ``UNKNOWN_MODEL_VERSION``), sent to callers in the trailing metadata
key ``cobrand-reason`` so clients never match on message text.

A subclass inherits its parent's status (``SchemaError`` is ``INVALID_ARGUMENT`` like
``ConfigError``); only a direct subclass of ``CobrandError`` has nothing to inherit and must say.
"""

# The class names mirror the gRPC status names (NotFound, Unavailable...), not an Error suffix.
# ruff: noqa: N818

from __future__ import annotations

import re
from typing import Any, ClassVar

import grpc

__all__ = [
    "AlreadyExists",
    "CertificateError",
    "CobrandError",
    "ConfigError",
    "FailedPrecondition",
    "FederationError",
    "InvalidPoint",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SchemaError",
    "TableError",
    "Unavailable",
    "UnknownModelVersion",
]

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _upper_snake(name: str) -> str:
    return _CAMEL_BOUNDARY.sub("_", name).upper()


class CobrandError(Exception):
    """Base of every error cobrand raises to a caller; never raised itself.

    The message says what is wrong and where (file, column or setting, first offending row);
    it is sent to the remote caller as the status details, so it must not hold raw identifiers
    or raw features.
    """

    status: ClassVar[grpc.StatusCode]
    reason: ClassVar[str]

    def __new__(cls, *args: Any, **kwargs: Any) -> CobrandError:
        # The base has no status to send, so only the concrete classes may be raised.
        if cls is CobrandError:
            raise TypeError("raise a concrete subclass of CobrandError, which carries a status")
        return super().__new__(cls, *args, **kwargs)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        status = getattr(cls, "status", None)
        if not isinstance(status, grpc.StatusCode):
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} must set class attribute "
                "'status' to a grpc.StatusCode"
            )
        if status is grpc.StatusCode.OK:
            raise TypeError(f"{cls.__qualname__}.status cannot be OK: an error is not a success")
        cls.reason = _upper_snake(cls.__name__)


class InvalidRequest(CobrandError):
    """A request carries a missing, malformed or out-of-range field."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class InvalidPoint(InvalidRequest):
    """A peer sent a curve point that is truncated, non-canonical or of low order."""


class ConfigError(CobrandError):
    """A settings, schema, federation or table file is missing, unreadable or invalid."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class SchemaError(ConfigError):
    """A party schema file is invalid or does not match its table."""


class FederationError(ConfigError):
    """The federation file is invalid or the parties' files disagree."""


class TableError(ConfigError):
    """A party table has a bad column, value or row."""


class CertificateError(CobrandError):
    """A certificate or key is missing, expired, not yet valid, mismatched or untrusted."""

    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CobrandError):
    """The authenticated caller's role may not use this call."""

    status = grpc.StatusCode.PERMISSION_DENIED


class NotFound(CobrandError):
    """A named resource does not exist."""

    status = grpc.StatusCode.NOT_FOUND


class UnknownModelVersion(NotFound):
    """A request names a model version this process does not hold."""


class FailedPrecondition(CobrandError):
    """The system is not in the state the call needs (e.g. no alignment yet)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(CobrandError):
    """A rate limit or quota for this caller is used up."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(CobrandError):
    """A peer or dependency cannot be reached right now; retrying later may succeed."""

    status = grpc.StatusCode.UNAVAILABLE


class AlreadyExists(CobrandError):
    """Something that must be created once already exists."""

    status = grpc.StatusCode.ALREADY_EXISTS
