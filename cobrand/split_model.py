"""The split model's building blocks: each party's bottom network and the bank's multi-task head.

A bottom network turns one party's preprocessed features into an embedding; only embeddings
(and gradients with respect to them) ever cross between parties. Numeric features enter through
piecewise-linear encodings over the party's own training quantiles (Gorishniy et al., "On
Embeddings for Numerical Features in Tabular Deep Learning", 2022), the known way to bring an
MLP close to gradient boosting on tables; categorical features through learned embeddings.

The head sees the bank's embedding, the partner's embedding and a "partner slice missing" flag;
a missing partner embedding is zeroed, so one model scores customers the partner does not know
and keeps scoring when the partner is down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cobrand.preprocess import Preprocessor

__all__ = ["BottomModel", "BottomSpec", "HeadModel", "PiecewiseLinearEncoding", "task_losses"]


@dataclass(frozen=True)
class BottomSpec:
    """The shape of one party's bottom network.

    Attributes
    ----------
    bin_edges : tuple of tuple of float
        Per scaled numeric column, its strictly increasing training quantile edges.
    n_indicators : int
        Missing-indicator columns that follow the scaled numeric columns in the input.
    cardinalities : tuple of int
        Per categorical column, the number of category indices (missing and unseen included).
    embedding_width : int
        Width of the embedding this bottom outputs.
    hidden : int
        Width of the hidden layer.
    numeric_width : int
        Width each numeric column's encoding is projected to.
    category_width : int
        Width of each categorical column's embedding.
    dropout : float
    """

    bin_edges: tuple[tuple[float, ...], ...]
    n_indicators: int
    cardinalities: tuple[int, ...]
    embedding_width: int = 16
    hidden: int = 64
    numeric_width: int = 8
    category_width: int = 4
    dropout: float = 0.1

    @classmethod
    def from_preprocessor(cls, preprocessor: Preprocessor, **sizes: int | float) -> BottomSpec:
        """The spec matching a fitted preprocessor's outputs, with optional size overrides."""
        edges = tuple(column.bin_edges for column in preprocessor.numeric)
        return cls(
            bin_edges=edges,
            n_indicators=len(preprocessor.numeric_outputs) - len(edges),
            cardinalities=preprocessor.cardinalities,
            **sizes,  # type: ignore[arg-type]
        )


class PiecewiseLinearEncoding(nn.Module):
    """Encode each numeric column as its value plus its position across its quantile bins.

    Bin ``t`` spans ``[b[t], b[t+1])``; its component is 0 left of the bin, 1 right of it and
    linear inside. The first bin is open to the left and the last to the right, so values
    beyond the training range keep moving the encoding. Columns with fewer edges are padded with
    bins that always encode 0.

    Shapes: input ``(n, k)``, output ``(n, k, 1 + T)`` with ``T`` the most bins of any column.
    """

    left: torch.Tensor
    width: torch.Tensor
    used: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor

    def __init__(self, bin_edges: Sequence[Sequence[float]]) -> None:
        super().__init__()
        n_bins = max((len(edges) - 1 for edges in bin_edges), default=0)
        left = torch.zeros(len(bin_edges), n_bins)
        width = torch.ones(len(bin_edges), n_bins)
        used = torch.zeros(len(bin_edges), n_bins)
        first = torch.zeros(len(bin_edges), n_bins, dtype=torch.bool)
        last = torch.zeros(len(bin_edges), n_bins, dtype=torch.bool)
        for j, edges in enumerate(bin_edges):
            t = len(edges) - 1
            if t < 1:
                continue
            edge = torch.tensor(edges, dtype=torch.float32)
            left[j, :t] = edge[:-1]
            width[j, :t] = edge[1:] - edge[:-1]
            used[j, :t] = 1.0
            first[j, 0] = True
            last[j, t - 1] = True
        self.register_buffer("left", left)
        self.register_buffer("width", width)
        self.register_buffer("used", used)
        self.register_buffer("first", first)
        self.register_buffer("last", last)
        self.output_bins = 1 + n_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        position = (x.unsqueeze(-1) - self.left) / self.width
        low = torch.where(self.first, -torch.inf, 0.0)
        high = torch.where(self.last, torch.inf, 1.0)
        bins = torch.clamp(position, min=low, max=high) * self.used
        return torch.cat([x.unsqueeze(-1), bins], dim=-1)


class BottomModel(nn.Module):
    """One party's bottom network: preprocessed features to an embedding.

    ``forward(numeric, categorical)`` takes ``numeric`` of shape ``(n, k + n_indicators)``
    (float32) and ``categorical`` of shape ``(n, c)`` (int64), as `Preprocessor.transform`
    gives them, and returns ``(n, embedding_width)``.
    """

    def __init__(self, spec: BottomSpec) -> None:
        super().__init__()
        self.spec = spec
        k = len(spec.bin_edges)
        self.encoding = PiecewiseLinearEncoding(spec.bin_edges)
        # One small linear map per numeric column (an einsum over a stacked weight).
        self.numeric_weight = nn.Parameter(
            torch.randn(k, self.encoding.output_bins, spec.numeric_width)
            / self.encoding.output_bins**0.5
        )
        self.numeric_bias = nn.Parameter(torch.zeros(k, spec.numeric_width))
        self.categories = nn.ModuleList(
            nn.Embedding(cardinality, spec.category_width) for cardinality in spec.cardinalities
        )
        width = (
            k * spec.numeric_width
            + spec.n_indicators
            + len(spec.cardinalities) * spec.category_width
        )
        self.mlp = nn.Sequential(
            nn.Linear(width, spec.hidden),
            nn.ReLU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, spec.embedding_width),
        )

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        k = len(self.spec.bin_edges)
        encoded = self.encoding(numeric[:, :k])
        projected = torch.relu(
            torch.einsum("nkb,kbd->nkd", encoded, self.numeric_weight) + self.numeric_bias
        )
        parts = [projected.flatten(1), numeric[:, k:]]
        parts += [embed(categorical[:, i]) for i, embed in enumerate(self.categories)]
        result: torch.Tensor = self.mlp(torch.cat(parts, dim=1))
        return result


class HeadModel(nn.Module):
    """The bank's head: both embeddings and the partner-missing flag to one output per task.

    Parameters
    ----------
    bank_width, partner_width : int
        Embedding widths of the two bottoms.
    tasks : mapping of str to int
        Output width per task: 1 for a binary task (one logit), K for a K-class task.
    hidden : int
    dropout : float
    """

    def __init__(
        self,
        bank_width: int,
        partner_width: int,
        tasks: Mapping[str, int],
        *,
        hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(bank_width + partner_width + 1, hidden), nn.ReLU(), nn.Dropout(dropout)
        )
        self.outputs = nn.ModuleDict(
            {task: nn.Linear(hidden, width) for task, width in tasks.items()}
        )

    def forward(
        self, bank: torch.Tensor, partner: torch.Tensor, partner_missing: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Logits per task, ``(n,)`` for binary tasks and ``(n, K)`` for K-class ones.

        ``partner_missing`` is a ``(n,)`` bool tensor; those rows' partner embeddings are
        zeroed whatever they hold, so the head never sees a stale or absent partner slice.
        """
        missing = partner_missing.to(bank.dtype).unsqueeze(1)
        hidden = self.trunk(torch.cat([bank, partner * (1.0 - missing), missing], dim=1))
        logits = {task: layer(hidden) for task, layer in self.outputs.items()}
        return {task: out.squeeze(1) if out.shape[1] == 1 else out for task, out in logits.items()}


def task_losses(
    logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Mean loss per task over the rows labelled for it (unlabelled rows do not train it).

    Binary labels are float with NaN for unlabelled rows (binary cross-entropy); K-class
    labels are int64 with -1 for unlabelled rows (cross-entropy). A batch with no labelled
    row for a task contributes a zero loss that still carries the graph.
    """
    losses = {}
    for task, out in logits.items():
        label = labels[task]
        if out.dim() == 1:
            labelled = ~torch.isnan(label)
            loss = nn.functional.binary_cross_entropy_with_logits(
                out[labelled], label[labelled], reduction="sum"
            )
        else:
            labelled = label >= 0
            loss = nn.functional.cross_entropy(out[labelled], label[labelled], reduction="sum")
        losses[task] = loss / labelled.sum().clamp(min=1)
    return losses
