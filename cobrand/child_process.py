"""Child processes that do not outlive the process that started them.

A party's command that runs a program beside its own loop (the bank's SuperLink behind its
Fleet-only front, the partner's SuperNode beside its ClientApp runner, the partner node beside
``cobrand align``) waits for it to listen (`wait_listening`, failing at once if it exits) and
stops it when it stops itself (`stop_child`: SIGTERM, a grace period, then SIGKILL);
`stop_with_parent` covers the case where it cannot, a SIGKILL: Linux then sends the child SIGTERM
(``prctl(PR_SET_PDEATHSIG)``), so no SuperLink keeps listening without its front.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

from cobrand.errors import FailedPrecondition, Unavailable

__all__ = ["stop_child", "stop_with_parent", "wait_listening"]

_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for `subprocess.Popen` giving the child SIGTERM when this process dies.

    Call it in the process that starts the child, from the thread that stays alive as long as
    the process (the main thread): Linux ties the signal to the thread that forked.
    """
    parent = os.getpid()

    def in_child() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between the fork and the prctl: then nobody will signal.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def stop_child(process: subprocess.Popen[Any], grace_s: float) -> None:
    """Ask `process` to stop (SIGTERM), and kill it if it has not within `grace_s` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_listening(
    process: subprocess.Popen[Any],
    address: tuple[str, int],
    *,
    what: str,
    timeout: float,
    see: str = "",
) -> None:
    """Wait until something accepts connections on `address` while `process` runs.

    Parameters
    ----------
    process : subprocess.Popen
        The child that is to listen; its exit ends the wait at once.
    address : tuple of (str, int)
        Host and port.
    what : str
        The child as errors name it (``"SuperLink"``).
    timeout : float
        Seconds to wait.
    see : str, optional
        Where its output is, for the error (a log file's path).

    Raises
    ------
    FailedPrecondition
        The child exited first.
    Unavailable
        Nothing listened within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    hint = f"; see {see}" if see else ""
    while True:
        if (code := process.poll()) is not None:
            raise FailedPrecondition(f"the {what} exited with code {code} before it listened{hint}")
        try:
            socket.create_connection(address, timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise Unavailable(f"the {what} did not listen within {timeout:g} s{hint}") from None
            time.sleep(0.1)
