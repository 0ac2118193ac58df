"""partner_node: the e-commerce partner's party process.

It holds the partner's features, answers private set intersection, trains the partner's bottom
model and serves embeddings to the bank's gateway. It never imports `bank_node`, and a partner
can install and run it without the bank's code paths.
"""

__all__: list[str] = []
