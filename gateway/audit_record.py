"""One decision as the audit log keeps it: `AuditRecord` and the request it answers.

A record holds what the gateway decided (the scorer's `ScoreResult`) and everything needed to
recompute it: the request as the caller sent it (`ApplicationInputs`, whose SHA-256 `digest`
detects an application id reused with different inputs), the bank fields as scored and the
partner embedding used. Its stored form is `gateway.audit_json`.

Identifiers are keyed pseudonyms only. The applicant's identifier reaches the record as a
`Pseudonym` (32 lowercase hex characters, the gateway's keyed hash of the canonical identifier),
which cannot hold a raw phone number or national id; the caller keys it before building the
record. The application id is the bank's reference for an application, not a person's
identifier, and the caller is a service certificate's URN.

Every value is checked when a record is built, so a NaN or an out-of-range output is refused
(`InvalidAuditRecord`, naming the field) before anything is written.
"""

from __future__ import annotations

import array
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from cobrand.errors import InvalidRequest
from gateway.application import FieldValue
from gateway.config import Decision, OfferChannel
from gateway.scoring import MAX_REASONS, ScoreResult

__all__ = [
    "ApplicationChannel",
    "ApplicationInputs",
    "AuditRecord",
    "InvalidAuditRecord",
    "PartnerSliceStatus",
    "Pseudonym",
    "canonical_json",
]

_HEX32 = re.compile(r"[0-9a-f]{32}")
# Same rule as ScoreApplicationRequest.application_id: 1 to 128 printable ASCII characters.
_APPLICATION_ID = re.compile(r"[\x20-\x7e]{1,128}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_CALLER_PREFIX = "urn:cobrand:"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# What str(uuid.UUID(...)) writes, and only that (a pattern costs a tenth of the round trip).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

EnumT = TypeVar("EnumT", bound=StrEnum)


class InvalidAuditRecord(InvalidRequest):
    """A decision cannot be recorded: a field is NaN, out of range or malformed (named)."""


class ApplicationChannel(StrEnum):
    """Where the application came from (proto ApplicationChannel)."""

    BANK = "bank"
    PARTNER = "partner"


class PartnerSliceStatus(StrEnum):
    """Why the partner's slice was or was not used (proto PartnerSliceStatus)."""

    USED = "used"
    NO_CONSENT = "no_consent"
    UNKNOWN_APPLICANT = "unknown_applicant"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"


def _refuse(where: str, what: str, *names: object) -> InvalidAuditRecord:
    """The refusal naming the field ``where.format(*names)``.

    Checks pass the names and the template apart: a record is built for every decision, and
    the field's name is written out only when it is refused.
    """
    named = where.format(*names) if names else where
    return InvalidAuditRecord(f"audit record field {named!r} {what}")


def _member(where: str, enum: type[EnumT], value: Any) -> EnumT:
    if type(value) is enum:
        return value  # a member already (what the gateway passes): nothing to look up
    try:
        return enum(value)
    except ValueError:
        raise _refuse(where, f"must be one of {[m.value for m in enum]}") from None


def _finite(value: float, where: str, *names: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(where, f"must be a number, not {type(value).__name__}", *names)
    if not math.isfinite(value):
        raise _refuse(where, f"is {value}, not a finite number", *names)
    return float(value)


def _unit(value: float, where: str, *names: object) -> float:
    checked = _finite(value, where, *names)
    if not 0.0 <= checked <= 1.0:
        raise _refuse(where, f"is {checked}, outside [0, 1]", *names)
    return checked


def _text(value: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _refuse(where, "must be a non-empty string")
    return value


def _fields(where: str, values: Mapping[str, FieldValue]) -> Mapping[str, FieldValue]:
    checked: dict[str, FieldValue] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise _refuse(f"{where} key", "must be a non-empty string")
        if value is None or isinstance(value, str):
            checked[name] = value
        else:
            checked[name] = _finite(value, where + "[{!r}]", name)
    return MappingProxyType(dict(sorted(checked.items())))


@dataclass(frozen=True, slots=True)
class Pseudonym:
    """A keyed pseudonym of an identifier: 32 lowercase hex characters (16 bytes), never raw."""

    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.hex, str) or not _HEX32.fullmatch(self.hex):
            # Never echo the value: a caller that passes a raw identifier must not log it here.
            raise InvalidAuditRecord("a pseudonym must be 32 lowercase hex characters")

    def __str__(self) -> str:
        return self.hex


@dataclass(frozen=True, slots=True)
class ApplicationInputs:
    """The request as the caller sent it, its identifier keyed: what the input digest covers.

    Attributes
    ----------
    application_id : str
        The caller's idempotency key (1 to 128 printable ASCII characters).
    channel : ApplicationChannel
    identifier_kind : str
        Kind of the applicant's identifier, as named in the federation file.
    applicant : Pseudonym
        The gateway's keyed pseudonym of the applicant's canonical identifier.
    partner_lookup_consent : bool
    fields : Mapping[str, FieldValue]
        The bank-side fields the caller sent, by schema column name.
    model_version : str
        The version the caller asked for; empty means the version in service.
    """

    application_id: str
    channel: ApplicationChannel
    identifier_kind: str
    applicant: Pseudonym
    partner_lookup_consent: bool
    fields: Mapping[str, FieldValue]
    model_version: str = ""
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.application_id, str) or not _APPLICATION_ID.fullmatch(
            self.application_id
        ):
            raise _refuse("application_id", "must be 1 to 128 printable ASCII characters")
        if not isinstance(self.applicant, Pseudonym):
            raise _refuse("applicant", "must be a keyed Pseudonym, never a raw identifier")
        object.__setattr__(self, "channel", _member("channel", ApplicationChannel, self.channel))
        _text(self.identifier_kind, "identifier_kind")
        object.__setattr__(self, "fields", _fields("fields", self.fields))
        object.__setattr__(
            self, "digest", hashlib.sha256(canonical_json(self.to_json())).hexdigest()
        )

    def to_json(self) -> dict[str, Any]:
        """The inputs as a JSON-ready mapping (the digest is computed over its canonical form)."""
        return {
            "application_id": self.application_id,
            "channel": self.channel.value,
            "identifier_kind": self.identifier_kind,
            "applicant": self.applicant.hex,
            "partner_lookup_consent": self.partner_lookup_consent,
            "fields": dict(self.fields),
            "model_version": self.model_version,
        }


def _check_result(result: ScoreResult) -> None:
    """Refuse a result holding a value no decision can have (NaN, out of range), by field."""
    _text(result.model_version, "result.model_version")
    _member("result.decision", Decision, result.decision)
    _unit(result.probability_of_default, "result.probability_of_default")
    for name in ("score", "credit_limit_minor"):
        value = getattr(result, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse(f"result.{name}", "must be an integer")
    if result.credit_limit_minor < 0:
        raise _refuse("result.credit_limit_minor", "must not be negative")
    if not _CURRENCY.fullmatch(result.currency):
        raise _refuse("result.currency", "must be an ISO 4217 code such as 'CNY'")
    if len(result.reasons) > MAX_REASONS:
        raise _refuse("result.reasons", f"holds {len(result.reasons)}, at most {MAX_REASONS}")
    for reason in result.reasons:
        _finite(reason.points, "result.reasons[{!r}].points", reason.code)
    for package in result.packages:
        _unit(package.propensity, "result.packages[{!r}].propensity", package.package)
        if isinstance(package.rank, bool) or not isinstance(package.rank, int) or package.rank < 1:
            raise _refuse(f"result.packages[{package.package!r}].rank", "must be an integer >= 1")
    if result.instalment is not None:
        _unit(result.instalment.propensity, "result.instalment.propensity")
        _member("result.instalment.channel", OfferChannel, result.instalment.channel)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One decision, as recorded durably before the gateway replies.

    Attributes
    ----------
    request_id : str
        The gateway's id of this decision, a canonical lowercase UUID; the record's key.
    decided_at : datetime.datetime
        When the decision was made; timezone-aware, kept in UTC to the microsecond.
    caller : str
        The calling certificate's identity URN, ``urn:cobrand:<party>:<role>:<name>``.
    inputs : ApplicationInputs
        The request as sent, identifier keyed; ``inputs.digest`` is the input digest.
    bank_features : Mapping[str, FieldValue]
        The bank fields as scored: the request's fields over the bank's stored features.
    partner_embedding : tuple of float or None
        The partner embedding used, as float32 values; None when the partner slice was not used.
    partner_status : PartnerSliceStatus
        Whether the partner slice was used and, if not, why.
    result : ScoreResult
        What `gateway.scoring.Scorer` decided: outputs, reasons, rule hits, slices used.
    decision_config_sha256 : str
        `gateway.config.DecisionConfig.digest` of the configuration it decided with.
    """

    request_id: str
    decided_at: dt.datetime
    caller: str
    inputs: ApplicationInputs
    bank_features: Mapping[str, FieldValue]
    partner_embedding: tuple[float, ...] | None
    partner_status: PartnerSliceStatus
    result: ScoreResult
    decision_config_sha256: str

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not _CANONICAL_UUID.fullmatch(self.request_id):
            raise _refuse("request_id", "must be a canonical lowercase UUID")
        if not isinstance(self.decided_at, dt.datetime) or self.decided_at.tzinfo is None:
            raise _refuse("decided_at", "must be a timezone-aware datetime")
        object.__setattr__(self, "decided_at", self.decided_at.astimezone(dt.UTC))
        if not isinstance(self.decision_config_sha256, str) or not _SHA256_HEX.fullmatch(
            self.decision_config_sha256
        ):
            raise _refuse("decision_config_sha256", "must be 64 lowercase hex characters")
        if not isinstance(self.caller, str) or not self.caller.startswith(_CALLER_PREFIX):
            raise _refuse("caller", f"must be a certificate URN starting {_CALLER_PREFIX!r}")
        object.__setattr__(self, "bank_features", _fields("bank_features", self.bank_features))
        status = _member("partner_status", PartnerSliceStatus, self.partner_status)
        object.__setattr__(self, "partner_status", status)
        used = status is PartnerSliceStatus.USED
        if used != (self.partner_embedding is not None) or used != self.result.slices.partner:
            raise _refuse(
                "partner_embedding",
                "must be given exactly when the partner was used (status and slices agree)",
            )
        if self.partner_embedding is not None:
            for i, value in enumerate(self.partner_embedding):
                _finite(value, "partner_embedding[{}]", i)
            # Kept as float32, what the partner sends; widening to float is exact.
            as_f32 = tuple(array.array("f", self.partner_embedding))
            object.__setattr__(self, "partner_embedding", as_f32)
        _check_result(self.result)

    @property
    def application_id(self) -> str:
        """The caller's application id (the idempotency key)."""
        return self.inputs.application_id

    @property
    def model_version(self) -> str:
        """The version that scored the application."""
        return self.result.model_version


# One encoder for every call: json.dumps with options builds a new one each time.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> bytes:
    """`value` as canonical JSON bytes: sorted keys, no spaces, UTF-8, NaN refused."""
    return _CANONICAL.encode(value).encode()
