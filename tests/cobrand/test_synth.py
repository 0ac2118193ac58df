"""The synthetic co-brand set: loadable, deterministic, messy where real data is, informative.

The informativeness tests join the two tables on canonical identifiers. Only tests do that: the
product never pools rows, it learns across the parties with split learning.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.csv as pa_csv
import pytest

from cobrand.errors import InvalidRequest
from cobrand.federation import load_federation
from cobrand.identifiers import canonicalize_mobile_cn
from cobrand.metrics import auc
from cobrand.schema import PartySchema, load_party_schema
from cobrand.synth import DatasetFiles, SynthConfig, TableFormat, write_dataset
from cobrand.tables import PartyTable, load_party_table

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LoadedSet:
    files: DatasetFiles
    config: SynthConfig
    bank_schema: PartySchema
    partner_schema: PartySchema
    bank: PartyTable
    partner: PartyTable
    invalid_partner_ids: int


def _load(config: SynthConfig, directory: Path) -> LoadedSet:
    files, tables = write_dataset(config, directory)
    federation = load_federation(files.federation)
    bank_schema = load_party_schema(files.bank_schema, federation)
    partner_schema = load_party_schema(files.partner_schema, federation)
    return LoadedSet(
        files=files,
        config=config,
        bank_schema=bank_schema,
        partner_schema=partner_schema,
        bank=load_party_table(bank_schema, files.bank_table),
        partner=load_party_table(partner_schema, files.partner_table),
        invalid_partner_ids=tables.invalid_partner_ids,
    )


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> LoadedSet:
    return _load(SynthConfig(customers=3000, seed=11), tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def study_set(tmp_path_factory: pytest.TempPathFactory) -> LoadedSet:
    return _load(SynthConfig(customers=20_000, seed=2026), tmp_path_factory.mktemp("study"))


def _file_bytes(files: DatasetFiles) -> dict[str, bytes]:
    paths = [
        files.federation,
        files.bank_schema,
        files.bank_table,
        files.partner_schema,
        files.partner_table,
    ]
    return {path.name: path.read_bytes() for path in paths}


@pytest.mark.parametrize("table_format", ["csv", "parquet"])
def test_same_seed_writes_byte_identical_files(tmp_path: Path, table_format: TableFormat) -> None:
    config = SynthConfig(customers=500, seed=7, table_format=table_format)
    first, _ = write_dataset(config, tmp_path / "a")
    second, _ = write_dataset(config, tmp_path / "b")
    assert _file_bytes(first) == _file_bytes(second)
    other, _ = write_dataset(SynthConfig(customers=500, seed=8), tmp_path / "c")
    assert other.bank_table.read_bytes() != first.bank_table.read_bytes()


def test_parquet_set_loads_like_the_csv_set(tmp_path: Path) -> None:
    from_csv = _load(SynthConfig(customers=400, seed=3), tmp_path / "csv")
    from_parquet = _load(
        SynthConfig(customers=400, seed=3, table_format="parquet"), tmp_path / "parquet"
    )
    assert from_parquet.files.bank_table.suffix == ".parquet"
    for side in ("bank", "partner"):
        csv_table: PartyTable = getattr(from_csv, side)
        parquet_table: PartyTable = getattr(from_parquet, side)
        np.testing.assert_array_equal(csv_table.ids, parquet_table.ids)
        np.testing.assert_array_equal(csv_table.numeric, parquet_table.numeric)
        np.testing.assert_array_equal(csv_table.categorical, parquet_table.categorical)
        np.testing.assert_array_equal(csv_table.split, parquet_table.split)
    for task, values in from_csv.bank.labels.items():
        np.testing.assert_array_equal(values, from_parquet.bank.labels[task])


def test_generated_set_loads_with_every_row_and_counts_unreadable_partner_ids(
    small_set: LoadedSet,
) -> None:
    config = small_set.config
    assert len(small_set.bank.ids) == config.customers
    assert small_set.bank.dropped_identifiers == 0
    assert small_set.partner_schema.identifier.invalid == "drop"
    assert small_set.invalid_partner_ids > 0
    assert small_set.partner.dropped_identifiers == small_set.invalid_partner_ids
    assert len(small_set.partner.ids) == config.n_partner - small_set.invalid_partner_ids
    assert set(small_set.bank.labels) == {"risk", "instalment", "rights_package"}
    assert small_set.partner_schema.labels.present() == {}


def test_without_unreadable_ids_the_partner_schema_rejects_them(tmp_path: Path) -> None:
    loaded = _load(SynthConfig(customers=300, seed=1, invalid_share=0.0), tmp_path)
    assert loaded.partner_schema.identifier.invalid == "reject"
    assert loaded.partner.dropped_identifiers == 0
    assert len(loaded.partner.ids) == loaded.config.n_partner


def test_about_forty_percent_of_bank_customers_are_partner_users(small_set: LoadedSet) -> None:
    shared = np.isin(small_set.bank.ids, small_set.partner.ids)
    assert shared.mean() == pytest.approx(0.4, abs=0.05)
    assert len(small_set.partner.ids) == pytest.approx(3 * len(small_set.bank.ids), rel=0.01)


def test_labels_have_realistic_rates_and_all_rights_packages(small_set: LoadedSet) -> None:
    risk = small_set.bank.labels["risk"]
    default_rate = np.nanmean(risk)
    assert 0.05 <= default_rate <= 0.15
    assert 0 < np.isnan(risk).sum() < 0.1 * risk.size  # too new to judge
    assert 0.1 <= np.nanmean(small_set.bank.labels["instalment"]) <= 0.5
    package = small_set.bank.labels["rights_package"]
    per_class = np.bincount(package[package >= 0], minlength=7)
    assert per_class.size == 7
    assert per_class.min() > 0.05 * package.size
    assert 0.1 < np.mean(package < 0) < 0.4  # never took a package


def _raw_column(path: Path, column: str) -> list[str | None]:
    table = pa_csv.read_csv(
        path, convert_options=pa_csv.ConvertOptions(column_types={column: "string"})
    )
    values: list[str | None] = table.column(column).to_pylist()
    return values


def test_same_person_is_written_in_different_styles_at_the_two_parties(
    small_set: LoadedSet,
) -> None:
    bank_raw = _raw_column(small_set.files.bank_table, "mobile")
    partner_raw = _raw_column(small_set.files.partner_table, "phone")
    bank_by_id = dict(zip(canonicalize_mobile_cn(bank_raw).values, bank_raw, strict=True))
    partner_canonical = canonicalize_mobile_cn(partner_raw).values
    pairs = [
        (bank_by_id[cid], raw)
        for cid, raw in zip(partner_canonical, partner_raw, strict=True)
        if cid in bank_by_id
    ]
    assert len(pairs) == round(0.4 * small_set.config.customers)
    assert all(bank_text != partner_text for bank_text, partner_text in pairs)


def test_identifiers_come_in_messy_real_world_formats(small_set: LoadedSet) -> None:
    for path, column, least in (
        (small_set.files.bank_table, "mobile", 8),
        (small_set.files.partner_table, "phone", 10),
    ):
        shapes = {re.sub(r"\d", "9", raw or "") for raw in _raw_column(path, column)}
        assert len(shapes & _VALID_SHAPES) >= least, path.name
    partner_shapes = {
        re.sub(r"\d", "9", raw or "") for raw in _raw_column(small_set.files.partner_table, "phone")
    }
    assert partner_shapes - _VALID_SHAPES  # the unreadable ones


_VALID_SHAPES = {
    "99999999999",
    "999 9999 9999",
    "999-9999-9999",
    "+99 999 9999 9999",
    "+9999999999999",
    "9999 99999999999",
    "9999999999999",
    "(+99) 999-9999-9999",
    "999.9999.9999",
    "+99-999-9999-9999",
}


def _feature(table: PartyTable, schema: PartySchema, name: str) -> Matrix:
    return table.numeric[:, schema.numeric_features.index(name)]


def test_amounts_are_skewed_with_zeros_and_gaps(small_set: LoadedSet) -> None:
    bank, bank_schema = small_set.bank, small_set.bank_schema
    income = _feature(bank, bank_schema, "monthly_income")
    assert np.nanmean(income) > 1.1 * np.nanmedian(income)
    assert np.isnan(income).mean() > 0.02
    deposit = _feature(bank, bank_schema, "deposit_balance")
    assert np.mean(deposit == 0) > 0.15
    gmv = _feature(small_set.partner, small_set.partner_schema, "monthly_gmv")
    assert np.nanpercentile(gmv, 99) > 10 * np.nanmedian(gmv)


def test_occupations_are_free_strings_with_messy_casing(small_set: LoadedSet) -> None:
    column = small_set.bank_schema.categorical_features.index("occupation")
    raw = {value for value in small_set.bank.categorical[:, column] if value is not None}
    folded = {value.strip().casefold() for value in raw}
    assert len(raw) > 2 * len(folded)
    assert any(value is None for value in small_set.bank.categorical[:, column])


def test_bad_settings_are_refused_naming_the_setting() -> None:
    with pytest.raises(InvalidRequest, match="customers must be at least 10"):
        SynthConfig(customers=3, seed=1)
    with pytest.raises(InvalidRequest, match="overlap must be between 0 and 1"):
        SynthConfig(customers=100, seed=1, overlap=1.5)
    with pytest.raises(InvalidRequest, match=r"partner_ratio \(0.2\) must be at least overlap"):
        SynthConfig(customers=100, seed=1, partner_ratio=0.2)
    with pytest.raises(InvalidRequest, match="seed must be non-negative"):
        SynthConfig(customers=100, seed=-1)


# --- informativeness: a plain logistic regression on joined rows (test-only code) -----------


def _design(table: PartyTable, rows: npt.NDArray[np.int64], train: npt.NDArray[np.bool_]) -> Matrix:
    """Numeric: log of heavy tails, median-imputed, standardized, plus missing flags.
    Categorical: one-hot of the casefolded values seen in training rows."""
    columns: list[Matrix] = []
    for j in range(table.numeric.shape[1]):
        values = table.numeric[rows, j]
        missing = np.isnan(values)
        if np.nanmax(values) > 50:
            values = np.log1p(np.maximum(values, 0.0))
        values = np.where(missing, np.nanmedian(values[train]), values)
        columns += [(values - values[train].mean()) / (values[train].std() + 1e-9), missing]
    for j in range(table.categorical.shape[1]):
        text = np.array([str(v).strip().casefold() for v in table.categorical[rows, j]])
        columns += [text == value for value in np.unique(text[train])]
    return np.column_stack(columns).astype(np.float64)


def _fit_logistic(x: Matrix, y: Matrix, ridge: float = 1.0) -> Callable[[Matrix], Matrix]:
    """Ridge logistic regression by Newton's method; returns the scoring function."""
    x1 = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(x1.shape[1])
    penalty = ridge * np.eye(w.size)
    penalty[0, 0] = 0.0
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-(x1 @ w)))
        hessian = (x1 * (p * (1 - p))[:, None]).T @ x1 + penalty
        w -= np.linalg.solve(hessian, x1.T @ (p - y) + penalty @ w)
    return lambda z: np.column_stack([np.ones(len(z)), z]) @ w


@dataclass(frozen=True)
class Joined:
    bank_x: Matrix
    joint_x: Matrix
    bank_rows: npt.NDArray[np.int64]
    train: npt.NDArray[np.bool_]


@pytest.fixture(scope="module")
def joined(study_set: LoadedSet) -> Joined:
    bank, partner = study_set.bank, study_set.partner
    order = np.argsort(partner.ids)
    position = np.searchsorted(partner.ids[order], bank.ids)
    position = np.minimum(position, len(order) - 1)
    shared = partner.ids[order][position] == bank.ids
    bank_rows = np.flatnonzero(shared)
    partner_rows = order[position[shared]]
    train = bank.split[bank_rows] == 0
    bank_x = _design(bank, bank_rows, train)
    return Joined(
        bank_x=bank_x,
        joint_x=np.column_stack([bank_x, _design(partner, partner_rows, train)]),
        bank_rows=bank_rows,
        train=train,
    )


def _held_out_aucs(
    joined: Joined, y: Matrix, labelled: npt.NDArray[np.bool_]
) -> tuple[float, float]:
    fit, held_out = joined.train & labelled, ~joined.train & labelled
    bank_only, joint = (
        auc(y_true=y[held_out], y_score=_fit_logistic(x[fit], y[fit])(x[held_out]))
        for x in (joined.bank_x, joined.joint_x)
    )
    return bank_only, joint


def test_partner_slice_lifts_risk_auc_on_the_overlap(
    study_set: LoadedSet, joined: Joined, capsys: pytest.CaptureFixture[str]
) -> None:
    risk = study_set.bank.labels["risk"][joined.bank_rows].astype(np.float64)
    assert joined.bank_rows.size / len(study_set.bank.ids) == pytest.approx(0.4, abs=0.05)
    assert 0.05 <= np.nanmean(study_set.bank.labels["risk"]) <= 0.15
    bank_only, joint = _held_out_aucs(joined, np.nan_to_num(risk), ~np.isnan(risk))
    with capsys.disabled():
        print(f"\nrisk AUC on held-out overlap: bank-only {bank_only:.4f}, joint {joint:.4f}")
    assert joint - bank_only >= 0.02


def test_partner_slice_lifts_instalment_and_rights_package_auc(
    study_set: LoadedSet, joined: Joined, capsys: pytest.CaptureFixture[str]
) -> None:
    instalment = study_set.bank.labels["instalment"][joined.bank_rows].astype(np.float64)
    bank_only, joint = _held_out_aucs(joined, instalment, ~np.isnan(instalment))
    package = study_set.bank.labels["rights_package"][joined.bank_rows]
    # One-vs-rest per package among customers who took one; macro average.
    per_class = [
        _held_out_aucs(joined, (package == k).astype(np.float64), package >= 0) for k in range(7)
    ]
    package_bank, package_joint = np.mean(per_class, axis=0)
    with capsys.disabled():
        print(
            f"\ninstalment AUC: bank-only {bank_only:.4f}, joint {joint:.4f}; "
            f"rights_package macro AUC: bank-only {package_bank:.4f}, joint {package_joint:.4f}"
        )
    assert joint - bank_only >= 0.02
    assert package_joint - package_bank >= 0.05
