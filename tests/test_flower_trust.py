"""Flower's trust boundary, over the real processes on loopback: the bank's SuperLink (TLS,
SuperNode authentication) on 127.0.0.1 behind its Fleet-only front on 127.0.0.2, the address
standing for the partner-facing interface; the partner's SuperNode in process isolation, its
tasks run by the partner's ClientApp runner; the partner's node in this process.

The partner can reach the Fleet API and nothing else of the SuperLink; its SuperNode runs only
the partner's own ClientApp, never a bundle's code; that ClientApp hands each message to the
node (its other services refuse the ClientApp's role: ``tests/partner_node/
test_client_app_reach.py``).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cobrand import pki
from cobrand.flower_local import LocalFederation
from cobrand.flower_sites import PARTNER_CLIENT_APP_RUNNER, SuperLinkTls
from partner_node.flower_client.client_app import HandOffSettings
from partner_node.flower_client.runner import PINNED_CLIENT_APP
from partner_node.server import start_partner_node
from tests.conftest import ThrowAwayPki
from tests.flower_probe_app import write_probe_app
from tests.flwr_cli import FlwrCli
from tests.training_sites import write_training_sites

pytestmark = pytest.mark.slow

PARTNER_FACING = "127.0.0.2"
RUN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Trust:
    federation: LocalFederation
    work: Path
    ca_cert: Path


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory, throwaway_pki: ThrowAwayPki) -> Iterator[Trust]:
    work = tmp_path_factory.mktemp("trust")
    training = write_training_sites(work, customers=300, seed=5)
    node = start_partner_node(training.partner_node_config(throwaway_pki.tls("partner")))
    bank_ca = throwaway_pki.ca_dir("bank")
    issued = pki.issue(
        bank_ca,
        pki.Role.BANK,
        "superlink",
        ("127.0.0.1", PARTNER_FACING),
        out_dir=work / "superlink-tls",
    )
    tls = SuperLinkTls(ca_cert=bank_ca / pki.CA_CERT, cert=issued.cert, key=issued.key)
    client_app = throwaway_pki.tls("partner")
    hand_off = HandOffSettings.model_validate(
        {"partner-node": f"127.0.0.1:{node.port}", "ca-bundle": client_app.ca_bundle}
        | {"cert": client_app.cert, "key": client_app.key}
    )
    federation = LocalFederation(work / "flower", tls, fleet_host=PARTNER_FACING)
    try:
        federation.start_superlink()
        federation.start_supernode(
            hand_off.node_config(),
            client_app_runner=PARTNER_CLIENT_APP_RUNNER,
        )
        yield Trust(federation, work, tls.ca_cert)
    finally:
        federation.close()
        node.stop(grace=None)


def _post(address: str, path: str, ca_cert: Path | None) -> int:
    """The HTTP status of an empty protobuf POST to `path` at `address`, over TLS verified with
    `ca_cert` (plain HTTP without)."""
    scheme = "http" if ca_cert is None else "https"
    request = urllib.request.Request(  # noqa: S310 -- http(s) only, an address built here
        f"{scheme}://{address}{path}",
        data=b"",
        headers={"content-type": "application/protobuf"},
        method="POST",
    )
    context = None if ca_cert is None else ssl.create_default_context(cafile=str(ca_cert))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:  # noqa: S310
            status: int = reply.status
    except urllib.error.HTTPError as refused:
        status = refused.code
    return status


def _run_probe(trust: Trust, name: str, client_app: str) -> tuple[dict[str, object], Path]:
    """Run a probe bundle naming `client_app`; what its ServerApp got back, and the canary path."""
    app = write_probe_app(trust.work / name, client_app)
    result, canary = trust.work / f"{name}.json", trust.work / f"{name}.canary"
    run_id = trust.federation.run(app, {"result-file": str(result), "canary-file": str(canary)})
    status = trust.federation.wait_finished(run_id, RUN_TIMEOUT_S)
    assert status == "finished:completed", trust.federation.log(run_id)
    return json.loads(result.read_text()), canary


def test_the_partner_facing_address_serves_the_fleet_api_and_refuses_control_and_runtime(
    trust: Trust,
) -> None:
    front = f"{PARTNER_FACING}:{trust.federation.fleet_port}"
    superlink = f"127.0.0.1:{trust.federation.control_port}"
    nodes = trust.federation.flwr("supernode", "ls")["nodes"]

    at_front = {
        path: _post(front, path, trust.ca_cert)
        for path in (
            "/v1/control/list-runs",
            "/v1/control/start-run",
            "/v1/runtime/acquire-task",
            "/v1/fleet/../control/list-runs",
        )
    }
    at_superlink = _post(superlink, "/v1/control/list-runs", trust.ca_cert)

    # The partner's SuperNode came online through the front (Fleet API, its key registered).
    assert [node["status"] for node in nodes] == ["online"]
    # The front answers every other API with 404 without reaching the SuperLink, where the
    # same unauthenticated call succeeds: Flower 1.41 has no Control API authentication.
    assert at_front == dict.fromkeys(at_front, 404)
    assert at_superlink == 200
    # The SuperLink itself listens on loopback only, not on the partner-facing address.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((PARTNER_FACING, trust.federation.control_port), timeout=5)


def test_the_partners_supernode_hands_its_tasks_to_no_process_without_the_runners_secret(
    trust: Trust,
) -> None:
    runtime = f"127.0.0.1:{trust.federation.supernode_runtime_port}"

    taken = _post(runtime, "/v1/runtime/acquire-task", None)

    assert taken == 401


def test_the_flwr_cli_pointed_at_the_partner_facing_address_cannot_list_or_start_runs(
    trust: Trust,
) -> None:
    # The partner's view: a connection to the address it dials, trusting the bank's CA.
    flwr = FlwrCli(
        trust.work / "partner-flwr-home",
        f"{PARTNER_FACING}:{trust.federation.fleet_port}",
        trust.ca_cert,
    )
    app = write_probe_app(trust.work / "partner-run", PINNED_CLIENT_APP)

    runs_before = trust.federation.flwr("ls")["runs"]
    listed, started = flwr("ls"), flwr("run", str(app))
    runs_after = trust.federation.flwr("ls")["runs"]

    for refused, route in ((listed, "/v1/control/list-runs"), (started, "/v1/control/start-run")):
        assert refused["success"] is False, refused
        assert "404" in str(refused["error-message"]), refused
        assert route in str(refused["error-message"]), refused
    assert runs_after == runs_before


def test_a_bundle_naming_the_partners_client_app_is_answered_by_its_installed_hand_off(
    trust: Trust,
) -> None:
    started = time.perf_counter()
    result, canary = _run_probe(trust, "pinned", PINNED_CLIENT_APP)

    # GetStatus went through the hand-off to the partner's node and its answer came back.
    assert "error_code" not in result, result
    assert int(str(result["response_bytes"])) > 0
    assert not canary.exists()
    print(f"\nprobe run through the pinned ClientApp: {time.perf_counter() - started:.1f} s")


def test_a_bundle_naming_other_client_app_code_is_refused_and_none_of_it_runs(
    trust: Trust,
) -> None:
    result, canary = _run_probe(trust, "hostile", "probe_app:hostile")

    assert result["error_code"] == 7  # Flower's ErrorCode.INVALID_FAB
    assert PINNED_CLIENT_APP in str(result["error_reason"])
    assert "probe_app:hostile" in str(result["error_reason"])
    assert not canary.exists(), "the bundle's own ClientApp ran at the partner"
