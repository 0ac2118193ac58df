"""The partner's thin Flower ClientApp and the runner that executes it for the partner's SuperNode.

`client_app` hands each control-plane message to partner_node; it imports neither torch nor the
partner's model or data, so each message only relays bytes to the long-lived node and back.
`runner` runs it, from the partner's own installation, for every task of a SuperNode in process
isolation, so the SuperNode never runs code from a bundle the bank's SuperLink sent.
"""

__all__: list[str] = []
