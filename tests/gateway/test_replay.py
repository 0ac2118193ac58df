"""`cobrand audit replay`: decisions made by the run's shared gateway over mutual TLS replay to an
exact match, with the partner's slice and bank-only; a record altered in the database is reported
as a mismatch naming the field."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.audit_cli import app
from gateway.config import load_decision_config
from gateway.server import Gateway
from gateway.settings import GatewaySettings
from tests.gateway.gateway_sites import Applicants
from tests.gateway.scoring_calls import TIMEOUT, application

runner = CliRunner()


@pytest.fixture(scope="module")
def config_file(gateway_config: GatewaySettings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config.model_dump(mode="json", exclude_none=True)))
    return path


def _replay(settings: GatewaySettings, config_file: Path, request_id: str) -> Any:
    assert settings.audit.path is not None
    return runner.invoke(
        app,
        [
            "replay",
            request_id,
            "--db",
            str(settings.audit.path),
            "--config",
            str(config_file),
        ],
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
    bank_app: Any,
    people: Applicants,
    gateway_config: GatewaySettings,
    config_file: Path,
) -> None:
    with_partner = bank_app.ScoreApplication(
        application("REPLAY-aligned", people.aligned[0], monthly_income=9000.0), timeout=TIMEOUT
    )
    bank_only = bank_app.ScoreApplication(
        application("REPLAY-bank-only", people.bank_only[0]), timeout=TIMEOUT
    )
    assert with_partner.slices.partner
    assert not bank_only.slices.partner

    for reply in (with_partner, bank_only):
        replayed = _replay(gateway_config, config_file, reply.request_id)
        assert replayed.exit_code == 0, replayed.output
        assert "match: every output recomputed exactly" in replayed.output
        assert f"score {reply.risk.score}" in replayed.output
        assert f"pd {reply.risk.probability_of_default!r}" in replayed.output
        assert f"replayed with {gateway_config.decision_config}" in replayed.output


def test_a_replay_with_another_decision_configuration_is_a_mismatch_naming_it(
    bank_app: Any,
    people: Applicants,
    gateway_config: GatewaySettings,
    tmp_path: Path,
) -> None:
    reply = bank_app.ScoreApplication(
        application("REPLAY-other-config", people.aligned[3]), timeout=TIMEOUT
    )
    used = load_decision_config(gateway_config.decision_config)
    document = yaml.safe_load(gateway_config.decision_config.read_text())
    document["thresholds"]["approve_from"] += 1
    other = tmp_path / "decision.yaml"
    other.write_text(yaml.safe_dump(document))
    other_settings = tmp_path / "gateway.yaml"
    other_settings.write_text(
        yaml.safe_dump(
            gateway_config.model_copy(update={"decision_config": other}).model_dump(
                mode="json", exclude_none=True
            )
        )
    )

    replayed = _replay(gateway_config, other_settings, reply.request_id)

    assert replayed.exit_code == 1, replayed.output
    changed = load_decision_config(other).digest
    assert (
        f"  decision_config_sha256:\n    recorded: {used.digest!r}\n    replayed: {changed!r}"
    ) in replayed.output


def test_an_altered_stored_probability_is_a_mismatch_naming_the_field(
    bank_app: Any,
    people: Applicants,
    gateway_config: GatewaySettings,
    config_file: Path,
) -> None:
    reply = bank_app.ScoreApplication(
        application("REPLAY-tampered-output", people.aligned[1]), timeout=TIMEOUT
    )
    recorded = reply.risk.probability_of_default
    _alter(
        gateway_config,
        reply.request_id,
        lambda body: body["result"].update(probability_of_default=recorded / 2),
    )

    replayed = _replay(gateway_config, config_file, reply.request_id)

    assert replayed.exit_code == 1, replayed.output
    assert "MISMATCH in 1 field(s):" in replayed.output
    assert (
        f"  probability_of_default:\n    recorded: {recorded / 2!r}\n    replayed: {recorded!r}"
    ) in replayed.output


def test_an_altered_stored_input_is_a_mismatch_naming_the_outputs_it_changes(
    bank_app: Any,
    people: Applicants,
    gateway_config: GatewaySettings,
    config_file: Path,
) -> None:
    reply = bank_app.ScoreApplication(
        application("REPLAY-tampered-input", people.aligned[2], monthly_income=4000.0),
        timeout=TIMEOUT,
    )
    _alter(
        gateway_config,
        reply.request_id,
        lambda body: body["bank_features"].update(monthly_income=400_000.0),
    )

    replayed = _replay(gateway_config, config_file, reply.request_id)

    assert replayed.exit_code == 1, replayed.output
    assert "  probability_of_default:\n" in replayed.output
    assert f"    recorded: {reply.risk.probability_of_default!r}\n" in replayed.output


def test_an_unknown_request_id_ends_with_one_line_and_exit_code_2(
    gateway_config: GatewaySettings, config_file: Path, gateway: Gateway
) -> None:
    replayed = _replay(gateway_config, config_file, "0b6e1d6a-0000-4000-8000-000000000000")
    assert replayed.exit_code == 2
    assert "no decision with request id" in replayed.output
    assert "Traceback" not in replayed.output
