"""What the partner embedding service's contract (``proto/cobrand/v1/embedding.proto``) fixes
beyond its messages, for both its server at the partner and its client at the gateway."""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_LOOKUPS"]

MAX_LOOKUPS: Final = 256
"""Most lookups one GetEmbeddings call may carry: the partner refuses more, the gateway never
sends more."""
