"""The data plane's wire layer: tensors survive packing, and malformed bytes are refused by name."""

import numpy as np
import pytest

from cobrand.errors import InvalidRequest
from cobrand.tensor_wire import (
    EXCHANGE_METHOD,
    pack_matrix,
    pack_positions,
    unpack_matrix,
    unpack_positions,
)


def test_exchange_method_is_the_contracts_full_path() -> None:
    assert EXCHANGE_METHOD == "/cobrand.v1.TrainingDataPlane/Exchange"


def test_positions_travel_as_little_endian_uint32() -> None:
    data = pack_positions(np.array([0, 1, 258, 2**32 - 1]))

    assert data[:12] == bytes([0, 0, 0, 0, 1, 0, 0, 0, 2, 1, 0, 0])
    assert unpack_positions(data, limit=2**32, what="batch").tolist() == [0, 1, 258, 2**32 - 1]


def test_a_position_outside_the_aligned_rows_is_named() -> None:
    with pytest.raises(InvalidRequest, match="batch of step 3: position 10 at index 2 is outside"):
        unpack_positions(pack_positions(np.array([4, 9, 10, 11])), limit=10, what="batch of step 3")


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"", "holds no positions"), (b"\x01\x00\x00", "3 bytes is not a whole number of uint32")],
)
def test_malformed_position_bytes_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        unpack_positions(data, limit=10, what="batch")


def test_negative_positions_cannot_be_packed() -> None:
    with pytest.raises(InvalidRequest, match="fit in uint32"):
        pack_positions(np.array([3, -1]))


def test_matrices_travel_as_row_major_little_endian_float32() -> None:
    matrix = np.arange(6, dtype=np.float64).reshape(2, 3) / 4

    data = pack_matrix(matrix)

    assert data == np.array([0, 0.25, 0.5, 0.75, 1.0, 1.25], dtype="<f4").tobytes()
    back = unpack_matrix(data, width=3, rows=2, what="gradient")
    assert back.dtype == np.float32
    assert back.flags.writeable
    np.testing.assert_array_equal(back, matrix)
    assert unpack_matrix(data, width=3, what="gradient").shape == (2, 3)


def test_a_matrix_of_the_wrong_length_is_refused_with_its_shape() -> None:
    data = pack_matrix(np.zeros((2, 3)))
    with pytest.raises(InvalidRequest, match="gradient of step 7: 24 bytes, expected 3 rows x 3"):
        unpack_matrix(data, width=3, rows=3, what="gradient of step 7")
    with pytest.raises(InvalidRequest, match="not a whole number of rows of 4 float32"):
        unpack_matrix(data, width=4, what="gradient")
    with pytest.raises(InvalidRequest, match="width must be at least 1"):
        unpack_matrix(data, width=0, what="gradient")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_refused_naming_its_row(bad: float) -> None:
    matrix = np.zeros((4, 2), dtype=np.float32)
    matrix[2, 1] = bad
    with pytest.raises(InvalidRequest, match="embeddings of step 1: row 2 holds a NaN or infinite"):
        unpack_matrix(pack_matrix(matrix), width=2, what="embeddings of step 1")
