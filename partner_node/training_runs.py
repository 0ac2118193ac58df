"""The partner's side of the control plane: which training run the node serves, round by round.

The bank's ServerApp plans each round through Flower; the partner's ClientApp hands the plan to
this long-lived node (``partner_node.rounds_service``), where `TrainingRuns` starts the run at
round 1 (a new `PartnerTrainer` over the aligned rows, attached to the data plane) and plans every
later round in it, so the bank's data-plane pass of that round is accepted. The aligned rows come
from a `TrainingSetSource`, loaded once per alignment and kept: torch, the model and the data live
in this process, not in the ClientApp Flower starts for every message.

Only one run is served at a time: round 1 of a new run replaces the previous one in memory. A
round's checkpoint is the trainer's, written under ``<data_dir>/runs/<run id>/``
(``partner_node.run_checkpoints``); a pass that does not finish rolls the weights back to the
last completed round (``partner_node.trainer``).

Resuming. Every plan after round 1 names the checkpoint digest of the round it continues from.
A node restarted mid-run (its operator, a crash) holds no run in memory; asked to plan round
k+1, it restores the run from round k's checkpoint file, which must hold that digest and have
been trained on the alignment and preprocessing the node holds now, or the plan is refused
with `FailedPrecondition` naming the file.

Publishing. Once the bank has saved its half of the model version it keeps, it asks the partner
to save its own (`TrainingRuns.publish`): the bottom weights of the round the bank chose, from
the run held in memory or, after a restart, from that round's checkpoint file (read as a resume
reads it), with the preprocessing the run trained with, into the partner's registry
``<data_dir>/models`` (``partner_node.model_registry``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cobrand.errors import FailedPrecondition, InvalidRequest
from cobrand.model_store import ModelStore
from cobrand.preprocess import Encoded, Preprocessor
from cobrand.rounds_protocol import (
    AlignmentVersion,
    ModelPublication,
    PartnerStatus,
    RoundPlan,
    RunProgress,
)
from cobrand.split_model import BottomSpec
from partner_node import model_registry
from partner_node.dataplane_service import DataPlaneService
from partner_node.run_checkpoints import Restore, RunCheckpoints
from partner_node.trainer import PartnerTrainer

__all__ = ["PartnerTrainingSet", "TrainingRuns", "TrainingSetSource"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartnerTrainingSet:
    """The partner's aligned rows of one alignment, ready to train on.

    Attributes
    ----------
    alignment : AlignmentVersion
        The alignment the rows are ordered by: row i is aligned position i.
    features : Encoded
        The partner's encoded features of the aligned rows.
    spec : BottomSpec
        The partner bottom's shape.
    preprocessor : Preprocessor
        The fitted preprocessing that encoded `features`.
    """

    alignment: AlignmentVersion
    features: Encoded
    spec: BottomSpec
    preprocessor: Preprocessor

    @functools.cached_property
    def preprocessor_sha256(self) -> bytes:
        """The version of the preprocessing (`Preprocessor.digest`)."""
        return self.preprocessor.digest()


TrainingSetSource = Callable[[], PartnerTrainingSet]
"""The training set of the partner's current alignment (cached by the source between calls).

Raises ``NotFound`` before any alignment and ``FailedPrecondition`` for one the table no longer
matches."""


@dataclass
class _Run:
    trainer: PartnerTrainer
    seed: int
    # What the run trains on: a later alignment does not change the run in progress.
    training_set: PartnerTrainingSet
    planned: int = 0


class TrainingRuns:
    """Starts and plans the partner's training runs.

    Parameters
    ----------
    source : TrainingSetSource
    dataplane : DataPlaneService
        The data plane each started run is attached to.
    runs_dir : Path
        Where each run's checkpoints are written, ``<data_dir>/runs``.
    models_dir : Path, optional
        The partner's model registry; ``<data_dir>/models`` (beside `runs_dir`) by default.
    max_pending_steps : int
        The pipeline depth each run's trainer accepts (see `PartnerTrainer`).
    """

    def __init__(
        self,
        source: TrainingSetSource,
        dataplane: DataPlaneService,
        *,
        runs_dir: Path,
        models_dir: Path | None = None,
        max_pending_steps: int = 4,
    ) -> None:
        self._source = source
        self._dataplane = dataplane
        self._runs_dir = runs_dir
        self._models = ModelStore(models_dir or runs_dir.parent / "models")
        self._max_pending_steps = max_pending_steps
        self._run: _Run | None = None
        # Two runs' messages may arrive at once; starting and planning must not interleave.
        self._lock = threading.Lock()

    def status(self, run_id: str) -> PartnerStatus:
        """The partner's alignment, bottom shape and, if it holds it, the progress of `run_id`."""
        training_set = self._source()
        with self._lock:
            run = self._run if self._run and self._run.trainer.run_id == run_id else None
            progress = _progress(run) if run else None
        return PartnerStatus(
            alignment=training_set.alignment,
            preprocessor_sha256=training_set.preprocessor_sha256,
            embedding_width=training_set.spec.embedding_width,
            run=progress,
        )

    def plan_round(self, plan: RoundPlan) -> RunProgress:
        """Plan `plan.round` of its run; round 1 without a previous checkpoint starts the run.

        Raises
        ------
        FailedPrecondition
            A round the trainer cannot continue to (the trainer's check), or a run the partner
            does not hold whose named checkpoint it cannot restore (`RunCheckpoints.read`).
        InvalidRequest
            A seed other than the run's, or a run id that cannot name a directory.
        """
        with self._lock:
            held = self._run
            run = held if held is not None and held.trainer.run_id == plan.run_id else None
            if run is None:
                run = self._start(plan)
            if plan.seed != run.seed:
                raise InvalidRequest(
                    f"run {plan.run_id!r} started with seed {run.seed}; round {plan.round} "
                    f"names seed {plan.seed}"
                )
            run.trainer.plan_round(
                plan.round,
                learning_rate=plan.learning_rate,
                epochs=plan.epochs,
                previous_sha256=plan.previous_sha256 or None,
                best_round=plan.best_round,
            )
            run.planned = plan.round
            _LOG.info("[PartnerRounds.PlanRound] run %s: round %d planned", plan.run_id, plan.round)
            return _progress(run)

    def publish(self, publication: ModelPublication) -> bytes:
        """Save the partner's half of the model version the bank saved; its manifest digest.

        The weights are those of ``publication.round`` of the run: held in memory, or read from
        that round's checkpoint file when the node no longer holds the run (it was restarted,
        or another run started since). Publishing a version again returns the same digest.

        Raises
        ------
        FailedPrecondition
            The round has not completed or is no longer kept (in memory or on disk), or its
            checkpoint file is not ``partner_weights_sha256``; or, as `model_registry.publish`
            checks, its weights are not ``partner_weights_sha256``, the run trained on other
            preprocessing than ``partner_preprocessor_sha256``, or the version was published
            before with another bank manifest.
        InvalidRequest
            A run id that cannot name a directory.
        """
        what = (
            f"model version {publication.version_id} (run {publication.run_id!r}, "
            f"round {publication.round})"
        )
        with self._lock:
            training_set, weights = self._round_weights(publication, what)
        return model_registry.publish(
            self._models,
            publication.version_id,
            publication.digests,
            publication.bank_manifest_sha256,
            weights=weights,
            spec=training_set.spec,
            preprocessor=training_set.preprocessor,
        )

    def _round_weights(
        self, publication: ModelPublication, what: str
    ) -> tuple[PartnerTrainingSet, Mapping[str, torch.Tensor]]:
        """What the publication's run trained on, and the weights its round ended with.

        Whether they are the ones the publication names is `model_registry.publish`'s check.
        """
        held = self._run
        if held is not None and held.trainer.run_id == publication.run_id:
            try:
                return held.training_set, held.trainer.round_weights(publication.round)
            except FailedPrecondition as err:
                raise FailedPrecondition(f"{what}: {err}") from err
        # Not held (a restart, or another run since): the checks of a resume, on the same file.
        expected = bytes.fromhex(publication.digests.partner_weights_sha256)
        training_set = self._source()
        try:
            saved = self._checkpoints(publication.run_id, training_set).read(
                publication.round, expected
            )
        except FailedPrecondition as err:
            raise FailedPrecondition(
                f"{what}: partner_weights_sha256 {expected.hex()[:12]}: {err}"
            ) from err
        return training_set, saved.weights

    def _checkpoints(self, run_id: str, training_set: PartnerTrainingSet) -> RunCheckpoints:
        """The checkpoint files of `run_id`, trained on `training_set`'s rows and preprocessing."""
        alignment = training_set.alignment
        return RunCheckpoints(
            self._runs_dir,
            run_id,
            {
                "alignment": f"{alignment.run_id}/{alignment.intersection_sha256.hex()}",
                "preprocessing": training_set.preprocessor_sha256.hex(),
            },
        )

    def _start(self, plan: RoundPlan) -> _Run:
        """Start `plan`'s run, or restore it from the checkpoint the plan continues from."""
        training_set = self._source()
        alignment = training_set.alignment
        checkpoints = self._checkpoints(plan.run_id, training_set)
        restore = (
            Restore(plan.round - 1, plan.previous_sha256, plan.best_round)
            if plan.previous_sha256
            else None
        )
        trainer = PartnerTrainer(
            plan.run_id,
            training_set.features,
            training_set.spec,
            seed=plan.seed,
            max_pending_steps=self._max_pending_steps,
            checkpoints=checkpoints,
            restore=restore,
        )
        if self._run is not None:
            _LOG.warning(
                "[PartnerRounds.PlanRound] run %s replaces run %s",
                plan.run_id,
                self._run.trainer.run_id,
            )
        self._run = _Run(trainer, plan.seed, training_set)
        self._dataplane.attach(trainer)
        _LOG.info(
            "[PartnerRounds.PlanRound] run %s %s on %d aligned rows (alignment %s)",
            plan.run_id,
            f"resumed after round {restore.round}" if restore else "started",
            trainer.rows,
            alignment.run_id,
        )
        return self._run


def _progress(run: _Run) -> RunProgress:
    trainer = run.trainer
    return RunProgress(
        run_id=trainer.run_id,
        checkpoints=trainer.history,
        planned_round=run.planned if run.planned > trainer.completed_rounds else 0,
    )
