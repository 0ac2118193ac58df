"""Our PSI end to end for `bench.psi`: the bank's and the partner's nodes as two processes.

Each side runs as its own site would: its own federation copy, schema, table, PKI (a CA per
party, each trusting the other's), settings file and data directory, under one temporary
directory. The partner's node (``python -m partner_node serve``) starts and loads its table
first (it is long-lived); then the bank's alignment runs against it over loopback gRPC with
mutual TLS, as ``cobrand bank align`` runs it, and the partner's node is stopped.

A sampler thread reads ``/proc`` every 50 ms and keeps, per side, the peak resident memory
summed over the side's process tree (main process and blinding workers) and the CPU time of
its main process and of its workers; ``os.wait4`` adds each main process's own peak.
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

from bank_node.alignment_client import align_with_partner
from bank_node.config import BankNodeConfig
from cobrand.federation import Federation, IdentifierKindEntry
from cobrand.pki import Party, Role, import_peer_ca, init_ca, issue
from cobrand.settings import load_settings

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

    The partner is its real node command, ``python -m partner_node serve``; the bank runs
    ``bank_node.alignment_client.align_with_partner``, what ``cobrand bank align`` runs, in a
    process of its own (this module's ``main``) that reports the run's own time.

    Returns, per side (``bank``, ``partner``), the side's figures: for the bank the run's
    ``seconds`` (from opening the run to both results persisted, as the bank's node measures
    it) and ``process_seconds`` (its process from start to exit, with start-up and reading its
    table); for both ``peak_rss_bytes`` (the main process, ``os.wait4``), and
    ``peak_tree_rss_bytes``, ``main_cpu_seconds`` and ``helper_cpu_seconds`` (sampled).
    """
    monitor = _TreeMonitor()
    with tempfile.TemporaryDirectory(prefix="cobrand-bench-psi-") as tmp:
        root = Path(tmp)
        settings = _write_sites(root, bank_ids, partner_ids, workers)
        port_file = root / "partner.port"
        partner_log = root / "partner.log"
        command = [sys.executable, "-m", "partner_node", "serve"]
        command += ["--config", str(settings[Party.PARTNER]), "--port-file", str(port_file)]
        with partner_log.open("wb") as log:
            partner = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        monitor.watch("partner", partner.pid)
        try:
            port = _wait_for_port(partner, port_file, partner_log)  # once its table is loaded
            bank_settings = yaml.safe_load(settings[Party.BANK].read_text(encoding="utf-8"))
            bank_settings["partner"] = {"address": f"127.0.0.1:{port}"}
            settings[Party.BANK].write_text(yaml.safe_dump(bank_settings), encoding="utf-8")
            started = time.perf_counter()
            command = [sys.executable, "-m", "bench.psi_sites", str(settings[Party.BANK])]
            bank = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            monitor.watch("bank", bank.pid)
            assert bank.stdout is not None
            output = bank.stdout.read()
            bank_figures: dict[str, Any] = {"peak_rss_bytes": _reap(bank, "bank")}
            bank_figures["process_seconds"] = time.perf_counter() - started
            bank_figures.update(json.loads(output))
        finally:
            partner.send_signal(signal.SIGTERM)
        partner_figures: dict[str, Any] = {"peak_rss_bytes": _reap(partner, "partner")}
        monitor.stop()
    bank_figures.update(monitor.figures("bank"))
    partner_figures.update(monitor.figures("partner"))
    return {"bank": bank_figures, "partner": partner_figures}


def _wait_for_port(partner: subprocess.Popen[bytes], port_file: Path, log: Path) -> int:
    while not port_file.exists():
        if partner.poll() is not None:
            raise SystemExit(f"bench.psi: the partner node failed:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return int(port_file.read_text())


def _reap(site: subprocess.Popen[Any], label: str) -> int:
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


def main() -> None:
    """The bank's side: ``python -m bench.psi_sites SETTINGS``; print the run's figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.psi_sites")
    parser.add_argument("settings", type=Path)
    outcome = align_with_partner(load_settings(BankNodeConfig, parser.parse_args().settings))
    print(
        json.dumps({"seconds": outcome.seconds, "intersection": outcome.summary.intersection_size})
    )


if __name__ == "__main__":
    main()
