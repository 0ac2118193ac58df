"""The bank-side joint scoring gateway that the card-application flow calls at submission.

A bank-side service: it never imports `partner_node`; it reaches the partner only over gRPC.
"""

__all__: list[str] = []
