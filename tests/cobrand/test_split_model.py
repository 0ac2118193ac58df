"""The split model's building blocks: encodings, bottoms, the head and the masked losses."""

import math

import pytest
import torch

from cobrand.split_model import (
    BottomModel,
    BottomSpec,
    HeadModel,
    PiecewiseLinearEncoding,
    task_losses,
)


def test_piecewise_linear_encoding_places_values_across_bins() -> None:
    encoding = PiecewiseLinearEncoding([(0.0, 1.0, 3.0)])

    out = encoding(torch.tensor([[-1.0], [0.5], [2.0], [5.0]]))

    expected = torch.tensor(
        [
            [-1.0, -1.0, 0.0],  # left of the first bin: the first bin is open to the left
            [0.5, 0.5, 0.0],
            [2.0, 1.0, 0.5],
            [5.0, 1.0, 2.0],  # right of the last bin: the last bin is open to the right
        ]
    )
    assert torch.allclose(out[:, 0, :], expected)


def test_columns_with_fewer_edges_are_padded_with_silent_bins() -> None:
    encoding = PiecewiseLinearEncoding([(0.0, 1.0, 2.0, 3.0), (0.0,)])

    out = encoding(torch.tensor([[9.0, 9.0]]))

    assert out.shape == (1, 2, 4)
    assert out[0, 1].tolist() == [9.0, 0.0, 0.0, 0.0]


def _spec() -> BottomSpec:
    return BottomSpec(
        bin_edges=((0.0, 1.0, 2.0), (-1.0, 1.0)),
        n_indicators=1,
        cardinalities=(4, 3),
        embedding_width=5,
    )


def test_bottom_maps_preprocessed_rows_to_embeddings() -> None:
    bottom = BottomModel(_spec())

    out = bottom(torch.randn(7, 3), torch.randint(0, 3, (7, 2)))

    assert out.shape == (7, 5)
    assert torch.isfinite(out).all()


def test_head_ignores_whatever_a_missing_partner_slice_holds() -> None:
    torch.manual_seed(0)
    head = HeadModel(4, 3, {"risk": 1, "rights_package": 5}).eval()
    bank = torch.randn(6, 4)
    missing = torch.tensor([True, True, True, False, False, False])

    first = head(bank, torch.randn(6, 3), missing)
    second = head(bank, torch.randn(6, 3), missing)

    assert first["risk"].shape == (6,)
    assert first["rights_package"].shape == (6, 5)
    assert torch.equal(first["risk"][:3], second["risk"][:3])
    assert not torch.equal(first["risk"][3:], second["risk"][3:])


def test_losses_skip_unlabelled_rows_and_train_the_partner_embedding() -> None:
    partner = torch.randn(4, 3, requires_grad=True)
    head = HeadModel(2, 3, {"risk": 1, "rights_package": 3})
    logits = head(torch.randn(4, 2), partner, torch.zeros(4, dtype=torch.bool))
    labels = {
        "risk": torch.tensor([1.0, math.nan, 0.0, math.nan]),
        "rights_package": torch.tensor([-1, -1, -1, -1]),
    }

    losses = task_losses(logits, labels)
    sum(losses.values()).backward()  # type: ignore[union-attr]

    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits["risk"][[0, 2]], torch.tensor([1.0, 0.0])
    )
    assert losses["risk"].item() == pytest.approx(expected.item())
    assert losses["rights_package"].item() == 0.0
    assert partner.grad is not None
    assert partner.grad[[0, 2]].abs().sum() > 0
    assert partner.grad[[1, 3]].abs().sum() == 0
