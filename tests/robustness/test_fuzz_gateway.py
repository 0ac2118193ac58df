"""Hostile applications to the scoring gateway, over mutual TLS on loopback with its partner node:
every call ends with a clear status naming the field it refuses, never a crash, a stack trace or
a hung call; afterwards the gateway still scores with the partner's slice and every decision it
answered during the fuzzing is in its audit log.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Final

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cobrand.federation import load_federation
from cobrand.schema import load_party_schema
from cobrand.v1 import scoring_pb2, scoring_pb2_grpc
from gateway.server import Gateway
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import Applicants, World, gateway_settings, running_gateway
from tests.robustness.conftest import Figures
from tests.robustness.hostile import (
    CALL_TIMEOUT_S,
    VERSION_LIKE,
    Tally,
    enum_numbers,
    floats,
    fuzz,
    hostile_channel,
    mutated,
    raw_bytes,
    send_raw,
    texts,
    unknown_field,
)
from tests.training_sites import TrainingSites

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

Code = grpc.StatusCode
_METHOD: Final = "/cobrand.v1.ScoringGateway/ScoreApplication"
_CODES: Final = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED,
}
_FIELDS: Final = (
    "application_id",
    "channel",
    "identifier_kind",
    "identifier",
    "fields",
    "model_version",
)
# The bank's application flow submits on the bank's channel, the partner's on the partner's.
_CHANNEL_OF: Final = {
    "app": scoring_pb2.APPLICATION_CHANNEL_BANK,
    "partner-app": scoring_pb2.APPLICATION_CHANNEL_PARTNER,
}
_IDS = itertools.count()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    throwaway_pki: ThrowAwayPki,
    world: World,
    partner_node: PartnerNode,
) -> Iterator[Gateway]:
    settings_ = gateway_settings(
        tmp_path_factory.mktemp("gateway"),
        world.sites,
        throwaway_pki,
        world.version_id,
        partner_node.port,
        deadline_ms=2000,
    )
    with running_gateway(settings_) as started:
        assert started.partner.verified
        yield started


@pytest.fixture(scope="module")
def channels(throwaway_pki: ThrowAwayPki, gateway: Gateway) -> Iterator[dict[str, grpc.Channel]]:
    made = {
        holder: hostile_channel(gateway.port, throwaway_pki.tls(holder)) for holder in _CHANNEL_OF
    }
    yield made
    for channel in made.values():
        channel.close()


def _stub(channel: grpc.Channel) -> Any:
    return scoring_pb2_grpc.ScoringGatewayStub(channel)  # type: ignore[no-untyped-call]


def _field_values() -> st.SearchStrategy[scoring_pb2.FieldValue]:
    return st.one_of(
        floats().map(lambda v: scoring_pb2.FieldValue(number=v)),
        texts().map(lambda v: scoring_pb2.FieldValue(category=v)),
        st.just(scoring_pb2.FieldValue(missing=True)),
    )


def _applications(
    people: Applicants, version_id: str, feature_names: list[str]
) -> st.SearchStrategy[tuple[frozenset[str], dict[str, Any]]]:
    known = st.sampled_from(people.aligned[:40] + people.bank_only[:10])
    return mutated(
        {
            "application_id": st.none(),  # a fresh id per call, see _request
            "channel": st.none(),  # the caller's own channel
            "identifier_kind": st.just("mobile_cn"),
            "identifier": known,
            "partner_lookup_consent": st.booleans(),
            "fields": st.just({}),
            "model_version": st.sampled_from(["", version_id]),
        },
        {
            "application_id": texts(),
            "channel": enum_numbers(_CHANNEL_OF.values()),
            "identifier_kind": texts(),
            "identifier": texts(),
            "fields": st.dictionaries(
                st.one_of(st.sampled_from(feature_names), texts()), _field_values(), max_size=4
            ),
            "model_version": VERSION_LIKE | texts(),
        },
    )


def _request(holder: str, fields: dict[str, Any]) -> scoring_pb2.ScoreApplicationRequest:
    values = dict(fields)
    if values["application_id"] is None:
        values["application_id"] = f"FUZZ-{next(_IDS)}"
    if values["channel"] is None:
        values["channel"] = _CHANNEL_OF[holder]
    return scoring_pb2.ScoreApplicationRequest(**values)


def _named(hostile: frozenset[str], fields: dict[str, Any]) -> set[str]:
    """What a refusal may name: a hostile field, or (for ``fields``) one of its entries."""
    named = set(hostile)
    if "fields" in hostile:
        named |= {repr(name[:64]) for name in fields["fields"]}
    return named


def _good(people: Applicants, holder: str = "app") -> scoring_pb2.ScoreApplicationRequest:
    return _request(
        holder,
        {
            "application_id": None,
            "channel": None,
            "identifier_kind": "mobile_cn",
            "identifier": people.aligned[0],
            "partner_lookup_consent": True,
            "fields": {},
            "model_version": "",
        },
    )


def test_score_application_answers_hostile_applications_with_a_clear_status(
    gateway: Gateway,
    channels: dict[str, grpc.Channel],
    people: Applicants,
    sites: TrainingSites,
    version_id: str,
    figures: Figures,
) -> None:
    schema = load_party_schema(sites.files.bank_schema, load_federation(sites.files.federation))
    names = [feature.name for feature in schema.features]
    tally = Tally("ScoringGateway.ScoreApplication", _FIELDS)
    answered: dict[str, int] = {}

    @fuzz(150)
    @given(
        holder=st.sampled_from(sorted(_CHANNEL_OF)),
        drawn=_applications(people, version_id, names),
    )
    def call(holder: str, drawn: tuple[frozenset[str], dict[str, Any]]) -> None:
        hostile, fields = drawn
        request = _request(holder, fields)

        def score() -> None:
            reply = _stub(channels[holder]).ScoreApplication(request, timeout=CALL_TIMEOUT_S)
            answered[reply.request_id] = reply.decision

        tally.check(score, _CODES, _named(hostile, fields))

    call()
    reply = _stub(channels["app"]).ScoreApplication(_good(people), timeout=CALL_TIMEOUT_S)
    assert reply.slices.partner_status == scoring_pb2.PARTNER_SLICE_STATUS_USED
    lost = [rid for rid in answered if gateway.audit.get(rid) is None]
    assert lost == []
    figures.add(f"{tally.figure()}; {len(answered)} decisions answered, lost from the audit log 0")


def test_random_bytes_and_unknown_fields_are_refused_and_the_gateway_serves_on(
    gateway: Gateway, channels: dict[str, grpc.Channel], people: Applicants, figures: Figures
) -> None:
    tally = Tally("ScoringGateway, random bytes as a request", (*_FIELDS, "request"))

    @fuzz(100)
    @given(
        body=st.one_of(
            raw_bytes(),
            st.builds(
                lambda number, payload: unknown_field(_good(people), number, payload),
                st.integers(8, 2**29 - 1),
                st.binary(max_size=40),
            ),
        )
    )
    def call(body: bytes) -> None:
        tally.check(
            lambda: send_raw(channels["app"], _METHOD, body, streamed_in=False, streamed_out=False),
            _CODES,
        )

    call()
    oversized = _good(people)
    oversized.identifier = "1" * (300 * 1024)  # above the gateway's limit, 256 KiB
    tally.check(
        lambda: _stub(channels["app"]).ScoreApplication(oversized, timeout=CALL_TIMEOUT_S),
        {Code.RESOURCE_EXHAUSTED},
    )
    reply = _stub(channels["app"]).ScoreApplication(_good(people), timeout=CALL_TIMEOUT_S)
    assert reply.slices.partner_status == scoring_pb2.PARTNER_SLICE_STATUS_USED
    figures.add(tally.figure())
