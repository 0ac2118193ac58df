"""Audit records for the audit log's tests and benchmark: valid by default, varied by keyword."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping

from gateway.application import FieldValue
from gateway.audit_record import (
    ApplicationChannel,
    ApplicationInputs,
    AuditRecord,
    PartnerSliceStatus,
    Pseudonym,
)
from gateway.config import Decision, OfferChannel
from gateway.policy import InstalmentOffer, PackageOffer, RuleHit
from gateway.scoring import Reason, ScoreResult, SlicesUsed

__all__ = ["make_inputs", "make_record", "pseudonym_of"]

_KEY = b"audit-tests-pseudonym-key"
T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)


def pseudonym_of(identifier: str) -> Pseudonym:
    """A keyed pseudonym as the gateway makes one (BLAKE2b keyed, 16 bytes)."""
    return Pseudonym(hashlib.blake2b(identifier.encode(), key=_KEY, digest_size=16).hexdigest())


def make_inputs(
    application_id: str = "APP-0001", fields: Mapping[str, FieldValue] | None = None
) -> ApplicationInputs:
    """A bank-channel application with consent and three typed fields (or `fields`)."""
    return ApplicationInputs(
        application_id=application_id,
        channel=ApplicationChannel.BANK,
        identifier_kind="mobile_cn",
        applicant=pseudonym_of(f"+86 138 0000 {application_id}"),
        partner_lookup_consent=True,
        fields={"income": 12000.0, "age": 35.0, "education": "university"}
        if fields is None
        else fields,
    )


def make_record(
    application_id: str = "APP-0001",
    *,
    decided_at: dt.datetime = T0,
    model_version: str = "v1",
    fields: Mapping[str, FieldValue] | None = None,
    probability: float = 0.08,
    embedding: tuple[float, ...] | None = (0.25, -1.5, 0.1),
) -> AuditRecord:
    """An approved decision with a fresh request id; the partner slice used iff `embedding`."""
    inputs = make_inputs(application_id, fields)
    used = embedding is not None
    return AuditRecord(
        request_id=str(uuid.uuid4()),
        decided_at=decided_at,
        caller="urn:cobrand:bank:app:web-flow",
        inputs=inputs,
        bank_features={**inputs.fields, "tenure_months": 48.0, "segment": None},
        partner_embedding=embedding,
        partner_status=PartnerSliceStatus.USED if used else PartnerSliceStatus.TIMEOUT,
        result=ScoreResult(
            model_version=model_version,
            probability_of_default=probability,
            score=652,
            score_band="B",
            decision=Decision.APPROVE,
            rule_hits=(RuleHit("R02", "Thin file", Decision.REFER),),
            credit_limit_minor=3_000_000,
            currency="CNY",
            limit_band="L3",
            reasons=(Reason("B07", "Short credit history", 12.5), Reason("P01", "Partner", 3.0)),
            packages=(PackageOffer("shopping", 0.61, 1), PackageOffer("travel", 0.22, 2)),
            instalment=InstalmentOffer(0.44, "12M_0FEE", OfferChannel.BANK_APP_PUSH),
            slices=SlicesUsed(bank=True, partner=used),
        ),
        decision_config_sha256="c0" * 32,
    )
