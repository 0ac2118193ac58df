"""The floor's ClientApp executed the way the partner's runner executes the partner's own.

``cobrand train`` runs the partner's SuperNode in process isolation with the partner's runner
(`partner_node.flower_client.runner`), which answers every message in one long-lived process.
Flower's floor must pay what a training run pays per message, so its SuperNode is run the same
way, with this runner pinned to the floor's ClientApp instead of the partner's:

    python -m bench.flower_floor.runner --supernode 127.0.0.1:PORT --auth-secret-file PATH
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

from bench.flower_floor.apps import client
from partner_node.flower_client.runner import PinnedApp, serve_tasks, stop_on_signals

FLOOR_APP: Final = PinnedApp(client, "bench.flower_floor.apps:client")
"""The floor bundle's ClientApp (its ``pyproject.toml`` names this reference)."""


def main() -> None:
    """Answer the SuperNode's floor messages until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.flower_floor.runner")
    parser.add_argument("--supernode", required=True, help="the SuperNode's runtime API")
    parser.add_argument("--auth-secret-file", type=Path, required=True)
    args = parser.parse_args()
    serve_tasks(args.supernode, args.auth_secret_file.read_bytes(), stop_on_signals(), FLOOR_APP)


if __name__ == "__main__":
    main()
