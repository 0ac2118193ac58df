"""The consented lookup end to end over mutual TLS on loopback: a partner node serving a version
with its OPRF index of every user, the gateway looking consenting applicants outside the
alignment up by oblivious PRF, and the partner's records of each call; on the run's shared world
(`tests.gateway.shared_world`) but for the partner with a limit of its own."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from cobrand import oprf
from cobrand.model_store import ModelStore
from cobrand.rpc import create_channel
from cobrand.v1 import consented_lookup_pb2, consented_lookup_pb2_grpc, scoring_pb2
from gateway.replay import replay, scorer_for
from gateway.server import Gateway
from gateway.settings import GatewaySettings
from partner_node.config import ConsentedLookupSettings
from partner_node.consented_lookup_service import CONSENTED_LOOKUP_AUDIT_FILE
from partner_node.model_registry import load_partner_version
from partner_node.probe_limit import PROBE_AUDIT_FILE
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import (
    World,
    gateway_settings,
    running_gateway,
)
from tests.gateway.scoring_calls import TIMEOUT, application, scoring_stub, spelt
from tests.gateway.shared_world import STRANGERS
from tests.partner_node.embedding_sites import partner_table
from tests.training_sites import TrainingSites, running_partner

USED = scoring_pb2.PARTNER_SLICE_STATUS_USED
UNKNOWN = scoring_pb2.PARTNER_SLICE_STATUS_UNKNOWN_APPLICANT
NO_CONSENT = scoring_pb2.PARTNER_SLICE_STATUS_NO_CONSENT
# ristretto255's identity, and a non-canonical encoding (a negative s): both refused.
IDENTITY = bytes(32)
NOT_CANONICAL = (1).to_bytes(32, "little")


@pytest.fixture(scope="module")
def outsiders(world: World) -> list[str]:
    """Partner users the bank does not hold: outside the alignment, known to the partner."""
    table, _ = partner_table(world.sites)
    partner_only = sorted(set(np.asarray(table.ids, dtype=str)) - set(world.people.aligned))
    assert len(partner_only) >= 3
    return partner_only


def _lookup_stub(pki: ThrowAwayPki, port: int, holder: str) -> Any:
    channel = create_channel(f"127.0.0.1:{port}", pki.tls(holder))
    return channel, consented_lookup_pb2_grpc.ConsentedLookupStub(channel)  # type: ignore[no-untyped-call]


def _partner_records(sites: TrainingSites, consent: str) -> list[dict[str, Any]]:
    path = sites.partner_data / CONSENTED_LOOKUP_AUDIT_FILE
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line["consent_reference"] == consent]


def _partner_embedding(sites: TrainingSites, version_id: str, user: str) -> np.ndarray[Any, Any]:
    """What the version's partner bottom gives the user's row, over the whole table at once."""
    table, _ = partner_table(sites)
    version = load_partner_version(ModelStore(sites.partner_data / "models"), version_id)
    encoded = version.preprocessor.transform(table)
    with torch.inference_mode():
        every = version.bottom(
            torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.categorical)
        ).numpy()
    row: np.ndarray[Any, Any] = every[list(np.asarray(table.ids, dtype=str)).index(user)]
    return row


def test_a_consenting_partner_user_outside_the_alignment_is_scored_with_their_embedding(
    bank_app: Any,
    gateway: Gateway,
    gateway_config: GatewaySettings,
    sites: TrainingSites,
    outsiders: list[str],
    version_id: str,
) -> None:
    reply = bank_app.ScoreApplication(
        application(
            "APP-consent-1", spelt(outsiders[0]), consent=True, age=30.0, monthly_income=9000.0
        ),
        timeout=TIMEOUT,
    )

    assert reply.slices.partner_status == USED
    assert reply.slices.partner
    recorded = gateway.audit.get(reply.request_id)
    assert recorded is not None
    assert recorded.partner_embedding is not None
    np.testing.assert_allclose(
        recorded.partner_embedding,
        _partner_embedding(sites, version_id, outsiders[0]),
        rtol=1e-5,
        atol=1e-6,
    )
    # Replay recomputes the decision from the recorded embedding.
    assert replay(recorded, scorer_for(gateway_config, version_id)).matches
    # The partner recorded both calls under the application's consent reference.
    calls = _partner_records(sites, "APP-consent-1")
    assert [c["call"] for c in calls] == ["BlindEvaluate", "GetConsentedEmbedding"]
    assert {c["request_id"] for c in calls} == {reply.request_id}
    assert calls[1]["found"] is True
    assert calls[1]["model_version"] == version_id
    assert all(c["caller"].startswith("urn:cobrand:bank:gateway:") for c in calls)
    # Nothing in the partner's records names the applicant.
    assert outsiders[0] not in json.dumps(calls)


def test_a_consenting_applicant_the_partner_does_not_hold_is_unknown(
    bank_app: Any, sites: TrainingSites
) -> None:
    reply = bank_app.ScoreApplication(
        application("APP-consent-2", STRANGERS[0], consent=True, age=41.0), timeout=TIMEOUT
    )

    assert reply.slices.partner_status == UNKNOWN
    assert reply.slices.bank
    assert not reply.slices.partner
    assert [c["found"] for c in _partner_records(sites, "APP-consent-2")[1:]] == [False]


def test_without_consent_an_applicant_outside_the_alignment_causes_no_partner_call(
    bank_app: Any, sites: TrainingSites, outsiders: list[str]
) -> None:
    audit = sites.partner_data / CONSENTED_LOOKUP_AUDIT_FILE
    before = audit.read_text() if audit.exists() else ""

    replies = [
        bank_app.ScoreApplication(
            application("APP-no-consent-1", outsiders[1], age=30.0), timeout=TIMEOUT
        ),
        bank_app.ScoreApplication(
            application("APP-no-consent-2", STRANGERS[1], age=52.0), timeout=TIMEOUT
        ),
    ]

    assert [r.slices.partner_status for r in replies] == [NO_CONSENT, NO_CONSENT]
    assert (audit.read_text() if audit.exists() else "") == before


def test_a_blinded_element_outside_the_group_is_refused_naming_the_field(
    throwaway_pki: ThrowAwayPki, partner_node: PartnerNode
) -> None:
    channel, stub = _lookup_stub(throwaway_pki, partner_node.port, "gateway")
    with channel:
        for element in (IDENTITY, NOT_CANONICAL, bytes(31)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.BlindEvaluate(
                    consented_lookup_pb2.BlindEvaluateRequest(
                        request_id="bad-point", consent_reference="APP-x", blinded_element=element
                    ),
                    timeout=TIMEOUT,
                )
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "blinded_element" in (refused.value.details() or "")


def test_the_application_flow_may_not_call_the_consented_lookup(
    throwaway_pki: ThrowAwayPki, partner_node: PartnerNode
) -> None:
    channel, stub = _lookup_stub(throwaway_pki, partner_node.port, "app")
    with channel:
        calls: list[Callable[[], Any]] = [
            lambda: stub.BlindEvaluate(
                consented_lookup_pb2.BlindEvaluateRequest(
                    request_id="r", consent_reference="APP-x", blinded_element=IDENTITY
                ),
                timeout=TIMEOUT,
            ),
            lambda: stub.GetConsentedEmbedding(
                consented_lookup_pb2.GetConsentedEmbeddingRequest(
                    request_id="r", consent_reference="APP-x", oprf_output=bytes(16)
                ),
                timeout=TIMEOUT,
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED


# -- the partner's limit ---------------------------------------------------------------------------

LIMIT = 2


@pytest.fixture
def limited_node(throwaway_pki: ThrowAwayPki, sites: TrainingSites) -> Iterator[PartnerNode]:
    limit = ConsentedLookupSettings(lookups_per_minute=LIMIT)
    with running_partner(throwaway_pki, sites, consented_lookup=limit) as started:
        yield started


def test_past_the_partners_limit_the_lookup_is_refused_and_the_gateway_answers_bank_only(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version_id: str,
    limited_node: PartnerNode,
    outsiders: list[str],
) -> None:
    settings = gateway_settings(
        tmp_path, sites, throwaway_pki, version_id, limited_node.port, deadline_ms=1000
    )
    with (
        running_gateway(settings) as gateway,
        scoring_stub(throwaway_pki, gateway.port) as stub,
    ):
        replies = [
            stub.ScoreApplication(
                application(f"APP-limit-{i}", outsiders[i], consent=True, age=35.0),
                timeout=TIMEOUT,
            )
            for i in range(LIMIT + 1)
        ]
        # The limit says nothing of the partner's health: the breaker stays closed.
        client = gateway.partner(version_id)
        assert client is not None
        assert client.breaker.state.value == "closed"

    assert [r.slices.partner_status for r in replies] == [USED] * LIMIT + [UNKNOWN]
    assert not replies[-1].slices.partner
    assert replies[-1].slices.bank
    refusals = [
        json.loads(line)
        for line in (sites.partner_data / PROBE_AUDIT_FILE).read_text().splitlines()
    ]
    assert any(f"consent 'APP-limit-{LIMIT}'" in r["call"] for r in refusals)
    # Asked directly past the limit, the partner refuses with RESOURCE_EXHAUSTED.
    channel, lookup = _lookup_stub(throwaway_pki, limited_node.port, "gateway")
    with channel, pytest.raises(grpc.RpcError) as refused:
        lookup.BlindEvaluate(
            consented_lookup_pb2.BlindEvaluateRequest(
                request_id="over",
                consent_reference="APP-over",
                blinded_element=oprf.hash_to_group(b"anyone"),
            ),
            timeout=TIMEOUT,
        )
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_gateway_has_the_partner_build_its_index_when_it_starts(
    gateway: Gateway, sites: TrainingSites, version_id: str
) -> None:
    warm_up = _partner_records(sites, "warm-up")

    assert [c["call"] for c in warm_up][:1] == ["GetConsentedEmbedding"]
    assert warm_up[0]["found"] is False
    assert warm_up[0]["model_version"] == version_id
