"""Children of a party's command: waited for until they listen, stopped, and ended with their
parent even when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cobrand.child_process import stop_child, wait_listening
from cobrand.errors import FailedPrecondition

_PARENT = """
import subprocess, sys, time
from cobrand.child_process import stop_with_parent
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    preexec_fn=stop_with_parent() if sys.argv[1] == "tied" else None,
)
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; it waits for init to reap it.
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().split()[2] != "Z"


def _orphan_after_parent_killed(mode: str, wait_s: float) -> tuple[int, bool]:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, mode], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + wait_s
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, _alive(child)


def test_a_tied_child_ends_when_its_parent_is_killed() -> None:
    _, alive = _orphan_after_parent_killed("tied", wait_s=10.0)
    assert not alive


def test_an_untied_child_outlives_its_killed_parent() -> None:
    # The control: without the tie the child is orphaned, which is what the tie prevents.
    child, alive = _orphan_after_parent_killed("untied", wait_s=1.0)
    try:
        assert alive
    finally:
        os.kill(child, signal.SIGKILL)


def test_waiting_for_a_child_to_listen_returns_once_it_does() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = (
        "import socket, time; s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", listener])
    try:
        wait_listening(child, ("127.0.0.1", port), what="listener", timeout=20.0)
    finally:
        stop_child(child, grace_s=5.0)
    assert child.returncode == -signal.SIGTERM


def test_a_child_exiting_before_it_listens_ends_the_wait_naming_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(FailedPrecondition, match=r"the SuperLink exited with code 3 .*see x\.log"):
        wait_listening(child, ("127.0.0.1", 9), what="SuperLink", timeout=20.0, see="x.log")
