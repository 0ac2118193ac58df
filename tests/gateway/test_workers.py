"""``cobrand gateway serve --workers 2``: two gateway processes on one port, each recording to the
one audit file and counting its own metrics, both swapped by SIGHUP and stopped by SIGTERM; a
worker's start error is the command's."""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cobrand.v1 import scoring_pb2
from gateway.audit_sqlite import SqliteAuditStore
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_process import ServedGateway, write_config
from tests.gateway.gateway_sites import (
    Applicants,
    applicants_of,
    gateway_settings,
    publish_both_sides,
)
from tests.gateway.scoring_calls import application, scoring_stub
from tests.training_sites import TrainingSites, running_partner, write_training_sites

TIMEOUT = 30.0
USED = scoring_pb2.PARTNER_SLICE_STATUS_USED
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=300, seed=43)


@pytest.fixture(scope="module")
def versions(sites: TrainingSites) -> tuple[str, str]:
    return publish_both_sides(sites, seed=7), publish_both_sides(sites, seed=11)


@pytest.fixture(scope="module")
def people(sites: TrainingSites) -> Applicants:
    return applicants_of(sites)


@pytest.fixture(scope="module")
def partner(throwaway_pki: ThrowAwayPki, sites: TrainingSites) -> Iterator[PartnerNode]:
    with running_partner(throwaway_pki, sites) as started:
        yield started


def _score(pki: ThrowAwayPki, port: int, application_id: str, identifier: str) -> Any:
    """One application on a channel (a connection) of its own: the kernel picks the worker."""
    with scoring_stub(pki, port) as stub:
        return stub.ScoreApplication(application(application_id, identifier), timeout=TIMEOUT)


def _decisions(metrics_port: int) -> float:
    """New decisions one worker counted, of every outcome, from its /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
        text = reply.read().decode()
    counts = re.findall(r"^cobrand_gateway_decisions_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return sum(float(count) for count in counts)


def test_two_workers_serve_one_port_record_to_one_file_swap_on_sighup_and_stop_on_sigterm(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    versions: tuple[str, str],
    partner: PartnerNode,
    people: Applicants,
) -> None:
    first, second = versions
    settings = gateway_settings(
        tmp_path, sites, throwaway_pki, first, partner.port, deadline_ms=2000
    ).model_copy(update={"metrics_listen": "127.0.0.1:0"})
    config, port_file = tmp_path / "gateway.yaml", tmp_path / "port"
    write_config(config, settings, first)
    with ServedGateway(config, port_file, workers=2) as served:
        starts = served.logged("[Gateway] serving model version", times=2)
        served.logged("2 workers serving on port")
        port = served.port()
        before = [_score(throwaway_pki, port, f"W-{i}", people.aligned[i]) for i in range(8)]
        write_config(config, settings, second)
        served.process.send_signal(signal.SIGHUP)
        swaps = served.logged(f"serving model version {second} in place of {first}", times=2)
        after = [_score(throwaway_pki, port, f"W-after-{i}", people.aligned[i]) for i in range(8)]
        metrics_ports = {
            int(m) for line in starts for m in re.findall(r"metrics on port (\d+)", line)
        }
        decided = sum(_decisions(metrics_port) for metrics_port in metrics_ports)
        code = served.stop(signal.SIGTERM)

    assert all(f"on port {port} " in line for line in starts)
    assert len(metrics_ports) == 2  # each worker's own /metrics
    assert decided == len(before) + len(after)
    assert len(swaps) == 2
    assert {reply.model_version for reply in before} == {first}
    assert {reply.model_version for reply in after} == {second}
    assert {reply.slices.partner_status for reply in before + after} == {USED}
    assert code == 0, served.seen
    assert settings.audit.path is not None
    store = SqliteAuditStore(settings.audit.path)
    try:
        recorded = [store.get(reply.request_id) for reply in before + after]
    finally:
        store.close()
    assert [r.application_id if r else None for r in recorded] == [
        *(f"W-{i}" for i in range(8)),
        *(f"W-after-{i}" for i in range(8)),
    ]


def test_a_workers_start_error_is_the_commands_one_line_and_exit_code_2(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    versions: tuple[str, str],
    partner: PartnerNode,
) -> None:
    settings = gateway_settings(tmp_path, sites, throwaway_pki, versions[0], partner.port)
    config = tmp_path / "gateway.yaml"
    write_config(config, settings, "0123456789abcdef")
    with ServedGateway(config, tmp_path / "port", workers=2) as served:
        text = served.output()
    assert served.process.returncode == 2
    assert "0123456789abcdef" in text
    assert "Traceback" not in text
    assert not (tmp_path / "port").exists()


def _workers_of(pid: int) -> list[int]:
    """The gateway worker processes started by `pid` (spawned interpreters)."""
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_a_worker_that_dies_stops_the_others_and_the_command_fails_naming_it(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    versions: tuple[str, str],
    partner: PartnerNode,
) -> None:
    settings = gateway_settings(tmp_path, sites, throwaway_pki, versions[0], partner.port)
    config = tmp_path / "gateway.yaml"
    write_config(config, settings, versions[0])
    with ServedGateway(config, tmp_path / "port", workers=2) as served:
        served.logged("2 workers serving on port")
        workers = _workers_of(served.process.pid)
        os.kill(workers[0], signal.SIGKILL)
        served.process.wait(timeout=TIMEOUT)
        failure = served.logged("exited with code")

    assert len(workers) == 2
    assert served.process.returncode == 2
    assert "exited with code -9; the other workers were stopped" in failure[0]
    # Stopped and reaped by the command before it exited.
    assert not Path(f"/proc/{workers[1]}").exists()
