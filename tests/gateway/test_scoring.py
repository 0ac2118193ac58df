"""The scoring core over a real bank model version: decisions, limits, reasons, packages and
instalment offers, the bank-only path, determinism and the partner channel's view."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from bank_node.model_registry import load_bank_version, save_bank_version
from bank_node.serving_reference import attribution_batch
from bank_node.training_data import TEST, TRAIN, BankTrainingData
from cobrand.errors import ConfigError, InvalidRequest
from cobrand.model_store import ModelStore
from cobrand.split_model import BottomModel, BottomSpec, HeadModel
from cobrand.synth.partner import PARTNER_CATEGORICAL, PARTNER_NUMERIC
from gateway.application import BankRow, stored_features_of
from gateway.config import Decision, DecisionConfig, load_decision_config
from gateway.scoring import (
    MAX_REASONS,
    PartnerView,
    ReferenceRows,
    Scorer,
    ScoreResult,
    partner_view,
)
from tests.gateway.synth_version import EXAMPLES, PARTNER_WIDTH, SynthVersion, synth_version
from tests.model_parts import fitted_table

APPLICANTS = 40
# One limit band for every score, so no approval is referred for want of a limit.
EVERY_SCORE = {
    "currency": "CNY",
    "bands": [{"band": "ALL", "min_score": -1000, "limit_minor": 100}],
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthVersion:
    return synth_version(tmp_path_factory)


@pytest.fixture(scope="module")
def config() -> DecisionConfig:
    return load_decision_config(EXAMPLES / "cobrand_synth.yaml")


@pytest.fixture(scope="module")
def scorer(synth: SynthVersion, config: DecisionConfig) -> Scorer:
    return Scorer(synth.version, config)


@pytest.fixture(scope="module")
def rows(synth: SynthVersion, scorer: Scorer) -> list[BankRow]:
    """Existing customers' stored rows (adults, so no hard rule decides for the model)."""
    stored = stored_features_of(synth.table, synth.version.preprocessor)
    rows = [scorer.encoder.encode({"age": 35.0}, stored(str(i))) for i in synth.table.ids]
    return rows[:APPLICANTS]


def _embeddings(count: int, scale: float) -> npt.NDArray[np.float32]:
    return (np.random.default_rng(7).standard_normal((count, PARTNER_WIDTH)) * scale).astype(
        np.float32
    )


def _with(config: DecisionConfig, **update: Any) -> DecisionConfig:
    return DecisionConfig.model_validate({**config.model_dump(), **update})


def test_without_a_partner_embedding_the_bank_slice_alone_decides(
    scorer: Scorer, rows: list[BankRow]
) -> None:
    result = scorer.score(rows[0], None)

    assert result.slices.bank
    assert not result.slices.partner
    assert result.decision in set(Decision)
    assert 0.0 < result.probability_of_default < 1.0
    assert all(reason.code != "P01" for reason in result.reasons)
    assert result.model_version == scorer.version.manifest.version_id


def test_a_partner_embedding_is_used_and_changes_the_score(
    scorer: Scorer, rows: list[BankRow]
) -> None:
    embedding = _embeddings(1, 5.0)[0]

    joint, bank_only = scorer.score(rows[0], embedding), scorer.score(rows[0], None)

    assert joint.slices.partner
    assert joint.probability_of_default != bank_only.probability_of_default


def test_the_same_inputs_give_the_same_result(scorer: Scorer, rows: list[BankRow]) -> None:
    embedding = _embeddings(1, 1.0)[0]

    assert scorer.score(rows[1], embedding) == scorer.score(rows[1], embedding.copy())
    assert scorer.score(rows[1], None) == scorer.score(rows[1], None)


def test_reference_rows_are_the_attribution_batch_of_each_applicant(
    synth: SynthVersion, rows: list[BankRow]
) -> None:
    references = synth.version.reasons.bank
    reference_rows = ReferenceRows(references)

    for row in rows:
        numeric, categorical = reference_rows.batch(row.numeric, row.categorical)
        expected_numeric, expected_categorical = attribution_batch(
            row.numeric, row.categorical, references
        )
        assert numeric.dtype == expected_numeric.dtype
        assert numeric.tobytes() == expected_numeric.tobytes()
        assert categorical.dtype == expected_categorical.dtype
        assert np.array_equal(categorical, expected_categorical)


def test_higher_scores_mean_lower_probabilities_of_default(
    scorer: Scorer, rows: list[BankRow]
) -> None:
    results = sorted(
        (scorer.score(row, None) for row in rows), key=lambda r: r.probability_of_default
    )

    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > scores[-1]


@pytest.mark.parametrize(
    ("approve_from", "decline_below", "expected"),
    [(0, 0, Decision.APPROVE), (1, 0, Decision.REFER), (1, 1, Decision.DECLINE)],
)
def test_score_thresholds_decide_at_the_applicants_own_score(
    synth: SynthVersion,
    config: DecisionConfig,
    rows: list[BankRow],
    approve_from: int,
    decline_below: int,
    expected: Decision,
) -> None:
    score = Scorer(synth.version, config).score(rows[2], None).score
    thresholds = {
        "basis": "score",
        "approve_from": score + approve_from,
        "decline_below": score + decline_below,
    }
    changed = _with(config, thresholds=thresholds, hard_rules=[], credit_limits=EVERY_SCORE)

    result = Scorer(synth.version, changed).score(rows[2], None)

    assert result.decision is expected
    assert (result.credit_limit_minor, result.limit_band) == (
        (0, "") if expected is Decision.DECLINE else (100, "ALL")
    )


def test_probability_thresholds_decide_at_the_applicants_own_probability(
    synth: SynthVersion, config: DecisionConfig, rows: list[BankRow]
) -> None:
    p = Scorer(synth.version, config).score(rows[3], None).probability_of_default

    def decided(approve_below: float, decline_from: float) -> Decision:
        thresholds = {
            "basis": "probability_of_default",
            "approve_below": approve_below,
            "decline_from": decline_from,
        }
        changed = _with(config, thresholds=thresholds, hard_rules=[], credit_limits=EVERY_SCORE)
        return Scorer(synth.version, changed).score(rows[3], None).decision

    assert decided(p, p) is Decision.DECLINE
    assert decided(np.nextafter(p, 1.0), 1.0) is Decision.APPROVE
    assert decided(p, 1.0) is Decision.REFER


def test_a_hard_rule_declines_whatever_the_model_says_and_offers_nothing(
    scorer: Scorer, rows: list[BankRow]
) -> None:
    minor = BankRow(
        values={**rows[0].values, "age": 17.0},
        numeric=rows[0].numeric,
        categorical=rows[0].categorical,
    )

    result = scorer.score(minor, None)

    assert result.decision is Decision.DECLINE
    assert [hit.code for hit in result.rule_hits] == ["H01"]
    assert (result.credit_limit_minor, result.limit_band) == (0, "")
    assert result.packages == ()
    assert result.instalment is None


def test_the_limit_follows_the_configured_band_of_the_score(
    scorer: Scorer, config: DecisionConfig, rows: list[BankRow]
) -> None:
    for row in rows:
        result = scorer.score(row, None)
        band = config.credit_limits.band_for(result.score)
        if result.decision is Decision.DECLINE or band is None:
            assert (result.credit_limit_minor, result.limit_band) == (0, "")
        else:
            assert (result.credit_limit_minor, result.limit_band) == (band.limit_minor, band.band)
        assert result.score_band == config.score_band(result.score)
        assert result.currency == "CNY"


def _joint_results(scorer: Scorer, rows: list[BankRow]) -> list[tuple[ScoreResult, ScoreResult]]:
    # From barely there to dominant: the partner's cost ranks anywhere among the reasons.
    embeddings = _embeddings(len(rows), 1.0) * np.geomspace(0.01, 3.0, len(rows))[:, None]
    pairs = zip(rows, embeddings, strict=True)
    return [(scorer.score(row, embedding), scorer.score(row, None)) for row, embedding in pairs]


def test_at_most_four_reasons_with_stable_codes_most_points_first(
    scorer: Scorer, rows: list[BankRow]
) -> None:
    codes = {ref.code for ref in scorer.version.reasons.bank} | {"P01"}
    for joint, bank_only in _joint_results(scorer, rows):
        for result in (joint, bank_only):
            points = [reason.points for reason in result.reasons]
            assert len(result.reasons) <= MAX_REASONS
            assert {reason.code for reason in result.reasons} <= codes
            assert points == sorted(points, reverse=True)
            assert all(p > 0 for p in points)


def test_the_partner_reason_appears_exactly_when_it_ranks_in_the_top_four(
    scorer: Scorer, rows: list[BankRow]
) -> None:
    shown = hidden = 0
    for joint, bank_only in _joint_results(scorer, rows):
        scaling = scorer.config.score_scaling or scorer.version.scaling
        # What the partner slice cost: the score without it less the score with it.
        cost = float(
            scaling.points(bank_only.probability_of_default)
            - scaling.points(joint.probability_of_default)
        )
        partner = [r for r in joint.reasons if r.code == "P01"]
        if partner:
            shown += 1
            assert partner[0].points == pytest.approx(cost, abs=1e-3)
        elif cost > 1e-3:
            hidden += 1
            assert len(joint.reasons) == MAX_REASONS
            assert min(r.points for r in joint.reasons) >= cost - 1e-3
    assert shown
    assert hidden


def test_no_reason_names_a_partner_feature(scorer: Scorer, rows: list[BankRow]) -> None:
    for joint, _ in _joint_results(scorer, rows):
        for reason in joint.reasons:
            text = reason.text.lower()
            assert not any(name in text for name in PARTNER_NUMERIC + PARTNER_CATEGORICAL)


def test_bank_reasons_show_the_applicants_own_value(scorer: Scorer, rows: list[BankRow]) -> None:
    features = {ref.code: ref.feature for ref in scorer.version.reasons.bank}
    row, result = next((row, r) for row in rows if (r := scorer.score(row, None)).reasons)

    reason = result.reasons[0]
    value = row.values[features[reason.code]]
    assert reason.text.startswith(features[reason.code])
    assert (f"{value:g}" if isinstance(value, float) else str(value)) in reason.text


def test_packages_are_ranked_by_propensity_and_never_disabled_or_too_young(
    scorer: Scorer, rows: list[BankRow]
) -> None:
    offered: set[str] = set()
    for row in rows:
        young = BankRow(
            values={**row.values, "age": 20.0}, numeric=row.numeric, categorical=row.categorical
        )
        for result, age in ((scorer.score(row, None), 35.0), (scorer.score(young, None), 20.0)):
            names = [p.package for p in result.packages]
            propensities = [p.propensity for p in result.packages]
            assert propensities == sorted(propensities, reverse=True)
            assert [p.rank for p in result.packages] == list(range(1, len(names) + 1))
            assert "offline" not in names
            if age < 21:
                assert "travel" not in names
                assert "finance" not in names
            if result.decision is Decision.DECLINE:
                assert names == []
            offered.update(names)
    assert {"shopping", "payment"} <= offered


def test_the_instalment_offer_follows_the_rule_table(
    scorer: Scorer, config: DecisionConfig, rows: list[BankRow]
) -> None:
    assert config.instalment is not None
    offers = [r.instalment for r in (scorer.score(row, None) for row in rows) if r.instalment]
    for offer in offers:
        band = config.instalment.band_for(offer.propensity)
        assert (offer.offer, offer.channel) == (band.offer, band.channel)
    assert len({offer.offer for offer in offers}) >= 2


def test_the_partner_channel_sees_no_score_probability_or_reasons(
    scorer: Scorer, rows: list[BankRow]
) -> None:
    result = scorer.score(rows[0], _embeddings(1, 1.0)[0])

    view = partner_view(result)

    assert {f.name for f in dataclasses.fields(PartnerView)} == {
        "decision",
        "limit_band",
        "packages",
    }
    assert (view.decision, view.limit_band, view.packages) == (
        result.decision,
        result.limit_band,
        result.packages,
    )


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        (np.zeros(PARTNER_WIDTH + 1), "partner embedding: expected 4 values"),
        (np.full(PARTNER_WIDTH, np.nan), "partner embedding: holds a value that is not finite"),
    ],
)
def test_a_malformed_partner_embedding_is_refused(
    scorer: Scorer, rows: list[BankRow], embedding: npt.NDArray[np.float64], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        scorer.score(rows[0], embedding)


def test_a_package_the_model_does_not_have_names_the_key(
    synth: SynthVersion, config: DecisionConfig
) -> None:
    changed = _with(config, packages=[{"name": "shopping"}, {"name": "lounge"}])

    version_id = synth.version.manifest.version_id
    classes = ", ".join(synth.version.classes["rights_package"])

    with pytest.raises(
        ConfigError,
        match=rf"key 'packages\[1\]\.name': 'lounge' is not a rights_package class of "
        rf"model version {version_id} \({classes}\)",
    ):
        Scorer(synth.version, changed)


def test_package_propensities_are_named_by_the_versions_own_classes(
    synth: SynthVersion, config: DecisionConfig, rows: list[BankRow]
) -> None:
    names = synth.version.classes["rights_package"]
    # The same networks with the class list reversed: each output must take the other name.
    reversed_names = dataclasses.replace(
        synth.version, classes={"rights_package": tuple(reversed(names))}
    )
    embeddings = _embeddings(len(rows), 1.0)
    mirrored = dict(zip(names, reversed(names), strict=True))
    compared = 0

    for row, embedding in zip(rows, embeddings, strict=True):
        as_trained = Scorer(synth.version, config).score(row, embedding).packages
        as_reversed = Scorer(reversed_names, config).score(row, embedding).packages
        propensity = {offer.package: offer.propensity for offer in as_reversed}
        for offer in as_trained:
            if mirrored[offer.package] in propensity:
                assert propensity[mirrored[offer.package]] == offer.propensity
                compared += 1

    assert compared > 0


def test_a_risk_only_version_decides_without_packages_or_instalment_offers(
    tmp_path: Path,
) -> None:
    table, preprocessor = fitted_table("bank", rows=300)
    tasks = {"risk": 1}
    data = BankTrainingData(
        features=preprocessor.transform(table),
        labels={"risk": (np.arange(len(table)) % 5 == 0).astype(np.float32)},
        split=table.split,
        tasks=tasks,
    )
    torch.manual_seed(0)
    bottom = BottomModel(BottomSpec.from_preprocessor(preprocessor, embedding_width=4, hidden=8))
    probability = np.full(len(table), 0.2)
    store = ModelStore(tmp_path)
    manifest = save_bank_version(
        store,
        bottom=bottom.eval(),
        head=HeadModel(4, 3, tasks, hidden=8).eval(),
        preprocessor=preprocessor,
        data=data,
        classes={},
        raw_numeric=table.numeric,
        train_probabilities={"risk": probability[table.split == TRAIN]},
        test_probabilities={"risk": probability[table.split == TEST]},
        partner_weights_sha256=bytes(32),
        partner_preprocessor_sha256=bytes(32),
    )
    scorer = Scorer(
        load_bank_version(store, manifest.version_id),
        load_decision_config(EXAMPLES / "default_credit.yaml"),
    )

    result = scorer.score(scorer.encoder.encode({"income": 4000.0, "segment": "gold"}), None)

    assert result.decision in set(Decision)
    assert result.currency == "TWD"
    assert result.packages == ()
    assert result.instalment is None
