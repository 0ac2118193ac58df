"""A gateway killed with SIGKILL mid-write loses no decision the audit log acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.audit_log import AuditSettings, open_audit_log

# Records from 8 threads for ever, printing each request id once `record` has returned.
_WRITER = """
import sys, threading
from gateway.audit_log import AuditSettings, open_audit_log
from tests.gateway.audit_records import make_record

backend, store = sys.argv[1], sys.argv[2]
where = {"path" if backend == "sqlite" else "dsn": store}
log = open_audit_log(AuditSettings(backend=backend, **where))
out = threading.Lock()

def write(worker):
    n = 0
    while True:
        rec = log.record(make_record(f"APP-{worker}-{n}"))
        n += 1
        with out:
            sys.stdout.write(rec.request_id + "\\n")
            sys.stdout.flush()

for worker in range(8):
    threading.Thread(target=write, args=(worker,), daemon=True).start()
threading.Event().wait()
"""
_ACKNOWLEDGED_BEFORE_KILL = 300
_DEADLINE_S = 60.0


def test_every_acknowledged_record_survives_a_kill_of_the_writer(
    audit_settings: AuditSettings,
) -> None:
    repo = Path(__file__).resolve().parents[2]
    dsn = audit_settings.dsn
    store = str(audit_settings.path) if dsn is None else dsn.get_secret_value()
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, audit_settings.backend, store],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    give_up = time.monotonic() + _DEADLINE_S
    try:
        while len(acknowledged) < _ACKNOWLEDGED_BEFORE_KILL and time.monotonic() < give_up:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
        # Killed while its threads are still recording: some records are mid-batch.
        child.send_signal(signal.SIGKILL)
        # Acknowledgements already in the pipe count too; a torn last line never was one.
        rest = child.stdout.read()
    finally:
        child.kill()
        child.wait(timeout=10)
    acknowledged += [line for line in rest.split("\n")[:-1] if line]
    assert len(acknowledged) >= _ACKNOWLEDGED_BEFORE_KILL, "the writer acknowledged too little"

    with open_audit_log(audit_settings) as reopened:
        missing = [rid for rid in acknowledged if reopened.get(rid) is None]
    assert missing == []
