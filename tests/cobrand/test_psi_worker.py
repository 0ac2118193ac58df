"""psi_worker's frames: identifiers and frames survive the pipe whole, or fail loudly."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cobrand.psi_worker import decode_identifiers, encode_identifiers, read_frame, write_frame


@given(st.lists(st.text(alphabet=st.characters(exclude_categories=["Cs"]))))
def test_identifiers_decode_to_what_was_encoded(identifiers: list[str]) -> None:
    assert decode_identifiers(encode_identifiers(identifiers)) == identifiers


def test_frames_are_read_back_in_order_then_the_end() -> None:
    pipe = io.BytesIO()
    write_frame(pipe, b"H", b"first")
    write_frame(pipe)
    pipe.seek(0)

    assert read_frame(pipe) == b"Hfirst"
    assert read_frame(pipe) == b""
    assert read_frame(pipe) is None


@pytest.mark.parametrize("cut", [2, 7])
def test_a_frame_cut_short_is_an_error_not_a_shorter_frame(cut: int) -> None:
    pipe = io.BytesIO()
    write_frame(pipe, b"12345678")

    with pytest.raises(EOFError, match="ended"):
        read_frame(io.BytesIO(pipe.getvalue()[:cut]))
