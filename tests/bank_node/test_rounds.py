"""The bank's run driver against a real partner node on loopback, with the partner reached by its
hand-off service directly (the Flower hop is tested in tests/test_flower_training.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from bank_node.config import BankNodeConfig, PartnerEndpoint
from bank_node.evaluation import task_metrics
from bank_node.holdout_scores import load_test_scores
from bank_node.model_registry import load_bank_version
from bank_node.resume import ResumePolicy
from bank_node.rounds import holdout_scores_path, train_run
from bank_node.run_journal import RunJournal, read_journal
from bank_node.training_config import TrainingConfig
from bank_node.training_data import TEST
from bank_node.training_set import BankTrainingSet, load_training_set
from cobrand.errors import FailedPrecondition, Unavailable
from cobrand.model_manifest import manifest_digest, model_version, verify_peer
from cobrand.model_store import ModelStore
from cobrand.rounds_protocol import ModelPublication, PartnerStatus, RoundPlan, RunProgress
from cobrand.rounds_serde import (
    partner_manifest_from_proto,
    plan_to_proto,
    progress_from_proto,
    publication_to_proto,
    status_from_proto,
)
from cobrand.rpc import create_channel
from cobrand.v1 import rounds_pb2, rounds_pb2_grpc
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.training_sites import TrainingSites, running_partner, write_training_sites

CONFIG = TrainingConfig(max_rounds=2, patience=2, batch_size=128, head_hidden=16)


class DirectPartner:
    """The partner's control plane through its hand-off service, as its ClientApp relays it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub: Any = rounds_pb2_grpc.PartnerRoundsStub(channel)  # type: ignore[no-untyped-call]
        self.plans: list[RoundPlan] = []

    def status(self, run_id: str) -> PartnerStatus:
        return status_from_proto(self._stub.GetStatus(rounds_pb2.GetStatusRequest(run_id=run_id)))

    def plan_round(self, plan: RoundPlan) -> RunProgress:
        self.plans.append(plan)
        return progress_from_proto(self._stub.PlanRound(plan_to_proto(plan)).run)

    def publish(self, publication: ModelPublication) -> bytes:
        reply = self._stub.PublishModel(publication_to_proto(publication))
        return partner_manifest_from_proto(reply, publication)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=1500, seed=8)


@pytest.fixture(scope="module")
def node(throwaway_pki: ThrowAwayPki, sites: TrainingSites) -> Iterator[PartnerNode]:
    with running_partner(throwaway_pki, sites) as started:
        yield started


@pytest.fixture(scope="module")
def bank_models(sites: TrainingSites) -> Path:
    """The bank's model registry, one for the module as the partner node's is: a version that
    two runs reach (the same kept weights) is then published again unchanged, as in production,
    rather than as a second bank manifest the partner refuses."""
    return sites.bank_data / "models"


@pytest.fixture(scope="module")
def training_set(sites: TrainingSites) -> BankTrainingSet:
    return load_training_set(
        BankNodeConfig(
            federation=sites.files.federation,
            schema=sites.files.bank_schema,
            table=sites.files.bank_table,
            data_dir=sites.bank_data,
            partner=PartnerEndpoint(address="unused: the test opens its own channels"),
            insecure=True,
        )
    )


@pytest.fixture
def partner(throwaway_pki: ThrowAwayPki, node: PartnerNode) -> Iterator[DirectPartner]:
    with create_channel(f"127.0.0.1:{node.port}", throwaway_pki.tls("partner")) as channel:
        yield DirectPartner(channel)


@pytest.fixture
def trainer_channel(throwaway_pki: ThrowAwayPki, node: PartnerNode) -> Iterator[grpc.Channel]:
    with create_channel(f"127.0.0.1:{node.port}", throwaway_pki.tls("bank-trainer")) as channel:
        yield channel


def test_a_run_plans_each_round_then_commits_it_with_both_sides_digests(
    training_set: BankTrainingSet,
    partner: DirectPartner,
    trainer_channel: grpc.Channel,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    journal = RunJournal(tmp_path / "run-1.jsonl")

    outcome = train_run(
        "run-1",
        lambda: training_set,
        partner,
        trainer_channel,
        CONFIG,
        journal,
        runs_dir=tmp_path,
        models_dir=bank_models,
    )

    events = read_journal(journal.path)
    assert [e["event"] for e in events] == [
        "checked", "planned", "committed", "planned", "committed", "finished",
    ]  # fmt: skip
    assert [plan.round for plan in partner.plans] == [1, 2]
    assert [c.round for c in outcome.checkpoints] == [0, 1, 2]
    held = partner.status("run-1").run
    assert held is not None
    assert [c.partner_sha256 for c in outcome.checkpoints] == list(held.checkpoints)
    assert len({c.bank_sha256 for c in outcome.checkpoints}) == 3
    assert outcome.model == outcome.checkpoints[outcome.training.best_round]
    finished = events[-1]
    assert finished["best_round"] == outcome.training.best_round
    assert finished["bank_sha256"] == outcome.model.bank_sha256.hex()
    assert finished["partner_sha256"] == outcome.model.partner_sha256.hex()
    assert 0.5 < finished["test"]["risk"]["auc"] <= 1.0
    assert events[2]["partner_sha256"] == outcome.checkpoints[1].partner_sha256.hex()


def test_the_kept_model_is_published_at_both_sides_under_one_version(
    training_set: BankTrainingSet,
    partner: DirectPartner,
    trainer_channel: grpc.Channel,
    sites: TrainingSites,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    journal = RunJournal(tmp_path / "run-pub.jsonl")
    passes = _CountPasses()

    outcome = train_run(
        "run-pub",
        lambda: training_set,
        partner,
        grpc.intercept_channel(trainer_channel, passes),
        CONFIG,
        journal,
        runs_dir=tmp_path,
        models_dir=bank_models,
    )

    release, model = outcome.release, outcome.model
    assert release.version_id == model_version(model.bank_sha256.hex(), model.partner_sha256.hex())
    bank = ModelStore(bank_models).load(release.version_id)
    held = ModelStore(sites.partner_data / "models").load(release.version_id)
    # Each side holds every file its manifest lists (load checks them) and the other's digest.
    assert manifest_digest(bank.manifest) == release.bank_manifest_sha256
    assert manifest_digest(held.manifest) == release.partner_manifest_sha256
    verify_peer(bank.manifest, release.version_id, release.partner_manifest_sha256)
    verify_peer(held.manifest, release.version_id, release.bank_manifest_sha256)
    assert bank.manifest.model.partner_weights_sha256 == model.partner_sha256.hex()
    # The bank's committed checkpoint of the best round and its version name the same weights.
    assert bank.manifest.model.bank_weights_sha256 == model.bank_sha256.hex()
    # The version names its K-class outputs as the run's training set did.
    served = load_bank_version(ModelStore(bank_models), release.version_id)
    assert served.classes == training_set.classes
    assert "rights_package" in served.classes
    finished = read_journal(journal.path)[-1]
    assert finished["model_version"] == release.version_id
    assert finished["privacy"]["task"] == "risk"
    assert 0.0 <= finished["privacy"]["leak_auc_norm"] <= 1.0
    scores = load_test_scores(holdout_scores_path(tmp_path, "run-pub"))
    assert set(scores) == set(training_set.data.tasks)
    assert len(scores["risk"].labels) == finished["test"]["risk"]["rows"]
    # A training and a validation pass per round, then the test rows once (their scores are
    # the final evaluation's) and the training rows once for the score scaling.
    assert passes.opened == 2 * CONFIG.max_rounds + 2


def test_a_partner_on_another_alignment_is_refused_before_any_round_is_planned(
    training_set: BankTrainingSet,
    partner: DirectPartner,
    trainer_channel: grpc.Channel,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    alignment = dataclasses.replace(
        training_set.alignment, run_id="alignment-other", intersection_sha256=bytes(32)
    )
    other = dataclasses.replace(training_set, alignment=alignment)

    with pytest.raises(FailedPrecondition, match="differ in run_id, intersection_sha256"):
        train_run(
            "run-2",
            lambda: other,
            partner,
            trainer_channel,
            CONFIG,
            RunJournal(tmp_path / "j"),
            runs_dir=tmp_path,
            models_dir=bank_models,
        )

    assert partner.plans == []
    assert partner.status("run-2").run is None


class TamperingPartner(DirectPartner):
    """Reports round 1's checkpoint on the control plane as other bytes than its data plane did."""

    def plan_round(self, plan: RoundPlan) -> RunProgress:
        progress = super().plan_round(plan)
        if progress.completed_rounds < 1:
            return progress
        forged = (progress.checkpoints[0], bytes(32), *progress.checkpoints[2:])
        return dataclasses.replace(progress, checkpoints=forged)


def test_a_round_whose_checkpoint_differs_between_the_two_planes_is_never_committed(
    throwaway_pki: ThrowAwayPki,
    node: PartnerNode,
    training_set: BankTrainingSet,
    trainer_channel: grpc.Channel,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    journal = RunJournal(tmp_path / "run-3.jsonl")
    with create_channel(f"127.0.0.1:{node.port}", throwaway_pki.tls("partner")) as channel:
        partner = TamperingPartner(channel)
        with pytest.raises(FailedPrecondition, match="checkpoint of round 1 is 000000000000 on"):
            train_run(
                "run-3",
                lambda: training_set,
                partner,
                trainer_channel,
                CONFIG,
                journal,
                runs_dir=tmp_path,
                models_dir=bank_models,
            )

    assert "committed" not in [e["event"] for e in read_journal(journal.path)]


CONFIG_3 = CONFIG.model_copy(update={"max_rounds": 3, "patience": 3})


class LosingPartner(DirectPartner):
    """Loses the reply to one round's plan, as when partner_node goes away just after answering
    (the partner planned the round and counts the previous one as committed; the bank does not).
    After the loss its status reports the fields given in `after` instead of its own."""

    def __init__(self, channel: grpc.Channel, *, lose_round: int, **after: Any) -> None:
        super().__init__(channel)
        self._lose_round = lose_round
        self._after = after
        self.lost = False

    def status(self, run_id: str) -> PartnerStatus:
        status = super().status(run_id)
        return dataclasses.replace(status, **self._after) if self.lost else status

    def plan_round(self, plan: RoundPlan) -> RunProgress:
        progress = super().plan_round(plan)
        if plan.round == self._lose_round and not self.lost:
            self.lost = True
            raise Unavailable("plan: partner_node is unavailable: connection reset (test)")
        return progress


def _run(
    run_id: str,
    training_set: BankTrainingSet,
    partner: DirectPartner,
    channel: grpc.Channel,
    directory: Path,
    bank_models: Path,
    config: TrainingConfig = CONFIG_3,
    **options: Any,
) -> tuple[Any, list[dict[str, Any]]]:
    journal = RunJournal(directory / f"{run_id}.jsonl")
    outcome = train_run(
        run_id,
        lambda: training_set,
        partner,
        channel,
        config,
        journal,
        runs_dir=directory,
        models_dir=bank_models,
        resume=ResumePolicy(wait_s=10.0, **options),
    )
    return outcome, read_journal(journal.path)


@pytest.fixture
def hand_off(throwaway_pki: ThrowAwayPki, node: PartnerNode) -> Iterator[grpc.Channel]:
    """A channel to the partner's hand-off service, as its ClientApp opens it."""
    with create_channel(f"127.0.0.1:{node.port}", throwaway_pki.tls("partner")) as channel:
        yield channel


def test_a_run_that_loses_the_partner_resumes_from_the_last_committed_round_and_ends_the_same(
    training_set: BankTrainingSet,
    partner: DirectPartner,
    hand_off: grpc.Channel,
    trainer_channel: grpc.Channel,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    steady, _ = _run("run-steady", training_set, partner, trainer_channel, tmp_path, bank_models)

    lost = LosingPartner(hand_off, lose_round=3)
    resumed, events = _run("run-lost", training_set, lost, trainer_channel, tmp_path, bank_models)

    assert [e["event"] for e in events] == [
        "checked", "planned", "committed", "planned", "interrupted", "resumed",
        "planned", "committed", "planned", "committed", "finished",
    ]  # fmt: skip
    interrupted, again = events[4], events[5]
    assert interrupted["round"] == 3
    assert "connection reset" in interrupted["reason"]
    assert (again["from_round"], again["round"]) == (1, 2)
    assert "connection reset" in again["reason"]
    assert events[-1]["resumes"] == 1
    # Round 1 stays as committed before the loss; every round since is the partner's too.
    first = events[2]
    assert (first["round"], first["partner_sha256"]) == (
        1,
        resumed.checkpoints[1].partner_sha256.hex(),
    )
    held = partner.status("run-lost").run
    assert held is not None
    assert [c.partner_sha256 for c in resumed.checkpoints] == list(held.checkpoints)
    assert [r.round for r in resumed.training.rounds] == [1, 2, 3]
    # In one process the two parties' dropout draws interleave, so the runs are not bit-equal
    # here (the real-process test in tests/test_training_resume.py shows they are); the
    # quality is the same within noise.
    auc = (resumed.training.test["risk"]["auc"], steady.training.test["risk"]["auc"])
    assert abs(auc[0] - auc[1]) < 0.05
    best = resumed.training.best_round
    kept = {f"round-{r}.pt" for r in (3, best)}
    assert {p.name for p in (tmp_path / "run-lost").iterdir()} == kept


def test_a_partner_back_on_another_alignment_ends_the_run(
    training_set: BankTrainingSet,
    hand_off: grpc.Channel,
    trainer_channel: grpc.Channel,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    realigned = dataclasses.replace(training_set.alignment, run_id="alignment-new")
    moved = LosingPartner(hand_off, lose_round=2, alignment=realigned)

    with pytest.raises(FailedPrecondition, match="holds alignment 'alignment-new'"):
        _run("run-moved", training_set, moved, trainer_channel, tmp_path, bank_models)


def test_a_damaged_bank_checkpoint_is_refused_naming_the_file_when_resuming(
    training_set: BankTrainingSet,
    hand_off: grpc.Channel,
    trainer_channel: grpc.Channel,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    class Damaging(LosingPartner):
        """Damages the bank's checkpoint of round 1 while the partner is away."""

        def status(self, run_id: str) -> PartnerStatus:
            if self.lost:
                (tmp_path / "run-damaged" / "round-1.pt").write_bytes(b"not a checkpoint")
            return super().status(run_id)

    damaging = Damaging(hand_off, lose_round=3)

    with pytest.raises(FailedPrecondition, match=r"run-damaged/round-1\.pt: not a readable"):
        _run("run-damaged", training_set, damaging, trainer_channel, tmp_path, bank_models)


def test_a_partner_lost_more_often_than_the_policy_allows_ends_the_run_as_unavailable(
    training_set: BankTrainingSet,
    hand_off: grpc.Channel,
    trainer_channel: grpc.Channel,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    fragile = LosingPartner(hand_off, lose_round=2)

    with pytest.raises(Unavailable, match="allows 0 resumes"):
        _run(
            "run-fragile",
            training_set,
            fragile,
            trainer_channel,
            tmp_path,
            bank_models,
            max_resumes=0,
        )


def test_a_round_of_two_epochs_streams_twice_then_commits_once(
    training_set: BankTrainingSet,
    partner: DirectPartner,
    trainer_channel: grpc.Channel,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    one_epoch = CONFIG.model_copy(update={"max_rounds": 1})
    two_epochs = one_epoch.model_copy(update={"epochs_per_round": 2})

    single, _ = _run(
        "run-e1", training_set, partner, trainer_channel, tmp_path, bank_models, one_epoch
    )
    double, events = _run(
        "run-e2", training_set, partner, trainer_channel, tmp_path, bank_models, two_epochs
    )

    assert [e["event"] for e in events] == ["checked", "planned", "committed", "finished"]
    assert [plan.epochs for plan in partner.plans[-1:]] == [2]
    assert [c.round for c in double.checkpoints] == [0, 1]
    sent = (double.training.rounds[0].bytes_sent, single.training.rounds[0].bytes_sent)
    assert 1.9 < sent[0] / sent[1] < 2.1
    assert double.model != single.model


class _CountPasses(grpc.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    """Counts the data-plane streams opened."""

    def __init__(self) -> None:
        self.opened = 0

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        self.opened += 1
        return continuation(client_call_details, request_iterator)


class _BreakNthPass(grpc.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    """Cancels the `n`-th data-plane stream as it opens, as a connection dropped there would."""

    def __init__(self, n: int) -> None:
        self._left = n

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        call = continuation(client_call_details, request_iterator)
        self._left -= 1
        if self._left == 0:
            call.cancel()
        return call


def test_a_partner_lost_in_the_test_evaluation_trains_the_uncommitted_last_round_again(
    training_set: BankTrainingSet,
    partner: DirectPartner,
    trainer_channel: grpc.Channel,
    tmp_path: Path,
    bank_models: Path,
) -> None:
    # Each round is a training pass and a validation pass: the 7th stream is the test pass.
    breaking = grpc.intercept_channel(trainer_channel, _BreakNthPass(2 * CONFIG_3.max_rounds + 1))

    outcome, events = _run("run-late", training_set, partner, breaking, tmp_path, bank_models)

    names = [e["event"] for e in events]
    assert names[-5:] == ["interrupted", "resumed", "planned", "committed", "finished"]
    interrupted, resumed = events[-5], events[-4]
    assert interrupted["round"] == 3
    assert (resumed["from_round"], resumed["round"]) == (2, 3)
    assert [c.round for c in outcome.checkpoints] == [0, 1, 2, 3]
    assert 0.5 < outcome.training.test["risk"]["auc"] <= 1.0
    # The test logits kept are those of the evaluation that finished, after the resume.
    test_rows = training_set.data.split == TEST
    labels = {
        task: torch.from_numpy(values[test_rows])
        for task, values in training_set.data.labels.items()
    }
    full, bank_only = outcome.training.test_logits
    figures = task_metrics(full, bank_only, labels)
    assert figures["risk"]["auc"] == outcome.training.test["risk"]["auc"]
