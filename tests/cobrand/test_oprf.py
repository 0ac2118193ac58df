"""The consented lookup's OPRF: the blinded protocol gives the key holder's own evaluation, the
group's algebra holds, and hostile elements and keys are refused."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings

from cobrand import oprf
from cobrand.errors import ConfigError, InvalidPoint
from cobrand.federation import Federation, IdentifierKindEntry

CONTEXT = b"cobrand-consented-lookup-v1:test:00"
ORDER = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19
# Small-order points of edwards25519, as encodings an attacker sends: the identity, order 2
# (y = -1), order 4 (y = 0) and an order-8 point.
SMALL_ORDER = [
    (1).to_bytes(32, "little"),
    (P - 1).to_bytes(32, "little"),
    bytes(32),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
]
inputs = st.binary(min_size=1, max_size=80)


def _scalar(value: int) -> bytes:
    return value.to_bytes(32, "little")


@settings(max_examples=40, deadline=None)
@given(x=inputs)
def test_blinded_evaluation_equals_the_key_holders_direct_evaluation(x: bytes) -> None:
    key = oprf.new_scalar()
    r, blinded = oprf.blind(x, CONTEXT)
    unblinded = oprf.unblind(r, oprf.evaluate(key, blinded))

    assert unblinded == bindings.crypto_scalarmult_ed25519_noclamp(
        key, oprf.hash_to_group(x, CONTEXT)
    )
    assert oprf.finalize(x, unblinded, CONTEXT) == oprf.evaluate_directly(key, x, CONTEXT)
    assert len(oprf.evaluate_directly(key, x, CONTEXT)) == oprf.OUTPUT_BYTES


def test_the_blinded_element_is_fresh_on_every_call_and_a_group_element() -> None:
    x = oprf.lookup_input("mobile_cn", "+8613800138000")
    blinded = {oprf.blind(x, CONTEXT)[1] for _ in range(20)}

    assert len(blinded) == 20
    for element in blinded:
        oprf.check_element(element, "blinded")


def test_evaluating_under_two_keys_is_evaluating_under_their_product() -> None:
    k1, k2 = oprf.new_scalar(), oprf.new_scalar()
    element = oprf.hash_to_group(b"x", CONTEXT)

    twice = oprf.evaluate(k2, oprf.evaluate(k1, element))

    assert twice == oprf.evaluate(bindings.crypto_core_ed25519_scalar_mul(k1, k2), element)


def test_the_hash_lands_in_the_prime_order_subgroup() -> None:
    # 2 * H(x) by multiplication and by addition agree, and (order - 1) * H(x) + H(x) is the
    # identity: the group order annihilates H(x).
    element = oprf.hash_to_group(b"x", CONTEXT)
    assert oprf.evaluate(_scalar(2), element) == bindings.crypto_core_ed25519_add(element, element)
    minus_one = _scalar(ORDER - 1)
    assert bindings.crypto_core_ed25519_add(oprf.evaluate(minus_one, element), element) == (
        1
    ).to_bytes(32, "little")


@settings(max_examples=30, deadline=None)
@given(pair=st.lists(inputs, min_size=2, max_size=2, unique=True))
def test_different_inputs_give_different_outputs(pair: list[bytes]) -> None:
    key = oprf.new_scalar()
    first, second = (oprf.evaluate_directly(key, x, CONTEXT) for x in pair)
    assert first != second


def test_another_key_or_federation_gives_another_output() -> None:
    x = oprf.lookup_input("mobile_cn", "+8613800138000")
    key = oprf.new_scalar()
    base = oprf.evaluate_directly(key, x, CONTEXT)

    assert oprf.evaluate_directly(oprf.new_scalar(), x, CONTEXT) != base
    assert oprf.evaluate_directly(key, x, CONTEXT + b"1") != base


def test_one_identifier_read_as_two_kinds_is_two_inputs() -> None:
    assert oprf.lookup_input("mobile_cn", "1") != oprf.lookup_input("customer_number", "1")


def test_the_context_binds_the_federation_and_differs_from_private_alignments_tag() -> None:
    kinds = {"mobile_cn": IdentifierKindEntry(canonical_form="e164-cn-mobile")}
    one, other = (
        oprf.context_string(Federation(federation_id=name, version=1, identifier_kinds=kinds))
        for name in ("deal-a", "deal-b")
    )
    assert one != other
    assert one.startswith(b"cobrand-consented-lookup-v1:deal-a:")
    assert len(one) <= 255 - len(b"HashToGroup-")


def test_a_known_answer_stays_the_same() -> None:
    # Fixed from this implementation: guards the encoding of inputs and outputs against change
    # (the algebraic tests above are what show it is right).
    key = bindings.crypto_core_ed25519_scalar_reduce(bytes(range(64)))
    x = oprf.lookup_input("mobile_cn", "+8613800138000")
    assert oprf.evaluate_directly(key, x, CONTEXT).hex() == "1a5f7e4e93dc2313e438aceaa9dd37c2"


@pytest.mark.parametrize("element", SMALL_ORDER, ids=["identity", "order2", "order4", "order8"])
def test_an_element_of_small_order_is_refused_naming_the_field(element: bytes) -> None:
    with pytest.raises(InvalidPoint, match="blinded_element"):
        oprf.evaluate(oprf.new_scalar(), element)
    with pytest.raises(InvalidPoint, match="evaluated_element"):
        oprf.unblind(oprf.new_scalar(), element)


def test_a_point_outside_the_prime_order_subgroup_is_refused() -> None:
    # A valid element plus a point of order 8: on the curve, but with a small-order component
    # that would leak the key modulo 8.
    mixed = bindings.crypto_core_ed25519_add(oprf.hash_to_group(b"x", CONTEXT), SMALL_ORDER[3])
    with pytest.raises(InvalidPoint, match="prime-order subgroup"):
        oprf.evaluate(oprf.new_scalar(), mixed)


def test_a_non_canonical_encoding_is_refused() -> None:
    # y = p + 1 encodes the identity's y non-canonically; y = p + 3 is another non-canonical y.
    for y in (P + 1, P + 3):
        with pytest.raises(InvalidPoint, match="canonical"):
            oprf.check_element(y.to_bytes(32, "little"), "blinded_element")


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_an_element_of_the_wrong_length_is_refused_naming_its_length(length: int) -> None:
    with pytest.raises(InvalidPoint, match=f"it is {length}"):
        oprf.evaluate(oprf.new_scalar(), bytes(length))


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (bytes(31), "32 bytes"),
        (bytes(32), "non-zero"),
        (_scalar(ORDER), "below the group order"),
        (b"\xff" * 32, "below the group order"),
    ],
    ids=["short", "zero", "order", "unreduced"],
)
def test_a_bad_key_is_refused(key: bytes, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        oprf.check_key(key)


def test_a_fresh_scalar_is_a_valid_key() -> None:
    oprf.check_key(oprf.new_scalar())
