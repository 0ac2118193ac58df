"""ScoreApplication end to end over mutual TLS on loopback: a version published at both sides, a
real partner node serving its embeddings, the gateway server, and the bank's and the partner's
application flows as callers; all but the partner-stopped cases on the run's shared world
(`tests.gateway.shared_world`)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from cobrand.alignment_store import AlignmentStore
from cobrand.rpc import REASON_METADATA_KEY, create_channel
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc, scoring_pb2
from gateway.audit_record import PartnerSliceStatus
from gateway.request_log import JsonLines
from gateway.server import Gateway
from gateway.settings import BreakerSettings
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import (
    Applicants,
    gateway_settings,
    running_gateway,
)
from tests.gateway.scoring_calls import (
    BANK,
    PARTNER,
    TIMEOUT,
    application,
    scoring_stub,
    spelt,
)
from tests.gateway.shared_world import STRANGERS
from tests.gateway.synth_version import PARTNER_WIDTH
from tests.training_sites import TrainingSites, running_partner

USED = scoring_pb2.PARTNER_SLICE_STATUS_USED
NEW_APPLICANT = STRANGERS[0]
"""A new applicant: a customer of neither party."""


@pytest.fixture(scope="module")
def partner_app(throwaway_pki: ThrowAwayPki, gateway: Gateway) -> Iterator[Any]:
    with scoring_stub(throwaway_pki, gateway.port, "partner-app") as stub:
        yield stub


def refusal(stub: Any, message: scoring_pb2.ScoreApplicationRequest) -> Any:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ScoreApplication(message, timeout=TIMEOUT)
    return raised.value


def test_an_applicant_the_partner_knows_is_scored_with_the_partners_embedding(
    bank_app: Any,
    gateway: Gateway,
    partner_node: PartnerNode,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    people: Applicants,
    version_id: str,
) -> None:
    reply = bank_app.ScoreApplication(
        application("APP-known-1", spelt(people.aligned[0]), monthly_income=12000.0),
        timeout=TIMEOUT,
    )

    assert reply.model_version == version_id
    assert reply.slices.bank
    assert reply.slices.partner
    assert reply.slices.partner_status == USED
    assert reply.decision != scoring_pb2.DECISION_UNSPECIFIED
    assert reply.risk.score_band
    assert 0.0 < reply.risk.probability_of_default < 1.0
    assert 0 < len(reply.risk.reasons) <= 4
    assert not reply.replayed
    recorded = gateway.audit.get(reply.request_id)
    assert recorded is not None
    # The very embedding the partner holds for this applicant's join key.
    with AlignmentStore(sites.bank_data) as alignment:
        join_key = alignment.join_key(people.aligned[0])
    with create_channel(f"127.0.0.1:{partner_node.port}", throwaway_pki.tls("gateway")) as channel:
        direct = embedding_pb2_grpc.PartnerEmbeddingServiceStub(channel).GetEmbedding(  # type: ignore[no-untyped-call]
            embedding_pb2.GetEmbeddingRequest(
                request_id="direct", model_version=version_id, join_key=join_key
            ),
            timeout=TIMEOUT,
        )
    assert len(direct.embedding) == PARTNER_WIDTH
    assert recorded.partner_embedding == tuple(direct.embedding)
    # The stored row completed the one field the application gave.
    assert recorded.bank_features["monthly_income"] == 12000.0
    assert recorded.bank_features["age"] is not None


def test_every_aligned_customer_is_scored_with_the_partners_slice(
    bank_app: Any, people: Applicants
) -> None:
    statuses = [
        bank_app.ScoreApplication(
            application(f"APP-all-{i}", canonical), timeout=TIMEOUT
        ).slices.partner_status
        for i, canonical in enumerate(people.aligned)
    ]

    assert statuses == [USED] * len(people.aligned)


def test_the_same_person_in_another_spelling_is_the_same_pseudonymous_applicant(
    bank_app: Any, gateway: Gateway, people: Applicants
) -> None:
    canonical = people.aligned[1]
    first = bank_app.ScoreApplication(application("APP-spell-1", canonical), timeout=TIMEOUT)
    second = bank_app.ScoreApplication(
        application("APP-spell-2", spelt(canonical)), timeout=TIMEOUT
    )

    records = [gateway.audit.get(reply.request_id) for reply in (first, second)]
    assert records[0] is not None
    assert records[1] is not None
    assert records[0].inputs.applicant == records[1].inputs.applicant
    assert canonical[3:] not in repr(records[0].inputs)
    assert first.risk.score == second.risk.score


def test_a_bank_customer_the_partner_does_not_know_gets_a_bank_only_answer(
    bank_app: Any, people: Applicants
) -> None:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        reply = bank_app.ScoreApplication(
            application("APP-bank-only-1", people.bank_only[0], consent=True), timeout=TIMEOUT
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    # The decision's log line is JSON tagged with the reply's request id, and names the
    # applicant by pseudonym only.
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    tagged = [line for line in logged if line.get("request_id") == reply.request_id]
    assert any("unknown_applicant" in line["message"] for line in tagged)
    assert all(people.bank_only[0] not in line["message"] for line in logged)

    assert reply.slices.bank
    assert not reply.slices.partner
    assert reply.slices.partner_status == scoring_pb2.PARTNER_SLICE_STATUS_UNKNOWN_APPLICANT
    assert reply.decision != scoring_pb2.DECISION_UNSPECIFIED
    assert all(reason.code != "P01" for reason in reply.risk.reasons)


def test_an_applicant_outside_the_alignment_without_consent_is_not_looked_up(
    bank_app: Any,
) -> None:
    reply = bank_app.ScoreApplication(
        application("APP-new-1", NEW_APPLICANT, age=30.0, monthly_income=9000.0), timeout=TIMEOUT
    )

    assert reply.slices.partner_status == scoring_pb2.PARTNER_SLICE_STATUS_NO_CONSENT
    assert not reply.slices.partner
    assert reply.decision != scoring_pb2.DECISION_UNSPECIFIED


def test_the_same_application_sent_again_returns_the_recorded_decision(
    bank_app: Any, people: Applicants
) -> None:
    sent = application("APP-retry-1", people.aligned[2], monthly_income=8000.0)
    first = bank_app.ScoreApplication(sent, timeout=TIMEOUT)

    again = bank_app.ScoreApplication(sent, timeout=TIMEOUT)

    assert again.replayed
    assert not first.replayed
    assert again.request_id == first.request_id
    assert again.decided_at == first.decided_at
    assert again.risk == first.risk
    assert again.decision == first.decision
    changed = refusal(
        bank_app, application("APP-retry-1", people.aligned[2], monthly_income=8001.0)
    )
    assert changed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "application_id" in changed.details()


def test_concurrent_retries_of_one_application_get_one_decision(
    bank_app: Any, people: Applicants
) -> None:
    sent = application("APP-race-1", people.aligned[7], monthly_income=7000.0)

    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda _: bank_app.ScoreApplication(sent, timeout=TIMEOUT), range(8))
        )

    assert len({reply.request_id for reply in replies}) == 1
    assert [reply.replayed for reply in replies].count(False) == 1


def test_many_applications_at_once_are_each_decided_and_recorded(
    bank_app: Any, gateway: Gateway, people: Applicants
) -> None:
    customers = people.aligned[:32]

    with ThreadPoolExecutor(32) as pool:
        replies = list(
            pool.map(
                lambda i: bank_app.ScoreApplication(
                    application(f"APP-burst-{i}", customers[i]), timeout=TIMEOUT
                ),
                range(len(customers)),
            )
        )

    # Under a burst on a shared machine a lookup may miss its deadline; each is decided.
    for reply in replies:
        recorded = gateway.audit.get(reply.request_id)
        assert recorded is not None
        assert reply.decision != scoring_pb2.DECISION_UNSPECIFIED
        assert reply.slices.partner == (recorded.partner_status is PartnerSliceStatus.USED)


def test_the_partners_channel_sees_the_decision_limit_band_and_packages_only(
    partner_app: Any, gateway: Gateway, people: Applicants
) -> None:
    reply = partner_app.ScoreApplication(
        application("APP-partner-1", people.aligned[3], channel=PARTNER), timeout=TIMEOUT
    )

    assert reply.decision != scoring_pb2.DECISION_UNSPECIFIED
    assert not reply.HasField("risk")
    assert not reply.HasField("instalment")
    assert not reply.HasField("slices")
    assert reply.credit_limit_minor == 0
    recorded = gateway.audit.get(reply.request_id)
    assert recorded is not None
    assert recorded.caller == "urn:cobrand:partner:app:partner-app"
    assert reply.limit_band == recorded.result.limit_band
    assert [p.package for p in reply.packages] == [p.package for p in recorded.result.packages]
    assert recorded.result.reasons, "the bank's reasons are recorded, just not shown"


def test_the_bank_sees_the_hard_rules_an_application_triggered_and_the_partner_does_not(
    bank_app: Any, partner_app: Any, people: Applicants
) -> None:
    # H01 (under 18) declines whatever the model says; the example configuration's rule.
    under_age = bank_app.ScoreApplication(
        application("APP-minor-1", people.bank_only[1], age=17), timeout=TIMEOUT
    )
    adult = bank_app.ScoreApplication(
        application("APP-adult-1", people.bank_only[2], age=40), timeout=TIMEOUT
    )
    seen_by_partner = partner_app.ScoreApplication(
        application("APP-minor-2", people.bank_only[3], channel=PARTNER, age=17), timeout=TIMEOUT
    )

    assert under_age.decision == scoring_pb2.DECISION_DECLINE
    rules = [(r.code, r.outcome) for r in under_age.risk.policy_rules]
    assert rules == [("H01", scoring_pb2.DECISION_DECLINE)]
    assert under_age.risk.policy_rules[0].text == "The applicant is under 18"
    assert "H01" not in [r.code for r in adult.risk.policy_rules]
    assert seen_by_partner.decision == scoring_pb2.DECISION_DECLINE
    assert not seen_by_partner.HasField("risk")


@pytest.mark.parametrize(
    ("holder", "channel"),
    [("partner-app", BANK), ("app", PARTNER), ("gateway", BANK)],
)
def test_each_caller_may_submit_only_on_its_own_channel(
    throwaway_pki: ThrowAwayPki, gateway: Gateway, people: Applicants, holder: str, channel: int
) -> None:
    with scoring_stub(throwaway_pki, gateway.port, holder) as stub:
        refused = refusal(
            stub, application(f"APP-role-{holder}", people.aligned[0], channel=channel)
        )

    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("named", "change"),
    [
        ("application_id", {"application_id": ""}),
        ("application_id", {"application_id": "A" * 129}),
        ("channel", {"channel": 0}),
        ("channel", {"channel": 9}),
        ("identifier_kind", {"identifier_kind": "passport"}),
        ("identifier", {"identifier": "12345"}),
        ("monthly_income", {"fields": {"monthly_income": float("nan")}}),
        ("monthly_income", {"fields": {"monthly_income": float("inf")}}),
        ("monthly_income", {"fields": {"monthly_income": -5.0}}),
        ("shoe_size", {"fields": {"shoe_size": 42.0}}),
        ("city_tier", {"fields": {"city_tier": "tier-9"}}),
        ("age", {"fields": {"age": "thirty"}}),
    ],
)
def test_a_bad_request_is_refused_naming_the_field(
    bank_app: Any, people: Applicants, named: str, change: dict[str, Any]
) -> None:
    fields = change.pop("fields", {})
    message = application(f"APP-bad-{named}", people.aligned[0], **fields)
    for name, value in change.items():
        setattr(message, name, value)

    refused = refusal(bank_app, message)

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in refused.details()
    assert "Traceback" not in refused.details()
    assert people.aligned[0][3:] not in refused.details()


def test_an_unknown_field_is_refused_rather_than_ignored(bank_app: Any, people: Applicants) -> None:
    message = application("APP-unknown-field", people.aligned[0])
    # Field 99 of a newer contract as a varint of 1: tag (99 << 3) | 0 = 0x98 0x06, then 0x01.
    wire = message.SerializeToString() + b"\x98\x06\x01"

    refused = refusal(bank_app, scoring_pb2.ScoreApplicationRequest.FromString(wire))

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field number 99" in refused.details()


def test_an_oversized_request_is_refused_before_it_is_read(
    bank_app: Any, people: Applicants
) -> None:
    long_category = refusal(
        bank_app, application("APP-long", people.aligned[0], occupation="x" * 1000)
    )
    oversized = refusal(
        bank_app, application("APP-huge", people.aligned[0], occupation="x" * 300_000)
    )

    assert long_category.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "occupation" in long_category.details()
    assert oversized.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_an_unknown_model_version_is_not_found_naming_it(
    bank_app: Any, people: Applicants, version_id: str
) -> None:
    refused = refusal(
        bank_app, application("APP-version", people.aligned[0], model_version="0123456789abcdef")
    )

    assert refused.code() == grpc.StatusCode.NOT_FOUND
    assert "model_version" in refused.details()
    assert "0123456789abcdef" in refused.details()
    assert version_id in refused.details()
    assert (REASON_METADATA_KEY, "UNKNOWN_MODEL_VERSION") in refused.trailing_metadata()


def test_every_decision_is_recorded_with_its_version_and_slices(
    bank_app: Any, gateway: Gateway, people: Applicants, version_id: str
) -> None:
    sent = [
        application("APP-audit-1", people.aligned[4]),
        application("APP-audit-2", people.bank_only[1], consent=True),
        application("APP-audit-3", people.bank_only[2]),
    ]
    replies = [bank_app.ScoreApplication(message, timeout=TIMEOUT) for message in sent]

    statuses = []
    for reply in replies:
        recorded = gateway.audit.get(reply.request_id)
        assert recorded is not None
        assert recorded.model_version == version_id == reply.model_version
        assert recorded.result.slices.partner == reply.slices.partner
        assert recorded.result.score == reply.risk.score
        statuses.append(recorded.partner_status)
    assert statuses == [
        PartnerSliceStatus.USED,
        PartnerSliceStatus.UNKNOWN_APPLICANT,
        PartnerSliceStatus.NO_CONSENT,
    ]


# -- the partner stops ---------------------------------------------------------------------------

DEADLINE_MS = 50.0
COOL_DOWN_S = 30.0


@pytest.fixture
def own_partner(throwaway_pki: ThrowAwayPki, sites: TrainingSites) -> Iterator[PartnerNode]:
    with running_partner(throwaway_pki, sites) as started:
        yield started


@pytest.fixture
def own_gateway(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version_id: str,
    own_partner: PartnerNode,
) -> Iterator[Gateway]:
    settings = gateway_settings(
        tmp_path,
        sites,
        throwaway_pki,
        version_id,
        own_partner.port,
        deadline_ms=DEADLINE_MS,
        # Open once half the calls failed, from the second: the one before the stop and the
        # first after it.
        breaker=BreakerSettings(min_calls=2, failure_ratio=0.5, cool_down_s=COOL_DOWN_S),
    )
    with running_gateway(settings) as started:
        yield started


def test_with_the_partner_stopped_applications_are_still_decided_within_the_deadline(
    throwaway_pki: ThrowAwayPki,
    own_gateway: Gateway,
    own_partner: PartnerNode,
    people: Applicants,
) -> None:
    with scoring_stub(throwaway_pki, own_gateway.port) as app:
        before = app.ScoreApplication(application("APP-down-0", people.aligned[5]), timeout=TIMEOUT)
        assert before.slices.partner_status == USED
        own_partner.stop(grace=None)

        timings, replies = [], []
        for i in range(1, 5):
            started = time.perf_counter()
            replies.append(
                app.ScoreApplication(
                    application(f"APP-down-{i}", people.aligned[5]), timeout=TIMEOUT
                )
            )
            timings.append(time.perf_counter() - started)
        not_asked = app.ScoreApplication(
            application("APP-down-new", people.bank_only[3]), timeout=TIMEOUT
        )

    for reply in replies:
        assert reply.slices.bank
        assert not reply.slices.partner
        assert reply.slices.partner_status in (
            scoring_pb2.PARTNER_SLICE_STATUS_UNAVAILABLE,
            scoring_pb2.PARTNER_SLICE_STATUS_TIMEOUT,
        )
        assert reply.decision != scoring_pb2.DECISION_UNSPECIFIED
    # Deadline plus a margin for scoring and the audit write on a shared machine.
    assert max(timings) < DEADLINE_MS / 1000 + 0.25
    assert own_gateway.partner(before.model_version) is not None
    assert own_gateway.partner(before.model_version).breaker.state.value == "open"  # type: ignore[union-attr]
    assert not_asked.slices.partner_status == scoring_pb2.PARTNER_SLICE_STATUS_NO_CONSENT
