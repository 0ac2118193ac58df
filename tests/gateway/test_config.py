"""The decision configuration: the shipped examples load, and every mistake names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bank_node.serving_reference import ScoreScaling
from cobrand.errors import ConfigError
from cobrand.schema import PartySchema
from cobrand.synth.dataset import SynthConfig, bank_schema
from cobrand.yamlfile import load_yaml_model
from gateway.config import (
    Decision,
    DecisionConfig,
    OfferChannel,
    ProbabilityThresholds,
    ScoreThresholds,
    load_decision_config,
)
from tests.gateway.synth_version import EXAMPLES

BANK_SCHEMAS = Path(__file__).resolve().parents[2] / "bank_node" / "schemas"


def _minimal() -> dict[str, Any]:
    return {
        "thresholds": {"basis": "score", "approve_from": 560, "decline_below": 520},
        "credit_limits": {
            "currency": "CNY",
            "bands": [{"band": "L1", "min_score": 520, "limit_minor": 500000}],
        },
    }


def _write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "decisions.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _refused(tmp_path: Path, document: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_decision_config(_write(tmp_path, document))
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "decisions.yaml"))
    return message


def test_the_synthetic_example_loads_with_every_section() -> None:
    config = load_decision_config(EXAMPLES / "cobrand_synth.yaml")

    assert isinstance(config.thresholds, ScoreThresholds)
    assert config.score_scaling == ScoreScaling(base_points=600, base_odds=50, pdo=20)
    assert [rule.code for rule in config.hard_rules] == ["H01", "H02", "H03", "H04"]
    assert config.hard_rules[0].outcome is Decision.DECLINE
    assert config.credit_limits.currency == "CNY"
    assert [p.name for p in config.packages if not p.enabled] == ["offline"]
    assert config.instalment is not None
    assert config.instalment.bands[-1].channel is OfferChannel.NONE


def test_the_default_credit_example_decides_by_probability_with_the_versions_scaling() -> None:
    config = load_decision_config(EXAMPLES / "default_credit.yaml")

    assert isinstance(config.thresholds, ProbabilityThresholds)
    assert config.score_scaling is None
    assert config.hard_rules == ()
    assert config.packages == ()
    assert config.instalment is None


def test_a_misspelt_key_is_named_with_the_likely_intended_one(tmp_path: Path) -> None:
    document = _minimal()
    document["credit_limits"]["currency_code"] = document["credit_limits"].pop("currency")

    message = _refused(tmp_path, document)

    assert "unknown key 'credit_limits.currency_code' (did you mean 'currency'?)" in message


def test_missing_thresholds_are_named(tmp_path: Path) -> None:
    document = _minimal()
    del document["thresholds"]

    assert "missing key 'thresholds'" in _refused(tmp_path, document)


def test_thresholds_out_of_order_are_refused(tmp_path: Path) -> None:
    document = _minimal()
    document["thresholds"] = {
        "basis": "probability_of_default",
        "approve_below": 0.3,
        "decline_from": 0.2,
    }

    message = _refused(tmp_path, document)

    assert "key 'thresholds.probability_of_default'" in message
    assert "approve_below must not exceed decline_from" in message


def test_a_probability_threshold_above_one_is_named(tmp_path: Path) -> None:
    document = _minimal()
    document["thresholds"] = {
        "basis": "probability_of_default",
        "approve_below": 0.1,
        "decline_from": 1.5,
    }

    assert "key 'thresholds.probability_of_default.decline_from'" in _refused(tmp_path, document)


def test_limit_bands_not_listed_highest_first_are_refused(tmp_path: Path) -> None:
    document = _minimal()
    document["credit_limits"]["bands"].append({"band": "L2", "min_score": 600, "limit_minor": 1})

    message = _refused(tmp_path, document)

    assert "key 'credit_limits.bands'" in message
    assert "strictly decreasing min_score" in message


def test_a_negative_limit_is_named(tmp_path: Path) -> None:
    document = _minimal()
    document["credit_limits"]["bands"][0]["limit_minor"] = -1

    assert "key 'credit_limits.bands[0].limit_minor'" in _refused(tmp_path, document)


def test_a_rule_whose_value_does_not_fit_its_operator_is_named(tmp_path: Path) -> None:
    document = _minimal()
    document["hard_rules"] = [
        {
            "field": "city_tier",
            "operator": "in",
            "value": 3,
            "outcome": "decline",
            "code": "H01",
            "text": "Not served",
        }
    ]

    message = _refused(tmp_path, document)

    assert "key 'hard_rules[0]'" in message
    assert "operator in needs a list of categories" in message


def test_a_rule_cannot_approve(tmp_path: Path) -> None:
    document = _minimal()
    document["hard_rules"] = [
        {
            "field": "age",
            "operator": "ge",
            "value": 18,
            "outcome": "approve",
            "code": "H01",
            "text": "Adult",
        }
    ]

    assert "key 'hard_rules[0].outcome'" in _refused(tmp_path, document)


def test_a_rule_code_used_twice_is_refused(tmp_path: Path) -> None:
    rule = {"field": "age", "operator": "lt", "value": 18, "outcome": "decline", "text": "Minor"}
    document = _minimal()
    document["hard_rules"] = [{**rule, "code": "H01"}, {**rule, "code": "H01"}]

    message = _refused(tmp_path, document)

    assert "key 'hard_rules'" in message
    assert "codes listed more than once: H01" in message


def test_an_instalment_table_that_leaves_low_propensities_out_is_refused(tmp_path: Path) -> None:
    document = _minimal()
    document["instalment"] = {
        "bands": [{"min_propensity": 0.5, "offer": "12M", "channel": "sms"}],
    }

    message = _refused(tmp_path, document)

    assert "key 'instalment.bands'" in message
    assert "the last band must start at min_propensity 0" in message


def test_an_unknown_offer_channel_is_named(tmp_path: Path) -> None:
    document = _minimal()
    document["instalment"] = {
        "bands": [{"min_propensity": 0.0, "offer": "12M", "channel": "carrier_pigeon"}],
    }

    assert "key 'instalment.bands[0].channel'" in _refused(tmp_path, document)


def test_a_package_listed_twice_is_refused(tmp_path: Path) -> None:
    document = _minimal()
    document["packages"] = [{"name": "travel"}, {"name": "travel", "enabled": False}]

    assert "packages listed more than once: travel" in _refused(tmp_path, document)


def test_a_rule_over_a_field_the_model_lacks_names_the_key() -> None:
    config = DecisionConfig.model_validate(
        {
            **_minimal(),
            "hard_rules": [
                {
                    "field": "agee",
                    "operator": "lt",
                    "value": 18,
                    "outcome": "decline",
                    "code": "H01",
                    "text": "Minor",
                }
            ],
        }
    )

    with pytest.raises(ConfigError, match=r"key 'hard_rules\[0\].field': 'agee' is not a numeric"):
        config.check_fields(["age", "income"], ["segment"])


def test_a_closed_category_set_on_a_numeric_field_names_the_key() -> None:
    config = DecisionConfig.model_validate(
        {**_minimal(), "application": {"categories": {"age": ["young"]}}}
    )

    with pytest.raises(ConfigError, match=r"key 'application\.categories\.age'"):
        config.check_fields(["age"], ["segment"])


def test_a_package_age_limit_needs_the_age_field() -> None:
    config = DecisionConfig.model_validate(
        {**_minimal(), "packages": [{"name": "travel", "min_age": 21}]}
    )

    with pytest.raises(ConfigError, match=r"key 'packages\[0\].min_age': needs application"):
        config.check_fields(["age"], [])


def test_each_example_fits_the_bank_features_of_its_data_set() -> None:
    synthetic = bank_schema(SynthConfig(customers=10, seed=0))
    default_credit = load_yaml_model(BANK_SCHEMAS / "default_credit.yaml", PartySchema, ConfigError)

    for example, schema in (("cobrand_synth", synthetic), ("default_credit", default_credit)):
        config = load_decision_config(EXAMPLES / f"{example}.yaml")
        config.check_fields(schema.numeric_features, schema.categorical_features)
