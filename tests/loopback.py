"""Test helper (no tests): loopback ports for servers a test starts itself or leaves absent."""

from __future__ import annotations

import socket

__all__ = ["unused_port"]


def unused_port() -> int:
    """A loopback port nothing listens on now (the system may hand it out again later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
