"""The partner's thin ClientApp: nothing heavy to import (Flower starts it for every message), its
node config read with each problem named, and a message relayed to the partner node's method."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from cobrand.errors import ConfigError, FailedPrecondition
from cobrand.flower_rounds import (
    PARTNER_REFUSED,
    PUBLISH_MESSAGE,
    REQUEST,
    error_from_reply,
    with_payload,
)
from cobrand.model_manifest import ModelDigests
from cobrand.rounds_protocol import ModelPublication
from cobrand.rounds_serde import publication_to_proto
from cobrand.rpc import create_server
from partner_node.dataplane_service import DataPlaneService
from partner_node.flower_client.client_app import HandOffSettings, app
from partner_node.rounds_service import ROUNDS_ROLES, rounds_service
from partner_node.training_runs import TrainingRuns
from tests.conftest import ThrowAwayPki
from tests.flower_messages import incoming_message
from tests.partner_node.test_rounds_service import _training_set

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_app_imports_neither_torch_nor_the_partners_data_stack() -> None:
    probe = (
        "import sys, partner_node.flower_client.client_app; "
        "print(sorted(m for m in ('torch', 'pyarrow', 'partner_node.trainer') if m in sys.modules))"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )

    assert loaded.stdout.strip() == "[]"


def test_the_node_config_names_the_partner_node_and_the_client_apps_certificate() -> None:
    settings = HandOffSettings.from_node_config(
        {
            "partner-node": "127.0.0.1:7443",
            "ca-bundle": "/pki/trust.pem",
            "cert": "/pki/partner-flower.crt",
            "key": "/pki/partner-flower.key",
            "call-timeout-s": 20.0,
        }
    )

    assert settings.partner_node == "127.0.0.1:7443"
    assert settings.tls.cert == Path("/pki/partner-flower.crt")
    assert settings.call_timeout_s == 20.0
    assert settings.server_name is None


def test_a_node_config_with_a_missing_or_misspelt_key_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError) as refused:
        HandOffSettings.from_node_config(
            {"partner-nod": "127.0.0.1:7443", "ca-bundle": "a", "cert": "b", "key": "c"}
        )

    assert "missing key 'partner-node'" in str(refused.value)
    assert "unknown key 'partner-nod'" in str(refused.value)


def test_a_publication_reaches_the_partner_nodes_publish_method_and_its_refusal_comes_back(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    runs = TrainingRuns(_training_set, DataPlaneService(), runs_dir=tmp_path / "runs")
    server, port = create_server(
        [rounds_service(runs)],
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
        allowed_roles=ROUNDS_ROLES,
    )
    server.start()
    tls = throwaway_pki.tls("partner")
    settings: dict[str, bool | float | int | str] = {
        "partner-node": f"127.0.0.1:{port}",
        "ca-bundle": str(tls.ca_bundle),
        "cert": str(tls.cert),
        "key": str(tls.key),
    }
    digests = ModelDigests.of(
        bank_weights=bytes(32), partner_weights=bytes(32), partner_preprocessor=bytes(32)
    )
    publication = ModelPublication("run-never", 1, digests.version_id, digests, bytes(32))
    message = incoming_message(
        PUBLISH_MESSAGE,
        with_payload(REQUEST, publication_to_proto(publication).SerializeToString()),
        group_id="publish",
    )
    try:
        reply = app(message, Context(1, 7, settings, RecordDict(), {}))
    finally:
        server.stop(None)

    assert reply.has_error()
    assert reply.error.code == PARTNER_REFUSED
    refused = error_from_reply(reply, PUBLISH_MESSAGE)
    assert isinstance(refused, FailedPrecondition)
    assert "run-never/round-1.pt: no checkpoint of round 1" in str(refused)
