"""Keep Flower offline: no telemetry, no update check, a project-local FLWR_HOME.

Flower reads these variables when it is imported or started, so every entry point calls
`configure_offline_flower` before anything can import `flwr`.
"""

import os
from pathlib import Path

__all__ = ["configure_offline_flower"]


def configure_offline_flower(home: Path | None = None) -> None:
    """Set Flower's environment for this process and its children.

    Telemetry and the update check are forced off even if the caller's environment turned them
    on; an explicitly set ``FLWR_HOME`` is kept, otherwise ``home`` (default ``./.flwr``) is used.
    """
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    os.environ.setdefault("FLWR_HOME", str((home or Path.cwd() / ".flwr").resolve()))
