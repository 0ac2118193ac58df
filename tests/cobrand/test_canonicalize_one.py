"""One identifier at a time: `IdentifierKind.canonicalize_one` agrees with the vectorised
`canonicalize` on any string, valid or not, and fails as it fails."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cobrand.identifiers import IDENTIFIER_KINDS, gb11643_check_character

KINDS = sorted(IDENTIFIER_KINDS)
# Characters the rules care about: digits, prefixes, separators, RE2's spaces and the ones it
# does not count (\v, \x1c), case, @, and a few non-ASCII look-alikes.
ALPHABET = "0123456789+86X x-.()@\t\n\r\f\v\x1c\x1fAbc\u00a0\u3000\uff11\u0660İ"


@st.composite
def near_identifiers(draw: st.DrawFn) -> str:
    """Strings close to an identifier of some kind, so valid and invalid both come up often."""
    mobile = "1" + draw(st.text("0123456789", min_size=10, max_size=10))
    body = draw(st.text("0123456789", min_size=17, max_size=17))
    national_id = body + gb11643_check_character(body).lower()
    base = draw(st.sampled_from([mobile, "+86" + mobile, "0086" + mobile, national_id, "a@b.c"]))
    cut = draw(st.integers(0, len(base)))
    noise = draw(st.text(ALPHABET, max_size=2))
    return draw(st.sampled_from(["", " ", "\t", "\v", "\n"])) + base[:cut] + noise + base[cut:]


@settings(max_examples=400)
@given(
    st.sampled_from(KINDS),
    st.one_of(near_identifiers(), st.text(ALPHABET, max_size=24), st.text(max_size=24)),
)
@example("mobile_cn", "138 1234 5678\n")
@example("mobile_cn", "138\v1234\v5678")
@example("email", "ann@example.cn\n")
@example("email", "ann\v@example.cn")
@example("customer_number", "\x1c0042\x1f")
@example("national_id_cn", "110105 19491231 002x")
@example("national_id_cn", "11010519491231002\u0660")
def test_one_identifier_canonicalizes_as_the_vectorised_path(kind: str, raw: str) -> None:
    identifier = IDENTIFIER_KINDS[kind]
    vectorised = identifier.canonicalize([raw])
    expected = None if vectorised.invalid[0] else vectorised.values[0]

    assert identifier.canonicalize_one(raw) == expected


def _failure(call: Callable[[], object]) -> Exception:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - any error: the point is that both raise the same
        return err
    raise AssertionError("expected an error")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("raw", ["\ud800", 5])
def test_a_value_the_vectorised_path_refuses_is_refused_alike(kind: str, raw: object) -> None:
    identifier = IDENTIFIER_KINDS[kind]

    vectorised = _failure(lambda: identifier.canonicalize([raw]))
    one = _failure(lambda: identifier.canonicalize_one(raw))  # type: ignore[arg-type]

    assert type(one) is type(vectorised)
    assert str(one) == str(vectorised)
