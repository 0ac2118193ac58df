"""bank_node: the bank's party process.

It holds the bank's features and labels, initiates private set intersection, trains the bank's
bottom model and the head, and coordinates the Flower rounds. It never imports `partner_node`.
"""

__all__: list[str] = []
