"""The bank's side of split-learning training: bank bottom, head and losses, round by round.

A `BankTrainer` trains over the bank's aligned rows (`BankTrainingData`: row i is aligned
position i, the same customer as the partner's row i). The labels, the bank bottom, the head
and the loss never leave it; for every batch it sends the partner the batch's aligned positions,
receives the partner's embeddings, and sends back the gradient of the loss with respect to them
(`bank_node.dataplane_client`).

Pipelining. With ``pipeline_depth=2`` (the default) the bank asks for batch k+1 before it
computes batch k, so the partner's compute and the transport hide behind the bank's compute; the
partner's update is then one optimizer step stale (each embedding comes from weights that have
not yet seen the previous batch's gradient). ``pipeline_depth=1`` waits for each embedding:
slower, and exactly the same updates as training the joined network in one process.

Partner-slice dropout. For a share of training rows (``partner_dropout``) the head's
partner-missing flag is set, so the same model learns to score from the bank's slice alone:
customers the partner does not know, and a partner that is down at scoring time.

Rounds. One round is one pass over the training rows. The control plane plans each round at
the partner first (the ``plan_partner_round`` callback, later a Flower message); after it the
bank scores the validation rows through an embedding pass with that round's partner weights,
and stops once the validation loss has not improved for ``patience`` rounds, going back to the
best round's weights at both sides for the test figures.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field

from bank_node.dataplane_client import DataPlaneClient, PassStream
from bank_node.evaluation import TaskMetrics, task_metrics, total_loss
from bank_node.training_data import TEST, TRAIN, VALID, BankTrainingData
from cobrand.errors import FailedPrecondition
from cobrand.settings import Section
from cobrand.split_model import BottomModel, BottomSpec, HeadModel

__all__ = ["BankTrainer", "PlanPartnerRound", "RoundResult", "TrainingConfig", "TrainingResult"]

_LOG = logging.getLogger(__name__)

# Embedding passes have no gradients to wait for; a few batches in flight keep the partner busy.
_EMBED_DEPTH = 4

PlanPartnerRound = Callable[[int, float], None]
"""Plans round ``r`` with learning rate ``lr`` at the partner, before the bank streams it."""


class TrainingConfig(Section):
    """How the bank trains (the round plan's bank half).

    Attributes
    ----------
    max_rounds : int
        Rounds (passes over the training rows) at most.
    patience : int
        Stop after this many rounds without a better validation loss.
    batch_size : int
    learning_rate : float
        Adam's, for the bank's modules and in the partner's round plan.
    partner_dropout : float
        Share of training rows whose partner slice is hidden from the head.
    pipeline_depth : int
        Batches in flight: 1 synchronous (exact), 2 one batch ahead (one step stale).
    head_hidden : int
    head_dropout : float
    seed : int
        Seeds the bank's weights, the batch order and the partner-slice dropout.
    eval_batch_size : int
    torch_threads : int
        Intra-op threads of the thread that trains; one keeps two parties on one machine
        from fighting over cores.
    """

    max_rounds: Annotated[int, Field(ge=1)] = 20
    patience: Annotated[int, Field(ge=1)] = 3
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 256
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    partner_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    pipeline_depth: Annotated[int, Field(ge=1, le=4)] = 2
    head_hidden: Annotated[int, Field(ge=1)] = 64
    head_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    seed: Annotated[int, Field(ge=0)] = 0
    eval_batch_size: Annotated[int, Field(ge=1, le=65_536)] = 4096
    torch_threads: Annotated[int, Field(ge=1)] = 1


@dataclass(frozen=True)
class RoundResult:
    """One round: its training pass, then the validation figures.

    Attributes
    ----------
    round : int
    train_loss : float
        Mean training objective over the pass's batches.
    valid_loss : float
        Training objective on the validation rows (full model), what early stopping watches.
    valid : TaskMetrics
    seconds : float
        The training pass.
    bytes_sent, bytes_received : int
        Serialized data-plane messages of the training pass, each way.
    partner_weights_sha256 : bytes
        The partner bottom's weights at the end of the round, as the partner reported them.
    """

    round: int
    train_loss: float
    valid_loss: float
    valid: TaskMetrics
    seconds: float
    bytes_sent: int
    bytes_received: int
    partner_weights_sha256: bytes


@dataclass(frozen=True)
class TrainingResult:
    """A finished training run.

    Attributes
    ----------
    best_round : int
        The round whose weights (at both sides) the model keeps.
    rounds : list of RoundResult
    test : TaskMetrics
        The best round's figures on the test rows.
    seconds : float
        Training and evaluation, all rounds.
    bytes_sent, bytes_received : int
        Every data-plane message of the run, each way.
    """

    best_round: int
    rounds: list[RoundResult]
    test: TaskMetrics
    seconds: float
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class _Best:
    round: int
    loss: float
    state: dict[str, Any]


class BankTrainer:
    """Trains the bank's bottom and head with the partner over the data plane.

    Parameters
    ----------
    data : BankTrainingData
    bank_spec : BottomSpec
        The bank bottom's shape (from the bank's preprocessor).
    partner : DataPlaneClient
        The data plane of this run; its embedding width is the partner bottom's.
    config : TrainingConfig
    """

    def __init__(
        self,
        data: BankTrainingData,
        bank_spec: BottomSpec,
        partner: DataPlaneClient,
        config: TrainingConfig,
    ) -> None:
        self._data = data
        self._partner = partner
        self._config = config
        self._numeric = torch.from_numpy(data.features.numeric)
        self._categorical = torch.from_numpy(data.features.categorical)
        self._labels = {task: torch.from_numpy(data.labels[task]) for task in data.tasks}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.bottom = BottomModel(bank_spec)
            self.head = HeadModel(
                bank_spec.embedding_width,
                partner.embedding_width,
                data.tasks,
                hidden=config.head_hidden,
                dropout=config.head_dropout,
            )
        parameters = [*self.bottom.parameters(), *self.head.parameters()]
        self._optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
        self._generator = torch.Generator().manual_seed(config.seed)

    def fit(self, plan_partner_round: PlanPartnerRound) -> TrainingResult:
        """Train round by round with early stopping, then score the test rows.

        Runs torch in the calling thread with ``config.torch_threads`` intra-op threads.

        Raises
        ------
        Unavailable
            The partner stopped answering or its stream broke (within the reply timeout).
        CobrandError
            The partner refused a pass or a step.
        """
        torch.set_num_threads(self._config.torch_threads)
        started = time.perf_counter()
        traffic = self._partner.traffic
        sent, received = traffic.bytes_sent, traffic.bytes_received
        rounds: list[RoundResult] = []
        # Round 0 is the initial weights, which the partner also keeps.
        best = _Best(0, float("inf"), self._state())
        for round_number in range(1, self._config.max_rounds + 1):
            plan_partner_round(round_number, self._config.learning_rate)
            result = self.train_round(round_number)
            rounds.append(result)
            if result.valid_loss < best.loss:
                best = _Best(round_number, result.valid_loss, self._state())
            elif round_number - best.round >= self._config.patience:
                break
        self.bottom.load_state_dict(best.state["bottom"])
        self.head.load_state_dict(best.state["head"])
        test, _ = self.evaluate(TEST, best.round)
        return TrainingResult(
            best_round=best.round,
            rounds=rounds,
            test=test,
            seconds=time.perf_counter() - started,
            bytes_sent=traffic.bytes_sent - sent,
            bytes_received=traffic.bytes_received - received,
        )

    def train_round(self, round_number: int) -> RoundResult:
        """One pass over the training rows in a seeded random order, then validation."""
        config = self._config
        rows = np.flatnonzero(self._data.split == TRAIN)
        order = rows[torch.randperm(len(rows), generator=self._generator).numpy()]
        batches = [
            order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
        ]
        traffic = self._partner.traffic
        sent, received = traffic.bytes_sent, traffic.bytes_received
        losses: list[float] = []

        def step(k: int, partner: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            gradient, loss = self._train_step(batches[k], partner)
            losses.append(loss)
            return gradient

        started = time.perf_counter()
        self.bottom.train()
        self.head.train()
        # Dropout draws from torch's process-wide generator, seeded here from the run's seed and
        # the round, so a run repeats exactly when the parties run in their own processes.
        with (
            torch.random.fork_rng(devices=[]),
            self._partner.open_pass(round_number, train=True) as stream,
        ):
            torch.manual_seed(
                int(np.random.SeedSequence([config.seed, round_number]).generate_state(1)[0])
            )
            _stream_batches(stream, batches, config.pipeline_depth, step)
            summary = stream.close()
        seconds = time.perf_counter() - started
        pass_sent, pass_received = traffic.bytes_sent - sent, traffic.bytes_received - received
        valid, valid_loss = self.evaluate(VALID, round_number)
        _LOG.info(
            "[BankTrainer] round %d: train loss %.4f, valid loss %.4f, %.2f s",
            round_number,
            float(np.mean(losses)),
            valid_loss,
            seconds,
        )
        return RoundResult(
            round=round_number,
            train_loss=float(np.mean(losses)),
            valid_loss=valid_loss,
            valid=valid,
            seconds=seconds,
            bytes_sent=pass_sent,
            bytes_received=pass_received,
            partner_weights_sha256=summary.weights_sha256,
        )

    def evaluate(self, split: int, partner_round: int) -> tuple[TaskMetrics, float]:
        """Figures and objective on one split's rows, with a completed round's partner weights."""
        rows = np.flatnonzero(self._data.split == split)
        partner = torch.from_numpy(self.partner_embeddings(rows, partner_round))
        self.bottom.eval()
        self.head.eval()
        size = self._config.eval_batch_size
        paths: dict[str, list[dict[str, torch.Tensor]]] = {"full": [], "bank_only": []}
        with torch.no_grad():
            # In batches: the numeric encodings of a whole large split would not fit in memory.
            for start in range(0, len(rows), size):
                chunk = torch.from_numpy(rows[start : start + size])
                bank = self.bottom(self._numeric[chunk], self._categorical[chunk])
                present = torch.zeros(len(chunk), dtype=torch.bool)
                embeddings = partner[start : start + size]
                paths["full"].append(self.head(bank, embeddings, present))
                paths["bank_only"].append(self.head(bank, torch.zeros_like(embeddings), ~present))
        full, bank_only = (
            {task: torch.cat([part[task] for part in parts]) for task in self._labels}
            for parts in paths.values()
        )
        labels = {task: values[rows] for task, values in self._labels.items()}
        return task_metrics(full, bank_only, labels), float(total_loss(full, labels))

    def partner_embeddings(
        self, positions: npt.NDArray[np.int64], partner_round: int
    ) -> npt.NDArray[np.float32]:
        """The partner's embeddings of aligned `positions` with a completed round's weights."""
        size = self._config.eval_batch_size
        batches = [positions[i : i + size] for i in range(0, len(positions), size)]
        parts: list[npt.NDArray[np.float32]] = []

        def keep(k: int, partner: npt.NDArray[np.float32]) -> None:
            parts.append(partner)

        with self._partner.open_pass(partner_round, train=False) as stream:
            _stream_batches(stream, batches, _EMBED_DEPTH, keep)
            stream.close()
        return np.concatenate(parts)

    def _train_step(
        self, rows: npt.NDArray[np.int64], partner: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], float]:
        """One optimizer step of the bank's modules; returns d loss / d partner embedding."""
        partner_embedding = torch.from_numpy(partner).requires_grad_()
        hidden = torch.rand(len(rows), generator=self._generator) < self._config.partner_dropout
        labels = {task: values[rows] for task, values in self._labels.items()}
        bank = self.bottom(self._numeric[rows], self._categorical[rows])
        loss = total_loss(self.head(bank, partner_embedding, hidden), labels)
        if not torch.isfinite(loss):
            # Stop before a NaN gradient reaches the partner's weights (and before the
            # partner refuses it).
            raise FailedPrecondition(
                f"training diverged: the loss of a batch is {loss.item()}; lower the learning "
                f"rate (now {self._config.learning_rate:g})"
            )
        self._optimizer.zero_grad()
        torch.autograd.backward(loss)
        self._optimizer.step()
        assert partner_embedding.grad is not None
        gradient: npt.NDArray[np.float32] = partner_embedding.grad.numpy()
        return gradient, loss.item()

    def _state(self) -> dict[str, Any]:
        return copy.deepcopy({"bottom": self.bottom.state_dict(), "head": self.head.state_dict()})


def _stream_batches(
    stream: PassStream,
    batches: list[npt.NDArray[np.int64]],
    depth: int,
    handle: Callable[[int, npt.NDArray[np.float32]], npt.NDArray[np.float32] | None],
) -> None:
    """Keep `depth` batches in flight: after each embedding, send its gradient (if `handle`
    returns one) together with the batch `depth` steps ahead."""
    for k in range(min(depth, len(batches))):
        stream.send(positions=batches[k])
    for k in range(len(batches)):
        gradient = handle(k, stream.receive())
        ahead = batches[k + depth] if k + depth < len(batches) else None
        if gradient is not None or ahead is not None:
            stream.send(positions=ahead, gradient=gradient)
