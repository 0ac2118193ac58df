"""`cobrand audit replay`: decisions made by the real gateway over mutual TLS replay to an exact
match, with the partner's slice and bank-only; a record altered in the database is reported as a
mismatch naming the field."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cobrand.rpc import create_channel
from cobrand.v1 import scoring_pb2, scoring_pb2_grpc
from gateway.audit_cli import app
from gateway.config import load_decision_config
from gateway.server import Gateway, start_gateway
from gateway.settings import GatewaySettings
from partner_node.server import PartnerNode, start_partner_node
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import (
    Applicants,
    applicants_of,
    gateway_settings,
    publish_both_sides,
)
from tests.training_sites import TrainingSites, write_training_sites

TIMEOUT = 10.0
runner = CliRunner()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=300, seed=41)


@pytest.fixture(scope="module")
def version_id(sites: TrainingSites) -> str:
    return publish_both_sides(sites)


@pytest.fixture(scope="module")
def node(
    throwaway_pki: ThrowAwayPki, sites: TrainingSites, version_id: str
) -> Iterator[PartnerNode]:
    started = start_partner_node(sites.partner_node_config(throwaway_pki.tls("partner")))
    yield started
    started.stop(grace=None)


@pytest.fixture(scope="module")
def settings(
    tmp_path_factory: pytest.TempPathFactory,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version_id: str,
    node: PartnerNode,
) -> GatewaySettings:
    return gateway_settings(
        tmp_path_factory.mktemp("gateway"),
        sites,
        throwaway_pki,
        version_id,
        node.port,
        deadline_ms=500,
    )


@pytest.fixture(scope="module")
def config_file(settings: GatewaySettings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "gateway.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    return path


@pytest.fixture(scope="module")
def gateway(settings: GatewaySettings) -> Iterator[Gateway]:
    started = start_gateway(settings)
    assert started.partner.verified
    yield started
    started.stop(grace=None)


@pytest.fixture(scope="module")
def decide(throwaway_pki: ThrowAwayPki, gateway: Gateway) -> Iterator[Callable[..., Any]]:
    """Send one bank-channel application to the gateway; returns the reply."""
    with create_channel(f"127.0.0.1:{gateway.port}", throwaway_pki.tls("app")) as channel:
        stub = scoring_pb2_grpc.ScoringGatewayStub(channel)  # type: ignore[no-untyped-call]

        def send(application_id: str, identifier: str, **numbers: float) -> Any:
            message = scoring_pb2.ScoreApplicationRequest(
                application_id=application_id,
                channel=scoring_pb2.APPLICATION_CHANNEL_BANK,
                identifier_kind="mobile_cn",
                identifier=identifier,
            )
            for name, value in numbers.items():
                message.fields[name].number = value
            return stub.ScoreApplication(message, timeout=TIMEOUT)

        yield send


@pytest.fixture(scope="module")
def people(sites: TrainingSites) -> Applicants:
    return applicants_of(sites)


def _replay(settings: GatewaySettings, config_file: Path, request_id: str) -> Any:
    assert settings.audit.path is not None
    return runner.invoke(
        app,
        ["replay", request_id, "--db", str(settings.audit.path), "--config", str(config_file)],
    )


def _alter(settings: GatewaySettings, request_id: str, change: Callable[[Any], None]) -> None:
    """Change one stored record's JSON in place, as someone editing the database would."""
    assert settings.audit.path is not None
    with sqlite3.connect(settings.audit.path) as db:
        (text,) = db.execute(
            "SELECT record FROM audit_decisions WHERE request_id = ?", (request_id,)
        ).fetchone()
        body = json.loads(text)
        change(body)
        db.execute(
            "UPDATE audit_decisions SET record = ? WHERE request_id = ?",
            (json.dumps(body), request_id),
        )
    db.close()


def test_decisions_with_and_without_the_partners_slice_replay_to_an_exact_match(
    decide: Callable[..., Any],
    people: Applicants,
    settings: GatewaySettings,
    config_file: Path,
) -> None:
    with_partner = decide("REPLAY-aligned", people.aligned[0], monthly_income=9000.0)
    bank_only = decide("REPLAY-bank-only", people.bank_only[0])
    assert with_partner.slices.partner
    assert not bank_only.slices.partner

    for reply in (with_partner, bank_only):
        replayed = _replay(settings, config_file, reply.request_id)
        assert replayed.exit_code == 0, replayed.output
        assert "match: every output recomputed exactly" in replayed.output
        assert f"score {reply.risk.score}" in replayed.output
        assert f"pd {reply.risk.probability_of_default!r}" in replayed.output
        assert f"replayed with {settings.decision_config}" in replayed.output


def test_a_replay_with_another_decision_configuration_is_a_mismatch_naming_it(
    decide: Callable[..., Any],
    people: Applicants,
    settings: GatewaySettings,
    tmp_path: Path,
) -> None:
    reply = decide("REPLAY-other-config", people.aligned[3])
    used = load_decision_config(settings.decision_config)
    document = yaml.safe_load(settings.decision_config.read_text())
    document["thresholds"]["approve_from"] += 1
    other = tmp_path / "decision.yaml"
    other.write_text(yaml.safe_dump(document))
    other_settings = tmp_path / "gateway.yaml"
    other_settings.write_text(
        yaml.safe_dump(
            settings.model_copy(update={"decision_config": other}).model_dump(
                mode="json", exclude_none=True
            )
        )
    )

    replayed = _replay(settings, other_settings, reply.request_id)

    assert replayed.exit_code == 1, replayed.output
    changed = load_decision_config(other).digest
    assert (
        f"  decision_config_sha256:\n    recorded: {used.digest!r}\n    replayed: {changed!r}"
    ) in replayed.output


def test_an_altered_stored_probability_is_a_mismatch_naming_the_field(
    decide: Callable[..., Any],
    people: Applicants,
    settings: GatewaySettings,
    config_file: Path,
) -> None:
    reply = decide("REPLAY-tampered-output", people.aligned[1])
    recorded = reply.risk.probability_of_default
    _alter(
        settings,
        reply.request_id,
        lambda body: body["result"].update(probability_of_default=recorded / 2),
    )

    replayed = _replay(settings, config_file, reply.request_id)

    assert replayed.exit_code == 1, replayed.output
    assert "MISMATCH in 1 field(s):" in replayed.output
    assert (
        f"  probability_of_default:\n    recorded: {recorded / 2!r}\n    replayed: {recorded!r}"
    ) in replayed.output


def test_an_altered_stored_input_is_a_mismatch_naming_the_outputs_it_changes(
    decide: Callable[..., Any],
    people: Applicants,
    settings: GatewaySettings,
    config_file: Path,
) -> None:
    reply = decide("REPLAY-tampered-input", people.aligned[2], monthly_income=4000.0)
    _alter(
        settings,
        reply.request_id,
        lambda body: body["bank_features"].update(monthly_income=400_000.0),
    )

    replayed = _replay(settings, config_file, reply.request_id)

    assert replayed.exit_code == 1, replayed.output
    assert "  probability_of_default:\n" in replayed.output
    assert f"    recorded: {reply.risk.probability_of_default!r}\n" in replayed.output


def test_an_unknown_request_id_ends_with_one_line_and_exit_code_2(
    settings: GatewaySettings, config_file: Path, gateway: Gateway
) -> None:
    replayed = _replay(settings, config_file, "0b6e1d6a-0000-4000-8000-000000000000")
    assert replayed.exit_code == 2
    assert "no decision with request id" in replayed.output
    assert "Traceback" not in replayed.output
