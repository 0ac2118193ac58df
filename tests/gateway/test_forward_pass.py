"""The numpy forward pass of the bank's bottom and head against the torch modules training ran."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from cobrand.errors import FailedPrecondition
from gateway.forward_pass import BankForward
from tests.gateway.synth_version import PARTNER_WIDTH, SynthVersion, synth_version

# Matrix products may sum in another order than torch's kernels: float32 rounding apart.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthVersion:
    return synth_version(tmp_path_factory)


def _torch_logits(
    synth: SynthVersion,
    numeric: npt.NDArray[np.float32],
    categorical: npt.NDArray[np.int64],
    partner: npt.NDArray[np.float32],
    missing: npt.NDArray[np.bool_],
) -> dict[str, npt.NDArray[np.float32]]:
    with torch.inference_mode():
        bank = synth.version.bottom(torch.from_numpy(numeric), torch.from_numpy(categorical))
        logits = synth.version.head(bank, torch.from_numpy(partner), torch.from_numpy(missing))
    return {task: out.numpy() for task, out in logits.items()}


@pytest.mark.parametrize("rows", [1, 11, 500])
def test_the_numpy_pass_gives_the_torch_modules_logits_for_every_task(
    synth: SynthVersion, rows: int
) -> None:
    encoded = synth.version.preprocessor.transform(synth.table)
    numeric, categorical = encoded.numeric[:rows], encoded.categorical[:rows]
    generator = np.random.default_rng(3)
    partner = generator.standard_normal((rows, PARTNER_WIDTH)).astype(np.float32)
    missing = generator.random(rows) < 0.3
    network = BankForward(synth.version.bottom, synth.version.head)

    got = network.logits(network.bank_embedding(numeric, categorical), partner, missing)

    expected = _torch_logits(synth, numeric, categorical, partner, missing)
    assert got.keys() == expected.keys()
    for task, logits in expected.items():
        assert got[task].dtype == np.float32
        assert got[task].shape == logits.shape
        np.testing.assert_allclose(got[task], logits, rtol=RTOL, atol=ATOL, err_msg=task)


def test_a_missing_partner_slice_is_zeroed_whatever_the_embedding_holds(
    synth: SynthVersion,
) -> None:
    encoded = synth.version.preprocessor.transform(synth.table)
    network = BankForward(synth.version.bottom, synth.version.head)
    bank = network.bank_embedding(encoded.numeric[:8], encoded.categorical[:8])
    missing = np.ones(8, dtype=np.bool_)
    noise = np.random.default_rng(4).standard_normal((8, PARTNER_WIDTH)).astype(np.float32)

    with_noise = network.logits(bank, noise, missing)
    with_zeros = network.logits(bank, np.zeros_like(noise), missing)

    for task, logits in with_zeros.items():
        np.testing.assert_array_equal(with_noise[task], logits)


def test_the_partner_width_is_the_heads(synth: SynthVersion) -> None:
    assert BankForward(synth.version.bottom, synth.version.head).partner_width == PARTNER_WIDTH


def test_a_model_in_training_mode_is_refused(synth: SynthVersion) -> None:
    bottom = synth.version.bottom
    bottom.train()
    try:
        with pytest.raises(FailedPrecondition, match="evaluation mode"):
            BankForward(bottom, synth.version.head)
    finally:
        bottom.eval()
