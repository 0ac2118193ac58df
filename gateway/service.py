"""The gateway's ScoringGateway service: one card application in, a recorded decision out.

`ScoringServicer.ScoreApplication`, in order:

1. checks the request (an unknown field or enum value, a malformed application id, a field
   value that is not a finite number: ``INVALID_ARGUMENT`` naming the field; a model version
   the gateway does not serve: ``NOT_FOUND`` naming it; empty means the version in service)
   and who may send it: the partner's app (role ``app`` under the partner's CA) only on the
   partner's channel, which no bank certificate may use;
2. resolves the applicant (`gateway.applicants`): keyed pseudonym, join key, stored features;
3. returns the recorded decision if the application id was decided already with the same
   inputs (``replayed``), or refuses it with other inputs (``INVALID_ARGUMENT`` naming
   ``application_id``);
4. encodes the fields with the version's preprocessor over the bank's stored row, gets the
   partner's embedding (`gateway.partner_client`; an applicant outside the aligned set only
   with consent, by the consented lookup `gateway.consented_lookup`, whose consent reference
   is the application id; without consent no call: ``NO_CONSENT``), scores
   (`gateway.scoring`);
5. records the decision durably (`gateway.audit_log`) within the call's deadline, then replies.

What the reply holds depends on the caller: the bank's application flow gets everything; the
partner's channel the decision, the limit band and the packages (`gateway.scoring.partner_view`),
never the score, probability, reasons, policy rules or limit amount. Errors reach callers through
``cobrand.rpc`` as a status and a message, never a stack trace.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import grpc
from google.protobuf import unknown_fields
from google.protobuf.message import Message

from cobrand.errors import InvalidRequest, PermissionDenied, UnknownModelVersion
from cobrand.pki import Party, PeerIdentity, Role
from cobrand.pki.identity import URN_PREFIX
from cobrand.rpc import ServicerAdder, caller, service_roles
from cobrand.v1 import scoring_pb2, scoring_pb2_grpc
from gateway.applicants import Applicant, ApplicantDirectory
from gateway.application import FieldValue
from gateway.audit_log import AuditLog
from gateway.audit_record import (
    ApplicationChannel,
    ApplicationInputs,
    AuditRecord,
    PartnerSliceStatus,
)
from gateway.config import Decision, OfferChannel
from gateway.consented_lookup import ConsentedLookupClient
from gateway.partner_client import PartnerClient, PartnerSlice
from gateway.policy import PackageOffer
from gateway.request_log import serving_request
from gateway.scoring import Scorer, partner_view

__all__ = [
    "MAX_FIELDS",
    "SCORING_ROLES",
    "PartnerSource",
    "ScoringServicer",
    "ServedVersions",
    "scoring_service",
]

_LOG = logging.getLogger(__name__)

PartnerSource = Callable[[str], PartnerClient | None]
"""The partner client to use now for a version, or None while the partner's copy of the version
is not verified."""

SCORING_ROLES = service_roles(
    scoring_pb2.DESCRIPTOR.services_by_name["ScoringGateway"], frozenset({Role.APP})
)
"""Who may call ScoringGateway: application flows (role ``app``), the bank's or the partner's."""

MAX_FIELDS: Final = 512
"""Most fields one application may carry (a bank schema has tens)."""

_APPLICATION_ID = re.compile(r"[\x20-\x7e]{1,128}")
_MAX_NAME_CHARS = 128
_MAX_CATEGORY_CHARS = 256
# The audit write's wait when the caller set no deadline.
_RECORD_WAIT_S = 30.0

_CHANNELS: Final = {
    scoring_pb2.APPLICATION_CHANNEL_BANK: ApplicationChannel.BANK,
    scoring_pb2.APPLICATION_CHANNEL_PARTNER: ApplicationChannel.PARTNER,
}
_DECISIONS: Final = {
    Decision.APPROVE: scoring_pb2.DECISION_APPROVE,
    Decision.REFER: scoring_pb2.DECISION_REFER,
    Decision.DECLINE: scoring_pb2.DECISION_DECLINE,
}
_OFFER_CHANNELS: Final = {
    OfferChannel.BANK_APP_PUSH: scoring_pb2.OFFER_CHANNEL_BANK_APP_PUSH,
    OfferChannel.PARTNER_APP: scoring_pb2.OFFER_CHANNEL_PARTNER_APP,
    OfferChannel.SMS: scoring_pb2.OFFER_CHANNEL_SMS,
    OfferChannel.CALL_CENTRE: scoring_pb2.OFFER_CHANNEL_CALL_CENTRE,
    OfferChannel.NONE: scoring_pb2.OFFER_CHANNEL_NONE,
}
_SLICE_STATUSES: Final = {
    PartnerSliceStatus.USED: scoring_pb2.PARTNER_SLICE_STATUS_USED,
    PartnerSliceStatus.NO_CONSENT: scoring_pb2.PARTNER_SLICE_STATUS_NO_CONSENT,
    PartnerSliceStatus.UNKNOWN_APPLICANT: scoring_pb2.PARTNER_SLICE_STATUS_UNKNOWN_APPLICANT,
    PartnerSliceStatus.TIMEOUT: scoring_pb2.PARTNER_SLICE_STATUS_TIMEOUT,
    PartnerSliceStatus.UNAVAILABLE: scoring_pb2.PARTNER_SLICE_STATUS_UNAVAILABLE,
}


@dataclass(frozen=True)
class ServedVersions:
    """The model versions a gateway scores with, by id, and the one an empty request gets."""

    scorers: Mapping[str, Scorer]
    current: str

    def scorer(self, requested: str) -> Scorer:
        """The scorer of `requested`, or of the current version when it is empty.

        Raises
        ------
        UnknownModelVersion
            Naming ``model_version`` and the versions served.
        """
        scorer = self.scorers.get(requested or self.current)
        if scorer is None:
            raise UnknownModelVersion(
                f"field 'model_version': {requested[:64]!r} is not served by this gateway "
                f"(it serves {', '.join(sorted(self.scorers))})"
            )
        return scorer


class ScoringServicer(scoring_pb2_grpc.ScoringGatewayServicer):
    """Scores applications with the served versions; see the module docstring.

    Parameters
    ----------
    versions : ServedVersions
    applicants : ApplicantDirectory
    partner : PartnerSource
        The `PartnerClient` to use now for a version, or None while the partner's copy of it
        is not verified (the gateway then scores the bank's slice alone).
    audit : AuditLog
    on_decided : callable, optional
        Called with each new decision once it is durable (not with a retry answered from the
        log), on whichever channel it came: what metrics count.
    consented_lookup : ConsentedLookupClient, optional
        Looks consenting applicants outside the aligned set up at the partner; without it
        they are ``UNKNOWN_APPLICANT`` with no call.
    """

    def __init__(
        self,
        versions: ServedVersions,
        applicants: ApplicantDirectory,
        partner: PartnerSource,
        audit: AuditLog,
        *,
        on_decided: Callable[[AuditRecord], None] | None = None,
        consented_lookup: ConsentedLookupClient | None = None,
    ) -> None:
        self._versions = versions
        self._applicants = applicants
        self._partner = partner
        self._audit = audit
        self._on_decided = on_decided
        self._consented_lookup = consented_lookup

    @property
    def versions(self) -> ServedVersions:
        """The versions served now."""
        return self._versions

    def serve(self, versions: ServedVersions) -> None:
        """Serve `versions` from the next call on; calls in progress finish on the ones they
        took (one reference replaced whole, so no call sees half a swap)."""
        self._versions = versions

    def ScoreApplication(  # noqa: N802 -- the generated servicer's method name
        self, request: scoring_pb2.ScoreApplicationRequest, context: grpc.ServicerContext
    ) -> scoring_pb2.ScoreApplicationResponse:
        request_id = str(uuid.uuid4())
        with serving_request(request_id):
            return self._score(request_id, request, context)

    def _score(
        self,
        request_id: str,
        request: scoring_pb2.ScoreApplicationRequest,
        context: grpc.ServicerContext,
    ) -> scoring_pb2.ScoreApplicationResponse:
        identity = caller(context)
        _check_known_fields(request)
        channel = _channel(request.channel, identity)
        if not _APPLICATION_ID.fullmatch(request.application_id):
            raise InvalidRequest(
                "field 'application_id': must be 1 to 128 printable ASCII characters"
            )
        # Taken once: encoding, the partner lookup, scoring and the record all use this version.
        scorer = self._versions.scorer(request.model_version)
        fields = _fields(request.fields)
        applicant = self._applicants.resolve(request.identifier_kind, request.identifier)
        inputs = ApplicationInputs(
            application_id=request.application_id,
            channel=channel,
            identifier_kind=request.identifier_kind,
            applicant=applicant.pseudonym,
            partner_lookup_consent=request.partner_lookup_consent,
            fields=fields,
            model_version=request.model_version,
        )
        recorded = self._audit.find_application(inputs)
        if recorded is not None:
            return _reply(recorded, identity, replayed=True)
        row = scorer.encoder.encode(fields, applicant.stored)
        version_id = scorer.version.manifest.version_id
        partner = self._partner_slice(request_id, version_id, applicant, inputs, scorer)
        result = scorer.score(row, partner.embedding)
        record = AuditRecord(
            request_id=request_id,
            decided_at=dt.datetime.now(dt.UTC),
            caller=_urn(identity),
            inputs=inputs,
            bank_features=row.values,
            partner_embedding=None
            if partner.embedding is None
            else tuple(partner.embedding.tolist()),
            partner_status=partner.status,
            result=result,
            decision_config_sha256=scorer.config.digest,
        )
        remaining = context.time_remaining()
        stored = self._audit.record(record, _RECORD_WAIT_S if remaining is None else remaining)
        if self._on_decided is not None and stored.request_id == request_id:
            self._on_decided(stored)
        _LOG.info(
            "[Gateway] request %s applicant %s version %s: %s, partner %s",
            stored.request_id,
            applicant.pseudonym,
            version_id,
            stored.result.decision.value,
            stored.partner_status.value,
        )
        # A concurrent retry of the same application was recorded first: answer with it.
        return _reply(stored, identity, replayed=stored.request_id != request_id)

    def _partner_slice(
        self,
        request_id: str,
        version_id: str,
        applicant: Applicant,
        inputs: ApplicationInputs,
        scorer: Scorer,
    ) -> PartnerSlice:
        client = self._partner(version_id)
        if applicant.join_key is None:
            # Outside the aligned set: only a consented lookup may ask the partner.
            if not inputs.partner_lookup_consent:
                return PartnerSlice(PartnerSliceStatus.NO_CONSENT)
            lookup, lookup_input = self._consented_lookup, applicant.lookup_input
            if lookup is None or lookup_input is None:
                return PartnerSlice(PartnerSliceStatus.UNKNOWN_APPLICANT)
            if client is None:
                return PartnerSlice(PartnerSliceStatus.UNAVAILABLE)
            return lookup.embedding(
                client,
                request_id,
                inputs.application_id,
                version_id,
                lookup_input,
                scorer.partner_width,
            )
        if client is None:
            return PartnerSlice(PartnerSliceStatus.UNAVAILABLE)
        return client.embedding(request_id, version_id, applicant.join_key, scorer.partner_width)


def _check_known_fields(request: scoring_pb2.ScoreApplicationRequest) -> None:
    """Refuse fields this gateway's contract does not know, rather than ignore them."""
    messages: list[tuple[str, Message]] = [("request", request)]
    messages += [(f"fields[{name[:64]!r}]", value) for name, value in request.fields.items()]
    for where, message in messages:
        for field in unknown_fields.UnknownFieldSet(message):
            raise InvalidRequest(
                f"{where}: field number {field.field_number} is not a field of this contract"
            )


def _channel(value: int, identity: PeerIdentity) -> ApplicationChannel:
    channel = _CHANNELS.get(scoring_pb2.ApplicationChannel.ValueType(value))
    if channel is None:
        raise InvalidRequest(
            f"field 'channel': {value} is not an application channel "
            "(APPLICATION_CHANNEL_BANK or APPLICATION_CHANNEL_PARTNER)"
        )
    if (identity.party is Party.PARTNER) != (channel is ApplicationChannel.PARTNER):
        raise PermissionDenied(
            f"field 'channel': the {identity.party}'s application flow may not submit on the "
            f"{channel.value} channel"
        )
    return channel


def _fields(values: Mapping[str, scoring_pb2.FieldValue]) -> dict[str, FieldValue]:
    if len(values) > MAX_FIELDS:
        raise InvalidRequest(f"field 'fields': {len(values)} fields, at most {MAX_FIELDS}")
    fields: dict[str, FieldValue] = {}
    for name, value in values.items():
        if not name or len(name) > _MAX_NAME_CHARS:
            raise InvalidRequest(
                f"field 'fields': a field name must be 1 to {_MAX_NAME_CHARS} characters"
            )
        kind = value.WhichOneof("value")
        if kind == "number":
            if not math.isfinite(value.number):
                raise InvalidRequest(
                    f"field {name!r}: {value.number} is not a finite number; send missing instead"
                )
            fields[name] = value.number
        elif kind == "category":
            if len(value.category) > _MAX_CATEGORY_CHARS:
                raise InvalidRequest(
                    f"field {name!r}: a category of at most {_MAX_CATEGORY_CHARS} characters"
                )
            fields[name] = value.category
        else:
            fields[name] = None
    return fields


def _urn(identity: PeerIdentity) -> str:
    return f"{URN_PREFIX}{identity.party}:{identity.role}:{identity.name}"


def _reply(
    record: AuditRecord, identity: PeerIdentity, *, replayed: bool
) -> scoring_pb2.ScoreApplicationResponse:
    """The reply to `identity` for a recorded decision."""
    result = record.result
    reply = scoring_pb2.ScoreApplicationResponse(
        request_id=record.request_id,
        application_id=record.application_id,
        model_version=result.model_version,
        replayed=replayed,
    )
    reply.decided_at.FromDatetime(record.decided_at)
    if identity.party is Party.PARTNER:
        view = partner_view(result)
        reply.decision = _DECISIONS[view.decision]
        reply.limit_band = view.limit_band
        _add_packages(reply, view.packages)
        return reply
    reply.decision = _DECISIONS[result.decision]
    reply.credit_limit_minor = result.credit_limit_minor
    reply.currency = result.currency
    reply.limit_band = result.limit_band
    reply.risk.probability_of_default = result.probability_of_default
    reply.risk.score = result.score
    reply.risk.score_band = result.score_band
    for reason in result.reasons:
        reply.risk.reasons.add(code=reason.code, text=reason.text, points=reason.points)
    for hit in result.rule_hits:
        reply.risk.policy_rules.add(code=hit.code, text=hit.text, outcome=_DECISIONS[hit.outcome])
    _add_packages(reply, result.packages)
    if result.instalment is not None:
        reply.instalment.propensity = result.instalment.propensity
        reply.instalment.offer = result.instalment.offer
        reply.instalment.channel = _OFFER_CHANNELS[result.instalment.channel]
    reply.slices.bank = result.slices.bank
    reply.slices.partner = result.slices.partner
    reply.slices.partner_status = _SLICE_STATUSES[record.partner_status]
    return reply


def _add_packages(
    reply: scoring_pb2.ScoreApplicationResponse, packages: tuple[PackageOffer, ...]
) -> None:
    for offer in packages:
        reply.packages.add(package=offer.package, propensity=offer.propensity, rank=offer.rank)


def scoring_service(servicer: ScoringServicer) -> ServicerAdder:
    """Register `servicer` on a server (for ``cobrand.rpc.create_server``)."""

    def add(server: grpc.Server) -> None:
        # The generated *_pb2_grpc modules come without type annotations.
        scoring_pb2_grpc.add_ScoringGatewayServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

    return add
