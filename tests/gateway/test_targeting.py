"""Bulk targeting over a real partner node on loopback with mutual TLS: the ranked list is the
same model scored in one process (the gateway's per-application Scorer, with the partner's
embeddings computed from its table), customers unknown to the partner are scored bank-only and
flagged, a partner without the version (or answering with another) is refused naming both
versions, and ``cobrand target`` writes the list or refuses a bad option in one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from cobrand.commands.align import write_settings
from cobrand.errors import ConfigError, FailedPrecondition, UnknownModelVersion
from cobrand.rpc import create_channel, create_server
from cobrand.v1 import embedding_pb2, embedding_pb2_grpc
from gateway.application import stored_features_of
from gateway.bulk_scoring import BulkScorer
from gateway.config import DecisionConfig, load_decision_config
from gateway.scoring import INSTALMENT, RIGHTS_PACKAGE, Scorer
from gateway.target_cli import run
from gateway.targeting import Ranked, target
from partner_node.embedding_service import EMBEDDING_ROLES
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import gateway_settings
from tests.gateway.reordered_packages import reverse_package_classes
from tests.gateway.synth_version import EXAMPLES
from tests.gateway.targeting_sites import (
    BothSides,
    add_bank_only_customers,
    bank_aligned,
    bank_only_version,
    both_sides,
)
from tests.training_sites import TrainingSites, running_partner, write_training_sites

DECISIONS = EXAMPLES / "cobrand_synth.yaml"
BANK_ONLY = 9
# The bulk path scores batches, the Scorer one row at a time: float32 sums in another order.
RTOL, ATOL = 1e-5, 1e-7

Row = tuple[str, float, str, str, bool]
"""customer id, propensity, offer or package, channel, partner missing."""


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=900, seed=31)


@pytest.fixture(scope="module")
def bank_only(sites: TrainingSites) -> set[str]:
    return set(add_bank_only_customers(sites, BANK_ONLY, seed=5))


@pytest.fixture(scope="module")
def pair(sites: TrainingSites, bank_only: set[str]) -> BothSides:
    # Taking `bank_only` first: every test that scores sees the bank's alignment with them.
    return both_sides(sites, seed=2)


@pytest.fixture(scope="module")
def decisions() -> DecisionConfig:
    return load_decision_config(DECISIONS)


@pytest.fixture(scope="module")
def node(
    throwaway_pki: ThrowAwayPki, sites: TrainingSites, pair: BothSides
) -> Iterator[PartnerNode]:
    with running_partner(throwaway_pki, sites) as started:
        yield started


@pytest.fixture(scope="module")
def channel(throwaway_pki: ThrowAwayPki, node: PartnerNode) -> Iterator[grpc.Channel]:
    with create_channel(f"127.0.0.1:{node.port}", throwaway_pki.tls("gateway")) as opened:
        yield opened


def _rows(ranked: Ranked) -> list[Row]:
    scores = ranked.scores
    return [
        (str(i), float(p), str(o), str(c), bool(m))
        for i, p, o, c, m in zip(
            ranked.customer_id,
            scores.propensity,
            scores.offer,
            scores.channel,
            scores.partner_missing,
            strict=True,
        )
    ]


def _in_one_process(
    sites: TrainingSites,
    pair: BothSides,
    decisions: DecisionConfig,
    bank_only: set[str],
    task: str,
) -> list[Row]:
    """Every aligned customer through the per-application Scorer, ranked as a campaign is."""
    table, _ = bank_aligned(sites)
    scorer = Scorer(pair.version, decisions)
    stored = stored_features_of(table, pair.version.preprocessor)
    known = np.array([i for i in table.ids if str(i) not in bank_only], dtype=object)
    embedding = dict(zip(map(str, known), pair.partner_embeddings(known), strict=True))
    offered: list[Row] = []
    for customer in map(str, table.ids):
        result = scorer.score(scorer.encoder.encode({}, stored(customer)), embedding.get(customer))
        missing = customer not in embedding
        if task == INSTALMENT and result.instalment is not None:
            offer = result.instalment
            offered.append((customer, offer.propensity, offer.offer, offer.channel.value, missing))
        if task == RIGHTS_PACKAGE and result.packages:
            best = result.packages[0]
            offered.append((customer, best.propensity, best.package, "", missing))
    # A stable sort: equal propensities keep alignment order.
    return sorted(offered, key=lambda row: -row[1])


def _assert_same(actual: list[Row], expected: list[Row]) -> None:
    assert [row[0] for row in actual] == [row[0] for row in expected]
    np.testing.assert_allclose(
        [row[1] for row in actual], [row[1] for row in expected], rtol=RTOL, atol=ATOL
    )
    assert [row[2:] for row in actual] == [row[2:] for row in expected]


@pytest.mark.parametrize("task", [INSTALMENT, RIGHTS_PACKAGE])
def test_the_ranked_list_is_the_same_model_scored_in_one_process(
    sites: TrainingSites,
    pair: BothSides,
    decisions: DecisionConfig,
    bank_only: set[str],
    channel: grpc.Channel,
    task: str,
) -> None:
    table, keys = bank_aligned(sites)
    scorer = BulkScorer(pair.version, decisions, task)

    ranked = target(scorer, table, keys, channel, top=len(table), batch_keys=128, in_flight=3)

    expected = _in_one_process(sites, pair, decisions, bank_only, task)
    assert 0 < len(expected) < len(table)  # some are declined or offered no package
    _assert_same(_rows(ranked), expected)


def test_top_n_keeps_the_n_best_and_one_batch_gives_the_same_list_as_many(
    sites: TrainingSites, pair: BothSides, decisions: DecisionConfig, channel: grpc.Channel
) -> None:
    table, keys = bank_aligned(sites)
    scorer = BulkScorer(pair.version, decisions, INSTALMENT)

    everyone = target(scorer, table, keys, channel, top=len(table))
    best = target(scorer, table, keys, channel, top=25, batch_keys=64, in_flight=8)

    assert len(best.customer_id) == 25
    assert _rows(best) == _rows(everyone)[:25]


def test_customers_unknown_to_the_partner_are_scored_bank_only_and_flagged(
    sites: TrainingSites,
    pair: BothSides,
    decisions: DecisionConfig,
    bank_only: set[str],
    channel: grpc.Channel,
) -> None:
    table, keys = bank_aligned(sites)
    scorer = BulkScorer(pair.version, decisions, INSTALMENT)

    ranked = target(scorer, table, keys, channel, top=len(table))

    flagged = {row[0] for row in _rows(ranked) if row[4]}
    offered_bank_only = set(map(str, ranked.customer_id)) & bank_only
    assert offered_bank_only  # the synthetic set offers some of them something
    assert flagged == offered_bank_only


def test_a_partner_without_the_version_is_refused_naming_both_versions(
    sites: TrainingSites, pair: BothSides, decisions: DecisionConfig, channel: grpc.Channel
) -> None:
    other = bank_only_version(sites)
    table, keys = bank_aligned(sites)
    scorer = BulkScorer(other, decisions, INSTALMENT)

    with pytest.raises(UnknownModelVersion) as refused:
        target(scorer, table, keys, channel, top=10)

    assert other.manifest.version_id in str(refused.value)
    assert pair.version.manifest.version_id in str(refused.value)


def test_a_configuration_without_an_instalment_rule_table_is_refused_naming_the_key(
    pair: BothSides, decisions: DecisionConfig
) -> None:
    without = decisions.model_copy(update={"instalment": None})

    with pytest.raises(ConfigError, match="key 'instalment'"):
        BulkScorer(pair.version, without, INSTALMENT)


# --- cobrand target ------------------------------------------------------------------------

runner = CliRunner()


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(run)
    return app


def _arguments(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    pair: BothSides,
    node: PartnerNode,
    directory: Path,
    **options: str,
) -> list[str]:
    settings = gateway_settings(
        directory, sites, throwaway_pki, pair.version.manifest.version_id, node.port
    )
    given = {
        "config": str(write_settings(directory / "gateway.yaml", settings)),
        "task": INSTALMENT,
        "top": "40",
        "output": str(directory / "top.csv"),
        **options,
    }
    return [part for key, value in given.items() for part in (f"--{key}", value)]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_cobrand_target_writes_the_ranked_list_in_the_format_of_the_suffix(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    pair: BothSides,
    decisions: DecisionConfig,
    node: PartnerNode,
    channel: grpc.Channel,
    tmp_path: Path,
    suffix: str,
) -> None:
    output = tmp_path / f"top{suffix}"
    arguments = _arguments(
        throwaway_pki, sites, pair, node, tmp_path, task=RIGHTS_PACKAGE, output=str(output)
    )

    result = runner.invoke(_cli(), arguments)

    assert result.exit_code == 0, result.output
    text = {"customer_id": pa.string(), "package": pa.string()}
    written = (
        pa_csv.read_csv(output, convert_options=pa_csv.ConvertOptions(column_types=text))
        if suffix == ".csv"
        else pq.read_table(output)
    )
    table, keys = bank_aligned(sites)
    scorer = BulkScorer(pair.version, decisions, RIGHTS_PACKAGE)
    expected = target(scorer, table, keys, channel, top=40).table()
    assert written.column_names == [
        "rank",
        "customer_id",
        "propensity",
        "package",
        "partner_missing",
    ]
    assert written.column("rank").to_pylist() == list(range(1, 41))
    for name in ("customer_id", "package", "partner_missing"):
        assert written.column(name).cast(expected.schema.field(name).type).to_pylist() == (
            expected.column(name).to_pylist()
        )
    np.testing.assert_allclose(
        written.column("propensity").to_numpy(), expected.column("propensity").to_numpy()
    )
    assert f"40 of {len(table)} aligned customers ranked" in result.output


def test_cobrand_target_names_packages_by_the_versions_classes_not_the_schemas_current_order(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    pair: BothSides,
    decisions: DecisionConfig,
    node: PartnerNode,
    channel: grpc.Channel,
    tmp_path: Path,
) -> None:
    output = tmp_path / "top.parquet"
    arguments = _arguments(
        throwaway_pki, sites, pair, node, tmp_path, task=RIGHTS_PACKAGE, output=str(output)
    )
    # The settings' bank node file (`gateway_settings` writes it there).
    classes = reverse_package_classes(tmp_path / "bank.yaml", tmp_path)

    result = runner.invoke(_cli(), arguments)

    assert result.exit_code == 0, result.output
    assert classes == pair.version.classes[RIGHTS_PACKAGE]
    table, keys = bank_aligned(sites)
    scorer = BulkScorer(pair.version, decisions, RIGHTS_PACKAGE)
    expected = target(scorer, table, keys, channel, top=40).table()
    written = pq.read_table(output)
    for name in ("customer_id", "package"):
        assert written.column(name).to_pylist() == expected.column(name).to_pylist()


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("task", "risk", "--task"),
        ("top", "0", "--top"),
        ("top", "-3", "--top"),
        ("output", "/nonexistent-folder/top.csv", "--output"),
        ("output", "top.xlsx", "--output"),
        ("in-flight", "0", "--in-flight"),
        ("model-version", "0123456789abcdef", "0123456789abcdef"),
    ],
)
def test_a_bad_option_exits_2_with_one_line_naming_it(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    pair: BothSides,
    node: PartnerNode,
    tmp_path: Path,
    option: str,
    value: str,
    named: str,
) -> None:
    arguments = _arguments(throwaway_pki, sites, pair, node, tmp_path, **{option: value})

    result: Any = runner.invoke(_cli(), arguments)

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert named in lines[0]
    assert not (tmp_path / "top.csv").exists()


class _OtherVersionPartner(embedding_pb2_grpc.PartnerEmbeddingServiceServicer):
    """A partner that answers every batch with embeddings of another version."""

    def __init__(self, version_id: str, width: int) -> None:
        self._version_id, self._width = version_id, width

    def StreamEmbeddings(  # noqa: N802 -- the generated servicer's method name
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[embedding_pb2.EmbeddingBatchResponse]:
        for request in request_iterator:
            count = len(request.join_keys) // 16
            yield embedding_pb2.EmbeddingBatchResponse(
                batch_id=request.batch_id,
                model_version=self._version_id,
                embedding_width=self._width,
                embeddings=bytes(4 * self._width * count),
                found=[True] * count,
            )


def test_an_answer_of_another_version_is_refused_naming_both_versions(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    pair: BothSides,
    decisions: DecisionConfig,
) -> None:
    scorer = BulkScorer(pair.version, decisions, INSTALMENT)
    servicer = _OtherVersionPartner("0123456789abcdef", scorer.partner_width)
    server, port = create_server(
        lambda s: embedding_pb2_grpc.add_PartnerEmbeddingServiceServicer_to_server(servicer, s),  # type: ignore[no-untyped-call]
        "127.0.0.1:0",
        throwaway_pki.tls("partner"),
        allowed_roles=EMBEDDING_ROLES,
    )
    server.start()
    table, keys = bank_aligned(sites)
    try:
        with (
            create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("gateway")) as lying,
            pytest.raises(FailedPrecondition) as refused,
        ):
            target(scorer, table, keys, lying, top=10)
    finally:
        server.stop(grace=None)

    message = str(refused.value)
    assert "0123456789abcdef" in message
    assert pair.version.manifest.version_id in message
    assert "never combined" in message
