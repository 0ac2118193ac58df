"""The shipped schema and federation files load the real UCI default-credit data.

The data sits in ../shared/data beside the repository; CI always has it, so these tests fail
(never skip) when it is missing.
"""

from pathlib import Path

import numpy as np
import pytest

from cobrand.federation import Federation, load_federation
from cobrand.schema import load_party_schema
from cobrand.tables import PartyTable, load_party_table

REPO_ROOT = Path(__file__).resolve().parents[2]

FEDERATION = REPO_ROOT / "cobrand" / "federations" / "default_credit.yaml"
BANK_SCHEMA = REPO_ROOT / "bank_node" / "schemas" / "default_credit.yaml"
PARTNER_SCHEMA = REPO_ROOT / "partner_node" / "schemas" / "default_credit.yaml"
ROWS = 30_000


@pytest.fixture(scope="module")
def federation() -> Federation:
    return load_federation(FEDERATION)


@pytest.fixture(scope="module")
def bank(shared_data: Path, federation: Federation) -> PartyTable:
    schema = load_party_schema(BANK_SCHEMA, federation)
    return load_party_table(schema, shared_data / "default_credit_hetero_guest.csv")


@pytest.fixture(scope="module")
def partner(shared_data: Path, federation: Federation) -> PartyTable:
    schema = load_party_schema(PARTNER_SCHEMA, federation)
    return load_party_table(schema, shared_data / "default_credit_hetero_host.csv")


def test_bank_file_loads_every_row_with_thirteen_features_and_the_risk_label(
    bank: PartyTable,
) -> None:
    assert len(bank) == ROWS
    assert bank.dropped_identifiers == 0
    assert bank.numeric.shape == (ROWS, 13)
    assert not np.isnan(bank.numeric).any()
    risk = bank.labels["risk"]
    assert set(np.unique(risk).tolist()) == {0.0, 1.0}
    assert risk.mean() == pytest.approx(0.2212)  # the published default rate


def test_partner_file_loads_every_row_with_ten_features_and_no_labels(
    partner: PartyTable,
) -> None:
    assert len(partner) == ROWS
    assert partner.dropped_identifiers == 0
    assert partner.numeric.shape == (ROWS, 10)
    assert not np.isnan(partner.numeric).any()
    assert partner.labels == {}


def test_both_parties_hold_the_same_customers_in_the_same_splits(
    bank: PartyTable, partner: PartyTable
) -> None:
    assert set(bank.ids.tolist()) == set(partner.ids.tolist())
    bank_split = dict(zip(bank.ids.tolist(), bank.split.tolist(), strict=True))
    partner_split = dict(zip(partner.ids.tolist(), partner.split.tolist(), strict=True))
    assert bank_split == partner_split
    shares = np.bincount(bank.split, minlength=3) / ROWS
    np.testing.assert_allclose(shares, [0.7, 0.15, 0.15], atol=0.01)


def test_shipped_federation_matches_on_customer_numbers(federation: Federation) -> None:
    assert federation.federation_id == "default-credit"
    assert list(federation.identifier_kinds) == ["customer_number"]
