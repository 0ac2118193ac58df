"""Specifications for party schema files: what a valid schema says, what a bad one is told."""

import pytest

from cobrand.errors import SchemaError
from cobrand.federation import Federation
from cobrand.schema import BinaryLabel, CategoricalLabel, load_party_schema
from tests.cobrand.conftest import WriteText

BANK = """
    party: bank
    identifier:
      column: mobile
      kind: mobile_cn
      invalid: drop
    features:
      - {name: age, type: numeric}
      - {name: city_tier, type: categorical}
      - {name: card_limit, type: numeric}
    labels:
      risk: {column: bad_flag, kind: binary, positive: "1", negative: "0"}
      instalment: {column: took_instalment, kind: binary, positive: "yes", negative: "no"}
      rights_package:
        column: package_taken
        kind: categorical
        classes: [shopping, repayment, travel]
    split:
      seed: 20261123
      fractions: {train: 0.8, valid: 0.1, test: 0.1}
"""

PARTNER = """
    party: partner
    identifier: {column: phone, kind: mobile_cn}
    features:
      - {name: gmv_90d, type: numeric}
"""


def test_bank_schema_loads_with_features_labels_and_split(
    write_text: WriteText, federation: Federation
) -> None:
    schema = load_party_schema(write_text("bank.yaml", BANK), federation)
    assert schema.party == "bank"
    assert schema.identifier.invalid == "drop"
    assert schema.numeric_features == ("age", "card_limit")
    assert schema.categorical_features == ("city_tier",)
    assert list(schema.labels.present()) == ["risk", "instalment", "rights_package"]
    assert schema.labels.risk == BinaryLabel(
        column="bad_flag", kind="binary", positive="1", negative="0"
    )
    assert isinstance(schema.labels.rights_package, CategoricalLabel)
    assert schema.labels.rights_package.classes == ("shopping", "repayment", "travel")
    assert (schema.split.column, schema.split.seed) == (None, 20261123)
    assert schema.split.fractions.train == 0.8


def test_partner_schema_takes_defaults_for_what_it_leaves_out(
    write_text: WriteText, federation: Federation
) -> None:
    schema = load_party_schema(write_text("partner.yaml", PARTNER), federation)
    assert schema.identifier.invalid == "reject"
    assert schema.labels.present() == {}
    assert schema.split.column is None
    fractions = schema.split.fractions
    assert (fractions.train, fractions.valid, fractions.test) == (0.7, 0.15, 0.15)


def test_label_block_on_a_partner_schema_is_refused(
    write_text: WriteText, federation: Federation
) -> None:
    text = (
        PARTNER
        + "    labels:\n      risk: {column: y, kind: binary, positive: '1', negative: '0'}\n"
    )
    path = write_text("partner.yaml", text)
    with pytest.raises(SchemaError, match=r"key 'labels': a partner schema holds no labels"):
        load_party_schema(path, federation)


def test_identifier_kind_the_federation_does_not_list_is_refused(
    write_text: WriteText, federation: Federation
) -> None:
    path = write_text("partner.yaml", PARTNER.replace("kind: mobile_cn", "kind: email"))
    with pytest.raises(SchemaError) as raised:
        load_party_schema(path, federation)
    message = str(raised.value)
    assert message.startswith(f"{path}: identifier.kind: 'email' is not listed in federation")
    assert "test-federation" in message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("kind: mobile_cn", "kind: passport"),
            r"key 'identifier.kind': unknown identifier kind 'passport'",
        ),
        (("invalid: drop", "invalid: skip"), r"key 'identifier.invalid': Input should be"),
        (
            ("name: card_limit", "name: age"),
            r"column 'age' is used by features\[0\].name and features\[2\].name",
        ),
        (
            ("column: bad_flag", "column: mobile"),
            r"column 'mobile' is used by identifier.column and labels.risk.column",
        ),
        (
            ("train: 0.8", "train: 0.9"),
            r"key 'split.fractions': train \+ valid \+ test must sum to 1, not 1.1",
        ),
        (("train: 0.8, valid: 0.1", "train: 0, valid: 0.9"), r"key 'split.fractions.train'"),
        (
            ("      seed: 20261123\n", "      column: split\n      seed: 1\n"),
            r"key 'split': fractions and seed are only used without a split column",
        ),
        (
            ('positive: "yes"', "positive: yes"),
            r"key 'labels.instalment.positive': YAML read this value as a boolean; .* quotes",
        ),
        (('negative: "0"', 'negative: "1"'), r"key 'labels.risk': positive and negative"),
        (
            ("classes: [shopping, repayment, travel]", "classes: [shopping, travel, shopping]"),
            r"key 'labels.rights_package.classes': classes listed more than once: shopping",
        ),
        (
            ("risk: {column: bad_flag, kind: binary", "risk: {column: bad_flag, kind: ordinal"),
            r"key 'labels.risk.kind': Input should be 'binary'",
        ),
        (("      risk:", "      fraud:"), r"unknown key 'labels.fraud'"),
        (("type: categorical", "type: text"), r"key 'features\[1\].type'"),
        (("features:", "featurs:"), r"unknown key 'featurs' \(did you mean 'features'\?\)"),
        (("party: bank", "party: regulator"), r"key 'party': Input should be 'bank' or 'partner'"),
    ],
)
def test_invalid_schema_is_refused_naming_file_and_key(
    write_text: WriteText, federation: Federation, edit: tuple[str, str], expected: str
) -> None:
    path = write_text("bank.yaml", BANK.replace(*edit, 1))
    with pytest.raises(SchemaError, match=expected) as raised:
        load_party_schema(path, federation)
    assert str(raised.value).startswith(f"{path}: ")


def test_unquoted_numeric_label_value_is_taken_as_its_text(
    write_text: WriteText, federation: Federation
) -> None:
    path = write_text(
        "bank.yaml", BANK.replace('positive: "1", negative: "0"', "positive: 1, negative: 0")
    )
    schema = load_party_schema(path, federation)
    assert schema.labels.risk is not None
    assert (schema.labels.risk.positive, schema.labels.risk.negative) == ("1", "0")


def test_schema_without_features_is_refused(write_text: WriteText, federation: Federation) -> None:
    path = write_text(
        "partner.yaml", "party: partner\nidentifier: {column: id, kind: mobile_cn}\nfeatures: []\n"
    )
    with pytest.raises(SchemaError, match=r"key 'features': Tuple should have at least 1 item"):
        load_party_schema(path, federation)
