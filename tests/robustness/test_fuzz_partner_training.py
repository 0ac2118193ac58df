"""Hostile input to the partner node's training services over mutual TLS on loopback: the round
hand-off (PartnerRounds, from the partner's own ClientApp certificate) and the training data
plane (TrainingDataPlane, from the bank trainer's). Every call ends with a clear status naming
the field it refuses, never a crash, a stack trace or a hung call, and the node plans rounds and
streams passes afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cobrand.model_manifest import ModelDigests
from cobrand.tensor_wire import EXCHANGE_METHOD, pack_positions
from cobrand.v1 import rounds_pb2, rounds_pb2_grpc
from cobrand.v1 import training_pb2 as pb
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.robustness.conftest import Figures
from tests.robustness.hostile import (
    CALL_TIMEOUT_S,
    Tally,
    binary,
    enum_numbers,
    floats,
    fuzz,
    hostile_channel,
    mutated,
    texts,
    uint32s,
    uint64s,
)

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

Code = grpc.StatusCode
FUZZ: Final = fuzz(60)
_RUN: Final = "fuzz-run"
_WIDTH: Final = 4
_DIGEST: Final = st.binary(min_size=32, max_size=32)


@pytest.fixture(scope="module")
def rounds(throwaway_pki: ThrowAwayPki, partner_node: PartnerNode) -> Iterator[Any]:
    with hostile_channel(partner_node.port, throwaway_pki.tls("partner")) as channel:
        yield rounds_pb2_grpc.PartnerRoundsStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def trainer_channel(
    throwaway_pki: ThrowAwayPki, partner_node: PartnerNode
) -> Iterator[grpc.Channel]:
    with hostile_channel(partner_node.port, throwaway_pki.tls("bank-trainer")) as channel:
        yield channel


# --- PartnerRounds --------------------------------------------------------------------------


def test_get_status_answers_hostile_run_ids_with_a_clear_status(
    rounds: Any, figures: Figures
) -> None:
    tally = Tally("PartnerRounds.GetStatus", ("run_id",))

    @FUZZ
    @given(run_id=texts())
    def call(run_id: str) -> None:
        request = rounds_pb2.GetStatusRequest(run_id=run_id)
        tally.check(
            lambda: rounds.GetStatus(request, timeout=CALL_TIMEOUT_S),
            {Code.OK, Code.INVALID_ARGUMENT},
        )

    call()
    status = rounds.GetStatus(rounds_pb2.GetStatusRequest(run_id=_RUN), timeout=CALL_TIMEOUT_S)
    assert status.alignment.intersection_size > 0
    figures.add(tally.figure())


_PLAN_FIELDS: Final = (
    "run_id",
    "round",
    "seed",
    "learning_rate",
    "epochs",
    "previous_sha256",
    "best_round",
)


def test_plan_round_answers_hostile_plans_with_a_clear_status(
    rounds: Any, figures: Figures
) -> None:
    plans = mutated(
        {
            "run_id": st.just("fuzz-plan"),
            "round": st.just(1),
            "seed": st.just(5),
            "learning_rate": st.just(0.01),
            "epochs": st.just(1),
            "previous_sha256": st.just(b""),
            "best_round": st.just(0),
        },
        {
            "run_id": texts(),
            "round": uint32s(),
            "seed": uint64s(),
            "learning_rate": floats(),
            "epochs": uint32s(),
            "previous_sha256": binary(32),
            "best_round": uint32s(),
        },
    )
    tally = Tally("PartnerRounds.PlanRound", _PLAN_FIELDS)

    @FUZZ
    @given(plan=plans)
    def call(plan: tuple[frozenset[str], dict[str, Any]]) -> None:
        hostile, fields = plan
        message = rounds_pb2.PlanRoundRequest(**fields)
        tally.check(
            lambda: rounds.PlanRound(message, timeout=CALL_TIMEOUT_S),
            {Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION},
            hostile,
        )

    call()
    good = rounds_pb2.PlanRoundRequest(
        run_id="after-fuzz", round=1, seed=5, learning_rate=0.01, epochs=1
    )
    assert rounds.PlanRound(good, timeout=CALL_TIMEOUT_S).run.planned_round == 1
    figures.add(tally.figure())


def _version_of(fields: dict[str, Any]) -> str:
    """The drawn version id, or (when drawn valid) the id of the drawn digests."""
    if fields["version_id"] is not None:
        return str(fields["version_id"])
    named = ("bank_weights", "partner_weights", "partner_preprocessor")
    digests = [fields[f"{name}_sha256"] for name in named]
    if any(len(digest) != 32 for digest in digests):
        return "0" * 16
    return ModelDigests(
        **{f"{name}_sha256": digest.hex() for name, digest in zip(named, digests, strict=True)}
    ).version_id


def test_publish_model_answers_hostile_publications_with_a_clear_status(
    rounds: Any, figures: Figures
) -> None:
    digests = (
        "bank_weights_sha256",
        "partner_weights_sha256",
        "partner_preprocessor_sha256",
        "bank_manifest_sha256",
    )
    publications = mutated(
        {
            "run_id": st.just("fuzz-plan"),
            "round": st.just(0),
            "version_id": st.none(),  # the digests' own id, see _version_of
            **{name: _DIGEST for name in digests},
        },
        {
            "run_id": texts(),
            "round": uint32s(),
            "version_id": texts(),
            **{name: binary(32) for name in digests},
        },
    )
    tally = Tally("PartnerRounds.PublishModel", ("run_id", "round", "version_id", *digests))

    @FUZZ
    @given(publication=publications)
    def call(publication: tuple[frozenset[str], dict[str, Any]]) -> None:
        hostile, fields = publication
        message = rounds_pb2.PublishModelRequest(**{**fields, "version_id": _version_of(fields)})
        # Random digests never name weights the partner holds: nothing is ever published.
        tally.check(
            lambda: rounds.PublishModel(message, timeout=CALL_TIMEOUT_S),
            {Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION},
            hostile,
        )

    call()
    status = rounds.GetStatus(rounds_pb2.GetStatusRequest(run_id=_RUN), timeout=CALL_TIMEOUT_S)
    assert status.embedding_width > 0
    figures.add(tally.figure())


# --- TrainingDataPlane ----------------------------------------------------------------------


def _exchange(channel: grpc.Channel, requests: list[pb.ExchangeRequest]) -> list[Any]:
    stub = channel.stream_stream(
        EXCHANGE_METHOD,
        request_serializer=pb.ExchangeRequest.SerializeToString,
        response_deserializer=pb.ExchangeResponse.FromString,
    )
    return list(stub(iter(requests), timeout=CALL_TIMEOUT_S))


def _steps() -> st.SearchStrategy[pb.ExchangeRequest]:
    gradient = st.builds(
        pb.EmbeddingGradient,
        step=st.one_of(st.just(0), uint64s()),
        embedding_width=st.one_of(st.just(_WIDTH), uint32s()),
        gradient=st.one_of(
            binary(_WIDTH * 4, 2 * _WIDTH * 4),
            st.sampled_from([np.nan, np.inf, 1e38]).map(
                lambda v: np.full((2, _WIDTH), v, dtype=np.float32).tobytes()
            ),
        ),
    )
    batch = st.builds(
        pb.PositionBatch,
        step=st.one_of(st.just(0), uint64s()),
        positions=st.one_of(binary(4, 8), st.just(pack_positions(np.array([0, 1])))),
    )
    return st.builds(
        lambda g, b: pb.ExchangeRequest(step=pb.PassStep(gradient=g, batch=b)),
        st.none() | gradient,
        st.none() | batch,
    )


def _opening() -> st.SearchStrategy[pb.ExchangeRequest]:
    return st.builds(
        lambda run_id, number, kind: pb.ExchangeRequest(
            open=pb.PassOpen(run_id=run_id, round=number, kind=kind)
        ),
        st.one_of(st.just(_RUN), texts()),
        st.one_of(st.sampled_from([0, 1]), uint32s()),
        enum_numbers([pb.PASS_KIND_TRAIN, pb.PASS_KIND_EMBED]),
    )


def test_the_data_plane_answers_hostile_passes_with_a_clear_status(
    rounds: Any, trainer_channel: grpc.Channel, figures: Figures
) -> None:
    plan = rounds_pb2.PlanRoundRequest(run_id=_RUN, round=1, seed=5, learning_rate=0.01, epochs=1)
    rounds.PlanRound(plan, timeout=CALL_TIMEOUT_S)
    named = ("open", "step", "kind", "gradient", "batch", "positions", "width", "run", "round")
    tally = Tally("TrainingDataPlane.Exchange", named)

    @FUZZ
    @given(
        first=st.one_of(_opening(), _steps()),
        rest=st.lists(st.one_of(_steps(), _opening()), max_size=3),
    )
    def call(first: pb.ExchangeRequest, rest: list[pb.ExchangeRequest]) -> None:
        tally.check(
            lambda: _exchange(trainer_channel, [first, *rest]),
            {Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION},
        )

    call()
    rounds.PlanRound(plan, timeout=CALL_TIMEOUT_S)
    embed = pb.ExchangeRequest(open=pb.PassOpen(run_id=_RUN, round=0, kind=pb.PASS_KIND_EMBED))
    step = pb.ExchangeRequest(
        step=pb.PassStep(batch=pb.PositionBatch(step=0, positions=pack_positions(np.arange(3))))
    )
    replies = _exchange(trainer_channel, [embed, step])
    assert [r.WhichOneof("body") for r in replies] == ["embeddings", "summary"]
    figures.add(tally.figure())
