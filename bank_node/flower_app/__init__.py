"""The bank's Flower app: the ServerApp that runs a training run's rounds.

This directory is the Flower app the risk team runs (``flwr run bank_node/flower_app ...``): its
``pyproject.toml`` names the components, declares the run config, and limits the bundle Flower
ships to the SuperNodes to that file and the README. Both components are loaded from each
site's own installation (``bank_node.flower_app.server_app`` at the bank,
``partner_node.flower_client.client_app`` at the partner), so the bundle the partner receives
holds no code at all. The partner does not rely on that: its SuperNode runs in process isolation
and its own runner (``partner_node.flower_client.runner``) executes every message with its
installed ClientApp, refusing a bundle that names any other.
"""

__all__: list[str] = []
