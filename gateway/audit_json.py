"""An audit record's stored form: canonical JSON text, and reading it back.

The text is canonical (`canonical_json`), so the same record always gives the same bytes, and
carries a format number, so a later layout can still read what an earlier one wrote.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from cobrand.errors import FailedPrecondition
from gateway.audit_record import (
    ApplicationChannel,
    ApplicationInputs,
    AuditRecord,
    InvalidAuditRecord,
    PartnerSliceStatus,
    Pseudonym,
    canonical_json,
)
from gateway.config import Decision, OfferChannel
from gateway.policy import InstalmentOffer, PackageOffer, RuleHit
from gateway.scoring import Reason, ScoreResult, SlicesUsed

__all__ = ["CorruptAuditRecord", "record_from_json", "record_to_json"]

# Bumped when the layout changes, so an old record is read by what it was written with.
_FORMAT = 2


class CorruptAuditRecord(FailedPrecondition):
    """A stored record cannot be read back (the store was altered outside the audit log)."""


def record_to_json(record: AuditRecord) -> str:
    """The record as canonical JSON text (sorted keys, no NaN), as stored."""
    body = {
        "format": _FORMAT,
        "request_id": record.request_id,
        "decided_at": record.decided_at.isoformat(),
        "caller": record.caller,
        "inputs": record.inputs.to_json(),
        "bank_features": dict(record.bank_features),
        "partner_embedding": (
            None if record.partner_embedding is None else list(record.partner_embedding)
        ),
        "partner_status": record.partner_status.value,
        "result": _result_json(record.result),
        "decision_config_sha256": record.decision_config_sha256,
    }
    return canonical_json(body).decode()


def _result_json(result: ScoreResult) -> dict[str, Any]:
    # Spelt out rather than dataclasses.asdict: the stored layout is a format of its own, and
    # asdict's deep copy is most of the encoding time.
    instalment = result.instalment
    return {
        "model_version": result.model_version,
        "probability_of_default": result.probability_of_default,
        "score": result.score,
        "score_band": result.score_band,
        "decision": result.decision.value,
        "rule_hits": [
            {"code": hit.code, "text": hit.text, "outcome": hit.outcome.value}
            for hit in result.rule_hits
        ],
        "credit_limit_minor": result.credit_limit_minor,
        "currency": result.currency,
        "limit_band": result.limit_band,
        "reasons": [{"code": r.code, "text": r.text, "points": r.points} for r in result.reasons],
        "packages": [
            {"package": p.package, "propensity": p.propensity, "rank": p.rank}
            for p in result.packages
        ],
        "instalment": (
            None
            if instalment is None
            else {
                "propensity": instalment.propensity,
                "offer": instalment.offer,
                "channel": instalment.channel.value,
            }
        ),
        "slices": {"bank": result.slices.bank, "partner": result.slices.partner},
    }


def _result(body: dict[str, Any]) -> ScoreResult:
    instalment = body["instalment"]
    return ScoreResult(
        model_version=body["model_version"],
        probability_of_default=body["probability_of_default"],
        score=body["score"],
        score_band=body["score_band"],
        decision=Decision(body["decision"]),
        rule_hits=tuple(
            RuleHit(hit["code"], hit["text"], Decision(hit["outcome"])) for hit in body["rule_hits"]
        ),
        credit_limit_minor=body["credit_limit_minor"],
        currency=body["currency"],
        limit_band=body["limit_band"],
        reasons=tuple(Reason(r["code"], r["text"], r["points"]) for r in body["reasons"]),
        packages=tuple(
            PackageOffer(p["package"], p["propensity"], p["rank"]) for p in body["packages"]
        ),
        instalment=(
            None
            if instalment is None
            else InstalmentOffer(
                instalment["propensity"], instalment["offer"], OfferChannel(instalment["channel"])
            )
        ),
        slices=SlicesUsed(body["slices"]["bank"], body["slices"]["partner"]),
    )


def record_from_json(text: str) -> AuditRecord:
    """Read back a record written by `record_to_json`.

    Raises
    ------
    CorruptAuditRecord
        If the text is not a record of a known format.
    """
    try:
        body = json.loads(text)
        if body["format"] != _FORMAT:
            raise CorruptAuditRecord(f"audit record format {body['format']!r} is unknown")
        inputs = body["inputs"]
        embedding = body["partner_embedding"]
        return AuditRecord(
            request_id=body["request_id"],
            decided_at=dt.datetime.fromisoformat(body["decided_at"]),
            caller=body["caller"],
            inputs=ApplicationInputs(
                application_id=inputs["application_id"],
                channel=ApplicationChannel(inputs["channel"]),
                identifier_kind=inputs["identifier_kind"],
                applicant=Pseudonym(inputs["applicant"]),
                partner_lookup_consent=inputs["partner_lookup_consent"],
                fields=inputs["fields"],
                model_version=inputs["model_version"],
            ),
            bank_features=body["bank_features"],
            partner_embedding=None if embedding is None else tuple(embedding),
            partner_status=PartnerSliceStatus(body["partner_status"]),
            result=_result(body["result"]),
            decision_config_sha256=body["decision_config_sha256"],
        )
    except (KeyError, TypeError, ValueError, InvalidAuditRecord) as exc:
        raise CorruptAuditRecord(f"an audit record cannot be read back: {exc}") from exc
