"""The per-site commands as separate processes: ``python -m partner_node serve`` answering
``cobrand bank align``, a partner killed mid-run, and a graceful stop.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from typer.testing import CliRunner

from bank_node.alignment_client import align_with_partner
from bank_node.config import BankNodeConfig, PartnerEndpoint
from cobrand.alignment_protocol import PsiSettings
from cobrand.alignment_store import AlignmentStore
from cobrand.cli import app
from partner_node.config import PartnerNodeConfig
from tests.alignment_data import canonical_phones, messy, write_federation, write_party
from tests.conftest import ThrowAwayPki

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = PsiSettings(workers=0, chunk_points=64)


@dataclass(frozen=True)
class Sites:
    bank: BankNodeConfig
    partner_settings: Path
    partner_data: Path
    work: Path


def _write(path: Path, config: BankNodeConfig | PartnerNodeConfig) -> Path:
    document = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture
def sites(tmp_path: Path, throwaway_pki: ThrowAwayPki) -> Sites:
    rng = random.Random(21)
    people = canonical_phones(rng, 1500)
    federation = write_federation(tmp_path / "files")
    bank_files = write_party(tmp_path / "files", "bank", [messy(p, rng) for p in people[:1000]])
    partner_files = write_party(
        tmp_path / "files", "partner", [messy(p, rng) for p in people[600:]]
    )
    partner = PartnerNodeConfig(
        federation=federation,
        schema=partner_files.schema,
        table=partner_files.table,
        listen="127.0.0.1:0",
        data_dir=tmp_path / "partner-data",
        tls=throwaway_pki.tls("partner"),
        psi=SETTINGS,
    )
    bank = BankNodeConfig(
        federation=federation,
        schema=bank_files.schema,
        table=bank_files.table,
        data_dir=tmp_path / "bank-data",
        partner=PartnerEndpoint(address="set when the partner serves"),
        tls=throwaway_pki.tls("bank"),
        psi=SETTINGS,
    )
    return Sites(bank, _write(tmp_path / "partner.yaml", partner), partner.data_dir, tmp_path)


@dataclass
class PartnerProcess:
    process: subprocess.Popen[str]
    port: int


@pytest.fixture
def partner(sites: Sites) -> Iterator[PartnerProcess]:
    started = _start_partner(sites)
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait()


def _start_partner(sites: Sites) -> PartnerProcess:
    port_file = sites.work / "partner.port"
    port_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "partner_node",
        "serve",
        "--config",
        str(sites.partner_settings),
    ]
    process = subprocess.Popen(
        [*command, "--port-file", str(port_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the partner node did not serve within 30 s"
        time.sleep(0.05)
    return PartnerProcess(process, int(port_file.read_text()))


def _bank_config(sites: Sites, partner: PartnerProcess) -> BankNodeConfig:
    endpoint = PartnerEndpoint(address=f"127.0.0.1:{partner.port}")
    return sites.bank.model_copy(update={"partner": endpoint})


def _run_ids(sites: Sites) -> tuple[str, str]:
    with AlignmentStore(sites.bank.data_dir) as bank, AlignmentStore(sites.partner_data) as theirs:
        assert bank.summary.intersection_digest == theirs.summary.intersection_digest
        return bank.summary.run_id, theirs.summary.run_id


def test_bank_align_against_a_partner_node_process_then_a_graceful_stop(
    sites: Sites, partner: PartnerProcess
) -> None:
    bank_settings = _write(sites.work / "bank.yaml", _bank_config(sites, partner))

    result = CliRunner().invoke(app, ["bank", "align", "--config", str(bank_settings)])

    assert result.exit_code == 0, result.output
    assert "  bank rows             1,000" in result.output
    assert "  partner rows            900" in result.output
    assert "  intersection            400  (40.0% of the bank's rows)" in result.output
    bank_run, partner_run = _run_ids(sites)
    assert bank_run == partner_run
    assert f"alignment run {bank_run} committed in" in result.output
    partner.process.send_signal(signal.SIGTERM)
    output, _ = partner.process.communicate(timeout=30)
    assert partner.process.returncode == 0
    assert "partner node serving 900 identifiers on port" in output
    assert f"run {bank_run} committed: bank 1000, partner 900, intersection 400" in output
    assert output.rstrip().endswith("partner node stopped")


class _KillPartnerMidMatch:
    """Progress that kills the partner node once the bank has matched its first chunk."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._phase = ""

    def start(self, phase: str, total: int) -> None:
        self._phase = phase

    def advance(self, count: int) -> None:
        if self._phase == "partner points matched":
            os.kill(self._pid, signal.SIGKILL)


def test_a_partner_killed_mid_run_leaves_both_previous_results_and_a_rerun_works(
    sites: Sites, partner: PartnerProcess
) -> None:
    align_with_partner(_bank_config(sites, partner))
    first = _run_ids(sites)

    with pytest.raises(grpc.RpcError) as killed:
        align_with_partner(_bank_config(sites, partner), _KillPartnerMidMatch(partner.process.pid))

    assert killed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _run_ids(sites) == first
    # Nothing half-written beside the previous result (the node's OPRF key is made at start).
    left = {p.name for p in sites.partner_data.iterdir()} - {"oprf.key", "denials.jsonl"}
    assert left == {"alignment.sqlite"}
    restarted = _start_partner(sites)
    try:
        align_with_partner(_bank_config(sites, restarted))
    finally:
        restarted.process.kill()
        restarted.process.wait()
    bank_run, partner_run = _run_ids(sites)
    assert bank_run == partner_run != first[0]


def test_a_partner_node_with_a_broken_table_exits_with_one_line_naming_it(sites: Sites) -> None:
    settings = yaml.safe_load(sites.partner_settings.read_text())
    broken = sites.work / "broken.csv"
    broken.write_text("phone,spend\n13800000000,1\n13800000000,2\n", encoding="utf-8")
    settings["table"] = str(broken)
    sites.partner_settings.write_text(yaml.safe_dump(settings), encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "partner_node", "serve", "--config", str(sites.partner_settings)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {broken}: column 'phone' (identifier.column): data row 2: identifier repeats "
        "the one in data row 1 after canonicalization (1 repeated rows)"
    )
