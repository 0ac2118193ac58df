"""Specifications for loading a party table: what it yields, and every bad input it refuses."""

import decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from cobrand.errors import TableError
from cobrand.schema import PartySchema, SplitFractions
from cobrand.tables import hash_split, load_party_table
from tests.cobrand.conftest import WriteText

BANK: dict[str, Any] = {
    "party": "bank",
    "identifier": {"column": "mobile", "kind": "mobile_cn"},
    "features": [
        {"name": "age", "type": "numeric"},
        {"name": "city", "type": "categorical"},
        {"name": "limit", "type": "numeric"},
    ],
    "labels": {
        "risk": {"column": "bad", "kind": "binary", "positive": "bad", "negative": "good"},
        "rights_package": {
            "column": "package",
            "kind": "categorical",
            "classes": ["shopping", "travel", "finance"],
        },
    },
    "split": {"column": "split"},
}

GOOD_CSV = """
    mobile,age,city,limit,bad,package,split,unused
    +86 138-0000-0001,34,Shanghai,5000,good,travel,train,x
    13800000002,NA,,1e4,bad,,valid,x
    0086 138 0000 0003,,beijing, -2.5 ,,finance,Test,x
    (+86) 138.0000.0004,null,NULL,nan, good ,shopping, train ,x
"""


def bank_schema(**changes: Any) -> PartySchema:
    return PartySchema.model_validate({**BANK, **changes})


def bank_csv(write_text: WriteText, text: str = GOOD_CSV) -> Path:
    return write_text("bank.csv", text)


def test_csv_table_loads_canonical_ids_features_labels_and_split(write_text: WriteText) -> None:
    path = bank_csv(write_text)
    table = load_party_table(bank_schema(), path)
    assert table.ids.tolist() == [f"+861380000000{i}" for i in range(1, 5)]
    np.testing.assert_array_equal(
        table.numeric, [[34, 5000], [np.nan, 1e4], [np.nan, -2.5], [np.nan, np.nan]]
    )
    assert table.numeric.dtype == np.float64
    assert table.categorical.tolist() == [["Shanghai"], [None], ["beijing"], [None]]
    np.testing.assert_array_equal(table.labels["risk"], [0, 1, np.nan, 0])
    assert table.labels["risk"].dtype == np.float32
    assert table.labels["rights_package"].tolist() == [1, -1, 2, 0]
    assert table.labels["rights_package"].dtype == np.int64
    assert table.split.tolist() == [0, 1, 2, 0]
    assert table.split.dtype == np.int8
    assert (len(table), table.dropped_identifiers, table.source) == (4, 0, path)


def test_parquet_with_numeric_physical_types_loads_like_csv(tmp_path: Path) -> None:
    schema = bank_schema(
        identifier={"column": "mobile", "kind": "customer_number"},
        labels={"risk": {"column": "bad", "kind": "binary", "positive": "1", "negative": "0"}},
    )
    columns = {
        "mobile": pa.array([7, 8, 9], pa.int64()),
        "age": pa.array([34, None, 51], pa.int32()),
        "city": pa.array([1, 2, None], pa.int16()),  # a code stored as a number
        "limit": pa.array([decimal.Decimal("5000.50"), None, decimal.Decimal("0")]),
        "bad": pa.array([1, 0, None], pa.int8()),
        "split": pa.array(["train", "valid", "test"]).dictionary_encode(),
    }
    path = tmp_path / "bank.parquet"
    pq.write_table(pa.table(columns), path)
    table = load_party_table(schema, path)
    assert table.ids.tolist() == ["7", "8", "9"]
    np.testing.assert_array_equal(table.numeric, [[34, 5000.5], [np.nan, np.nan], [51, 0]])
    assert table.categorical.tolist() == [["1"], ["2"], [None]]
    np.testing.assert_array_equal(table.labels["risk"], [1, 0, np.nan])
    assert table.split.tolist() == [0, 1, 2]


def test_parquet_with_text_columns_loads_like_the_same_csv(
    write_text: WriteText, tmp_path: Path
) -> None:
    csv_path = bank_csv(write_text)
    from_csv = load_party_table(bank_schema(), csv_path)
    names = GOOD_CSV.split()[0].split(",")
    # Text columns with nulls where the CSV says NA or null, as a pandas export would have.
    convert = pa_csv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True
    )
    path = tmp_path / "bank.parquet"
    pq.write_table(pa_csv.read_csv(csv_path, convert_options=convert), path)
    from_parquet = load_party_table(bank_schema(), path)
    assert from_parquet.ids.tolist() == from_csv.ids.tolist()
    np.testing.assert_array_equal(from_parquet.numeric, from_csv.numeric)
    assert from_parquet.categorical.tolist() == from_csv.categorical.tolist()
    np.testing.assert_array_equal(from_parquet.labels["risk"], from_csv.labels["risk"])
    assert from_parquet.split.tolist() == from_csv.split.tolist()


def test_parquet_nan_is_missing_and_infinity_is_refused(tmp_path: Path) -> None:
    schema = bank_schema(features=[{"name": "limit", "type": "numeric"}], labels={})
    path = tmp_path / "bank.parquet"
    ids = ["13800000001", "13800000002", "13800000003"]
    split = ["train"] * 3
    pq.write_table(pa.table({"mobile": ids, "limit": [1.0, np.nan, None], "split": split}), path)
    np.testing.assert_array_equal(load_party_table(schema, path).numeric[:, 0], [1, np.nan, np.nan])
    pq.write_table(pa.table({"mobile": ids, "limit": [1.0, 2.0, np.inf], "split": split}), path)
    with pytest.raises(TableError, match=r"column 'limit' \(features\[0\].name\): data row 3: inf"):
        load_party_table(schema, path)


def test_parquet_numeric_feature_stored_as_booleans_is_refused(tmp_path: Path) -> None:
    schema = bank_schema(features=[{"name": "limit", "type": "numeric"}], labels={})
    path = tmp_path / "bank.parquet"
    pq.write_table(pa.table({"mobile": ["13800000001"], "limit": [True], "split": ["train"]}), path)
    with pytest.raises(TableError, match=r"'limit' \(features\[0\].name\): .* stored as bool"):
        load_party_table(schema, path)


@pytest.mark.parametrize(
    "ids", [pa.array([1.0]), pa.array([1.0]).dictionary_encode()], ids=["plain", "dictionary"]
)
def test_parquet_identifier_stored_as_floats_is_refused(tmp_path: Path, ids: pa.Array) -> None:
    schema = bank_schema(identifier={"column": "mobile", "kind": "customer_number"}, labels={})
    path = tmp_path / "bank.parquet"
    table = {"mobile": ids, "age": [1.0], "city": ["a"], "limit": [1.0], "split": ["test"]}
    pq.write_table(pa.table(table), path)
    with pytest.raises(TableError, match=r"identifiers must be stored as text or integers"):
        load_party_table(schema, path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("limit", "limt", r"column 'limit' \(features\[2\].name\) not found; did you mean 'limt'"),
        ("mobile", "phone", r"column 'mobile' \(identifier.column\) not found"),
        ("bad", "BAD", r"column 'bad' \(labels.risk.column\) not found; did you mean 'BAD'"),
        ("unused", "age", r"column 'age' \(features\[0\].name\) appears 2 times in the header"),
    ],
)
def test_missing_or_misspelt_column_is_named_with_the_closest_existing_one(
    write_text: WriteText, old: str, new: str, expected: str
) -> None:
    header, rest = GOOD_CSV.lstrip("\n").split("\n", 1)
    path = bank_csv(write_text, header.replace(old, new) + "\n" + rest)
    with pytest.raises(TableError, match=expected) as raised:
        load_party_table(bank_schema(), path)
    assert str(raised.value).startswith(f"{path}: ")


@pytest.mark.parametrize("bad_value", ["abc", "1,5", "inf", "-Infinity", "1e999", "0x10", "12 kg"])
def test_non_numeric_value_in_numeric_column_names_file_column_row_and_value(
    write_text: WriteText, bad_value: str
) -> None:
    path = bank_csv(write_text, GOOD_CSV.replace(",1e4,", f',"{bad_value}",'))
    with pytest.raises(TableError) as raised:
        load_party_table(bank_schema(), path)
    assert str(raised.value) == (
        f"{path}: column 'limit' (features[2].name): data row 2: {bad_value!r} is not a finite "
        "number"
    )


def test_identifiers_equal_after_canonicalization_are_refused_naming_both_rows(
    write_text: WriteText,
) -> None:
    path = bank_csv(write_text, GOOD_CSV.replace("(+86) 138.0000.0004", "138 0000 0002"))
    with pytest.raises(TableError) as raised:
        load_party_table(bank_schema(), path)
    message = str(raised.value)
    assert message.startswith(f"{path}: column 'mobile' (identifier.column): data row 4: ")
    assert "repeats the one in data row 2 after canonicalization" in message
    assert "0000" not in message  # identifier values never appear in messages


@pytest.mark.parametrize(
    ("suffix", "content"),
    [(".csv", "mobile,age,city,limit,bad,package,split\n"), (".csv", ""), (".parquet", None)],
)
def test_empty_table_is_refused(tmp_path: Path, suffix: str, content: str | None) -> None:
    path = tmp_path / f"bank{suffix}"
    if content is None:
        names = ["mobile", "age", "city", "limit", "bad", "package", "split"]
        pq.write_table(pa.table({n: pa.array([], pa.string()) for n in names}), path)
    else:
        path.write_text(content)
    with pytest.raises(TableError, match=rf"^{path}: the table is empty|^{path}: .*no data rows"):
        load_party_table(bank_schema(), path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            ",good,travel,",
            ",Good,travel,",
            r"'bad' \(labels.risk.column\): data row 1: label 'Good'",
        ),
        (",bad,,valid,", ",0,,valid,", r"'bad' \(labels.risk.column\): data row 2: label '0'"),
        (
            ",finance,Test,",
            ",gold,Test,",
            r"'package' \(labels.rights_package.column\): data row 3: label 'gold' is none of "
            r"the declared values \('shopping', 'travel', 'finance'\)",
        ),
        (",valid,x", ",holdout,x", r"'split' \(split.column\): data row 2: split 'holdout'"),
    ],
)
def test_label_or_split_value_outside_the_declared_ones_is_refused(
    write_text: WriteText, old: str, new: str, expected: str
) -> None:
    path = bank_csv(write_text, GOOD_CSV.replace(old, new))
    with pytest.raises(TableError, match=expected) as raised:
        load_party_table(bank_schema(), path)
    assert str(raised.value).startswith(f"{path}: column ")


BAD_IDS_CSV = GOOD_CSV.replace("13800000002", "1380000000").replace(
    "0086 138 0000 0003", "0086 238 0000 0003"
)


def test_unreadable_identifier_under_reject_names_the_first_row_not_the_value(
    write_text: WriteText,
) -> None:
    path = bank_csv(write_text, BAD_IDS_CSV)
    with pytest.raises(TableError) as raised:
        load_party_table(bank_schema(), path)
    message = str(raised.value)
    assert message.startswith(
        f"{path}: column 'mobile' (identifier.column): data row 2: not a readable mobile_cn "
        "identifier (2 such rows;"
    )
    assert "1380000000" not in message


def test_unreadable_identifiers_under_drop_are_left_out_and_counted(write_text: WriteText) -> None:
    schema = bank_schema(identifier={"column": "mobile", "kind": "mobile_cn", "invalid": "drop"})
    table = load_party_table(schema, bank_csv(write_text, BAD_IDS_CSV))
    assert table.dropped_identifiers == 2
    assert table.ids.tolist() == ["+8613800000001", "+8613800000004"]
    assert table.labels["rights_package"].tolist() == [1, 0]
    assert table.split.tolist() == [0, 0]


def test_rows_after_dropped_ones_keep_their_file_row_numbers_in_errors(
    write_text: WriteText,
) -> None:
    schema = bank_schema(identifier={"column": "mobile", "kind": "mobile_cn", "invalid": "drop"})
    path = bank_csv(write_text, BAD_IDS_CSV.replace(",nan,", ",oops,"))
    with pytest.raises(TableError, match=r"column 'limit' \(features\[2\].name\): data row 4: "):
        load_party_table(schema, path)


def test_table_whose_every_identifier_is_unreadable_is_refused_under_drop(
    write_text: WriteText,
) -> None:
    schema = bank_schema(
        identifier={"column": "mobile", "kind": "national_id_cn", "invalid": "drop"}
    )
    with pytest.raises(TableError, match=r"no rows left after dropping 4 unreadable identifiers"):
        load_party_table(schema, bank_csv(write_text))


def test_csv_line_with_the_wrong_number_of_fields_is_named_by_line(write_text: WriteText) -> None:
    path = bank_csv(write_text, GOOD_CSV.replace(",valid,x", ",valid"))
    with pytest.raises(TableError, match=rf"^{path}: line 3: 7 fields, expected 8$"):
        load_party_table(bank_schema(), path)


def test_csv_header_with_byte_order_mark_is_read(write_text: WriteText) -> None:
    path = bank_csv(write_text, "\ufeff" + GOOD_CSV.lstrip())
    assert len(load_party_table(bank_schema(), path)) == 4


@pytest.mark.parametrize(
    ("name", "expected"),
    [("bank.xlsx", r"unsupported table format '.xlsx'"), ("absent.csv", r"cannot read table")],
)
def test_unreadable_or_unsupported_file_is_refused(
    tmp_path: Path, name: str, expected: str
) -> None:
    path = tmp_path / name
    if name.endswith(".xlsx"):
        path.write_bytes(b"PK")
    with pytest.raises(TableError, match=rf"^{path}: {expected}"):
        load_party_table(bank_schema(), path)


def test_hash_split_is_stable_per_identifier_and_respects_fractions() -> None:
    ids = np.array([f"+86138{i:08d}" for i in range(20_000)], dtype=object)
    fractions = SplitFractions(train=0.6, valid=0.3, test=0.1)
    split = hash_split(ids, 20261123, fractions)
    shares = np.bincount(split, minlength=3) / len(ids)
    np.testing.assert_allclose(shares, [0.6, 0.3, 0.1], atol=0.015)
    # Another party's table holds some of the same people in another order: same splits.
    other = np.random.default_rng(0).permutation(len(ids))[:5_000]
    np.testing.assert_array_equal(hash_split(ids[other], 20261123, fractions), split[other])
    assert not np.array_equal(hash_split(ids, 20261124, fractions), split)


def test_table_without_split_column_is_split_by_hashed_canonical_identifier(
    write_text: WriteText,
) -> None:
    schema = bank_schema(split={"seed": 7, "fractions": {"train": 0.5, "valid": 0.5, "test": 0}})
    table = load_party_table(schema, bank_csv(write_text))
    again = load_party_table(schema, bank_csv(write_text))
    np.testing.assert_array_equal(table.split, again.split)
    np.testing.assert_array_equal(table.split, hash_split(table.ids, 7, schema.split.fractions))
    assert set(table.split.tolist()) <= {0, 1}
