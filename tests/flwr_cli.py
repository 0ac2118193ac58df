"""The ``flwr`` CLI as an operator at one site runs it: its own ``FLWR_HOME`` holding one
connection, to the address and CA that site knows, each command's JSON answer returned as is."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobrand.flower_local import CONNECTION
from cobrand.flower_sites import flower_environment, flower_program, toml_string

__all__ = ["FlwrCli"]

_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FlwrCli:
    """``flwr`` with the connection `CONNECTION` to `address`, trusting `ca_cert`."""

    home: Path
    address: str
    ca_cert: Path

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f"[superlink]\ndefault = {toml_string(CONNECTION)}\n\n[superlink.{CONNECTION}]\n"
            f"address = {toml_string(self.address)}\n"
            f"root-certificates = {toml_string(str(self.ca_cert))}\n",
            encoding="utf-8",
        )

    def __call__(self, *args: str) -> dict[str, Any]:
        """``flwr ARGS... CONNECTION --format json``: its answer, successful or not."""
        done = subprocess.run(
            [flower_program("flwr"), *args, CONNECTION, "--format", "json"],
            env=flower_environment(self.home),
            cwd=self.home,
            capture_output=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer
