"""The decision configuration applied to model outputs: thresholds at their boundaries, hard
rules, the limit matrix, package eligibility and the instalment rule table."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.application import FieldValue
from gateway.config import Decision, DecisionConfig, OfferChannel
from gateway.policy import credit_limit, decide, instalment_offer, offer_packages

ADULT: dict[str, FieldValue] = {"age": 40.0, "income": 5000.0, "segment": "retail"}


def _config(**sections: Any) -> DecisionConfig:
    document: dict[str, Any] = {
        "thresholds": {"basis": "score", "approve_from": 560, "decline_below": 520},
        "credit_limits": {
            "currency": "CNY",
            "bands": [
                {"band": "L3", "min_score": 620, "limit_minor": 3000000},
                {"band": "L2", "min_score": 580, "limit_minor": 2000000},
                {"band": "L1", "min_score": 540, "limit_minor": 1000000},
            ],
        },
        "application": {"age_field": "age"},
    }
    return DecisionConfig.model_validate({**document, **sections})


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (519, Decision.DECLINE),
        (520, Decision.REFER),
        (559, Decision.REFER),
        (560, Decision.APPROVE),
    ],
)
def test_score_thresholds_approve_from_and_decline_below(score: int, expected: Decision) -> None:
    decision, hits = decide(_config(), 0.5, score, ADULT)

    assert decision is expected
    assert hits == ()


@pytest.mark.parametrize(
    ("probability", "expected"),
    [
        (0.0799, Decision.APPROVE),
        (0.08, Decision.REFER),
        (0.2499, Decision.REFER),
        (0.25, Decision.DECLINE),
    ],
)
def test_probability_thresholds_approve_below_and_decline_from(
    probability: float, expected: Decision
) -> None:
    config = _config(
        thresholds={
            "basis": "probability_of_default",
            "approve_below": 0.08,
            "decline_from": 0.25,
        }
    )

    assert decide(config, probability, 0, ADULT)[0] is expected


def _rule(**fields: Any) -> dict[str, Any]:
    return {"outcome": "decline", "code": "H01", "text": "Rule", **fields}


def test_a_triggered_hard_rule_overrides_an_approval_with_its_reason() -> None:
    config = _config(
        hard_rules=[_rule(field="age", operator="lt", value=18, text="The applicant is under 18")]
    )

    decision, hits = decide(config, 0.01, 700, {**ADULT, "age": 17.0})

    assert decision is Decision.DECLINE
    assert [(hit.code, hit.text) for hit in hits] == [("H01", "The applicant is under 18")]


def test_a_rule_at_its_bound_does_not_trigger() -> None:
    config = _config(hard_rules=[_rule(field="age", operator="lt", value=18)])

    assert decide(config, 0.01, 700, {**ADULT, "age": 18.0}) == (Decision.APPROVE, ())


def test_a_refer_rule_never_softens_a_decline() -> None:
    config = _config(hard_rules=[_rule(field="income", operator="lt", value=1000, outcome="refer")])

    decision, hits = decide(config, 0.9, 400, {**ADULT, "income": 10.0})

    assert decision is Decision.DECLINE
    assert [hit.outcome for hit in hits] == [Decision.REFER]


def test_a_missing_value_triggers_a_rule_unless_told_to_pass() -> None:
    triggers = _config(hard_rules=[_rule(field="income", operator="le", value=0)])
    passes = _config(
        hard_rules=[_rule(field="income", operator="le", value=0, when_missing="pass")]
    )
    unknown_income = {**ADULT, "income": None}

    assert decide(triggers, 0.01, 700, unknown_income)[0] is Decision.DECLINE
    assert decide(passes, 0.01, 700, unknown_income)[0] is Decision.APPROVE


def test_category_rules_compare_as_the_preprocessor_reads_categories() -> None:
    config = _config(
        hard_rules=[
            _rule(field="segment", operator="in", value=["Student"], outcome="refer"),
            _rule(field="segment", operator="not_in", value=["retail", "student"], code="H02"),
        ]
    )

    assert decide(config, 0.01, 700, {**ADULT, "segment": "student"})[0] is Decision.REFER
    assert decide(config, 0.01, 700, {**ADULT, "segment": "gold"})[0] is Decision.DECLINE
    assert decide(config, 0.01, 700, ADULT)[0] is Decision.APPROVE


@pytest.mark.parametrize(
    ("score", "band", "limit"),
    [(540, "L1", 1000000), (579, "L1", 1000000), (580, "L2", 2000000), (900, "L3", 3000000)],
)
def test_the_limit_is_the_first_band_the_score_reaches(score: int, band: str, limit: int) -> None:
    assert credit_limit(_config(), Decision.APPROVE, score) == (Decision.APPROVE, limit, band)


def test_a_declined_application_gets_no_limit() -> None:
    assert credit_limit(_config(), Decision.DECLINE, 700) == (Decision.DECLINE, 0, "")


def test_an_approval_below_every_limit_band_is_referred() -> None:
    assert credit_limit(_config(), Decision.APPROVE, 539) == (Decision.REFER, 0, "")


PROPENSITIES = {"shopping": 0.2, "travel": 0.5, "finance": 0.2, "offline": 0.9}


def test_packages_are_ranked_by_propensity_with_ties_in_configuration_order() -> None:
    config = _config(packages=[{"name": "finance"}, {"name": "travel"}, {"name": "shopping"}])

    offers = offer_packages(config, PROPENSITIES, 40.0, 1000000)

    assert [(o.package, o.rank) for o in offers] == [("travel", 1), ("finance", 2), ("shopping", 3)]
    assert offers[0].propensity == 0.5


def test_a_disabled_package_is_never_offered_however_likely() -> None:
    config = _config(packages=[{"name": "offline", "enabled": False}, {"name": "shopping"}])

    assert [o.package for o in offer_packages(config, PROPENSITIES, 40.0, 1000000)] == ["shopping"]


def test_a_package_needs_its_minimum_age_and_limit() -> None:
    config = _config(packages=[{"name": "travel", "min_age": 21, "min_limit_minor": 2000000}])

    assert offer_packages(config, PROPENSITIES, 20.0, 3000000) == ()
    assert offer_packages(config, PROPENSITIES, None, 3000000) == ()
    assert offer_packages(config, PROPENSITIES, 21.0, 1999999) == ()
    assert [o.package for o in offer_packages(config, PROPENSITIES, 21.0, 2000000)] == ["travel"]


@pytest.mark.parametrize(
    ("propensity", "offer", "channel"),
    [
        (0.0, "NONE", OfferChannel.NONE),
        (0.3999, "NONE", OfferChannel.NONE),
        (0.4, "6M", OfferChannel.BANK_APP_PUSH),
        (0.7, "12M", OfferChannel.PARTNER_APP),
        (1.0, "12M", OfferChannel.PARTNER_APP),
    ],
)
def test_instalment_offers_follow_the_band_the_propensity_reaches(
    propensity: float, offer: str, channel: OfferChannel
) -> None:
    config = _config(
        instalment={
            "bands": [
                {"min_propensity": 0.7, "offer": "12M", "channel": "partner_app"},
                {"min_propensity": 0.4, "offer": "6M", "channel": "bank_app_push"},
                {"min_propensity": 0.0, "offer": "NONE", "channel": "none"},
            ]
        }
    )

    result = instalment_offer(config, propensity)

    assert result is not None
    assert (result.propensity, result.offer, result.channel) == (propensity, offer, channel)


def test_without_an_instalment_table_no_offer_is_made() -> None:
    assert instalment_offer(_config(), 0.9) is None
