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

Rounds. One round is ``epochs_per_round`` passes over the training rows, each a data-plane
stream of its own. The control plane plans each round at the partner first (the
``plan_partner_round`` callback, later a Flower message); after it the bank scores the
validation rows through an embedding pass with that round's partner weights, and stops once the
validation loss has not improved for ``patience`` rounds, going back to the best round's weights
at both sides for the test figures.

Checkpoints and resuming. After each round the trainer hands its whole state to a `RoundKeeper`
(``bank_node.round_state``), in memory by default or on disk (``bank_node.run_checkpoints``).
When the partner becomes unavailable mid-round and a ``recover`` callback is given, the callback
waits for the partner and names the round to go back to; the trainer restores that round's
state from the keeper and trains the following rounds again, exactly as it would have.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from bank_node.dataplane_client import DataPlaneClient, PartnerPassSummary, PassStream
from bank_node.evaluation import TaskMetrics, task_metrics, total_loss
from bank_node.leakage import GradientRecorder, LabelNoise
from bank_node.model_registry import bank_weights
from bank_node.round_state import BankState, EarlyStopping, MemoryRounds, RoundKeeper
from bank_node.training_config import TrainingConfig
from bank_node.training_data import TEST, TRAIN, VALID, BankTrainingData
from cobrand.errors import FailedPrecondition, Unavailable
from cobrand.split_model import BottomModel, BottomSpec, HeadModel

__all__ = [
    "BankTrainer",
    "PathLogits",
    "PlanPartnerRound",
    "Recover",
    "RoundResult",
    "TrainingResult",
]

_LOG = logging.getLogger(__name__)

# Embedding passes have no gradients to wait for; a few batches in flight keep the partner busy.
_EMBED_DEPTH = 4

PathLogits = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
"""Per task, rows' logits through the full model and through its bank-only path."""

PlanPartnerRound = Callable[[int, float], None]
"""Plans round ``r`` with learning rate ``lr`` at the partner, before the bank streams it."""

Recover = Callable[[Unavailable, int], int]
"""Called with the failure when the partner became unavailable in round ``r``: waits for the
partner to answer again and returns the round to continue after (raises when it cannot)."""


@dataclass(frozen=True)
class RoundResult:
    """One round: its training pass, then the validation figures.

    Attributes
    ----------
    round : int
    train_loss : float
        Mean training objective over the round's batches.
    valid_loss : float
        Training objective on the validation rows (both paths weighed as partner-slice dropout
        weighs them), what early stopping watches.
    valid : TaskMetrics
    seconds : float
        The training passes.
    bytes_sent, bytes_received : int
        Serialized data-plane messages of the training passes, each way.
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
    test_logits : PathLogits
        The logits those figures come from, test rows in aligned order (after a resume, the
        final evaluation's): the run's test scores without streaming the rows again.
    seconds : float
        Training and evaluation, all rounds.
    bytes_sent, bytes_received : int
        Every data-plane message of the run, each way.
    """

    best_round: int
    rounds: list[RoundResult]
    test: TaskMetrics
    test_logits: PathLogits
    seconds: float
    bytes_sent: int
    bytes_received: int


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
        self._defence = LabelNoise(config.leakage_noise, seed=config.seed)
        self.sent = GradientRecorder()
        """The gradients sent in the run's first and latest training pass (by round and
        epoch), for the leakage figures of the run's report."""

    def fit(
        self,
        plan_partner_round: PlanPartnerRound,
        *,
        keeper: RoundKeeper | None = None,
        recover: Recover | None = None,
    ) -> TrainingResult:
        """Train round by round with early stopping, then score the test rows.

        Runs torch in the calling thread with ``config.torch_threads`` intra-op threads.

        Parameters
        ----------
        plan_partner_round : PlanPartnerRound
        keeper : RoundKeeper, optional
            Where each round's state goes (round 0 first); in memory by default.
        recover : Recover, optional
            Without it, a partner that becomes unavailable (in a round or in the test
            evaluation) ends the run.

        Raises
        ------
        Unavailable
            The partner stopped answering or its stream broke (within the reply timeout), and
            there is no `recover` or it gave up.
        CobrandError
            The partner refused a pass or a step.
        """
        torch.set_num_threads(self._config.torch_threads)
        keeper = keeper if keeper is not None else MemoryRounds()
        started = time.perf_counter()
        traffic = self._partner.traffic
        sent, received = traffic.bytes_sent, traffic.bytes_received
        rounds: list[RoundResult] = []
        # Round 0 is the initial weights, which the partner also keeps.
        stopping = EarlyStopping()
        keeper.keep(self.state(0, stopping), None)
        round_number = 1
        test: tuple[TaskMetrics, PathLogits] | None = None
        while test is None:
            training = round_number <= self._config.max_rounds and not stopping.stops(
                round_number - 1, self._config.patience
            )
            try:
                if training:
                    rate = stopping.learning_rate(self._config.learning_rate, round_number)
                    for group in self._optimizer.param_groups:
                        group["lr"] = rate
                    plan_partner_round(round_number, rate)
                    result = self.train_round(round_number)
                    rounds.append(result)
                    stopping = stopping.after(result)
                    keeper.keep(self.state(round_number, stopping), result)
                    round_number += 1
                else:
                    best = keeper.read(stopping.best_round)
                    self._load_weights(best.weights)
                    metrics, _, logits = self.evaluate(TEST, best.round)
                    test = metrics, logits
            except Unavailable as exc:
                if recover is None:
                    raise
                # Lost in the test evaluation, the last round is not committed yet either.
                lost_in = round_number if training else round_number - 1
                resumed = keeper.restore(recover(exc, lost_in))
                self.load_state(resumed)
                stopping = resumed.stopping
                del rounds[resumed.round :]
                round_number = resumed.round + 1
        return TrainingResult(
            best_round=stopping.best_round,
            rounds=rounds,
            test=test[0],
            test_logits=test[1],
            seconds=time.perf_counter() - started,
            bytes_sent=traffic.bytes_sent - sent,
            bytes_received=traffic.bytes_received - received,
        )

    def weights(self) -> dict[str, torch.Tensor]:
        """The bottom's (``bottom.*``) and the head's (``head.*``) weights, as one checkpoint
        names them (views of the live tensors).

        Named by `bank_node.model_registry.bank_weights`, as a model version's digest names
        them, so a committed checkpoint's digest is the model version's.
        """
        return bank_weights(self.bottom.state_dict(), self.head.state_dict())

    def state(self, round_number: int, stopping: EarlyStopping) -> BankState:
        """The trainer's state now, as the end of `round_number` (copies, not views)."""
        return BankState(
            round=round_number,
            weights={name: tensor.detach().clone() for name, tensor in self.weights().items()},
            optimizer=copy.deepcopy(self._optimizer.state_dict()),
            generator=self._generator.get_state(),
            stopping=stopping,
        )

    def load_state(self, state: BankState) -> None:
        """Continue from `state`: weights, optimizer and generator."""
        self._load_weights(state.weights)
        self._optimizer.load_state_dict(copy.deepcopy(state.optimizer))
        self._generator.set_state(state.generator)

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        for prefix, module in (("bottom.", self.bottom), ("head.", self.head)):
            module.load_state_dict(
                {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
            )

    def train_round(self, round_number: int) -> RoundResult:
        """The round's passes over the training rows, each in a seeded random order; then
        validation."""
        traffic = self._partner.traffic
        sent, received = traffic.bytes_sent, traffic.bytes_received
        started = time.perf_counter()
        losses: list[float] = []
        summary = None
        self._defence.start_round(round_number)
        for epoch in range(self._config.epochs_per_round):
            summary = self._train_pass(round_number, epoch, losses)
        assert summary is not None  # epochs_per_round >= 1
        seconds = time.perf_counter() - started
        pass_sent, pass_received = traffic.bytes_sent - sent, traffic.bytes_received - received
        valid, valid_loss, _ = self.evaluate(VALID, round_number)
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

    def _train_pass(self, round_number: int, epoch: int, losses: list[float]) -> PartnerPassSummary:
        """One pass over the training rows in a seeded random order."""
        config = self._config
        rows = np.flatnonzero(self._data.split == TRAIN)
        order = rows[torch.randperm(len(rows), generator=self._generator).numpy()]
        batches = [
            order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
        ]

        def step(k: int, partner: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            gradient, loss = self._train_step(batches[k], partner)
            losses.append(loss)
            return gradient

        self.bottom.train()
        self.head.train()
        # Dropout draws from torch's process-wide generator, seeded here from the run's seed, the
        # round and the epoch (as the partner seeds its side), so a run repeats exactly when the
        # parties run in their own processes, and a round trained again after a resume too.
        with (
            torch.random.fork_rng(devices=[]),
            self._partner.open_pass(round_number, train=True) as stream,
        ):
            torch.manual_seed(
                int(np.random.SeedSequence([config.seed, round_number, epoch]).generate_state(1)[0])
            )
            self.sent.start_pass(round_number, epoch)
            _stream_batches(stream, batches, config.pipeline_depth, step)
            return stream.close()

    def evaluate(self, split: int, partner_round: int) -> tuple[TaskMetrics, float, PathLogits]:
        """Figures, objective and logits of one split's rows (in aligned order), with a
        completed round's partner weights."""
        rows = np.flatnonzero(self._data.split == split)
        full, bank_only = self.logits(rows, partner_round)
        labels = {task: values[rows] for task, values in self._labels.items()}
        # The objective training minimises, in expectation: the partner slice is hidden for a
        # `partner_dropout` share of rows, so early stopping weighs the bank-only path alike.
        hidden = self._config.partner_dropout
        objective = (1 - hidden) * total_loss(full, labels) + hidden * total_loss(bank_only, labels)
        return task_metrics(full, bank_only, labels), float(objective), (full, bank_only)

    def logits(self, rows: npt.NDArray[np.int64], partner_round: int) -> PathLogits:
        """Per task, the logits of aligned `rows` through the full model (with a completed
        round's partner embeddings) and through its bank-only path."""
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
        return full, bank_only

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
        """One optimizer step of the bank's modules; returns what the partner gets: d loss /
        d partner embedding, plus the label-leakage defence's noise."""
        partner_embedding = torch.from_numpy(partner).requires_grad_()
        hidden = torch.rand(len(rows), generator=self._generator) < self._config.partner_dropout
        labels = {task: values[rows] for task, values in self._labels.items()}
        bank = self.bottom(self._numeric[rows], self._categorical[rows])
        outputs = self.head(bank, partner_embedding, hidden)
        loss = total_loss(outputs, labels)
        if not torch.isfinite(loss):
            # Stop before a NaN gradient reaches the partner's weights (and before the
            # partner refuses it).
            # The step ran at the round's rate, which early stopping may have halved.
            rate = self._optimizer.param_groups[0]["lr"]
            raise FailedPrecondition(
                f"training diverged: the loss of a batch is {loss.item()}; lower the learning "
                f"rate (now {rate:g})"
            )
        # Drawn before the backward pass frees the head's graph; the bank's own step is exact.
        noise = self._defence.noise(outputs, labels, partner_embedding)
        self._optimizer.zero_grad()
        torch.autograd.backward(loss)
        self._optimizer.step()
        assert partner_embedding.grad is not None
        gradient: npt.NDArray[np.float32] = (partner_embedding.grad + noise).numpy()
        self.sent.record(rows, gradient)
        return gradient, loss.item()


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
