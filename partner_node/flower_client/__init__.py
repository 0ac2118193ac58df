"""The partner's thin Flower ClientApp: hands each control-plane message to partner_node.

It imports neither torch nor the partner's model or data: Flower starts a new ClientApp process
for every message, so each one only relays bytes to the long-lived node and back.
"""

__all__: list[str] = []
