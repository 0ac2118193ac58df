"""The two sites' Flower commands as each operator runs them, as real processes on loopback:
``cobrand bank superlink`` (the SuperLink on 127.0.0.1 behind its Fleet-only front on
127.0.0.2) and ``cobrand partner supernode`` (the SuperNode in process isolation with the
partner's ClientApp runner); a run the bank's risk team submits reaches the partner's node (the
run's shared one, `tests.gateway.shared_world`) through the hand-off, and stopping each command
stops the Flower process it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cobrand import pki
from cobrand.flower_local import _write_ssh_key as write_ssh_key
from cobrand.flower_sites import flower_environment, flower_program
from partner_node.flower_client.runner import PINNED_CLIENT_APP
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.flower_probe_app import write_probe_app
from tests.flwr_cli import FlwrCli
from tests.loopback import unused_port

pytestmark = pytest.mark.slow

PARTNER_FACING = "127.0.0.2"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _cobrand(args: list[str], home: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [flower_program("cobrand"), *args],
            env=flower_environment(home),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM the command (its process only) and wait for it; its exit code."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def test_a_run_through_both_sites_commands_reaches_the_partner_node_and_both_stop_cleanly(
    tmp_path: Path, throwaway_pki: ThrowAwayPki, partner_node: PartnerNode
) -> None:
    bank_ca = throwaway_pki.ca_dir("bank")
    ca_cert = bank_ca / pki.CA_CERT
    superlink = pki.issue(
        bank_ca, pki.Role.BANK, "superlink", ("127.0.0.1", PARTNER_FACING), out_dir=tmp_path
    )
    trainer = tmp_path / "trainer.yaml"
    trainer.write_text(yaml.safe_dump({"bank": "bank.yaml", "runs_dir": "runs"}), "utf-8")
    partner = tmp_path / "partner.yaml"
    client_app = throwaway_pki.tls("partner")
    partner.write_text(
        yaml.safe_dump(
            {"federation": "f.yaml", "schema": "s.yaml", "table": "t.csv", "listen": "0.0.0.0:1"}
            | {"data_dir": "data", "tls": {k: str(v) for k, v in vars(client_app).items()}}
        ),
        "utf-8",
    )
    fleet, control, runtime = unused_port(), unused_port(), unused_port()
    risk_team = FlwrCli(tmp_path / "bank-flwr", f"127.0.0.1:{control}", ca_cert)
    key = tmp_path / "supernode-key"
    write_ssh_key(key)

    bank = _cobrand(
        [
            *("bank", "superlink", "--trainer-config", str(trainer), "--ca-cert", str(ca_cert)),
            *("--cert", str(superlink.cert), "--key", str(superlink.key)),
            *("--host", PARTNER_FACING, "--port", str(fleet), "--control-port", str(control)),
        ],
        tmp_path / "bank-flwr",
        tmp_path / "bank.log",
    )
    supernode = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(PARTNER_FACING, fleet):
            assert bank.poll() is None, (tmp_path / "bank.log").read_text()
            assert time.monotonic() < deadline, "the bank's SuperLink did not serve in time"
            time.sleep(0.2)
        node_id = int(risk_team("supernode", "register", str(key.with_suffix(".pub")))["node-id"])
        supernode = _cobrand(
            [
                *("partner", "supernode", "--config", str(partner)),
                *("--superlink", f"{PARTNER_FACING}:{fleet}", "--root-certificates", str(ca_cert)),
                *("--auth-key", str(key), "--node", f"127.0.0.1:{partner_node.port}"),
                *("--port", str(runtime)),
            ],
            tmp_path / "partner-flwr",
            tmp_path / "partner.log",
        )
        while not any(
            int(n["node-id"]) == node_id and n["status"] == "online"
            for n in risk_team("supernode", "ls")["nodes"]
        ):
            assert supernode.poll() is None, (tmp_path / "partner.log").read_text()
            assert time.monotonic() < deadline, "the partner's SuperNode did not come online"
            time.sleep(0.5)

        app = write_probe_app(tmp_path / "probe", PINNED_CLIENT_APP)
        result = tmp_path / "probe.json"
        canary = json.dumps(str(tmp_path / "canary"))
        override = f"result-file={json.dumps(str(result))} canary-file={canary}"
        run_id = risk_team("run", str(app), "--run-config", override)["run-id"]
        while not result.exists():
            runs = risk_team("ls", "--run-id", str(run_id))["runs"]
            assert not runs[0]["status"].startswith("finished:failed"), runs
            assert time.monotonic() < deadline + START_TIMEOUT_S, "the probe run did not end"
            time.sleep(0.5)
        answer = json.loads(result.read_text())
    finally:
        partner_code = _stop(supernode) if supernode is not None else None
        bank_code = _stop(bank)

    assert "response_bytes" in answer, answer
    assert partner_code == 0, (tmp_path / "partner.log").read_text()
    assert bank_code == 0, (tmp_path / "bank.log").read_text()
    # The commands stopped the Flower processes they started: nothing listens any more.
    assert not _listening("127.0.0.1", runtime)
    assert not _listening("127.0.0.1", control)
    assert not _listening(PARTNER_FACING, fleet)
