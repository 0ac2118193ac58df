"""How the bank trains a run: `TrainingConfig`, the round plan's bank half.

Its fields are the job file's ``training`` keys (``bank_node.training_job``) and the Flower run
config's keys (``bank_node/flower_app``), with the same defaults and limits.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cobrand.settings import Section

__all__ = ["TrainingConfig"]


class TrainingConfig(Section):
    """How the bank trains (the round plan's bank half).

    Attributes
    ----------
    max_rounds : int
        Rounds at most.
    epochs_per_round : int
        Passes over the training rows in one round: the round's checkpoint, validation and
        early stopping come after the last of them.
    patience : int
        Stop after this many rounds without a better validation loss.
    batch_size : int
    learning_rate : float
        Adam's, for the bank's modules and in the partner's round plan; halved for each round
        since the best one (`EarlyStopping.learning_rate`).
    partner_dropout : float
        Share of training rows whose partner slice is hidden from the head.
    pipeline_depth : int
        Batches in flight: 1 synchronous (exact), 2 one batch ahead (one step stale).
    head_hidden : int
    head_dropout : float
    seed : int
        Seeds the bank's weights, the batch order, the partner-slice dropout and the label
        noise.
    leakage_noise : float
        The label-leakage defence (`bank_node.leakage.LabelNoise`): the half-width of the
        zero-mean noise added to every gradient sent to the partner, in units of one label's
        effect on it; 0 turns the defence off.
    eval_batch_size : int
    torch_threads : int
        Intra-op threads of the thread that trains; one keeps two parties on one machine
        from fighting over cores.
    """

    max_rounds: Annotated[int, Field(ge=1)] = 20
    epochs_per_round: Annotated[int, Field(ge=1)] = 1
    patience: Annotated[int, Field(ge=1)] = 3
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 256
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    partner_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    pipeline_depth: Annotated[int, Field(ge=1, le=4)] = 2
    head_hidden: Annotated[int, Field(ge=1)] = 64
    head_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    seed: Annotated[int, Field(ge=0)] = 0
    leakage_noise: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 2.0
    eval_batch_size: Annotated[int, Field(ge=1, le=65_536)] = 4096
    torch_threads: Annotated[int, Field(ge=1)] = 1
