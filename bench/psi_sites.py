"""Our PSI end to end for `bench.psi`: the bank's and the partner's nodes as two processes.

Each side runs as its own site would: its own federation copy, schema, table, PKI (a CA per
party, each trusting the other's), settings file and data directory, under one temporary
directory. The partner node starts and loads its table first (it is long-lived); then the
bank's alignment runs against it over loopback gRPC with mutual TLS, and the partner node is
stopped. A sampler thread reads ``/proc`` every 50 ms and keeps, per side, the peak resident
memory summed over the side's process tree (main process, fork server, blinding workers;
pages they share count in each) and the CPU time of its main process and of its helpers;
``os.wait4`` adds each main process's own peak.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bank_node.alignment_client import AlignmentClient
from bank_node.config import BankNodeConfig
from bank_node.psi_initiator import run_alignment
from cobrand.federation import Federation, IdentifierKindEntry
from cobrand.party_files import load_own_table
from cobrand.pki import Party, Role, import_peer_ca, init_ca, issue
from cobrand.rpc import create_channel
from cobrand.settings import load_settings
from partner_node.config import PartnerNodeConfig
from partner_node.server import PartnerNode, serve

FEDERATION = Federation(
    federation_id="bench-psi",
    version=1,
    identifier_kinds={"mobile_cn": IdentifierKindEntry(canonical_form="e164-cn-mobile")},
)
_LOOPBACK = ("127.0.0.1", "localhost")
_SAMPLE_SECONDS = 0.05


def run_sites(
    bank_ids: list[str], partner_ids: list[str], workers: int
) -> dict[str, dict[str, Any]]:
    """Align `bank_ids` with `partner_ids` between two node processes; timings, memory, CPU.

    Returns, per side (``bank``, ``partner``), the side's figures: for the bank the run's
    ``seconds`` (from opening the run to both results persisted, as the bank's node reports
    it), ``load_seconds`` (reading its table) and ``process_seconds`` (its process from start to
    exit); for both ``peak_rss_bytes`` (the main process, ``os.wait4``) and
    ``peak_tree_rss_bytes`` (the process tree, sampled).
    """
    monitor = _TreeMonitor()
    with tempfile.TemporaryDirectory(prefix="cobrand-bench-psi-") as tmp:
        root = Path(tmp)
        settings = _write_sites(root, bank_ids, partner_ids, workers)
        partner = _start_site(Party.PARTNER, settings[Party.PARTNER], monitor)
        try:
            assert partner.stdout is not None
            port = json.loads(partner.stdout.readline())["port"]  # once its table is loaded
            bank_settings = yaml.safe_load(settings[Party.BANK].read_text(encoding="utf-8"))
            bank_settings["partner"] = {"address": f"127.0.0.1:{port}"}
            settings[Party.BANK].write_text(yaml.safe_dump(bank_settings), encoding="utf-8")
            started = time.perf_counter()
            bank = _start_site(Party.BANK, settings[Party.BANK], monitor)
            assert bank.stdout is not None
            bank_figures: dict[str, Any] = json.loads(bank.stdout.read() or "{}")
            bank_figures["peak_rss_bytes"] = _reap(bank, "bank")
            bank_figures["process_seconds"] = time.perf_counter() - started
        finally:
            partner.send_signal(signal.SIGTERM)
        partner_figures: dict[str, Any] = {"peak_rss_bytes": _reap(partner, "partner")}
        monitor.stop()
    bank_figures.update(monitor.figures("bank"))
    partner_figures.update(monitor.figures("partner"))
    return {"bank": bank_figures, "partner": partner_figures}


def _start_site(party: Party, settings: Path, monitor: _TreeMonitor) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bench.psi_sites", party.value, str(settings)]
    site = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    monitor.watch(party.value, site.pid)
    return site


def _reap(site: subprocess.Popen[str], label: str) -> int:
    """Wait for `site`; its main process's peak RSS in bytes."""
    _, status, usage = os.wait4(site.pid, 0)
    site.returncode = os.waitstatus_to_exitcode(status)
    if site.returncode != 0:
        raise SystemExit(f"bench.psi: the {label} node failed with exit code {site.returncode}")
    return usage.ru_maxrss * 1024  # Linux reports KiB


def _write_sites(
    root: Path, bank_ids: list[str], partner_ids: list[str], workers: int
) -> dict[Party, Path]:
    """Write both sites' files under `root`; return each side's settings file.

    The bank's settings do not name the partner's address yet: the partner listens on port 0.
    """
    federation = root / "federation.yaml"
    federation.write_text(yaml.safe_dump(FEDERATION.model_dump(mode="json")), encoding="utf-8")
    cas = {party: root / party.value / "pki" for party in Party}
    for party, ca in cas.items():
        init_ca(ca, party)
    import_peer_ca(cas[Party.BANK], cas[Party.PARTNER] / "ca.crt")
    import_peer_ca(cas[Party.PARTNER], cas[Party.BANK] / "ca.crt")
    paths = {}
    for party, ids in ((Party.BANK, bank_ids), (Party.PARTNER, partner_ids)):
        site = root / party.value
        issued = issue(cas[party], Role(party.value), party.value, _LOOPBACK, days=1)
        settings: dict[str, object] = {
            "federation": str(federation),
            "schema": str(_write_schema(site, party)),
            "table": str(_write_table(site, ids)),
            "data_dir": str(site / "data"),
            "tls": {
                "ca_bundle": str(cas[party] / "trust.pem"),
                "cert": str(issued.cert),
                "key": str(issued.key),
            },
            "psi": {"workers": workers},
        }
        if party is Party.PARTNER:
            settings["listen"] = "127.0.0.1:0"
        paths[party] = site / "settings.yaml"
        paths[party].write_text(yaml.safe_dump(settings), encoding="utf-8")
    return paths


def _write_schema(site: Path, party: Party) -> Path:
    path = site / "schema.yaml"
    schema = {
        "party": party.value,
        "identifier": {"column": "phone", "kind": "mobile_cn"},
        "features": [{"name": "spend", "type": "numeric"}],
    }
    path.write_text(yaml.safe_dump(schema), encoding="utf-8")
    return path


def _write_table(site: Path, ids: list[str]) -> Path:
    path = site / "table.csv"
    with path.open("w", encoding="utf-8") as table:
        table.write("phone,spend\n")
        table.writelines(f"{identifier},{index % 97}\n" for index, identifier in enumerate(ids))
    return path


@dataclass
class _Tree:
    """What `_TreeMonitor` saw of one side's process tree."""

    root: int
    peak_rss_bytes: int = 0
    # Last CPU seconds seen per process: processes come and go, so their last figures add up.
    cpu_seconds: dict[int, float] = field(default_factory=dict)


class _TreeMonitor:
    """Peak resident memory and CPU time of process trees, sampled from ``/proc`` in a thread."""

    def __init__(self) -> None:
        self._trees: dict[str, _Tree] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="tree-monitor", daemon=True)

    def watch(self, label: str, pid: int) -> None:
        """Start following the tree under `pid` (sampling starts with the first one)."""
        self._trees[label] = _Tree(pid)
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def figures(self, label: str) -> dict[str, float]:
        """Peak tree RSS (bytes), CPU seconds of the main process and of its helpers."""
        tree = self._trees[label]
        main = tree.cpu_seconds.get(tree.root, 0.0)
        return {
            "peak_tree_rss_bytes": tree.peak_rss_bytes,
            "main_cpu_seconds": main,
            "helper_cpu_seconds": sum(tree.cpu_seconds.values()) - main,
        }

    def _sample(self) -> None:
        while not self._stop.wait(_SAMPLE_SECONDS):
            table = _process_table()
            parents = {pid: entry[0] for pid, entry in table.items()}
            for tree in list(self._trees.values()):
                members = _descendants(tree.root, parents) & table.keys()
                rss = sum(table[pid][1] for pid in members)
                tree.peak_rss_bytes = max(tree.peak_rss_bytes, rss)
                tree.cpu_seconds.update((pid, table[pid][2]) for pid in members)


def _process_table() -> dict[int, tuple[int, int, float]]:
    """Each live process's parent pid, resident bytes and CPU seconds so far."""
    table = {}
    page = os.sysconf("SC_PAGE_SIZE")
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                # Fields after "(comm)", from state: ppid is 1, utime 11, stime 12, rss 21.
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue  # exited while we looked
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        table[int(entry.name)] = (int(fields[1]), int(fields[21]) * page, cpu)
    return table


def _descendants(root: int, parents: dict[int, int]) -> set[int]:
    found = {root}
    grew = True
    while grew:
        before = len(found)
        found.update(pid for pid, parent in parents.items() if parent in found)
        grew = len(found) != before
    return found


def _partner_site(settings: Path) -> None:
    """Serve as the partner's node until SIGTERM; print the port once the table is loaded."""

    def started(node: PartnerNode) -> None:
        print(json.dumps({"port": node.port}), flush=True)

    serve(load_settings(PartnerNodeConfig, settings), on_started=started)


def _bank_site(settings: Path) -> dict[str, Any]:
    """Load the bank's table and run one alignment against the partner, as its node does."""
    config = load_settings(BankNodeConfig, settings)
    started = time.perf_counter()
    federation, table = load_own_table(
        Party.BANK, config.federation, config.schema_file, config.table
    )
    load_seconds = time.perf_counter() - started
    with create_channel(
        config.partner.address, config.tls, server_name=config.partner.server_name
    ) as channel:
        client = AlignmentClient(
            channel, config.partner.call_timeout_s, config.partner.stream_timeout_s
        )
        outcome = run_alignment(federation, table.ids, client, config.data_dir, config.psi)
    return {
        "seconds": outcome.seconds,
        "load_seconds": load_seconds,
        "intersection": outcome.summary.intersection_size,
    }


def main() -> None:
    """Run one site: ``python -m bench.psi_sites {bank,partner} SETTINGS``."""
    parser = argparse.ArgumentParser(prog="python -m bench.psi_sites")
    parser.add_argument("site", choices=[party.value for party in Party])
    parser.add_argument("settings", type=Path)
    args = parser.parse_args()
    if args.site == Party.PARTNER.value:
        _partner_site(args.settings)
    else:
        print(json.dumps(_bank_site(args.settings)))


if __name__ == "__main__":
    main()
