"""Weights digests: the same weights hash alike in any order; any change of value, name, dtype or
shape changes the digest."""

from __future__ import annotations

import torch

from cobrand.weights import weights_digest

WEIGHTS = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b.bias": torch.ones(3)}


def test_equal_weights_hash_alike_whatever_the_order_of_their_names() -> None:
    reordered = {"b.bias": torch.ones(3), "a.weight": WEIGHTS["a.weight"].clone()}

    assert weights_digest(reordered) == weights_digest(WEIGHTS)
    assert len(weights_digest(WEIGHTS)) == 32


def test_any_change_of_value_name_dtype_or_shape_changes_the_digest() -> None:
    changed = [
        {**WEIGHTS, "b.bias": torch.tensor([1.0, 1.0, 1.0 + 1e-6])},
        {"a.weights": WEIGHTS["a.weight"], "b.bias": WEIGHTS["b.bias"]},
        {**WEIGHTS, "b.bias": torch.ones(3, dtype=torch.float64)},
        {**WEIGHTS, "a.weight": WEIGHTS["a.weight"].reshape(3, 2)},
    ]

    digests = {weights_digest(weights) for weights in changed}

    assert len(digests) == len(changed)
    assert weights_digest(WEIGHTS) not in digests
