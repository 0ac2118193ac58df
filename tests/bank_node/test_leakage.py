"""The label-leakage defence and the partner's attacks, on gradients of a small logistic head."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import torch

from bank_node.evaluation import total_loss
from bank_node.leakage import GradientRecorder, LabelNoise, attack_aucs
from cobrand.errors import ConfigError, FailedPrecondition
from cobrand.split_model import HeadModel

_WIDTH, _BATCH, _BATCHES = 8, 256, 12


def _head(tasks: dict[str, int] | None = None) -> HeadModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = HeadModel(4, _WIDTH, tasks or {"risk": 1}, hidden=16, dropout=0.0)
    risk = head.outputs["risk"]
    assert isinstance(risk, torch.nn.Linear)
    with torch.no_grad():
        # Scores start near the default rate (22%), as a trained model's do.
        risk.bias.fill_(-1.3)
    return head


def _batch(
    head: HeadModel, seed: int, *, hidden_share: float = 0.0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Outputs, labels (defaults 22%, drawn from a logistic model of the embedding), the partner
    embedding (a leaf) and the hidden-slice mask of one batch."""
    generator = torch.Generator().manual_seed(seed)
    bank = torch.randn(_BATCH, 4, generator=generator)
    partner = torch.randn(_BATCH, _WIDTH, generator=generator).requires_grad_()
    odds = torch.sigmoid(partner.detach()[:, 0] - 1.4)
    labels = {"risk": (torch.rand(_BATCH, generator=generator) < odds).float()}
    hidden = torch.rand(_BATCH, generator=generator) < hidden_share
    return head(bank, partner, hidden), labels, partner, hidden


def _gradient(
    outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], partner: torch.Tensor
) -> torch.Tensor:
    (gradient,) = torch.autograd.grad(total_loss(outputs, labels), partner, retain_graph=True)
    return gradient


def _pass(
    defence: LabelNoise | None, *, hidden_share: float = 0.0
) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    """Positions, sent gradients and labels of a pass of `_BATCHES` batches."""
    head = _head()
    positions, gradients, labels = [], [], []
    for k in range(_BATCHES):
        outputs, batch_labels, partner, _ = _batch(head, k, hidden_share=hidden_share)
        gradient = _gradient(outputs, batch_labels, partner)
        if defence is not None:
            gradient = gradient + defence.noise(outputs, batch_labels, partner)
        positions.append(np.arange(k * _BATCH, (k + 1) * _BATCH))
        gradients.append(gradient.numpy().astype(np.float32))
        labels.append(batch_labels["risk"].numpy())
    return positions, gradients, np.concatenate(labels)


def test_both_attacks_recover_labels_from_unperturbed_gradients() -> None:
    norm, direction = attack_aucs(*_pass(None))

    assert norm > 0.8
    assert direction > 0.9


def test_with_the_default_defence_both_attacks_fall_near_chance() -> None:
    for seed in range(3):
        norm, direction = attack_aucs(*_pass(LabelNoise(seed=seed)))

        # About 0.53 and 0.52 here (0.50 to 0.54 on the real data, bench.quality).
        assert abs(norm - 0.5) < 0.1
        assert abs(direction - 0.5) < 0.1


def test_more_noise_leaks_less_to_the_norm_attack() -> None:
    norm = {scale: attack_aucs(*_pass(LabelNoise(scale, seed=0)))[0] for scale in (1.0, 3.0)}

    assert norm[3.0] < norm[1.0]
    assert abs(norm[3.0] - 0.5) < 0.05


def test_noise_has_zero_mean_so_the_expected_gradient_is_the_true_one() -> None:
    outputs, labels, partner, _ = _batch(_head(), 0)
    defence = LabelNoise(1.5, seed=0)
    draws = torch.stack([defence.noise(outputs, labels, partner) for _ in range(1000)])
    gradient = _gradient(outputs, labels, partner)

    spread = draws.std(dim=0)
    # Per entry, the mean of 1000 draws is within 5 standard errors of zero.
    assert bool((draws.mean(dim=0).abs() < 5 * spread / math.sqrt(1000)).all())
    # The noise is real: each row's typical size is on the scale of a label's effect.
    assert float(spread.norm(dim=1).mean()) > float(gradient.norm(dim=1).mean())


def test_noise_lies_along_each_rows_label_direction() -> None:
    outputs, labels, partner, _ = _batch(_head(), 1)
    noise = LabelNoise(1.5, seed=1).noise(outputs, labels, partner)
    flipped = {"risk": 1 - labels["risk"]}
    label_effect = _gradient(outputs, labels, partner) - _gradient(outputs, flipped, partner)

    cosine = torch.nn.functional.cosine_similarity(noise, label_effect, dim=1)

    assert bool((cosine.abs() > 1 - 1e-4).all())


def test_noise_size_does_not_follow_the_rows_own_gradient_norm() -> None:
    outputs, labels, partner, _ = _batch(_head(), 2)
    defence = LabelNoise(1.5, seed=2)
    sizes = torch.stack([defence.noise(outputs, labels, partner).norm(dim=1) for _ in range(500)])
    # Uniform on [0, 1.5 c] for every row: the same mean size whatever the row's sensitivity.
    means = sizes.mean(dim=0)
    assert float(means.std() / means.mean()) < 0.1


def test_noise_is_float32_of_the_embeddings_shape_and_zero_on_hidden_partner_slices() -> None:
    outputs, labels, partner, hidden = _batch(_head(), 4, hidden_share=0.3)

    noise = LabelNoise(seed=0).noise(outputs, labels, partner)

    assert noise.shape == partner.shape
    assert noise.dtype == torch.float32
    assert not noise.requires_grad
    assert bool((noise[hidden] == 0).all())
    assert bool((noise[~hidden].norm(dim=1) > 0).all())


def test_the_same_seed_gives_the_same_noise_and_another_seed_other_noise() -> None:
    outputs, labels, partner, _ = _batch(_head(), 5)

    first = LabelNoise(seed=7).noise(outputs, labels, partner)
    again = LabelNoise(seed=7).noise(outputs, labels, partner)
    other = LabelNoise(seed=8).noise(outputs, labels, partner)

    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_a_single_class_batch_gets_noise_like_any_other() -> None:
    outputs, _, partner, _ = _batch(_head(), 6)
    goods = {"risk": torch.zeros(_BATCH)}

    noise = LabelNoise(seed=0).noise(outputs, goods, partner)

    assert bool((noise.norm(dim=1) > 0).all())


def test_every_task_output_is_covered_including_unlabelled_rows_and_k_classes() -> None:
    head = _head({"risk": 1, "rights_package": 3})
    generator = torch.Generator().manual_seed(0)
    partner = torch.randn(_BATCH, _WIDTH, generator=generator).requires_grad_()
    bank = torch.randn(_BATCH, 4, generator=generator)
    outputs = head(bank, partner, torch.zeros(_BATCH, dtype=torch.bool))
    labels = {
        "risk": torch.full((_BATCH,), float("nan")),
        "rights_package": torch.full((_BATCH,), -1, dtype=torch.int64),
    }

    noise = LabelNoise(seed=0).noise(outputs, labels, partner)

    assert bool((noise.norm(dim=1) > 0).all())


def test_a_scale_of_zero_adds_nothing() -> None:
    outputs, labels, partner, _ = _batch(_head(), 7)

    assert bool((LabelNoise(0.0).noise(outputs, labels, partner) == 0).all())


@pytest.mark.parametrize("scale", [-0.1, float("nan"), float("inf")])
def test_a_negative_or_non_finite_scale_is_refused_naming_the_setting(scale: float) -> None:
    with pytest.raises(ConfigError, match="leakage_noise"):
        LabelNoise(scale)


def test_a_non_finite_logit_is_refused() -> None:
    outputs, labels, partner, _ = _batch(_head(), 8)
    broken = {"risk": outputs["risk"].clone().index_fill_(0, torch.tensor([3]), float("nan"))}

    with pytest.raises(FailedPrecondition, match="not finite"):
        LabelNoise().noise(broken, labels, partner)


def test_attacks_leave_out_zero_rows_and_refuse_non_finite_gradients() -> None:
    positions, gradients, labels = _pass(None, hidden_share=0.3)
    hidden_rows = sum(int((np.linalg.norm(g, axis=1) == 0).sum()) for g in gradients)
    assert hidden_rows > 0

    norm, direction = attack_aucs(positions, gradients, labels)

    assert norm > 0.8
    assert direction > 0.9
    gradients[0][0, 0] = np.nan
    with pytest.raises(FailedPrecondition, match="not finite"):
        attack_aucs(positions, gradients, labels)


def test_attacks_on_rows_of_one_class_are_nan() -> None:
    positions, gradients, labels = _pass(None)

    norm, direction = attack_aucs(positions, gradients, np.zeros_like(labels))

    assert math.isnan(norm)
    assert math.isnan(direction)


def test_recorder_keeps_the_first_and_the_latest_pass_within_its_row_budget() -> None:
    recorder = GradientRecorder(max_rows=5)
    gradient = np.ones((2, _WIDTH), dtype=np.float32)
    for round_number in (1, 2, 3):
        recorder.start_pass(round_number, 0)
        for batch in range(4):
            recorder.record(np.array([2 * batch, 2 * batch + 1]), gradient * round_number)

    passes = recorder.passes

    assert sorted(passes) == [(1, 0), (3, 0)]
    assert [p.rows for p in passes.values()] == [4, 4]
    assert passes[3, 0].gradients[0].dtype == np.float32
    assert float(passes[3, 0].gradients[1][0, 0]) == 3.0


def test_with_several_epochs_a_round_the_first_pass_kept_is_round_ones_first_epoch() -> None:
    recorder = GradientRecorder()
    for round_number in (1, 2):
        for epoch in (0, 1, 2):
            recorder.start_pass(round_number, epoch)
            gradient = np.full((1, _WIDTH), 10 * round_number + epoch, dtype=np.float32)
            recorder.record(np.array([0]), gradient)

    passes = recorder.passes

    assert sorted(passes) == [(1, 0), (2, 2)]
    assert float(passes[1, 0].gradients[0][0, 0]) == 10.0
    assert float(passes[2, 2].gradients[0][0, 0]) == 22.0


def test_recorder_starts_a_retried_pass_over() -> None:
    recorder = GradientRecorder()
    recorder.start_pass(1, 0)
    recorder.record(np.array([0]), np.ones((1, _WIDTH), dtype=np.float32))
    recorder.start_pass(1, 0)

    assert recorder.passes[1, 0].rows == 0


def test_recording_before_a_pass_is_started_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="start_pass"):
        GradientRecorder().record(np.array([0]), np.ones((1, _WIDTH), dtype=np.float32))


def test_a_round_started_again_draws_the_same_noise() -> None:
    outputs, labels, partner, _ = _batch(_head(), 9)
    defence = LabelNoise(seed=4)
    defence.start_round(3)
    first = defence.noise(outputs, labels, partner)
    defence.noise(outputs, labels, partner)
    defence.start_round(3)
    again = defence.noise(outputs, labels, partner)
    defence.start_round(4)

    assert torch.equal(first, again)
    assert not torch.equal(first, defence.noise(outputs, labels, partner))


def test_leak_aucs_report_each_attacks_auc_farthest_from_chance_over_the_passes() -> None:
    recorder = GradientRecorder()
    undefended = _pass(None)
    # Norms inverted: a norm AUC near 0, a leak as large as one near 1.
    inverted = [g / np.sum(g**2, axis=1, keepdims=True) for g in undefended[1]]
    passes = {1: _pass(LabelNoise(seed=0)), 2: (undefended[0], inverted, undefended[2])}
    for round_number, (positions, gradients, _) in passes.items():
        recorder.start_pass(round_number, 0)
        for batch, gradient in zip(positions, gradients, strict=True):
            recorder.record(batch, gradient)
    labels = passes[1][2]

    norm, direction = recorder.leak_aucs(labels)

    assert norm < 0.1
    assert (norm, direction) == attack_aucs(*passes[2])
    assert math.isnan(GradientRecorder().leak_aucs(labels)[0])


def _two_task_pass(scale: float) -> dict[str, tuple[float, float]]:
    """Both attacks on each task's labels, risk and instalment trained together."""
    head = _head({"risk": 1, "instalment": 1})
    defence = LabelNoise(scale, seed=0)
    positions, gradients = [], []
    labels: dict[str, list[npt.NDArray[np.float32]]] = {"risk": [], "instalment": []}
    for k in range(_BATCHES):
        generator = torch.Generator().manual_seed(k)
        partner = torch.randn(_BATCH, _WIDTH, generator=generator).requires_grad_()
        batch_labels = {
            task: (torch.rand(_BATCH, generator=generator) < 0.22).float() for task in labels
        }
        bank = torch.randn(_BATCH, 4, generator=generator)
        outputs = head(bank, partner, torch.zeros(_BATCH, dtype=torch.bool))
        sent = _gradient(outputs, batch_labels, partner)
        sent = sent + defence.noise(outputs, batch_labels, partner)
        positions.append(np.arange(k * _BATCH, (k + 1) * _BATCH))
        gradients.append(sent.numpy())
        for task in labels:
            labels[task].append(batch_labels[task].numpy())
    return {
        task: attack_aucs(positions, gradients, np.concatenate(values))
        for task, values in labels.items()
    }


def test_each_binary_tasks_labels_are_protected_when_tasks_train_together() -> None:
    undefended, defended = _two_task_pass(0.0), _two_task_pass(LabelNoise().scale)

    for task in ("risk", "instalment"):
        for bare, noisy in zip(undefended[task], defended[task], strict=True):
            # One task's residual size also shows in the cosines of the other's direction:
            # the default noise leaves up to 0.08 here (0.03 at scale 3).
            assert abs(noisy - 0.5) < 0.1, task
            assert abs(noisy - 0.5) < abs(bare - 0.5), task
