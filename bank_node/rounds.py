"""The bank's driver of one training run: what its ServerApp does between control-plane messages.

`train_run` takes the partner as a `PartnerControl` (the ServerApp's is Flower messages to the
partner's SuperNode; tests may call the partner's hand-off service directly) and:

1. asks the partner's status (loading its own training set meanwhile) and checks the partner
   holds the bank's alignment (same alignment run, federation, intersection digest and size);
   the partner's bottom width shapes the bank's head;
2. trains with `BankTrainer.fit`, planning every round at the partner before the bank streams it
   on the data plane (the plan names the partner checkpoint it continues from, the round's
   epochs and the best round so far); early stopping and the round limit come from the
   `TrainingConfig`; each round's state is written to ``<runs_dir>/<run id>/round-<n>.pt``
   (``bank_node.run_checkpoints``) as soon as it is trained;
3. commits each round once the partner has confirmed it through the control plane (the next
   round's plan, or the closing status) with the same checkpoint digest its data plane reported:
   the round's bank and partner digests are then journaled together;
4. publishes the model the run keeps (its best round) at both sides as one model version
   (``bank_node.model_release``: the bank's registry under ``models_dir``, the partner's through
   the control plane) and journals it with both sides' digests, the test figures and the
   label-leakage attacks measured on the gradients the run sent.

Resuming. When the partner becomes unavailable mid-round (its data-plane stream breaks, a reply
does not come within the reply timeout, or its node does not answer a plan), the run is not
lost: it journals ``interrupted``, waits for the partner to answer again (`ResumePolicy`),
checks it still holds the same alignment, journals ``resumed`` and goes back to the last
committed round at both sides (the bank from its own checkpoint file, the partner from its
memory or, if it was restarted, its checkpoint file); the round that was not committed is
trained again from its start.

Every step is written to the run's `RunJournal` as it happens, so a stopped run leaves its
committed rounds on record; the partner rolls back the round that was streaming.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from bank_node.dataplane_client import DataPlaneClient
from bank_node.model_registry import bank_weights_digest
from bank_node.model_release import Release, release_model
from bank_node.resume import ResumePolicy, wait_for_partner
from bank_node.run_checkpoints import RunCheckpoints
from bank_node.run_journal import RunJournal
from bank_node.trainer import BankTrainer, RoundResult, TrainingResult
from bank_node.training_config import TrainingConfig
from bank_node.training_set import BankTrainingSet
from cobrand.errors import FailedPrecondition, Unavailable
from cobrand.model_store import ModelStore
from cobrand.rounds_protocol import ModelPublication, PartnerStatus, RoundPlan, RunProgress

__all__ = ["Checkpoint", "PartnerControl", "RunOutcome", "holdout_scores_path", "train_run"]

_LOG = logging.getLogger(__name__)


class PartnerControl(Protocol):
    """The partner's side of the control plane, as the bank's driver reaches it."""

    def status(self, run_id: str) -> PartnerStatus:
        """The partner's alignment, bottom width and progress of `run_id`."""

    def plan_round(self, plan: RoundPlan) -> RunProgress:
        """Plan a round at the partner; its progress once planned."""

    def publish(self, publication: ModelPublication) -> bytes:
        """Have the partner save its half of the model version the bank saved.

        Returns the partner's ``manifest_digest`` of the version (32 bytes), for the bank to
        record; publishing the same version again returns the same digest.
        """


@dataclass(frozen=True)
class Checkpoint:
    """A committed round: the digests of both sides' weights at its end (round 0: initial)."""

    round: int
    bank_sha256: bytes
    partner_sha256: bytes


@dataclass(frozen=True)
class RunOutcome:
    """A finished run.

    Attributes
    ----------
    run_id : str
    status : PartnerStatus
        The partner's status checked before round 1.
    training : TrainingResult
    checkpoints : list of Checkpoint
        Every round committed, from round 0.
    model : Checkpoint
        The best round's, the model the run keeps.
    release : Release
        The model version both sides hold.
    """

    run_id: str
    status: PartnerStatus
    training: TrainingResult
    checkpoints: list[Checkpoint]
    model: Checkpoint
    release: Release


def holdout_scores_path(runs_dir: Path, run_id: str) -> Path:
    """Where a run's test rows' scores are kept, for its human report."""
    return runs_dir / f"{run_id}.test-scores.npz"


def bank_digest(trainer: BankTrainer) -> bytes:
    """The digest of the bank's modules, bottom and head, as its model version records it
    (`bank_weights_digest`): round 0's commit and the check of the restored best round use it,
    so a checkpoint naming that drifted from the version's fails the run before it publishes."""
    return bank_weights_digest(trainer.bottom.state_dict(), trainer.head.state_dict())


class _Commits:
    """Rounds the bank has trained, committed as the partner confirms them."""

    def __init__(self, run_id: str, journal: RunJournal) -> None:
        self._run_id = run_id
        self._journal = journal
        self._trained: dict[int, tuple[RoundResult, bytes]] = {}
        self.checkpoints: list[Checkpoint] = []

    @property
    def last(self) -> int:
        """The last round committed, -1 before round 0 is."""
        return len(self.checkpoints) - 1

    def start(self, bank_sha256: bytes, progress: RunProgress) -> None:
        """Round 0: the initial weights of both sides."""
        self.checkpoints = [Checkpoint(0, bank_sha256, progress.checkpoints[0])]

    def trained(self, result: RoundResult, bank_sha256: bytes) -> None:
        self._trained[result.round] = (result, bank_sha256)

    def forget_uncommitted(self) -> None:
        """Drop the rounds trained since the last commit: they will be trained again."""
        self._trained.clear()

    def partner_sha256(self, round_number: int) -> bytes:
        """The partner's digest of a round trained or committed (b"" for round 0 before the
        partner reported it: the run starts afresh)."""
        if round_number in self._trained:
            return self._trained[round_number][0].partner_weights_sha256
        if round_number <= self.last:
            return self.checkpoints[round_number].partner_sha256
        return b""

    def confirm(self, progress: RunProgress) -> None:
        """Commit every trained round the partner's progress confirms."""
        for round_number in sorted(self._trained):
            if round_number > progress.completed_rounds:
                break
            result, bank_sha256 = self._trained.pop(round_number)
            partner_sha256 = progress.checkpoints[round_number]
            if partner_sha256 != result.partner_weights_sha256:
                raise FailedPrecondition(
                    f"run {self._run_id}: the partner's checkpoint of round {round_number} is "
                    f"{partner_sha256.hex()[:12]} on the control plane but was "
                    f"{result.partner_weights_sha256.hex()[:12]} on the data plane"
                )
            self.checkpoints.append(Checkpoint(round_number, bank_sha256, partner_sha256))
            self._journal.write(
                "committed",
                round=round_number,
                bank_sha256=bank_sha256,
                partner_sha256=partner_sha256,
                train_loss=result.train_loss,
                valid_loss=result.valid_loss,
                valid=result.valid,
                seconds=result.seconds,
                bytes_sent=result.bytes_sent,
                bytes_received=result.bytes_received,
            )
            _LOG.info("[Rounds] run %s: round %d committed", self._run_id, round_number)


def train_run(
    run_id: str,
    load_training_set: Callable[[], BankTrainingSet],
    partner: PartnerControl,
    channel: grpc.Channel,
    config: TrainingConfig,
    journal: RunJournal,
    *,
    runs_dir: Path,
    models_dir: Path,
    reply_timeout: float = 5.0,
    resume: ResumePolicy | None = None,
) -> RunOutcome:
    """Run one training run against the partner; see the module docstring.

    Parameters
    ----------
    run_id : str
        The run's id at both sides (the Flower run id).
    load_training_set : callable
        Loads the bank's training set; runs while the partner's status is asked, since each
        takes seconds.
    partner : PartnerControl
    channel : grpc.Channel
        A mutual-TLS channel to partner_node with the bank trainer's certificate.
    config : TrainingConfig
    journal : RunJournal
    runs_dir : Path
        The bank's checkpoints of the run go to ``runs_dir/<run_id>/``, its test rows' scores
        to ``runs_dir/<run_id>.test-scores.npz`` (`holdout_scores_path`).
    models_dir : Path
        The bank's model registry.
    reply_timeout : float
        Seconds the data plane waits for any one partner reply: how soon a hung partner is
        noticed (a dead one breaks the stream at once).
    resume : ResumePolicy, optional
        How long to wait for a partner that went away; the default `ResumePolicy()`.

    Raises
    ------
    FailedPrecondition
        The partner holds another alignment (also after a resume), refused a plan (a checkpoint
        it cannot restore), or reported a checkpoint on one plane that differs from the other.
    Unavailable
        The partner did not come back within the resume policy, or went away once more than
        it allows.
    """
    policy = resume if resume is not None else ResumePolicy()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-training-set") as loader:
        loading = loader.submit(load_training_set)
        status = partner.status(run_id)
        control_seconds = time.perf_counter() - started
        training_set = loading.result()
    _check_alignment(run_id, training_set, status)
    journal.write(
        "checked",
        run_id=run_id,
        alignment=vars(status.alignment),
        partner_preprocessor_sha256=status.preprocessor_sha256,
        partner_embedding_width=status.embedding_width,
        control_seconds=control_seconds,
    )
    commits = _Commits(run_id, journal)
    client = DataPlaneClient(
        channel, run_id=run_id, embedding_width=status.embedding_width, reply_timeout=reply_timeout
    )
    trainer = BankTrainer(training_set.data, training_set.spec, client, config)
    keeper = RunCheckpoints(
        runs_dir, run_id, on_trained=commits.trained, last_committed=lambda: commits.last
    )
    initial = bank_digest(trainer)
    resumes = 0

    def plan_partner_round(round_number: int, learning_rate: float) -> None:
        asked = time.perf_counter()
        plan = RoundPlan(
            run_id,
            round_number,
            config.seed,
            learning_rate,
            epochs=config.epochs_per_round,
            previous_sha256=commits.partner_sha256(round_number - 1),
            best_round=keeper.best_round,
        )
        progress = partner.plan_round(plan)
        if round_number == 1:
            commits.start(initial, progress)
        commits.confirm(progress)
        journal.write(
            "planned",
            round=round_number,
            learning_rate=learning_rate,
            control_seconds=time.perf_counter() - asked,
        )

    def recover(failure: Unavailable, round_number: int) -> int:
        nonlocal resumes
        noticed = time.perf_counter()
        journal.write("interrupted", round=round_number, reason=str(failure))
        _LOG.warning("[Rounds] run %s: partner lost in round %d: %s", run_id, round_number, failure)
        if resumes >= policy.max_resumes:
            raise Unavailable(
                f"run {run_id}: the partner went away {resumes + 1} times; the resume policy "
                f"allows {policy.max_resumes} resumes: {failure}"
            ) from failure
        resumes += 1
        back = wait_for_partner(partner, channel, run_id, policy)
        _check_alignment(run_id, training_set, back)
        if back.embedding_width != status.embedding_width:
            raise FailedPrecondition(
                f"run {run_id}: the partner came back with embedding width "
                f"{back.embedding_width}; the run trains with {status.embedding_width}"
            )
        committed = max(commits.last, 0)
        commits.forget_uncommitted()
        journal.write(
            "resumed",
            from_round=committed,
            round=committed + 1,
            interrupted_round=round_number,
            reason=str(failure),
            waited_seconds=time.perf_counter() - noticed,
        )
        _LOG.warning("[Rounds] run %s: resumed from round %d's checkpoint", run_id, committed)
        return committed

    training = trainer.fit(plan_partner_round, keeper=keeper, recover=recover)
    final = partner.status(run_id).run
    if final is None:
        raise FailedPrecondition(f"run {run_id}: the partner no longer holds the run")
    commits.confirm(final)
    keeper.prune()
    model = commits.checkpoints[training.best_round]
    if bank_digest(trainer) != model.bank_sha256:
        raise FailedPrecondition(
            f"run {run_id}: the bank's restored weights differ from its checkpoint of round "
            f"{training.best_round}"
        )
    release = release_model(
        run_id,
        trainer,
        training_set,
        training.best_round,
        training.test_logits,
        model.partner_sha256,
        status.preprocessor_sha256,
        partner,
        ModelStore(models_dir),
        holdout_scores_path(runs_dir, run_id),
        config.leakage_noise,
    )
    journal.write(
        "finished",
        best_round=training.best_round,
        bank_sha256=model.bank_sha256,
        partner_sha256=model.partner_sha256,
        model_version=release.version_id,
        bank_manifest_sha256=release.bank_manifest_sha256,
        partner_manifest_sha256=release.partner_manifest_sha256,
        privacy=release.privacy,
        test=training.test,
        rounds=len(training.rounds),
        resumes=resumes,
        seconds=training.seconds,
        bytes_sent=training.bytes_sent,
        bytes_received=training.bytes_received,
    )
    return RunOutcome(run_id, status, training, commits.checkpoints, model, release)


def _check_alignment(run_id: str, training_set: BankTrainingSet, status: PartnerStatus) -> None:
    differences = training_set.alignment.differences(status.alignment)
    if differences:
        raise FailedPrecondition(
            f"run {run_id}: the partner holds alignment {status.alignment.run_id!r} and the "
            f"bank {training_set.alignment.run_id!r}; they differ in {', '.join(differences)}. "
            "Align again before training"
        )
