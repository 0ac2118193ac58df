"""The bank's trainer against a real partner data plane on loopback (mutual TLS): what the partner
slice adds, exact and stale updates, and what crosses the wire."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from google.protobuf.message import Message

from bank_node.evaluation import total_loss
from bank_node.round_state import BankState, EarlyStopping, MemoryRounds
from bank_node.trainer import BankTrainer
from bank_node.training_config import TrainingConfig
from bank_node.training_data import TEST, BankTrainingData
from cobrand.errors import FailedPrecondition
from cobrand.preprocess import Encoded
from cobrand.split_model import BottomModel, HeadModel
from cobrand.tensor_wire import unpack_matrix, unpack_positions
from cobrand.v1 import training_pb2 as pb
from partner_node.dataplane_service import DataPlaneService
from partner_node.trainer import PartnerTrainer
from tests.bank_node.conftest import AlignedSet, bank_client, start_partner_run


def _planner(partner: PartnerTrainer) -> Callable[[int, float], None]:
    return lambda round_number, learning_rate: partner.plan_round(
        round_number, learning_rate=learning_rate
    )


class _RecordingRounds(MemoryRounds):
    """Keeps rounds in memory and notes every round the trainer went back to."""

    def __init__(self) -> None:
        super().__init__()
        self.restored: list[int] = []

    def restore(self, round_number: int) -> BankState:
        self.restored.append(round_number)
        return super().restore(round_number)


def test_a_short_federated_run_beats_the_bank_only_path_on_every_task(
    aligned_set: AlignedSet,
    partner_service: DataPlaneService,
    bank_channel: grpc.Channel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    partner = start_partner_run(
        partner_service, "run-lift", aligned_set.partner_features, aligned_set.partner_spec
    )
    client = bank_client(bank_channel, "run-lift", aligned_set.partner_spec)
    trainer = BankTrainer(
        aligned_set.bank,
        aligned_set.bank_spec,
        client,
        TrainingConfig(max_rounds=3, batch_size=128),
    )
    keeper = _RecordingRounds()

    result = trainer.fit(_planner(partner), keeper=keeper)

    risk, instalment = result.test["risk"], result.test["instalment"]
    package = result.test["rights_package"]
    with capsys.disabled():
        print(
            f"\nsynthetic test rows: risk AUC {risk['auc']:.4f} (bank-only "
            f"{risk['bank_only_auc']:.4f}), instalment AUC {instalment['auc']:.4f} "
            f"({instalment['bank_only_auc']:.4f}), rights_package top-1 "
            f"{package['top1_accuracy']:.4f} ({package['bank_only_top1_accuracy']:.4f})"
        )
    # Three short rounds with the label-leakage defence on: a clear margin, if a small one.
    assert risk["auc"] - risk["bank_only_auc"] >= 0.01
    assert instalment["auc"] > instalment["bank_only_auc"]
    assert package["top1_accuracy"] > package["bank_only_top1_accuracy"]
    assert 0.0 < risk["ks"] < 1.0
    assert [r.round for r in result.rounds] == [1, 2, 3]
    assert result.rounds[-1].valid_loss < result.rounds[0].valid_loss
    assert result.rounds[-1].partner_weights_sha256 == partner.round_digest(3)
    train_rows = int(np.sum(aligned_set.bank.split == 0))
    for done in result.rounds:
        # Per training row: a 4-byte position and a 16-float gradient down, 16 floats up.
        assert train_rows * 68 <= done.bytes_sent <= train_rows * 68 * 1.05
        assert train_rows * 64 <= done.bytes_received <= train_rows * 64 * 1.05
    assert result.bytes_sent > sum(done.bytes_sent for done in result.rounds)
    # The final evaluation only reads the best round: nothing was lost, nothing is rewound.
    assert keeper.restored == []
    # The run keeps the test logits its figures come from, the best round's.
    test_rows = np.flatnonzero(aligned_set.bank.split == TEST)
    for kept, again in zip(
        result.test_logits, trainer.logits(test_rows, result.best_round), strict=True
    ):
        assert all(torch.equal(kept[task], again[task]) for task in again)


@pytest.mark.parametrize(("noise", "leaks"), [(0.0, True), (1.5, False)])
def test_the_label_noise_defence_makes_both_attacks_on_the_sent_gradients_fail(
    aligned_set: AlignedSet,
    partner_service: DataPlaneService,
    bank_channel: grpc.Channel,
    noise: float,
    leaks: bool,
) -> None:
    run = f"run-noise-{noise:g}"
    partner = start_partner_run(
        partner_service, run, aligned_set.partner_features, aligned_set.partner_spec
    )
    trainer = BankTrainer(
        aligned_set.bank,
        aligned_set.bank_spec,
        bank_client(bank_channel, run, aligned_set.partner_spec),
        TrainingConfig(max_rounds=2, patience=2, batch_size=128, leakage_noise=noise),
    )

    result = trainer.fit(_planner(partner))

    norm, direction = trainer.sent.leak_aucs(aligned_set.bank.labels["risk"])
    assert sorted(trainer.sent.passes) == [(1, 0), (2, 0)]
    if leaks:
        assert min(norm, direction) > 0.7
    else:
        # Near chance (0.5): the figure is each attack's worst over the first and last pass.
        assert max(norm, direction) < 0.6
    assert result.test["risk"]["auc"] > result.test["risk"]["bank_only_auc"]


def _subset(data: BankTrainingData, rows: int) -> BankTrainingData:
    return BankTrainingData(
        features=Encoded(data.features.numeric[:rows], data.features.categorical[:rows]),
        labels={task: values[:rows] for task, values in data.labels.items()},
        split=data.split[:rows],
        tasks=data.tasks,
    )


def _centralized_round(
    data: BankTrainingData, aligned: AlignedSet, partner: Encoded, config: TrainingConfig
) -> tuple[BottomModel, HeadModel, BottomModel]:
    """One round of the joined network in one process, drawing as the trainers do."""
    bank_spec = dataclasses.replace(aligned.bank_spec, dropout=0.0)
    partner_spec = dataclasses.replace(aligned.partner_spec, dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        bottom = BottomModel(bank_spec)
        head = HeadModel(16, 16, data.tasks, hidden=config.head_hidden, dropout=0.0)
        torch.manual_seed(1)
        partner_bottom = BottomModel(partner_spec)
    parameters = [*bottom.parameters(), *head.parameters(), *partner_bottom.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    rows = np.flatnonzero(data.split == 0)
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    tensors = {
        "bank": (
            torch.from_numpy(data.features.numeric),
            torch.from_numpy(data.features.categorical),
        ),
        "partner": (torch.from_numpy(partner.numeric), torch.from_numpy(partner.categorical)),
    }
    for start in range(0, len(order), config.batch_size):
        batch = torch.from_numpy(order[start : start + config.batch_size])
        hidden = torch.rand(len(batch), generator=generator) < config.partner_dropout
        logits = head(
            bottom(*(t[batch] for t in tensors["bank"])),
            partner_bottom(*(t[batch] for t in tensors["partner"])),
            hidden,
        )
        labels = {task: torch.from_numpy(data.labels[task])[batch] for task in data.tasks}
        optimizer.zero_grad()
        torch.autograd.backward(total_loss(logits, labels))
        optimizer.step()
    return bottom, head, partner_bottom


def test_each_epoch_of_a_round_is_recorded_as_a_pass_of_its_own(
    aligned_set: AlignedSet, partner_service: DataPlaneService, bank_channel: grpc.Channel
) -> None:
    partner = start_partner_run(
        partner_service, "run-epochs", aligned_set.partner_features, aligned_set.partner_spec
    )
    trainer = BankTrainer(
        aligned_set.bank,
        aligned_set.bank_spec,
        bank_client(bank_channel, "run-epochs", aligned_set.partner_spec),
        TrainingConfig(max_rounds=2, patience=2, batch_size=128, epochs_per_round=3),
    )

    trainer.fit(lambda r, rate: partner.plan_round(r, learning_rate=rate, epochs=3))

    # The run's first pass is round 1's first epoch; the latest is round 2's last.
    assert sorted(trainer.sent.passes) == [(1, 0), (2, 2)]


@pytest.mark.parametrize(("depth", "exact"), [(1, True), (2, False)])
def test_synchronous_training_equals_centralized_backprop_and_pipelining_is_one_step_stale(
    aligned_set: AlignedSet,
    partner_service: DataPlaneService,
    bank_channel: grpc.Channel,
    depth: int,
    exact: bool,
) -> None:
    data = _subset(aligned_set.bank, 1200)
    partner_features = Encoded(
        aligned_set.partner_features.numeric[:1200], aligned_set.partner_features.categorical[:1200]
    )
    # Without the label-leakage defence: its noise is what makes the partner's updates differ
    # from backprop through the joined network, on purpose.
    config = TrainingConfig(
        max_rounds=1,
        batch_size=64,
        head_dropout=0.0,
        pipeline_depth=depth,
        learning_rate=3e-3,
        leakage_noise=0.0,
    )
    no_dropout = dataclasses.replace(aligned_set.partner_spec, dropout=0.0)
    partner = start_partner_run(partner_service, f"run-d{depth}", partner_features, no_dropout)
    trainer = BankTrainer(
        data,
        dataclasses.replace(aligned_set.bank_spec, dropout=0.0),
        bank_client(bank_channel, f"run-d{depth}", no_dropout),
        config,
    )

    trainer.fit(_planner(partner))

    bottom, head, partner_bottom = _centralized_round(data, aligned_set, partner_features, config)
    rows = np.flatnonzero(data.split == 2)
    federated_partner = trainer.partner_embeddings(rows, 1)
    index = torch.from_numpy(rows)
    with torch.no_grad():
        central_partner = partner_bottom.eval()(
            torch.from_numpy(partner_features.numeric)[index],
            torch.from_numpy(partner_features.categorical)[index],
        ).numpy()
    weights = zip(
        [*trainer.bottom.parameters(), *trainer.head.parameters()],
        [*bottom.parameters(), *head.parameters()],
        strict=True,
    )
    gap = max(float((ours - theirs).detach().abs().max()) for ours, theirs in weights)
    gap = max(gap, float(np.abs(federated_partner - central_partner).max()))
    # Float rounding only when exact; when stale, every later step drifts further.
    assert gap < 1e-5 if exact else gap > 1e-3


class _Recorder(grpc.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    """Keeps every data-plane message the bank sends and receives."""

    def __init__(self) -> None:
        self.requests: list[pb.ExchangeRequest] = []
        self.responses: list[pb.ExchangeResponse] = []

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        def sent() -> Iterator[Any]:
            for request in request_iterator:
                self.requests.append(request)
                yield request

        return _RecordedCall(continuation(client_call_details, sent()), self.responses)


class _RecordedCall:
    def __init__(self, call: Any, responses: list[pb.ExchangeResponse]) -> None:
        self._call, self._responses = call, responses

    def __iter__(self) -> _RecordedCall:
        return self

    def __next__(self) -> Any:
        response = next(self._call)
        self._responses.append(response)
        return response

    def cancel(self) -> bool:
        return bool(self._call.cancel())


def _field_paths(message: Message, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.message_type is not None:
            paths |= _field_paths(value, path + ".")
        else:
            paths.add(path)
    return paths


REQUEST_FIELDS = {
    "open.run_id",
    "open.round",
    "open.kind",
    "step.batch.step",
    "step.batch.positions",
    "step.gradient.step",
    "step.gradient.embedding_width",
    "step.gradient.gradient",
}
RESPONSE_FIELDS = {"embeddings.step", "embeddings.embedding_width", "embeddings.embeddings"} | {
    f"summary.{name}"
    for name in ("run_id", "round", "kind", "steps", "rows", "gradients_applied", "weights_sha256")
}


def test_the_stream_carries_only_aligned_positions_embeddings_and_gradients(
    aligned_set: AlignedSet, partner_service: DataPlaneService, bank_channel: grpc.Channel
) -> None:
    recorder = _Recorder()
    channel = grpc.intercept_channel(bank_channel, recorder)
    partner = start_partner_run(
        partner_service, "run-wire", aligned_set.partner_features, aligned_set.partner_spec
    )
    client = bank_client(channel, "run-wire", aligned_set.partner_spec)
    data = aligned_set.bank
    trainer = BankTrainer(
        data, aligned_set.bank_spec, client, TrainingConfig(max_rounds=1, batch_size=1024)
    )

    result = trainer.fit(_planner(partner))

    assert all(_field_paths(r) <= REQUEST_FIELDS for r in recorder.requests)
    assert all(_field_paths(r) <= RESPONSE_FIELDS for r in recorder.responses)
    opened = [r.open for r in recorder.requests if r.WhichOneof("body") == "open"]
    assert [(o.round, o.kind) for o in opened] == [
        (1, pb.PASS_KIND_TRAIN),
        (1, pb.PASS_KIND_EMBED),  # validation rows
        (1, pb.PASS_KIND_EMBED),  # test rows, with the best round's weights
    ]
    positions: list[list[int]] = []
    for request in recorder.requests:
        if request.WhichOneof("body") == "open":
            positions.append([])
        elif request.step.HasField("batch"):
            batch = unpack_positions(request.step.batch.positions, limit=len(data.split), what="x")
            positions[-1] += batch.tolist()
        if request.step.HasField("gradient"):
            gradient = request.step.gradient
            unpack_matrix(gradient.gradient, width=16, what="gradient")
    for split, seen in zip((0, 1, 2), positions, strict=True):
        assert sorted(seen) == np.flatnonzero(data.split == split).tolist()
    for response in recorder.responses:
        if response.WhichOneof("body") == "embeddings":
            assert response.embeddings.embedding_width == 16
    assert result.bytes_sent == sum(r.ByteSize() for r in recorder.requests)
    assert result.bytes_received == sum(r.ByteSize() for r in recorder.responses)


def test_a_diverging_run_stops_before_its_gradient_leaves_the_bank(
    aligned_set: AlignedSet, partner_service: DataPlaneService, bank_channel: grpc.Channel
) -> None:
    partner = start_partner_run(
        partner_service, "run-diverge", aligned_set.partner_features, aligned_set.partner_spec
    )
    client = bank_client(bank_channel, "run-diverge", aligned_set.partner_spec)
    trainer = BankTrainer(
        aligned_set.bank, aligned_set.bank_spec, client, TrainingConfig(learning_rate=1e30)
    )

    with pytest.raises(FailedPrecondition, match=r"training diverged: .* lower the learning rate"):
        trainer.fit(_planner(partner))

    assert partner.completed_rounds == 0


def test_a_diverging_step_reports_the_learning_rate_it_ran_at(
    aligned_set: AlignedSet,
    partner_service: DataPlaneService,
    bank_channel: grpc.Channel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if early stopping had halved the rate twice since the best round.
    monkeypatch.setattr(EarlyStopping, "learning_rate", lambda self, base, round_number: base / 4)
    partner = start_partner_run(
        partner_service, "run-diverge-rate", aligned_set.partner_features, aligned_set.partner_spec
    )
    client = bank_client(bank_channel, "run-diverge-rate", aligned_set.partner_spec)
    trainer = BankTrainer(
        aligned_set.bank, aligned_set.bank_spec, client, TrainingConfig(learning_rate=1e30)
    )

    with pytest.raises(FailedPrecondition, match=r"lower the learning rate \(now 2\.5e\+29\)"):
        trainer.fit(_planner(partner))
